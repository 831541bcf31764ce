"""Gradient diagnostics on our LSTMForecaster: the time profile, its reach, activation gradients, the
probe callback, GradientMonitor's alarms and the non-finite guard."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lstm_grad.diagnostics import GradientHealthWarning, GradientMonitor, TimeGradientProbe
from lstm_grad.data import GoldDataModule
from lstm_grad.diagnostics import lag_value, probe_gradients, time_grad_profile, time_reach
from lstm_grad.model import ResidualLSTM
from lstm_grad.module import LSTMForecaster


# ---- time_grad_profile, grad_act, reach ------------------------------------------------------------
def test_time_grad_profile_equals_hand_autograd():
    torch.manual_seed(0)
    net = ResidualLSTM(3, hidden_sizes=(4, 4, 3), dropout=0.5).train()
    x, y = torch.randn(5, 7, 3), torch.randn(5, 1)
    profile, acts = probe_gradients(net, x, y)

    net.eval()  # by hand: eval mode, retain each layer output's grad, plain backward
    outputs = {}
    hooks = [getattr(net, n).register_forward_hook(lambda m, a, o, n=n: outputs.__setitem__(n, o[0]))
             for n in net.layer_names]
    leaf = x.clone().requires_grad_(True)
    pred = net(leaf)
    for h in outputs.values():
        h.retain_grad()
    nn.functional.mse_loss(pred, y).backward()
    for hook in hooks:
        hook.remove()
    expected = torch.stack([leaf.grad[:, t].norm() for t in range(7)])  # one norm per time step over (B, F)
    torch.testing.assert_close(profile, expected, rtol=1e-5, atol=0)
    assert list(acts) == ["lstm_0", "lstm_1", "lstm_2"]
    for name, value in acts.items():
        torch.testing.assert_close(value, outputs[name].grad.norm(), rtol=1e-5, atol=0)
    torch.testing.assert_close(time_grad_profile(net, x, y), expected, rtol=1e-5, atol=0)


def test_probe_leaves_training_state_and_parameter_grads_alone():
    net = ResidualLSTM(2, hidden_sizes=(3,)).train()
    time_grad_profile(net, torch.randn(2, 4, 2), torch.randn(2, 1))
    assert net.training and all(p.grad is None for p in net.parameters())


def test_reach_on_constructed_profiles():
    lags = torch.arange(1, 61, dtype=torch.float64)  # lag 1 .. 60
    decay = (0.9 ** (lags - 1)).flip(0)  # time order: index 59 is lag 1
    assert time_reach(decay) == 44  # 0.9**43 = 0.0108 >= 1 %, 0.9**44 = 0.0097 < 1 %
    assert time_reach(torch.ones(60)) == 60
    spike = torch.zeros(60)
    spike[-1] = 3.0
    assert time_reach(spike) == 1
    bump = decay.clone()
    bump[60 - 50] = 0.5  # lag 50 comes back above 1 %
    assert time_reach(bump) == 50
    assert time_reach(torch.zeros(5)) == 0 and time_reach(torch.tensor([1.0, float("nan")])) == 0
    assert time_reach(decay, fraction=0.5) == 7  # 0.9**6 = 0.53, 0.9**7 = 0.48
    profile = torch.tensor([3.0, 2.0, 1.0])
    assert (lag_value(profile, 1), lag_value(profile, 3), lag_value(profile, 4)) == (1.0, 3.0, None)


# ---- runs ------------------------------------------------------------------------------------------
class Experiment:
    """Stand-in for TensorBoard's SummaryWriter: records the calls the callbacks make."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __getattr__(self, name):
        if not name.startswith("add_"):
            raise AttributeError(name)
        return lambda tag, value=None, step=None, **kw: self.calls.append((name, tag, value, kw.get("global_step", step)))


@pytest.fixture(name="RecordingLogger")
def recording_logger_class(MemoryLogger):
    """The class ``RecordingLogger``: a MemoryLogger whose ``experiment`` records the calls the callbacks make."""

    class RecordingLogger(MemoryLogger):
        def __init__(self) -> None:
            super().__init__()
            self._experiment = Experiment()

        @property
        def experiment(self) -> Experiment:
            return self._experiment

    return RecordingLogger


