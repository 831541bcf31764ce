"""``GradientMonitor``: vanishing, exploding and non-finite gradients, said clearly and early.

It reads the per-layer norms ``LSTMForecaster.on_after_backward`` already computed
(``last_grad_norms``, set on logged optimizer steps): no second pass on those steps. Hook order
(``lightning/pytorch/plugins/precision/precision.py``, ``_after_closure``): the module's
``on_after_backward`` has run when ``on_before_optimizer_step`` is called, and that hook runs
before ``configure_gradient_clipping`` and the optimizer update, inside ``optimizer.step``'s
closure: the last moment a non-finite gradient can be kept out of the weights.

For the op that made a NaN, run with ``Trainer(detect_anomaly=True)``
(``--trainer.detect_anomaly true``): the equivalent of the recipe's ``tf.debugging.check_numerics``,
it raises at the first backward op that returns NaN, with the forward op's stack trace (slow:
debug runs only).
"""

from __future__ import annotations

import math
import re
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn

from lstm_grad.gradients import layer_grad_norms

NONFINITE_POLICIES = ("stop", "skip", "raise")
FIXES = ("clip the gradient (trainer.gradient_clip_val: 1.0), orthogonal init (model.init: orthogonal, "
         "forget_bias: 1.0), residual adds (model.residual: true), or a GRU cell for long windows")
SUMMARY_KEYS = ("total", "total_clipped")
OVERFLOW_LIMIT = 25  # consecutive GradScaler overflows before a run is called non-finite


class GradientHealthWarning(UserWarning):
    """A gradient vanished, exploded or became non-finite (filter with ``warnings`` by this class)."""


def custom_scalars_layout() -> dict[str, dict[str, list]]:
    """TensorBoard custom-scalars layout: every layer's ``grad_norm/*`` in one chart, ``grad_act/*``
    in another, the lags of ``grad_time/*`` in a third."""
    return {"gradients": {
        "grad_norm per layer (true L2 of .grad)": ["Multiline", [r"grad_norm/.*"]],
        "grad_act per layer output (|dL/dh|, probe batch)": ["Multiline", [r"grad_act/.*"]],
        "gradient through time (|dL/dx_t| by lag)": ["Multiline", [r"grad_time/lag_.*"]],
        "health": ["Multiline", [r"grad_health/.*"]],
    }}


def _layers(norms: dict[str, float]) -> list[str]:
    return [name for name in norms if name not in SUMMARY_KEYS]


def _sort_key(name: str) -> tuple[int, str]:
    match = re.search(r"_(\d+)$", name)
    return (int(match.group(1)) if match else 10**6, name)


