"""GradientMonitor on models lstm-grad does not define: every grouping rule against float64 autograd.

Each case trains a user's LightningModule (a bidirectional 3-layer ``nn.LSTM``, a 2-layer ``nn.GRU``
or an ``nn.TransformerEncoder``, with a linear head) and recomputes every optimizer step's gradient
independently: ``torch.func.functional_call`` on a copy of the weights taken at the start of the
accumulation window, ``torch.autograd.grad`` in float64 (in the trainer's bf16 autocast for the
bf16 case), grouped by rules written out by hand here, clipped by hand.
"""

from __future__ import annotations

import contextlib
import math
import re

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset

from lstm_grad import GradientMonitor

F_IN, T = 4, 7


class UserForecaster(pl.LightningModule):
    """What a user writes: a sequence body, the last step's output into a linear head, MSE, SGD."""

    def __init__(self, body: str) -> None:
        super().__init__()
        if body == "lstm":
            self.net, width = nn.LSTM(F_IN, 5, num_layers=3, batch_first=True, bidirectional=True), 10
        elif body == "gru":
            self.net, width = nn.GRU(F_IN, 6, num_layers=2, batch_first=True), 6
        else:
            layer = nn.TransformerEncoderLayer(F_IN, nhead=2, dim_feedforward=8, dropout=0.0, batch_first=True)
            self.net, width = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False), F_IN
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        out = out[0] if isinstance(out, tuple) else out  # (B, T, width)
        return self.head(out[:, -1])  # (B, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader(n: int = 48, batch: int = 8) -> DataLoader:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, T, F_IN, generator=generator)
    y = x[:, -3:, 0].sum(dim=1, keepdim=True) * 3.0  # large targets: gradients well above clip values
    return DataLoader(TensorDataset(x, y), batch_size=batch)


# the rules, written out independently of lstm_grad.diagnostics.groups
def lstm_auto(name: str) -> str:
    return "head" if name.startswith("head") else "net.l" + re.search(r"_l(\d+)", name).group(1)


def transformer_depth3(name: str) -> str:
    return "head" if name.startswith("head") else ".".join(name.split(".")[:3])


def transformer_regex(name: str) -> str:
    return "attn" if "self_attn" in name else "ffn" if "linear" in name else "other"


CASES = {
    # id: (body, groups rule, expected group of a parameter name, trainer settings)
    "lstm-auto-accumulate-clipnorm": ("lstm", "auto", lstm_auto,
                                      {"accumulate_grad_batches": 2, "gradient_clip_val": 0.05}),
    "gru-children-clipvalue": ("gru", "children", lambda n: n.split(".")[0],
                               {"gradient_clip_val": 0.01, "gradient_clip_algorithm": "value"}),
    "gru-auto": ("gru", "auto", lstm_auto, {}),
    "transformer-depth-bf16-accumulate": ("transformer", 3, transformer_depth3,
                                          {"precision": "bf16-mixed", "accumulate_grad_batches": 3}),
    "transformer-regex-clipnorm": ("transformer", {"attn": "self_attn", "ffn": r"linear\d"}, transformer_regex,
                                   {"gradient_clip_val": 0.1}),
}


