"""``GradientMonitor``: true per-layer gradient norms, clip statistics and alarms for ANY LightningModule.

A thin Lightning adapter over :class:`~lstm_grad.diagnostics.tracker.GradientTracker`, the one
pipeline (our forecaster uses it too: ``LSTMForecaster.configure_callbacks``). It works under
``lightning.pytorch`` and ``pytorch_lightning`` alike (darts, neuralforecast): it reads only the
trainer's public state and duck-types the module, never ``isinstance`` against one namespace.

Where the numbers come from (read in the installed lightning 2.6.6):
``lightning/pytorch/plugins/precision/precision.py`` ``_after_closure`` calls the callbacks'
``on_before_optimizer_step``, the module's, then ``_clip_gradients`` -> the module's
``configure_gradient_clipping`` (looked up with ``getattr`` on the instance in
``lightning/pytorch/trainer/call.py`` ``_call_lightning_module_hook``; skipped under manual
optimization), then the optimizer steps. Under a GradScaler ``plugins/precision/amp.py``
``optimizer_step`` unscales *before* that (unless the optimizer unscales itself, e.g. fused Adam). So
``on_before_optimizer_step`` sees the optimizer step's gradient: unscaled, summed over
``accumulate_grad_batches``, after DDP's all-reduce, before Lightning's clipping. That is where the
norms are measured (queued, no host sync). For the post-clip total the monitor wraps the module's
``configure_gradient_clipping`` for the length of ``fit``. Under manual optimization the user clips
with ``self.clip_gradients(opt, ...)`` *before* ``opt.step()``: the monitor wraps that method too, so
the pre-clip norms are taken before the user's clipping; a user who clips some other way gets the
norms of the gradient the optimizer receives, after that clipping, and no ``total_clipped``.

Tags are written at the step ``self.log`` writes to (``fit_loop.epoch_loop._batches_that_stepped``,
``trainer/connectors/logger_connector/logger_connector.py`` ``log_metrics``), on the steps Lightning
writes logs (``should_update_logs``): once per batch, whatever the number of optimizers. With several
optimizers every tag carries the optimizer's index: ``grad_norm/opt1/<group>``.

A failure inside the monitor (a model it cannot measure) is one warning, and the monitor turns
itself off; only the non-finite guard stops a run, deliberately.
"""

from __future__ import annotations

import logging
import statistics
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import torch

from lstm_grad.diagnostics.health import GradientHealth
from lstm_grad.diagnostics.tracker import GradientHealthWarning, GradientTracker, StepResult
from lstm_grad.diagnostics.trainer_state import (Callback, active_scaler, log_step, logger_writes, overrides,
                                                  raw_optimizer, unscale_factor)

LOG = logging.getLogger(__name__)

__all__ = ["GradientHealthWarning", "GradientMonitor", "custom_scalars_layout"]

AUTO_SAMPLES = 5  # unlogged steps timed before the automatic per-step check is kept or dropped
AUTO_BUDGET = 0.005  # the per-step check may cost this share of a step
_WRAPPED = "_gradient_monitor_original"  # instance attributes set on the module during fit
_MONITORS = "_gradient_monitors"


def custom_scalars_layout() -> dict[str, dict[str, list]]:
    """TensorBoard custom-scalars layout: every group's ``grad_norm/*`` in one chart, ``grad_act/*``
    in another, the lags of ``grad_time/*`` in a third, ``grad_health/*`` in a fourth."""
    return {"gradients": {
        "grad_norm per layer (true L2 of .grad)": ["Multiline", [r"grad_norm/.*"]],
        "grad_act per layer output (|dL/dh|, probe batch)": ["Multiline", [r"grad_act/.*"]],
        "gradient through time (|dL/dx_t| by lag)": ["Multiline", [r"grad_time/lag_.*"]],
        "health": ["Multiline", [r"grad_health/.*"]],
    }}