class GradientMonitor(pl.Callback):
    """Warn when a layer's gradient vanishes or the total explodes; never let NaN reach the weights.

    Args:
        vanish_threshold: a layer whose gradient norm stays below this for ``patience`` logged
            steps gets one warning (the recipe's 1e-5).
        patience: consecutive logged steps under ``vanish_threshold`` before warning.
        explode_threshold: warn (once) when the pre-clip total norm exceeds this.
        on_nonfinite: ``stop`` (skip the update, end the run after this step; the checkpoints
            written so far hold finite weights), ``skip`` (drop this update and go on) or ``raise``
            (``FloatingPointError``). Under an active GradScaler an overflow is the scaler's to
            handle; only ``25`` overflows in a row count as non-finite.
        check_every_step: also check finiteness on optimizer steps the logger does not write
            (one fused norm pass and one host sync there); off = only logged steps are checked.
        log_histograms_every_n_epochs: log a histogram of each layer's gradient every n epochs
            (0 = never).
    """

    def __init__(self, vanish_threshold: float = 1e-5, patience: int = 3, explode_threshold: float = 100.0,
                 on_nonfinite: str = "stop", check_every_step: bool = True,
                 log_histograms_every_n_epochs: int = 0) -> None:
        if on_nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"gradient_monitor.on_nonfinite={on_nonfinite!r} is unknown; use one of "
                             f"{list(NONFINITE_POLICIES)}")
        if not vanish_threshold > 0 or not explode_threshold > vanish_threshold:
            raise ValueError(f"need 0 < vanish_threshold < explode_threshold; got {vanish_threshold} "
                             f"and {explode_threshold}")
        if patience < 1 or log_histograms_every_n_epochs < 0:
            raise ValueError(f"need patience >= 1 and log_histograms_every_n_epochs >= 0; got {patience} "
                             f"and {log_histograms_every_n_epochs}")
        self.vanish_threshold, self.patience = vanish_threshold, patience
        self.explode_threshold, self.on_nonfinite = explode_threshold, on_nonfinite
        self.check_every_step = check_every_step
        self.log_histograms_every_n_epochs = log_histograms_every_n_epochs
        self.low_streak: dict[str, int] = {}
        self.warned: set[str] = set()  # layers warned as vanishing, and "__explode__"
        self.logged_steps = self.clipped_steps = self.skipped_steps = self.overflow_streak = 0
        self.nonfinite: dict[str, Any] | None = None  # step, layers of the first non-finite gradient
        self._seen_step = -1
        self._histogram_epoch = -1

    # ---- setup -------------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not hasattr(pl_module, "last_grad_norms") or not hasattr(pl_module, "model"):
            raise ValueError(f"GradientMonitor needs a LightningModule with .model and .last_grad_norms "
                             f"(LSTMForecaster); got {type(pl_module).__name__}")
        if trainer.logger is None:
            rank_zero_warn("GradientMonitor: no logger, so no grad_norm/* are computed; only non-finite "
                           "gradients are checked", category=GradientHealthWarning)
        experiment = getattr(trainer.logger, "experiment", None)
        if trainer.is_global_zero and hasattr(experiment, "add_custom_scalars"):
            experiment.add_custom_scalars(custom_scalars_layout())

    # ---- before the update: non-finite guard, histograms ----------------------------------------
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if pl_module.last_grad_step == trainer.global_step:  # reuse the module's pass (and its scale)
            norms = pl_module.last_grad_norms
        elif self.check_every_step:  # gradients here are unscaled (amp.py unscales before this hook)
            fresh = layer_grad_norms(pl_module.model)
            norms = dict(zip(fresh, torch.stack(list(fresh.values())).tolist()))  # one host sync
        else:
            norms = {}
        bad = sorted((k for k in _layers(norms) if not math.isfinite(norms[k])), key=_sort_key)
        if not bad and math.isfinite(norms.get("total", 0.0)):
            self.overflow_streak = 0
            self._maybe_histograms(trainer, pl_module)
            return
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None and scaler.is_enabled():
            self.overflow_streak += 1  # the scaler skips this step and lowers its scale
            if self.overflow_streak < OVERFLOW_LIMIT:
                return
        self._handle_nonfinite(trainer, pl_module, optimizer, bad or ["total"])

    def _handle_nonfinite(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                          optimizer: torch.optim.Optimizer, bad: list[str]) -> None:
        for group in optimizer.param_groups:  # torch optimizers skip parameters whose grad is None
            for param in group["params"]:
                param.grad = None
        step, epoch = trainer.global_step, trainer.current_epoch
        saved = getattr(trainer.checkpoint_callback, "last_model_path", "") or \
            getattr(trainer.checkpoint_callback, "best_model_path", "")
        kept = f"last finite checkpoint: {saved}" if saved else "no checkpoint written yet"
        what = {"stop": "the update was skipped and training stops", "skip": "the update was skipped",
                "raise": "the update was skipped"}[self.on_nonfinite]
        message = (f"non-finite gradient at step {step} (epoch {epoch}) in layer {bad[0]}"
                   f"{' (also ' + ', '.join(bad[1:]) + ')' if len(bad) > 1 else ''}: {what}; weights are "
                   f"finite, {kept}. Lower model.lr, set trainer.gradient_clip_val, or rerun with "
                   "--trainer.detect_anomaly true to find the op")
        self.skipped_steps += 1
        if self.nonfinite is None:
            self.nonfinite = {"step": step, "layers": bad}
        if self.on_nonfinite == "raise":
            raise FloatingPointError(message)
        if self.on_nonfinite == "stop":
            trainer.should_stop = True
        if self.on_nonfinite == "stop" or self.skipped_steps == 1:
            rank_zero_warn(message, category=GradientHealthWarning)

    def _maybe_histograms(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        every, epoch = self.log_histograms_every_n_epochs, trainer.current_epoch
        experiment = getattr(trainer.logger, "experiment", None)
        if (not every or epoch % every or epoch == self._histogram_epoch or not trainer.is_global_zero
                or not hasattr(experiment, "add_histogram")):
            return
        self._histogram_epoch = epoch
        grouped: dict[str, list[torch.Tensor]] = {}
        for name, param in pl_module.model.named_parameters():
            if param.grad is not None:
                grouped.setdefault(name.split(".", 1)[0], []).append(param.grad.detach().flatten().float())
        for layer, grads in grouped.items():
            experiment.add_histogram(f"grad_hist/{layer}", torch.cat(grads).cpu(), trainer.global_step)

    # ---- after the update: vanishing, exploding, clip rate ----------------------------------------
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        step, norms = pl_module.last_grad_step, pl_module.last_grad_norms
        if step < 0 or step == self._seen_step or not norms:
            return
        self._seen_step = step
        if not all(math.isfinite(v) for v in norms.values()):
            return
        self.logged_steps += 1
        if "total_clipped" in norms:
            self.clipped_steps += norms["total_clipped"] < norms["total"]
        pl_module.log("grad_health/clip_rate", self.clipped_steps / self.logged_steps, on_step=True,
                      on_epoch=False)
        for layer in _layers(norms):
            value = norms[layer]
            self.low_streak[layer] = self.low_streak.get(layer, 0) + 1 if value < self.vanish_threshold else 0
            if self.low_streak[layer] >= self.patience and layer not in self.warned:
                self.warned.add(layer)
                rank_zero_warn(
                    f"vanishing gradient in layer {layer} at step {step}: norm {value:.3g} < "
                    f"{self.vanish_threshold:g} for {self.low_streak[layer]} logged steps in a row; try: {FIXES}",
                    category=GradientHealthWarning)
        total = norms["total"]
        if total > self.explode_threshold and "__explode__" not in self.warned:
            self.warned.add("__explode__")
            rank_zero_warn(f"exploding gradient at step {step}: total norm {total:.3g} > "
                           f"{self.explode_threshold:g} (warned once); try: {FIXES}", category=GradientHealthWarning)

    # ---- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"low_streak": dict(self.low_streak), "warned": sorted(self.warned),
                "logged_steps": self.logged_steps, "clipped_steps": self.clipped_steps,
                "skipped_steps": self.skipped_steps, "nonfinite": self.nonfinite}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.low_streak = dict(state_dict["low_streak"])
        self.warned = set(state_dict["warned"])
        self.logged_steps, self.clipped_steps = state_dict["logged_steps"], state_dict["clipped_steps"]
        self.skipped_steps, self.nonfinite = state_dict["skipped_steps"], state_dict["nonfinite"]
