"""LSTMForecaster: logged grad_norm/* are the true gradients the optimizer uses."""

from __future__ import annotations

import copy
import math

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lstm_grad.module import LSTMForecaster

LAYERS = ["lstm_0", "lstm_1", "proj_1", "head", "total"]


class IndependentGradients(pl.Callback):
    """Recompute each optimizer step's gradient with torch.autograd.grad on a frozen copy.

    Lightning divides each micro-batch loss by ``accumulate_grad_batches`` and sums the gradients
    over the window; this does the same in float64 on a copy of the weights taken before the window.
    """

    def __init__(self) -> None:
        self.window: list = []
        self.expected: dict[int, dict[str, float]] = {}
        self.seen_before_step: dict[int, dict[str, float]] = {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        k = trainer.accumulate_grad_batches
        if batch_idx % k == 0:
            self.window, self.frozen = [], copy.deepcopy(module.model).double()
        self.window.append([t.double() if t.is_floating_point() else t for t in batch])

    def on_before_optimizer_step(self, trainer, module, optimizer):
        k = trainer.accumulate_grad_batches
        params = list(self.frozen.parameters())
        names = [n.split(".")[0] for n, _ in self.frozen.named_parameters()]
        total = [torch.zeros_like(p) for p in params]
        for x, y, *_ in self.window:
            loss = nn.functional.mse_loss(self.frozen(x), y) / k
            for acc, grad in zip(total, torch.autograd.grad(loss, params)):
                acc += grad
        squares: dict[str, float] = {}
        for name, grad in zip(names, total):
            squares[name] = squares.get(name, 0.0) + float(grad.square().sum())
        squares["total"] = sum(squares.values())
        step = trainer.global_step
        self.expected[step] = {k: math.sqrt(v) for k, v in squares.items()}
        own = {n.split(".")[0]: 0.0 for n, _ in module.model.named_parameters()}
        for n, p in module.model.named_parameters():
            own[n.split(".")[0]] += float(p.grad.double().square().sum())
        own["total"] = sum(own.values())
        self.seen_before_step[step] = {k: math.sqrt(v) for k, v in own.items()}


@pytest.fixture
def train(tiny_forecaster, quiet_trainer, MemoryLogger):
    """``train(tmp_path, ...) -> (logged values, IndependentGradients, trainer)``: one tiny fit at window 8."""

    def train(tmp_path, *, module_class=None, clip=None, accumulate=1, log_every=1, batches_per_epoch=None,
              epochs=1):
        data, model = tiny_forecaster(tmp_path, model_class=module_class, split=(0.6, 0.2, 0.2))
        logger, probe = MemoryLogger(), IndependentGradients()
        trainer = quiet_trainer(max_epochs=epochs, logger=logger, callbacks=[probe], gradient_clip_val=clip,
                                accumulate_grad_batches=accumulate, log_every_n_steps=log_every,
                                enable_checkpointing=False, limit_train_batches=batches_per_epoch)
        trainer.fit(model, datamodule=data)
        norm_writes = [step for key, step in logger.writes if key == "grad_norm/total"]
        assert len(norm_writes) == len(set(norm_writes)), "one grad_norm write per optimizer step"
        return logger.values, probe, trainer

    return train


def logged_at(values: dict, key: str) -> dict[int, float]:
    return values.get(f"grad_norm/{key}", {})


def test_logged_norms_equal_independent_autograd(tmp_path, train):
    values, probe, _ = train(tmp_path)
    assert set(logged_at(values, "total")) == set(probe.expected)  # every step logged
    for step, expected in probe.expected.items():
        for layer in LAYERS:
            assert math.isclose(logged_at(values, layer)[step], expected[layer], rel_tol=1e-5), (step, layer)
            assert math.isclose(logged_at(values, layer)[step], probe.seen_before_step[step][layer],
                                rel_tol=1e-6)


def test_logged_norms_are_not_weight_norms(tmp_path, train):
    values, _, trainer = train(tmp_path)
    last = max(logged_at(values, "lstm_1"))
    weights = trainer.lightning_module.model.lstm_1.parameters()
    weight_norm = torch.linalg.vector_norm(torch.cat([p.detach().flatten() for p in weights])).item()
    assert not math.isclose(logged_at(values, "lstm_1")[last], weight_norm, rel_tol=0.05)


def count_norm_passes(monkeypatch) -> list[int]:
    import lstm_grad.diagnostics.tracker as module

    calls, real = [], module.measure
    monkeypatch.setattr(module, "measure", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_accumulation_logs_the_accumulated_gradient_on_optimizer_steps(tmp_path, monkeypatch, train):
    calls = count_norm_passes(monkeypatch)
    values, probe, trainer = train(tmp_path, accumulate=2)
    assert len(calls) == trainer.global_step  # no pass on micro-batches that do not step
    steps = sorted(logged_at(values, "total"))
    assert steps == sorted(probe.expected) and len(steps) == trainer.global_step
    for step in steps:
        assert math.isclose(logged_at(values, "total")[step], probe.expected[step]["total"], rel_tol=1e-5)


def test_only_steps_the_logger_writes_are_computed(tmp_path, monkeypatch, train):
    calls = count_norm_passes(monkeypatch)
    values, probe, trainer = train(tmp_path, log_every=3, epochs=2)
    written = set(values["train/loss_step"])
    assert set(logged_at(values, "total")) == written and len(calls) == len(written)
    assert len(written) < trainer.global_step


@pytest.mark.parametrize("clip", [None, 0.05])
def test_total_clipped(tmp_path, clip, train):
    values, _, _ = train(tmp_path, clip=clip)
    totals, clipped = logged_at(values, "total"), logged_at(values, "total_clipped")
    assert set(totals) == set(clipped)
    for step, total in totals.items():
        if clip is None:
            assert clipped[step] == total
        else:
            assert clipped[step] <= clip + 1e-6
            assert values["grad_health/clipped"][step] == float(total > clip)


class LightningClipping(LSTMForecaster):
    """Clip through Lightning's own path (a second norm pass) on every step."""

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        pl.LightningModule.configure_gradient_clipping(self, optimizer, gradient_clip_val,
                                                       gradient_clip_algorithm)


def test_reused_total_clips_exactly_like_lightning(tmp_path, train):
    weights = {}
    for name, cls, clip in (("ours", None, 0.05), ("lightning", LightningClipping, 0.05),
                            ("unclipped", None, None)):
        _, _, trainer = train(tmp_path, module_class=cls, clip=clip, batches_per_epoch=4)
        weights[name] = torch.cat([p.detach().flatten() for p in trainer.lightning_module.parameters()])
    torch.testing.assert_close(weights["ours"], weights["lightning"], rtol=1e-6, atol=1e-7)
    assert not torch.allclose(weights["ours"], weights["unclipped"])


def test_forecast_metrics_by_hand_with_horizon_3():
    from lstm_grad.forecaster.metrics import ForecastMetrics

    anchor = torch.tensor([10.0, 20.0])  # last observed prices
    actual = torch.tensor([[11.0, 9.0, 10.0], [22.0, 18.0, 21.0]])  # (B=2, H=3)
    pred = torch.tensor([[12.0, 11.0, 9.0], [21.0, 19.0, 25.0]])
    metrics = ForecastMetrics()
    metrics.update(pred, actual, anchor)
    got = {k: v.item() for k, v in metrics.compute().items()}
    errors = [1, 2, 1, 1, 1, 4]  # |pred - actual|
    naive_errors = [1, 1, 0, 2, 2, 1]  # |anchor - actual|
    assert got["mae"] == pytest.approx(sum(errors) / 6)
    assert got["naive_mae"] == pytest.approx(sum(naive_errors) / 6)
    assert got["rel_mae"] == pytest.approx(sum(errors) / sum(naive_errors))  # "mase" before issue 23
    # directions vs the anchor: (+,+) (-,+) skip(actual 0) (+,+) (-,-) (+,+) -> 4 of 5
    assert got["dir_acc"] == pytest.approx(4 / 5)
    assert got["mape"] == pytest.approx(100 * (1/11 + 2/9 + 1/10 + 1/22 + 1/18 + 4/21) / 6, rel=1e-5)


def test_epoch_losses_are_the_window_weighted_mse_recomputed_by_hand(tmp_path, tiny_forecaster, quiet_trainer):
    """``val/loss`` and ``test/loss`` (summed per batch as tensors, logged once per epoch) equal the MSE over
    every window of the span, batches of unequal size weighted by their windows; ``train/loss_epoch`` the
    mean of the batches' losses weighted the same way, each recomputed from the weights it was taken with."""

    class TrainLosses(pl.Callback):
        def __init__(self) -> None:
            self.sum, self.n = 0.0, 0

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.sum += float(outputs["loss"]) * len(batch[0])
            self.n += len(batch[0])

    data, model = tiny_forecaster(tmp_path, split=(0.6, 0.2, 0.2))
    data.batch_size = 5  # the spans' windows are not a multiple of it: the last batch is smaller
    seen = TrainLosses()
    trainer = quiet_trainer(max_epochs=1, logger=False, enable_checkpointing=False, callbacks=[seen])
    trainer.fit(model, datamodule=data)
    got = {k: float(v) for k, v in trainer.callback_metrics.items()}
    model.eval()
    for stage in ("val", "test"):
        x, y, *_ = data.datasets[stage].__getitems__(torch.arange(len(data.datasets[stage])))
        assert len(x) % data.batch_size != 0
        with torch.no_grad():
            expected = float(nn.functional.mse_loss(model(x).double(), y.double()))
        if stage == "test":
            trainer.test(model, datamodule=data, verbose=False)
            got = {k: float(v) for k, v in trainer.callback_metrics.items()}
        assert got[f"{stage}/loss"] == pytest.approx(expected, rel=1e-5)
        if stage == "val":
            assert seen.n == len(data.datasets["train"])
            assert got["train/loss_epoch"] == pytest.approx(seen.sum / seen.n, rel=1e-5)