@pytest.fixture
def fit(tiny_forecaster, quiet_trainer, MemoryLogger):
    """``fit(tmp_path, ...) -> (trainer, logged values, data)``: one tiny fit (window 12 by default)."""

    def fit(tmp_path, *, model=None, callbacks=(), window=12, epochs=1, batches=None, log_every=1, logger=None,
            **trainer_kw):
        data, model = tiny_forecaster(tmp_path, window=window, model=model, split=(0.6, 0.2, 0.2))
        logger = logger or MemoryLogger()
        trainer = quiet_trainer(max_epochs=epochs, logger=logger, callbacks=list(callbacks),
                                log_every_n_steps=log_every, limit_train_batches=batches,
                                **{"enable_checkpointing": False, **trainer_kw})
        trainer.fit(model, datamodule=data)
        return trainer, logger.values, data

    return fit


def test_probe_logs_profile_lags_reach_and_act_of_the_current_weights(tmp_path, fit):
    probe = TimeGradientProbe(probe_size=20)
    trainer, values, data = fit(tmp_path, callbacks=[probe], epochs=2, batches=3)
    assert set(values["grad_time/reach"]) == {0, 3, 6}  # before training, after each epoch
    assert "grad_time/lag_10" in values and "grad_time/lag_30" not in values  # window 12
    x, y = (torch.cat(t)[:20] for t in zip(*[(b[0], b[1]) for b in data.val_dataloader()]))
    module = trainer.lightning_module
    expected, acts = probe_gradients(module.model, x, y, module.loss_fn)
    assert math.isclose(values["grad_time/lag_1"][6], expected[-1].item(), rel_tol=1e-5)
    assert math.isclose(values["grad_time/lag_10"][6], expected[-10].item(), rel_tol=1e-5)
    assert values["grad_time/reach"][6] == time_reach(expected)
    for name in ("lstm_0", "lstm_1"):
        assert math.isclose(values[f"grad_act/{name}"][6], acts[name].item(), rel_tol=1e-5)


def vanishing_model(data) -> LSTMForecaster:
    """A plain 4-layer stack whose layers above lstm_0 barely read their input: ∂L/∂h_0 ~ 1e-12."""
    model = LSTMForecaster(n_features=data.n_features, hidden_sizes=(6, 6, 6, 6), residual=False, dropout=0.0,
                           init="default", horizon=data.horizon, lr=1e-6)
    with torch.no_grad():
        for layer in model.model.recurrent_layers()[1:]:
            layer.weight_ih_l0.mul_(1e-4)
    return model


def health_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, GradientHealthWarning)]


def test_vanishing_warns_once_naming_layer_step_value_and_fixes(tmp_path, fit, synthetic_csv):
    data = GoldDataModule(source=str(synthetic_csv(tmp_path)), last_n_days=None, window=12)
    monitor = GradientMonitor(patience=3)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer, values, _ = fit(tmp_path, model=vanishing_model(data), callbacks=[monitor], batches=5,
                                 enable_checkpointing=True, default_root_dir=tmp_path)
    messages = health_warnings(record)
    assert values["grad_norm/lstm_0"][2] < 1e-5
    lstm_0 = [m for m in messages if "group lstm_0 " in m]
    assert len(lstm_0) == 1, messages
    assert f"at step 2: norm {values['grad_norm/lstm_0'][2]:.3g} < 1e-05 for 3 logged steps" in lstm_0[0]
    assert "orthogonal" in lstm_0[0] and "residual" in lstm_0[0] and "gated cell" in lstm_0[0]
    assert "lstm_3" not in monitor.health.warned  # the top layer's gradient arrives
    checkpoint = torch.load(trainer.checkpoint_callback.last_model_path or trainer.checkpoint_callback.best_model_path,
                            weights_only=True)
    restored = GradientMonitor()
    restored.load_state_dict(checkpoint["callbacks"][monitor.state_key])
    assert restored.health.warned == monitor.health.warned and restored.health.low_streak == monitor.health.low_streak
    assert restored.state_dict() == monitor.state_dict()


