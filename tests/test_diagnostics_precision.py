"""Logged norms under bf16-mixed + accumulation and under a GradScaler are those of the unscaled loss."""

from __future__ import annotations

import contextlib
import copy
import math

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn

from lstm_grad.diagnostics import GradientMonitor
from lstm_grad.diagnostics import layer_grad_norms


class AutocastGradients(pl.Callback):
    """Recompute each optimizer step's accumulated gradient on a frozen fp32 copy, under the same
    bf16 autocast as the trainer, with ``torch.autograd.grad`` (no Lightning, no ``.grad``)."""

    def __init__(self) -> None:
        self.expected: dict[int, dict[str, float]] = {}
        self.window: list = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx % trainer.accumulate_grad_batches == 0:
            self.window, self.frozen = [], copy.deepcopy(module.model)
        self.window.append(batch)

    def on_before_optimizer_step(self, trainer, module, optimizer):
        names = [n.split(".")[0] for n, _ in self.frozen.named_parameters()]
        params = list(self.frozen.parameters())
        total = [torch.zeros_like(p) for p in params]
        for x, y, *_ in self.window:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = nn.functional.mse_loss(self.frozen(x), y) / trainer.accumulate_grad_batches
            for acc, grad in zip(total, torch.autograd.grad(loss, params)):
                acc += grad.float()
        squares: dict[str, float] = {}
        for name, grad in zip(names, total):
            squares[name] = squares.get(name, 0.0) + float(grad.double().square().sum())
        squares["total"] = sum(squares.values())
        self.expected[trainer.global_step] = {k: math.sqrt(v) for k, v in squares.items()}


@pytest.fixture
def run(tiny_forecaster, quiet_trainer, MemoryLogger):
    """``run(tmp_path, callbacks, **trainer_kw) -> (trainer, logged values)``: one epoch of the tiny forecaster
    at window 12 on the CPU, one validation batch."""

    def run(tmp_path, callbacks, **trainer_kw):
        data, model = tiny_forecaster(tmp_path, window=12, split=(0.6, 0.2, 0.2))
        logger = MemoryLogger()
        trainer = quiet_trainer(max_epochs=1, accelerator="cpu", logger=logger, callbacks=callbacks,
                                log_every_n_steps=1, enable_checkpointing=False, limit_val_batches=1, **trainer_kw)
        trainer.fit(model, datamodule=data)
        return trainer, logger.values

    return run


def cpu_has_bf16_lstm() -> bool:
    """oneDNN builds a bf16 LSTM only on CPUs with bf16 / AVX-512 support (not on every runner)."""
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            nn.LSTM(2, 2, batch_first=True)(torch.zeros(1, 2, 2))
    except RuntimeError:
        return False
    return True


@pytest.mark.skipif(not cpu_has_bf16_lstm(), reason="this CPU has no oneDNN bf16 LSTM; the bf16 path of "
                    "GradientMonitor is also tested on a TransformerEncoder in test_diagnostics_generic.py")
def test_bf16_mixed_with_accumulation_logs_the_independent_norms(tmp_path, run):
    probe = AutocastGradients()
    trainer, values = run(tmp_path, [probe, GradientMonitor()], precision="bf16-mixed", accumulate_grad_batches=2)
    assert trainer.global_step >= 2 and set(values["grad_norm/total"]) == set(probe.expected)
    for step, expected in probe.expected.items():
        for layer in ("lstm_0", "lstm_1", "proj_1", "head", "total"):
            assert math.isclose(values[f"grad_norm/{layer}"][step], expected[layer], rel_tol=1e-4), (step, layer)


class ScaledFP32(MixedPrecision):
    """Lightning's 16-mixed path (GradScaler scale -> unscale_ before on_before_optimizer_step ->
    scaler.step) with an fp32 forward: CPU oneDNN has no fp16 LSTM, the scaler logic is the same."""

    def autocast_context_manager(self):
        return contextlib.nullcontext()


class ScaledAndUnscaled(pl.Callback):
    """Record the gradient norm the module's hook sees (scaled) and the one the optimizer gets."""

    def __init__(self, inf_step: int | None = None) -> None:
        self.scaled, self.unscaled, self.inf_step = {}, {}, inf_step

    def on_after_backward(self, trainer, module):
        if trainer.global_step == self.inf_step:
            module.model.head.bias.grad.fill_(float("inf"))  # an fp16-style overflow
        self.scaled[trainer.global_step] = layer_grad_norms(module.model)["total"].item()

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.unscaled[trainer.global_step] = layer_grad_norms(module.model)["total"].item()


def test_gradscaler_norms_are_unscaled_and_overflow_is_left_to_the_scaler(tmp_path, run, Snapshot):
    seen, snapshot, monitor = ScaledAndUnscaled(inf_step=2), Snapshot(2), GradientMonitor()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1000)
    trainer, values = run(tmp_path, [seen, snapshot, monitor], plugins=[ScaledFP32("16-mixed", "cpu", scaler=scaler)],
                          limit_train_batches=4)
    logged = values["grad_norm/total"]
    for step, scale in ((0, 1024.0), (1, 1024.0), (3, 512.0)):  # the overflow at step 2 halves the scale
        assert math.isclose(seen.scaled[step], scale * logged[step], rel_tol=1e-5)  # the hook saw scaled grads
        assert math.isclose(seen.unscaled[step], logged[step], rel_tol=1e-5)  # logged = what the optimizer used
    assert values["grad_health/nonfinite"] == {0: 0.0, 1: 0.0, 2: 1.0, 3: 0.0}
    assert scaler.get_scale() == 512.0 and not trainer.should_stop and monitor.overflow_streak == 0
    assert trainer.global_step == 4 and monitor.skipped_steps == 0  # the scaler skipped it, not the monitor