class Reference(pl.Callback):
    """Each optimizer step's gradient by ``torch.autograd.grad``, grouped and clipped by hand."""

    def __init__(self, group_of, clip: float | None = None, algorithm: str = "norm", autocast: bool = False) -> None:
        self.group_of, self.clip, self.algorithm, self.autocast = group_of, clip, algorithm, autocast
        self.expected: dict[int, dict[str, float]] = {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx % trainer.accumulate_grad_batches == 0:
            dtype = torch.float32 if self.autocast else torch.float64
            self.weights = {n: p.detach().to(dtype).clone().requires_grad_(True) for n, p in module.named_parameters()}
            self.window = []
        self.window.append(batch)

    def on_before_optimizer_step(self, trainer, module, optimizer):
        names, params = list(self.weights), list(self.weights.values())
        grads = [torch.zeros_like(p, dtype=torch.float64) for p in params]
        for x, y in self.window:
            context = torch.autocast("cpu", dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()
            with context:
                x_in = x if self.autocast else x.double()
                loss = nn.functional.mse_loss(functional_call(module, self.weights, (x_in,)).float()
                                              if self.autocast else functional_call(module, self.weights, (x_in,)),
                                              y if self.autocast else y.double())
            for acc, grad in zip(grads, torch.autograd.grad(loss / trainer.accumulate_grad_batches, params)):
                acc += grad.double()
        squares: dict[str, float] = {}
        for name, grad in zip(names, grads):
            squares[self.group_of(name)] = squares.get(self.group_of(name), 0.0) + float(grad.square().sum())
        total = math.sqrt(sum(squares.values()))
        if self.clip is None:
            after = total
        elif self.algorithm == "norm":
            after = total * min(1.0, self.clip / (total + 1e-6))
        else:
            after = math.sqrt(sum(float(g.clamp(-self.clip, self.clip).square().sum()) for g in grads))
        self.expected[trainer.global_step] = {**{k: math.sqrt(v) for k, v in squares.items()}, "total": total,
                                              "total_clipped": after}


@pytest.fixture
def fit(MemoryLogger):
    """``fit(module, callbacks, logger=None, ...) -> logger``: one epoch on ``loader()`` (a MemoryLogger by default)."""

    def fit(module: pl.LightningModule, callbacks: list, logger=None, batches: int = 6, log_every: int = 1,
            **trainer_kw) -> MemoryLogger:
        pl.seed_everything(0)
        logger = logger if logger is not None else MemoryLogger()
        trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=logger, callbacks=callbacks,
                             log_every_n_steps=log_every, limit_train_batches=batches, enable_progress_bar=False,
                             enable_checkpointing=False, enable_model_summary=False, **trainer_kw)
        trainer.fit(module, loader())
        return logger

    return fit


@pytest.mark.parametrize("case", list(CASES))
def test_logged_norms_equal_float64_autograd_for_every_rule(case, fit):
    body, rule, group_of, settings = CASES[case]
    reference = Reference(group_of, settings.get("gradient_clip_val"), settings.get("gradient_clip_algorithm", "norm"),
                          autocast=settings.get("precision") == "bf16-mixed")
    monitor = GradientMonitor(groups=rule)
    values = fit(UserForecaster(body), [reference, monitor], **settings).values
    tol = 2e-3 if reference.autocast else 1e-5
    assert len(reference.expected) >= 2 and set(values["grad_norm/total"]) == set(reference.expected)
    groups = {k.split("/", 1)[1] for k in values if k.startswith("grad_norm/")} - {"total", "total_clipped"}
    for step, expected in reference.expected.items():
        assert groups == set(expected) - {"total", "total_clipped"}, (groups, set(expected))
        for key, value in expected.items():
            assert math.isclose(values[f"grad_norm/{key}"][step], value, rel_tol=tol), (step, key)
        clipped = expected["total_clipped"] < expected["total"] * (1 - 1e-6)
        assert values["grad_health/clipped"][step] == float(clipped)
    rates = values["grad_health/clip_rate"]
    flags = [values["grad_health/clipped"][s] for s in sorted(rates)]
    assert [rates[s] for s in sorted(rates)] == [sum(flags[: i + 1]) / (i + 1) for i in range(len(flags))]
    if "gradient_clip_val" in settings:
        assert all(values["grad_health/clipped"].values())  # every step was clipped, by norm or by value


class ScaledFP32(MixedPrecision):
    """Lightning's 16-mixed path (GradScaler scale -> unscale_ before on_before_optimizer_step ->
    scaler.step) with an fp32 forward: CPU has no fp16 LSTM kernels; the scaler logic is the same."""

    def autocast_context_manager(self):
        return contextlib.nullcontext()


def test_gradscaler_norms_are_those_of_the_unscaled_loss(fit):
    reference = Reference(lstm_auto)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=1000)
    values = fit(UserForecaster("lstm"), [reference, GradientMonitor()], batches=4,
                 plugins=[ScaledFP32("16-mixed", "cpu", scaler=scaler)]).values
    for step, expected in reference.expected.items():
        for key in ("net.l0", "net.l2", "head", "total"):
            assert math.isclose(values[f"grad_norm/{key}"][step], expected[key], rel_tol=1e-5), (step, key)
    assert scaler.get_scale() == 2.0**12 and values["grad_health/nonfinite"] == {s: 0.0 for s in range(4)}


def test_stats_rms_and_max_per_group(fit):
    seen = {}

    class Grab(pl.Callback):
        def on_before_optimizer_step(self, trainer, module, optimizer):
            seen[trainer.global_step] = {n: p.grad.detach().clone() for n, p in module.named_parameters()}

    values = fit(UserForecaster("gru"), [Grab(), GradientMonitor(stats=("rms", "max"))], batches=2).values
    for step, grads in seen.items():
        for group in ("net.l0", "net.l1", "head"):
            members = [g for n, g in grads.items() if lstm_auto(n) == group]
            flat = torch.cat([g.flatten() for g in members]).double()
            assert math.isclose(values[f"grad_rms/{group}"][step], float(flat.norm() / math.sqrt(flat.numel())),
                                rel_tol=1e-5)
            assert values[f"grad_max/{group}"][step] == float(flat.abs().max())
        assert values["grad_max/total"][step] == max(float(g.abs().max()) for g in grads.values())