def test_residual_default_is_silent_and_logs_clip_rate_layout_histograms_figure(tmp_path, fit, RecordingLogger):
    monitor, logger = GradientMonitor(log_histograms_every_n_epochs=1), RecordingLogger()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer, values, _ = fit(tmp_path, callbacks=[monitor, TimeGradientProbe()], batches=6, gradient_clip_val=0.3,
                                 logger=logger, epochs=2)
    n = trainer.num_training_batches  # steps per epoch
    assert health_warnings(record) == []
    calls = logger.experiment.calls
    layouts = [c for c in calls if c[0] == "add_custom_scalars"]
    assert len(layouts) == 1 and layouts[0][1]["gradients"]["grad_norm per layer (true L2 of .grad)"] == [
        "Multiline", [r"grad_norm/.*"]]
    histograms = sorted((c[1], c[3]) for c in calls if c[0] == "add_histogram")
    assert histograms == [(f"grad_hist/{k}", s) for k in ("head", "lstm_0", "lstm_1", "proj_1") for s in (0, n)]
    # one heat-map image at the end, no matplotlib figure by default (log_figure=False: drawing costs more
    # than probing)
    assert [(c[0], c[1], c[3]) for c in calls if c[0] in ("add_figure", "add_image")] == [
        ("add_image", "grad_time/heatmap", 2 * n)]
    image = next(c[2] for c in calls if c[0] == "add_image")
    assert image.shape[0] == 22 + 3 * 12 + 34 and str(image.dtype) == "uint8"  # title, 3 probes x 12 px, lag axis
    clipped = values["grad_health/clipped"]
    for step, rate in values["grad_health/clip_rate"].items():
        upto = [clipped[s] for s in clipped if s <= step]
        assert math.isclose(rate, sum(upto) / len(upto))


class NaNAt(LSTMForecaster):
    """Return a NaN loss on one optimizer step."""

    def __init__(self, nan_step: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.nan_step = nan_step

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.global_step == self.nan_step else loss


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_nonfinite_never_reaches_the_weights(tmp_path, policy, fit, synthetic_csv, Snapshot):
    data = GoldDataModule(source=str(synthetic_csv(tmp_path)), last_n_days=None, window=12)
    model = NaNAt(6, n_features=data.n_features, hidden_sizes=(6, 4), residual=True, init="orthogonal", dropout=0.0, horizon=data.horizon)
    monitor, snapshot = GradientMonitor(on_nonfinite=policy), Snapshot(6)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer, _, _ = fit(tmp_path, model=model, callbacks=[monitor, snapshot, checkpoint], epochs=3, batches=5,
                            log_every=2, enable_checkpointing=True)  # step 6 is not a logged step
    messages = health_warnings(record)
    assert len(messages) == 1 and ("non-finite gradient at step 6 (epoch 1) in group lstm_0 (parameter "
                                   "model.lstm_0.weight_ih_l0) (also lstm_1, proj_1, head)") in messages[0]
    assert "the weights were not updated, so they are still the finite ones from before step 6" in messages[0]
    assert monitor.nonfinite == {"step": 6, "groups": ["lstm_0", "lstm_1", "proj_1", "head"],
                                 "parameter": "model.lstm_0.weight_ih_l0"}
    assert trainer.global_step == (7 if policy == "stop" else 15)
    weights = list(model.parameters())
    assert all(torch.isfinite(p).all() for p in weights)
    if policy == "stop":  # the NaN step changed nothing: the weights are those from before it
        for before, after in zip(snapshot.weights, weights):
            torch.testing.assert_close(after.detach(), before, rtol=0, atol=0)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(t).all() for t in saved.values())


