"""``GradientMonitor``: true per-layer gradient norms, clip statistics and alarms for ANY LightningModule.

Where the numbers come from (read in the installed lightning 2.6.6):
``lightning/pytorch/plugins/precision/precision.py`` ``_after_closure`` calls the callbacks'
``on_before_optimizer_step``, the module's, then ``_clip_gradients`` -> the module's
``configure_gradient_clipping`` (looked up with ``getattr`` on the instance in
``lightning/pytorch/trainer/call.py`` ``_call_lightning_module_hook``), then the optimizer steps.
Under a GradScaler ``plugins/precision/amp.py`` ``optimizer_step`` unscales *before* that (unless
the optimizer unscales itself, e.g. fused Adam). So ``on_before_optimizer_step`` sees the
optimizer step's gradient: unscaled, summed over ``accumulate_grad_batches``, after DDP's
all-reduce, before clipping. That is where the norms are measured (queued, no host sync). Lightning
has no callback hook between clipping and the update, so for the post-clip total the monitor wraps
the module's ``configure_gradient_clipping`` for the length of ``fit``: after the real one returns,
one more fused pass gives ``grad_norm/total_clipped`` (whatever the algorithm: norm, value, or the
user's own), then ONE host sync reads everything, the non-finite guard acts (the last moment a bad
gradient can be kept out of the weights) and the tags are written.

A module may compute the norms itself (our ``LSTMForecaster`` does, in ``on_after_backward``): it
sets ``last_grad_step = trainer.global_step`` when it measured this step, and ``last_grad_norms``
(``{group: float, "total": float, "total_clipped": float}``) by the time its clipping hook returns;
the monitor then reuses them (no second pass) and does not write the ``grad_norm/*`` tags again.

For the op that made a NaN, run with ``Trainer(detect_anomaly=True)``: it raises at the first
backward op that returns NaN, with the forward op's stack trace (slow: debug runs only).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden

from lstm_grad.diagnostics.groups import ParameterGroups, parameter_groups
from lstm_grad.diagnostics.health import GradientHealth
from lstm_grad.diagnostics.norms import STATS, GroupNorms, measure, tag_scalars, total_grad_norm, was_clipped

LOG = logging.getLogger(__name__)

NONFINITE_POLICIES = ("stop", "skip", "raise")
OVERFLOW_LIMIT = 25  # consecutive GradScaler overflows before a run is called non-finite
_WRAPPED = "_gradient_monitor_original"  # instance attributes set on the module during fit
_MONITORS = "_gradient_monitors"


class GradientHealthWarning(UserWarning):
    """A gradient vanished, exploded or became non-finite (filter with ``warnings`` by this class)."""


def custom_scalars_layout() -> dict[str, dict[str, list]]:
    """TensorBoard custom-scalars layout: every group's ``grad_norm/*`` in one chart, ``grad_act/*``
    in another, the lags of ``grad_time/*`` in a third, ``grad_health/*`` in a fourth."""
    return {"gradients": {
        "grad_norm per layer (true L2 of .grad)": ["Multiline", [r"grad_norm/.*"]],
        "grad_act per layer output (|dL/dh|, probe batch)": ["Multiline", [r"grad_act/.*"]],
        "gradient through time (|dL/dx_t| by lag)": ["Multiline", [r"grad_time/lag_.*"]],
        "health": ["Multiline", [r"grad_health/.*"]],
    }}


@dataclass
class _Pending:
    step: int
    logged: bool
    measured: GroupNorms | None  # None: the module measured this step itself
    module_wrote: bool = False  # the module wrote this step's grad_norm/* (measured here for max |g| only)


class GradientMonitor(pl.Callback):
    """Log true per-group gradient norms and clip statistics; warn on vanishing / exploding; keep NaN out.

    Tags, on the steps the logger writes (``Trainer(log_every_n_steps=...)``), through every attached
    logger: ``grad_norm/<group>``, ``grad_norm/total`` (pre-clip), ``grad_norm/total_clipped`` (measured
    after clipping), ``grad_health/clipped`` (1 when clipping changed the gradient),
    ``grad_health/clip_rate`` (share of logged steps clipped so far), ``grad_health/nonfinite``; with
    ``stats``: ``grad_rms/<group>`` (norm / sqrt(numel): comparable across layers of different size)
    and ``grad_max/<group>``, ``grad_max/total`` (max |g|).

    Args:
        groups: ``"auto"``, ``"children"``, a depth, or ``{name: regex}`` (:mod:`lstm_grad.diagnostics.groups`).
        stats: any of ``"rms"``, ``"max"``.
        vanish_threshold: absolute vanishing threshold (the recipe's 1e-5).
        relative_threshold: a group under this fraction of the largest group's norm counts as
            vanishing (0 turns the rule off).
        patience: consecutive logged steps under a threshold before one warning per group.
        explode_threshold: warn (once) when the pre-clip total exceeds this.
        on_nonfinite: ``stop`` (skip the update, end the run after this step), ``skip`` (drop this
            update, go on) or ``raise`` (``FloatingPointError``). Under an active GradScaler an
            overflow is the scaler's to handle; only 25 overflows in a row count as non-finite.
        check_every_step: also check finiteness on steps the logger does not write (one fused pass
            and one read of the result there); off = nothing at all is computed on those steps.
            ``None`` (default): on when the module's parameters are on the CPU, where reading a
            result stalls no device queue (measured: ``scripts/bench.py`` item 3), off on an
            accelerator, where it would be a host sync per step; the choice is logged once.
        log_histograms_every_n_epochs: a histogram of each group's gradient every n epochs (0 = never).
    """

    def __init__(self, groups: Union[int, str, Mapping[str, str]] = "auto", stats: Sequence[str] = (),
                 vanish_threshold: float = 1e-5, relative_threshold: float = 1e-3, patience: int = 3,
                 explode_threshold: float = 100.0, on_nonfinite: str = "stop", check_every_step: Optional[bool] = None,
                 log_histograms_every_n_epochs: int = 0) -> None:
        if on_nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"gradient_monitor.on_nonfinite={on_nonfinite!r} is unknown; use one of "
                             f"{list(NONFINITE_POLICIES)}")
        unknown = [s for s in stats if s not in STATS]
        if unknown or log_histograms_every_n_epochs < 0:
            raise ValueError(f"need stats from {list(STATS)} and log_histograms_every_n_epochs >= 0; got "
                             f"{list(stats)} and {log_histograms_every_n_epochs}")
        self.health = GradientHealth(vanish_threshold, relative_threshold, patience, explode_threshold)
        self.groups, self.stats = groups, tuple(stats)
        self.on_nonfinite, self.check_every_step = on_nonfinite, check_every_step
        self.log_histograms_every_n_epochs = log_histograms_every_n_epochs
        self.skipped_steps = self.overflow_streak = 0
        self.nonfinite: dict[str, Any] | None = None  # step, groups, parameter of the first non-finite gradient
        self._groups: ParameterGroups | None = None
        self._pending: _Pending | None = None
        self._histogram_epoch = -1

    # ---- setup: groups, layout, the clipping wrapper -------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._groups = parameter_groups(pl_module, self.groups)  # a bad rule fails here, before step 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.loggers:
            rank_zero_warn("GradientMonitor: the Trainer has no logger, so no grad_norm/* are written; only "
                           "non-finite gradients are checked", category=GradientHealthWarning)
        for logger in trainer.loggers if trainer.is_global_zero else []:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_custom_scalars"):
                experiment.add_custom_scalars(custom_scalars_layout())
        if self.check_every_step is None:
            self.check_every_step = pl_module.device.type == "cpu"
            if trainer.is_global_zero:
                where = "every optimizer step" if self.check_every_step else "logged steps only"
                LOG.info("GradientMonitor: finiteness checked on %s (parameters on %s; set check_every_step to "
                         "choose)", where, pl_module.device.type)
        self._install(pl_module)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(groups=repr(self.groups), stats=self.stats)

    def _install(self, pl_module: pl.LightningModule) -> None:
        """Wrap the module's ``configure_gradient_clipping`` (once, for every monitor on it)."""
        monitors = pl_module.__dict__.setdefault(_MONITORS, [])
        if self not in monitors:
            monitors.append(self)
        if _WRAPPED in pl_module.__dict__:
            return
        original = pl_module.configure_gradient_clipping
        own_clipping = is_overridden("configure_gradient_clipping", pl_module)

        def configure_gradient_clipping(optimizer: torch.optim.Optimizer, gradient_clip_val: Any = None,
                                        gradient_clip_algorithm: Any = None) -> None:
            original(optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm)
            for monitor in list(pl_module.__dict__.get(_MONITORS, [])):
                monitor._finish(pl_module.trainer, pl_module, optimizer, bool(gradient_clip_val) or own_clipping)

        pl_module.__dict__[_WRAPPED] = original
        pl_module.configure_gradient_clipping = configure_gradient_clipping

    def _uninstall(self, pl_module: pl.LightningModule) -> None:
        monitors = pl_module.__dict__.get(_MONITORS, [])
        if self in monitors:
            monitors.remove(self)
        if not monitors and pl_module.__dict__.pop(_WRAPPED, None) is not None:
            del pl_module.configure_gradient_clipping
            pl_module.__dict__.pop(_MONITORS, None)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._uninstall(pl_module)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._uninstall(pl_module)

    # ---- measure before clipping --------------------------------------------------------------------
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        step, logged = trainer.global_step, _logger_writes(trainer)
        module_groups = getattr(pl_module, "grad_groups", None)
        same_groups = module_groups is None or list(module_groups.names) == self._groups.names
        wants_max = logged and "max" in self.stats  # the module measures no max |g|
        if getattr(pl_module, "last_grad_step", None) == step and same_groups and not wants_max:
            self._pending = _Pending(step, logged, None)  # the module measured; reuse it
        elif not logged and self.check_every_step and self._finite_quick():
            self._pending = None  # a finite unlogged step: nothing to log, nothing to guard
            self.overflow_streak = 0
        elif logged or self.check_every_step:
            scale = _unscale_factor(trainer, optimizer)
            module_wrote = getattr(pl_module, "last_grad_step", None) == step and same_groups
            self._pending = _Pending(step, logged, measure(self._groups, scale, wants_max), module_wrote)
        else:
            self._pending = None
        if self._pending is not None and not pl_module.automatic_optimization:  # no clipping hook follows
            self._finish(trainer, pl_module, optimizer, clip_may_act=False)

    def _finite_quick(self) -> bool:
        """True when the sum of every monitored gradient's norm is finite: one fused pass and one read,
        about a quarter of the full grouped measurement (``scripts/bench.py`` item 3). False (a
        non-finite gradient, or an fp16 sum that overflowed) sends the step to the full measurement,
        which names the group and the parameter."""
        grads = [param.grad for _, param, _ in self._groups.members if param.grad is not None]
        if not grads:
            return True
        if len({(g.dtype, g.device) for g in grads}) > 1:  # torch.stack needs one dtype and device
            return False
        return math.isfinite(float(torch.stack(torch._foreach_norm(grads)).float().sum()))

    # ---- after clipping, before the update: one sync, guard, log, alarms ------------------------------
    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer,
                clip_may_act: bool) -> None:
        pending, self._pending = self._pending, None
        if pending is None or pending.step != trainer.global_step:
            return
        if pending.measured is None:  # the module's values, synced by its own clipping hook
            norms = dict(pl_module.last_grad_norms)
            after = norms.pop("total_clipped", None)
            if after is None and pending.logged and clip_may_act:
                after = total_grad_norm(self._groups).item()
            maxima: dict[str, float] = {}
        else:
            after_pass = [total_grad_norm(self._groups)] if pending.logged and clip_may_act else []
            norms, maxima, rest = pending.measured.values(after_pass)  # the one host sync of this step
            after = rest[0] if rest else None
        if after is None:
            after = norms["total"]  # nothing clipped
        bad = [g for g, v in norms.items() if not math.isfinite(v)]
        if bad:
            if pending.measured is not None and pending.logged and not pending.module_wrote:
                self._write(trainer, tag_scalars(norms))
            self._on_nonfinite(trainer, pl_module, optimizer, pending, bad)
            return
        self.overflow_streak = 0
        if not pending.logged:
            return
        numel = dict(zip(self._groups.names, self._groups.numel())) if "rms" in self.stats else None
        own = pending.measured is not None and not pending.module_wrote
        tags = tag_scalars(norms, after, numel) if own else {}
        if not own and numel:
            tags.update({k: v for k, v in tag_scalars(norms, None, numel).items() if k.startswith("grad_rms/")})
        tags.update({f"grad_max/{k}": v for k, v in maxima.items()})
        tags["grad_health/clip_rate"] = self.health.clip_rate(was_clipped(norms["total"], after))
        self._write(trainer, tags)
        groups = [g for g in norms if g != "total"]
        for message in self.health.update(trainer.global_step, norms, groups):
            rank_zero_warn(message, category=GradientHealthWarning)
        self._maybe_histograms(trainer)

    def _write(self, trainer: pl.Trainer, values: dict[str, float]) -> None:
        """Write at the step Lightning writes this step's ``self.log`` values (``global_step`` before
        the update). Loggers write on rank 0 only (``rank_zero_only``); every rank holds the same
        all-reduced norms. ``self.log`` would re-write a key's last value on a later logged step that
        does not log it (a non-finite step): a stale point."""
        for logger in trainer.loggers:
            logger.log_metrics(values, step=trainer.global_step)

    def _on_nonfinite(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer,
                      pending: _Pending, bad: list[str]) -> None:
        if _active_scaler(trainer) is not None:
            self.overflow_streak += 1  # the scaler skips this step and lowers its scale
            if self.overflow_streak < OVERFLOW_LIMIT:
                return
        source = pending.measured or getattr(pl_module, "last_grad_measure", None)
        parameters = source.nonfinite_parameters() if source is not None else []
        for group in optimizer.param_groups:  # torch optimizers skip parameters whose grad is None
            for param in group["params"]:
                param.grad = None
        layers = [g for g in bad if g != "total"] or ["total"]
        step, epoch = trainer.global_step, trainer.current_epoch
        what = {"stop": "the update was skipped and training stops after this step",
                "skip": "the update was skipped", "raise": "the update was skipped"}[self.on_nonfinite]
        where = f" (parameter {parameters[0]})" if parameters else ""
        also = f" (also {', '.join(layers[1:])})" if len(layers) > 1 else ""
        message = (f"non-finite gradient at step {step} (epoch {epoch}) in group {layers[0]}{where}{also}: {what}; "
                   f"the weights were not updated, so they are still the finite ones from before step {step}. "
                   "Lower the learning rate, clip the gradient (Trainer(gradient_clip_val=1.0)), or rerun with "
                   "Trainer(detect_anomaly=True) to find the op that made it")
        self.skipped_steps += 1
        if self.nonfinite is None:
            self.nonfinite = {"step": step, "groups": layers, "parameter": parameters[0] if parameters else None}
        if self.on_nonfinite == "raise":
            raise FloatingPointError(message)
        if self.on_nonfinite == "stop":
            trainer.should_stop = True
        if self.on_nonfinite == "stop" or self.skipped_steps == 1:
            rank_zero_warn(message, category=GradientHealthWarning)

    def _maybe_histograms(self, trainer: pl.Trainer) -> None:
        every, epoch = self.log_histograms_every_n_epochs, trainer.current_epoch
        if not every or epoch % every or epoch == self._histogram_epoch or not trainer.is_global_zero:
            return
        self._histogram_epoch = epoch
        grouped: dict[str, list[torch.Tensor]] = {}
        for _, param, index in self._groups.members:
            if param.grad is not None:
                grouped.setdefault(self._groups.names[index], []).append(param.grad.detach().flatten().float())
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_histogram"):
                for group, grads in grouped.items():
                    experiment.add_histogram(f"grad_hist/{group}", torch.cat(grads).cpu(), trainer.global_step)

    # ---- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**self.health.state_dict(), "skipped_steps": self.skipped_steps, "nonfinite": self.nonfinite,
                "overflow_streak": self.overflow_streak}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.health.load_state_dict(state_dict)
        self.skipped_steps, self.nonfinite = state_dict["skipped_steps"], state_dict["nonfinite"]
        self.overflow_streak = state_dict.get("overflow_streak", 0)


def _logger_writes(trainer: pl.Trainer) -> bool:
    """Mirror Lightning's ``should_update_logs`` (``trainer/connectors/logger_connector/logger_connector.py``):
    the step about to finish is ``global_step + 1``."""
    every = trainer.log_every_n_steps
    return bool(trainer.loggers) and every > 0 and (trainer.global_step + 1) % every == 0


def _active_scaler(trainer: pl.Trainer) -> Any:
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    return scaler if scaler is not None and scaler.is_enabled() else None


def _unscale_factor(trainer: pl.Trainer, optimizer: torch.optim.Optimizer) -> float | None:
    """The scale to divide by when the gradients are still scaled here: ``amp.py`` skips
    ``scaler.unscale_`` for optimizers that unscale inside ``step`` (``_step_supports_amp_scaling``)."""
    scaler = _active_scaler(trainer)
    if scaler is not None and getattr(optimizer, "_step_supports_amp_scaling", False):
        return scaler.get_scale()
    return None