class GradientMonitor(Callback):
    """Log true per-group gradient norms and clip statistics; warn on vanishing / exploding; keep NaN out.

    Tags, on the steps the logger writes (``Trainer(log_every_n_steps=...)``), through every attached
    logger: ``grad_norm/<group>``, ``grad_norm/total`` (pre-clip), ``grad_norm/total_clipped`` (measured
    after clipping), ``grad_health/clipped`` (1 when clipping changed the gradient),
    ``grad_health/clip_rate`` (share of logged steps clipped so far), ``grad_health/nonfinite``; with
    ``stats``: ``grad_rms/<group>`` (norm / sqrt(numel): comparable across layers of different size)
    and ``grad_max/<group>``, ``grad_max/total`` (max |g|). A group without a gradient at a step is
    left out (never 0). With several optimizers: ``grad_norm/opt<i>/...`` for optimizer ``i``.

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
            ``None`` (default): decided by what it costs. Off on an accelerator, where the read would
            be a host sync per step. On the CPU it starts on, and after the first ``AUTO_SAMPLES``
            unlogged steps stays on only if its median time is at most ``AUTO_BUDGET`` (0.5 %) of the
            median step (on a 50 M-parameter model it was 2.4 %; on the 3-layer LSTM 0.3 %:
            ``python -m benchmarks.bench``); the choice is logged once.
        log_histograms_every_n_epochs: a histogram of each group's gradient every n epochs (0 = never).

    Raises:
        ValueError: an unknown policy or statistic, a negative histogram period; at ``setup``, a
            group rule that matches nothing.
    """

    def __init__(self, groups: Union[int, str, Mapping[str, str]] = "auto", stats: Sequence[str] = (),
                 vanish_threshold: float = 1e-5, relative_threshold: float = 1e-3, patience: int = 3,
                 explode_threshold: float = 100.0, on_nonfinite: str = "stop", check_every_step: Optional[bool] = None,
                 log_histograms_every_n_epochs: int = 0) -> None:
        if log_histograms_every_n_epochs < 0:
            raise ValueError(f"need log_histograms_every_n_epochs >= 0; got {log_histograms_every_n_epochs}")
        self.groups, self.stats, self.on_nonfinite = groups, tuple(stats), on_nonfinite
        self.check_every_step = check_every_step
        self.log_histograms_every_n_epochs = log_histograms_every_n_epochs
        self._settings = (groups, stats, vanish_threshold, relative_threshold, patience, explode_threshold, on_nonfinite)
        self.tracker = self._new_tracker()  # checks the arguments now
        self.extra_trackers: dict[int, GradientTracker] = {}  # optimizers 1.. when there are several
        self._extra_states: dict[int, dict[str, Any]] = {}
        self.off = False
        self._trainer: Any = None
        self._user_clipped: Optional[int] = None  # id of the optimizer the user's clip_gradients measured
        self._histogram_epoch = -1
        self._auto, self._last_batch_start, self._step_seconds = False, None, []

    # ---- what tests and users read -------------------------------------------------------------------
    @property
    def health(self) -> GradientHealth:
        return self.tracker.health

    @property
    def nonfinite(self) -> Optional[dict[str, Any]]:
        return self.tracker.nonfinite

    @property
    def skipped_steps(self) -> int:
        return self.tracker.skipped_steps + sum(t.skipped_steps for t in self.extra_trackers.values())

    @property
    def overflow_streak(self) -> int:
        return self.tracker.overflow_streak

    @property
    def state_key(self) -> str:
        return self._generate_state_key(groups=repr(self.groups), stats=self.stats)

    def _new_tracker(self) -> GradientTracker:
        return GradientTracker(None, *self._settings, check_every_step=bool(self.check_every_step), warn=self._warn)

    def _warn(self, message: str) -> None:
        if self._trainer is None or self._trainer.is_global_zero:
            warnings.warn(message, GradientHealthWarning, stacklevel=2)

    def _step_aside(self, where: str, error: BaseException) -> None:
        """Turn the monitor off after a failure of its own, with one warning; training goes on."""
        self.off = True
        self._warn(f"GradientMonitor cannot measure this model ({where}: {type(error).__name__}: {error}); it is "
                   "turned off for the rest of this run and training goes on without it")

    # ---- setup ---------------------------------------------------------------------------------------
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            self._trainer = trainer
            self.tracker.attach(pl_module)  # a bad rule fails here, before step 0 (the user's argument)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.loggers:
            self._warn("GradientMonitor: the Trainer has no logger, so no grad_norm/* are written; only non-finite "
                       "gradients are checked")
        try:
            for logger in trainer.loggers if trainer.is_global_zero else []:
                experiment = getattr(logger, "experiment", None)
                if hasattr(experiment, "add_custom_scalars"):
                    experiment.add_custom_scalars(custom_scalars_layout())
        except Exception as error:  # a logger without custom scalars: the tags are still written
            LOG.debug("custom scalars layout not written: %s", error)
        self._auto = self.check_every_step is None
        if self._auto:
            device = next(pl_module.parameters()).device.type
            self.check_every_step = device == "cpu"
            self._auto = self.check_every_step  # a CPU run decides by the measured cost
            if not self.check_every_step and trainer.is_global_zero:
                LOG.info("GradientMonitor: finiteness checked on logged steps only (parameters on %s, where a "
                         "per-step check is a host sync; set check_every_step to choose)", device)
        self._set_check(bool(self.check_every_step))
        self._install(pl_module)

    def _set_check(self, on: bool) -> None:
        self.check_every_step = on
        for tracker in (self.tracker, *self.extra_trackers.values()):
            tracker.check_every_step = on

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        """While the automatic choice is open, time the steps; decide once enough checks were timed."""
        if not getattr(self, "_auto", False) or self.off:
            return
        now = time.perf_counter()
        if getattr(self, "_last_batch_start", None) is not None:
            self._step_seconds.append(now - self._last_batch_start)
        self._last_batch_start = now
        checks = self.tracker.check_seconds
        if len(checks) < AUTO_SAMPLES or len(self._step_seconds) < AUTO_SAMPLES:
            return
        self._auto = False
        check, step = statistics.median(checks), statistics.median(self._step_seconds)
        keep = check <= AUTO_BUDGET * step
        self._set_check(keep)
        if trainer.is_global_zero:
            LOG.info("GradientMonitor: finiteness checked on %s: the per-step check costs %.2f ms of a %.1f ms step "
                     "(%.2f %%, budget %.1f %%; set check_every_step to choose)",
                     "every optimizer step" if keep else "logged steps only", 1e3 * check, 1e3 * step,
                     100 * check / step, 100 * AUTO_BUDGET)

    def _install(self, pl_module: Any) -> None:
        """Wrap the module's ``configure_gradient_clipping`` (automatic optimization) and
        ``clip_gradients`` (manual) on the instance, once for every monitor on it."""
        monitors = pl_module.__dict__.setdefault(_MONITORS, [])
        if self not in monitors:
            monitors.append(self)
        if _WRAPPED in pl_module.__dict__:
            return
        clip_hook, clip_call = pl_module.configure_gradient_clipping, pl_module.clip_gradients
        own_clipping = overrides(pl_module, "configure_gradient_clipping")

        def configure_gradient_clipping(optimizer: torch.optim.Optimizer, gradient_clip_val: Any = None,
                                        gradient_clip_algorithm: Any = None) -> None:
            clip_hook(optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm)
            for monitor in list(pl_module.__dict__.get(_MONITORS, [])):
                monitor._after_clip(pl_module, optimizer, bool(gradient_clip_val) or own_clipping)

        def clip_gradients(optimizer: Any, gradient_clip_val: Any = None, gradient_clip_algorithm: Any = None) -> None:
            manual = not pl_module.automatic_optimization
            for monitor in list(pl_module.__dict__.get(_MONITORS, [])) if manual else []:
                monitor._before_clip(pl_module, raw_optimizer(optimizer), by_user=True)
            clip_call(optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm)

        pl_module.__dict__[_WRAPPED] = (clip_hook, clip_call)
        pl_module.configure_gradient_clipping = configure_gradient_clipping
        pl_module.clip_gradients = clip_gradients

    def _uninstall(self, pl_module: Any) -> None:
        monitors = pl_module.__dict__.get(_MONITORS, [])
        if self in monitors:
            monitors.remove(self)
        if not monitors and pl_module.__dict__.pop(_WRAPPED, None) is not None:
            del pl_module.configure_gradient_clipping
            del pl_module.clip_gradients
            pl_module.__dict__.pop(_MONITORS, None)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._uninstall(pl_module)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._uninstall(pl_module)

    # ---- one optimizer step ---------------------------------------------------------------------------
    def _tracker_of(self, trainer: Any, optimizer: torch.optim.Optimizer) -> tuple[GradientTracker, str]:
        """The tracker of this optimizer and its tag prefix ("" for one optimizer, "opt<i>/" for several)."""
        optimizers = [raw_optimizer(o) for o in trainer.optimizers]
        index = next((i for i, o in enumerate(optimizers) if o is optimizer), 0)
        if len(optimizers) < 2:
            return self.tracker, ""
        if index and index not in self.extra_trackers:
            extra = self._new_tracker()  # same settings, own groups, streaks and clip rate
            extra.attach(self.tracker.module)
            if index in self._extra_states:
                extra.load_state_dict(self._extra_states[index])
            self.extra_trackers[index] = extra
        return (self.extra_trackers[index] if index else self.tracker), f"opt{index}/"

    def _before_clip(self, pl_module: Any, optimizer: torch.optim.Optimizer, by_user: bool = False) -> None:
        if self.off:
            return
        trainer = pl_module.trainer
        try:
            tracker, _ = self._tracker_of(trainer, optimizer)
            tracker.before_clip(optimizer, step=log_step(trainer), log=logger_writes(trainer),
                                scale=unscale_factor(trainer, optimizer), scaler_active=active_scaler(trainer) is not None,
                                epoch=trainer.current_epoch)
            self._user_clipped = id(optimizer) if by_user else None
        except Exception as error:
            self._step_aside("before clipping", error)

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: torch.optim.Optimizer) -> None:
        if self.off:
            return
        if self._user_clipped == id(optimizer):  # manual optimization: measured before the user's clipping
            self._user_clipped = None
            self._after_clip(pl_module, optimizer, clip_may_act=True)
            return
        self._before_clip(pl_module, optimizer)
        if not pl_module.automatic_optimization:  # no clipping hook follows
            self._after_clip(pl_module, optimizer, clip_may_act=False)

    def _after_clip(self, pl_module: Any, optimizer: torch.optim.Optimizer, clip_may_act: bool) -> None:
        if self.off:
            return
        trainer = pl_module.trainer
        try:
            tracker, prefix = self._tracker_of(trainer, raw_optimizer(optimizer))
            result = tracker.after_clip(clip_may_act)
            self._publish(trainer, result, prefix)
        except FloatingPointError:
            raise  # on_nonfinite="raise": the user asked for it
        except Exception as error:
            self._step_aside("after clipping", error)

    def _publish(self, trainer: Any, result: StepResult, prefix: str) -> None:
        """Write the tags at ``self.log``'s step (loggers write on rank 0 only; every rank holds the same
        all-reduced norms). ``self.log`` would re-write a key's last value on a later logged step that
        does not log it (a non-finite step): a stale point."""
        if result.stop:
            trainer.should_stop = True
        if not result.tags:
            return
        tags = {_prefixed(k, prefix): v for k, v in result.tags.items()} if prefix else result.tags
        for logger in trainer.loggers:
            logger.log_metrics(tags, step=result.step)
        if not result.nonfinite:
            self._maybe_histograms(trainer)

    def _maybe_histograms(self, trainer: Any) -> None:
        every, epoch = self.log_histograms_every_n_epochs, trainer.current_epoch
        if not every or epoch % every or epoch == self._histogram_epoch or not trainer.is_global_zero:
            return
        self._histogram_epoch = epoch
        groups = self.tracker.groups
        grouped: dict[str, list[torch.Tensor]] = {}
        for _, param, index in groups.members:
            if param.grad is not None and not param.grad.is_sparse:
                grouped.setdefault(groups.names[index], []).append(param.grad.detach().flatten().float())
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_histogram"):
                for group, grads in grouped.items():
                    experiment.add_histogram(f"grad_hist/{group}", torch.cat(grads).cpu(), trainer.global_step)

    # ---- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = self.tracker.state_dict()
        if self.extra_trackers:
            state["optimizers"] = {i: t.state_dict() for i, t in self.extra_trackers.items()}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state_dict)
        self._extra_states = {int(i): state for i, state in state_dict.get("optimizers", {}).items()}


def _prefixed(tag: str, prefix: str) -> str:
    """``grad_norm/total`` -> ``grad_norm/opt1/total``."""
    family, _, rest = tag.partition("/")
    return f"{family}/{prefix}{rest}"