def test_csv_and_tensorboard_receive_the_same_values(tmp_path, fit):
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    csv_logger = CSVLogger(tmp_path, name="csv", version=0)
    tb_logger = TensorBoardLogger(tmp_path, name="tb", version=0, default_hp_metric=False)
    fit(UserForecaster("gru"), [GradientMonitor()], logger=[csv_logger, tb_logger], gradient_clip_val=0.05,
        log_every=2)
    import csv

    rows = list(csv.DictReader(open(tmp_path / "csv" / "version_0" / "metrics.csv")))
    events = EventAccumulator(str(tmp_path / "tb" / "version_0"), size_guidance={"scalars": 0})
    events.Reload()
    tags = [t for t in events.Tags()["scalars"] if t.startswith(("grad_norm/", "grad_health/"))]
    assert {"grad_norm/net.l0", "grad_norm/net.l1", "grad_norm/head", "grad_norm/total_clipped",
            "grad_health/clip_rate"} <= set(tags)
    for tag in tags:
        from_csv = {int(r["step"]): float(r[tag]) for r in rows if r.get(tag)}
        from_tb = {e.step: e.value for e in events.Scalars(tag)}
        assert sorted(from_csv) == sorted(from_tb) == [1, 3, 5], tag  # log_every_n_steps=2: steps 1, 3, 5
        for step, value in from_csv.items():
            assert math.isclose(value, from_tb[step], rel_tol=1e-6), (tag, step)


# ---- alarms on a deep user model ------------------------------------------------------------------
class Stack(pl.LightningModule):
    """16 single-layer default-init nn.LSTMs in a plain stack (x = lstm(x)) or a residual one (x = x + lstm(x))."""

    def __init__(self, residual: bool, loss_scale: float = 1.0, depth: int = 16, width: int = 8) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.LSTM(F_IN if i == 0 else width, width, batch_first=True) for i in range(depth))
        self.head = nn.Linear(width, 1)
        self.residual, self.loss_scale = residual, loss_scale

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            out = layer(x)[0]  # (B, T, width)
            x = x + out if self.residual and i > 0 else out
        return self.head(x[:, -1])

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.loss_scale * nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-4 / self.loss_scale)  # the same updates at any scale


def health_warnings(record) -> list[str]:
    from lstm_grad.diagnostics import GradientHealthWarning

    return [str(w.message) for w in record if issubclass(w.category, GradientHealthWarning)]


@pytest.fixture
def fit_stack(fit):
    """``fit_stack(residual, monitor, loss_scale=1.0, **kw) -> health warnings``: 4 steps of ``Stack``."""

    def fit_stack(residual: bool, monitor: GradientMonitor, loss_scale: float = 1.0, **kw) -> list[str]:
        import warnings

        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            fit(Stack(residual, loss_scale), [monitor], batches=4, **kw)
        return health_warnings(record)

    return fit_stack


def test_sixteen_layer_plain_stack_vanishes_at_the_bottom_and_residual_does_not(fit_stack):
    plain = GradientMonitor(patience=3)
    messages = fit_stack(False, plain)
    first = [m for m in messages if m.startswith("vanishing gradient in group layers.0 at step 2:")]
    assert len(first) == 1 and "< 1e-05 for 3 logged steps" in first[0] and "residual" in first[0]
    assert "layers.15" not in plain.health.warned and "head" not in plain.health.warned
    residual = GradientMonitor(patience=3)
    assert fit_stack(True, residual) == [] and residual.health.warned == set()


def test_relative_rule_sees_vanishing_that_a_large_loss_hides_from_the_absolute_one(fit_stack):
    monitor = GradientMonitor(patience=3, explode_threshold=1e20)
    messages = fit_stack(False, monitor, loss_scale=1e10)  # every gradient x 1e10: layers.0 is far above 1e-5
    first = [m for m in messages if "group layers.0 " in m]
    assert len(first) == 1 and "x the largest group's" in first[0], messages
    assert monitor.health.low_streak["layers.0"] == 0 and monitor.health.relative_streak["layers.0"] >= 3