def test_nonfinite_raise_names_step_and_layer(tmp_path, fit, synthetic_csv):
    data = GoldDataModule(source=str(synthetic_csv(tmp_path)), last_n_days=None, window=12)
    model = NaNAt(1, n_features=data.n_features, hidden_sizes=(6, 4), residual=True, init="orthogonal", dropout=0.0, horizon=data.horizon)
    with pytest.raises(FloatingPointError, match=r"step 1 \(epoch 0\) in group lstm_0 \(parameter model\.lstm_0\."):
        fit(tmp_path, model=model, callbacks=[GradientMonitor(on_nonfinite="raise")], batches=3)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_monitor_arguments_are_checked():
    with pytest.raises(ValueError, match="on_nonfinite='halt' is unknown"):
        GradientMonitor(on_nonfinite="halt")
    with pytest.raises(ValueError, match="vanish_threshold < explode_threshold"):
        GradientMonitor(vanish_threshold=1.0, explode_threshold=0.5)


def test_one_measurement_per_step_and_each_tag_written_once(tmp_path, monkeypatch, fit, MemoryLogger):
    """The forecaster brings no second pipeline: with a GradientMonitor on the trainer, one pass a step."""
    import lstm_grad.diagnostics.tracker as monitor_module

    passes = []
    real = monitor_module.measure
    monkeypatch.setattr(monitor_module, "measure", lambda *a, **k: passes.append(k or a[1:]) or real(*a, **k))
    logger = MemoryLogger()
    trainer, values, _ = fit(tmp_path, callbacks=[GradientMonitor(check_every_step=False)], batches=3, logger=logger)
    assert len(passes) == 3  # every step logged, each measured once: no second pass
    writes = [step for key, step in logger.writes if key == "grad_norm/total"]
    assert writes == [0, 1, 2] and sorted(values["grad_health/clip_rate"]) == [0, 1, 2]
    logger = MemoryLogger()
    trainer, values, _ = fit(tmp_path, callbacks=[GradientMonitor(stats=("max", "rms"))], batches=3, logger=logger)
    writes = [step for key, step in logger.writes if key == "grad_norm/total"]
    assert writes == [0, 1, 2] and sorted(values["grad_max/lstm_0"]) == [0, 1, 2]  # max |g|: the monitor's pass
    assert math.isclose(values["grad_rms/head"][1], values["grad_norm/head"][1] /
                        math.sqrt(sum(p.numel() for p in trainer.lightning_module.model.head.parameters())), rel_tol=1e-6)


def test_heatmap_image_is_labelled_and_maps_the_log_scale_onto_viridis():
    from matplotlib import colormaps

    from lstm_grad.diagnostics.figures import heatmap_image

    rows = [[1e-4, 1e-2, 1.0], [1.0, 1.0, 1.0]]  # time order: the last element is lag 1
    image = heatmap_image(["before training", "epoch 1"], rows, cell=(12, 8))
    assert image.dtype == torch.uint8 and image.shape[0] == 22 + 2 * 12 + 34  # title, 2 probes x 12 px, lag axis
    colour = {share: tuple(colormaps["viridis"](share, bytes=True)[:3]) for share in (0.0, 0.5, 1.0)}

    def runs(y: int) -> list[tuple[tuple[int, ...], int]]:
        """The row's runs of one viridis colour of the three, left to right, with their lengths."""
        out: list[tuple[tuple[int, ...], int]] = []
        for pixel in map(tuple, image[y].tolist()):
            if pixel in colour.values():
                out = out[:-1] + [(pixel, out[-1][1] + 1)] if out and out[-1][0] == pixel else out + [(pixel, 1)]
            elif out and out[-1][1] > 0:
                out.append(((), 0))
        return [r for r in out if r[1]]

    first, second = runs(22 + 6), runs(22 + 12 + 6)
    # lag 1 (1.0, the largest) at the left, then 1e-2 (half-way on the log scale), then 1e-4 (the smallest);
    # the colour bar (14 px wide, on the right) shows the colour of its row's share
    assert first[:3] == [(colour[1.0], 8), (colour[0.5], 8), (colour[0.0], 8)]
    assert second[0] == (colour[1.0], 24)
    text = image[:22].reshape(-1, 3)
    assert (text.sum(dim=1) < 200).sum() > 50  # the title is drawn (dark pixels above the map)