def test_monitor_state_survives_a_checkpoint_round_trip(tmp_path, MemoryLogger):
    from lightning.pytorch.callbacks import ModelCheckpoint

    first = GradientMonitor(patience=3)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=4)
    pl.seed_everything(0)
    trainer = pl.Trainer(max_steps=4, accelerator="cpu", logger=MemoryLogger(), callbacks=[first, checkpoint],
                         log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Stack(False), loader())
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)["callbacks"][first.state_key]
    assert saved == first.state_dict() and saved["logged_steps"] == 4 and "layers.0" in saved["warned"]
    resumed, logger = GradientMonitor(patience=3), MemoryLogger()
    import warnings

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        again = pl.Trainer(max_steps=6, accelerator="cpu", logger=logger, callbacks=[resumed], log_every_n_steps=1,
                           enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
        again.fit(Stack(False), loader(), ckpt_path=tmp_path / "last.ckpt", weights_only=True)
    assert health_warnings(record) == []  # every vanishing group was already warned before the checkpoint
    assert resumed.health.logged_steps == 6 and resumed.health.warned == first.health.warned
    assert sorted(logger.values["grad_health/clip_rate"]) == [4, 5]


# ---- the time probe on a user's model ---------------------------------------------------------------
def by_hand(module: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn) -> torch.Tensor:
    """‖∂L/∂x_t‖ per time step with a plain backward in eval mode: (T,)."""
    module.eval()
    leaf = x.clone().requires_grad_(True)
    loss_fn(module(leaf), y).backward()
    module.train()
    return leaf.grad.square().sum(dim=(0, 2)).sqrt()


def test_probe_uses_the_given_batch_and_loss_else_the_train_loader(fit):
    from lstm_grad import TimeGradientProbe

    x, y = next(iter(loader(n=16, batch=16)))
    huber = nn.functional.huber_loss
    given = TimeGradientProbe(probe_batch=(x[:5], y[:5]), loss_fn=huber, lags=(1, 3))
    fallback = TimeGradientProbe(probe_size=12, lags=(1, 3))
    module = UserForecaster("gru")
    values = fit(module, [given, fallback], batches=2).values  # no val loader: the fallback reads train batches
    expected_given = by_hand(module, x[:5], y[:5], huber)  # weights after training = the end-of-epoch probe
    train_x, train_y = loader().dataset.tensors[0][:12], loader().dataset.tensors[1][:12]
    expected_fallback = by_hand(module, train_x, train_y, nn.functional.mse_loss)
    assert given.batch[0].shape == (5, T, F_IN) and torch.equal(fallback.batch[0], train_x)
    for probe, expected in ((given, expected_given), (fallback, expected_fallback)):
        assert [h["label"] for h in probe.history] == ["before training", "epoch 0"]
        last = probe.history[-1]["profile"]
        torch.testing.assert_close(torch.tensor(last), expected, rtol=1e-5, atol=0)
    assert sorted(values["grad_act/net"]) == [0, 2]  # the GRU's output gradient, before training and after epoch 0


def test_probe_refuses_batches_it_cannot_read():
    from lstm_grad import TimeGradientProbe

    with pytest.raises(ValueError, match=r"probe_batch must be \(x, y\)"):
        TimeGradientProbe(probe_batch=torch.zeros(2, 3, 4))
    dict_batches = DataLoader([{"x": torch.zeros(T, F_IN), "y": torch.zeros(1)}] * 4, batch_size=2)
    with pytest.raises(ValueError, match=r"TimeGradientProbe reads \(x, y, \.\.\.\) batches; got dict"):
        TimeGradientProbe()._first_windows(dict_batches)


def test_two_monitors_share_the_clipping_wrapper_and_fit_leaves_the_module_as_it_was(fit):
    module = UserForecaster("gru")
    fine, coarse = GradientMonitor(), GradientMonitor(groups="children")
    values = fit(module, [fine, coarse], batches=3, gradient_clip_val=0.05).values
    for step in range(3):
        squares = sum(values[f"grad_norm/{g}"][step] ** 2 for g in ("net.l0", "net.l1", "head"))
        net = values["grad_norm/net"][step] ** 2 + values["grad_norm/head"][step] ** 2
        assert math.isclose(squares, net, rel_tol=1e-6)  # the same gradient, grouped two ways
    assert fine.health.logged_steps == coarse.health.logged_steps == 3
    assert not any(k.startswith(("_gradient_monitor", "configure_gradient_clipping")) for k in module.__dict__)
