"""``GradientMonitor``: true per-layer gradient norms, clip statistics, alarms and findings for ANY LightningModule.

A thin Lightning adapter (``lightning.pytorch`` and ``pytorch_lightning`` alike: darts, neuralforecast)
over :class:`~lstm_grad.diagnostics.tracker.GradientTracker`, the one pipeline; our forecaster uses it
too (``LSTMForecaster.configure_callbacks``). Where the numbers come from, read in lightning 2.6.6:
``plugins/precision/precision.py`` ``_after_closure`` calls ``on_before_optimizer_step`` (callbacks,
then the module), then ``_clip_gradients`` -> the module's ``configure_gradient_clipping`` (skipped
under manual optimization), then the optimizer steps; ``plugins/precision/amp.py`` unscales before that
(unless the optimizer unscales itself). So ``on_before_optimizer_step`` sees the step's gradient:
unscaled, accumulated, all-reduced, before clipping. The post-clip total comes from wrapping the
clipping methods (:mod:`lstm_grad.diagnostics.clip_hooks`; under manual optimization the user's
``self.clip_gradients`` is wrapped, so pre-clip is before it). Tags go to ``self.log``'s step
(``trainer_state.log_step``) on Lightning's logging steps; several optimizers: ``grad_norm/opt<i>/...``.
A failure of the monitor's own is one warning and it turns itself off; only the non-finite guard stops a run.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import torch

from lstm_grad.diagnostics.live_doctor import LiveDoctor
from lstm_grad.diagnostics.check_budget import CheckBudget
from lstm_grad.diagnostics.clip_hooks import install_clip_hooks, uninstall_clip_hooks
from lstm_grad.diagnostics.views import custom_scalars_layout, log_histograms
from lstm_grad.diagnostics.tracker import GradientFinding, GradientHealthWarning, GradientTracker, StepResult
from lstm_grad.diagnostics.trainer_state import (Callback, active_scaler, log_step, logger_writes, raw_optimizer,
                                                  unscale_factor)

LOG = logging.getLogger(__name__)

__all__ = ["GradientHealthWarning", "GradientMonitor", "custom_scalars_layout"]



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
            be a host sync per step. On the CPU it starts on, and after the first ``check_budget.SAMPLES``
            unlogged steps stays on only if its median time is at most ``check_budget.BUDGET`` (0.5 %) of the
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
        self.budget: Optional[CheckBudget] = None  # open while the automatic per-step check is being decided
        self.doctor = LiveDoctor(self._tell)
        self._batch: Optional[tuple[Any, int]] = None
        self._replay: Optional[GradientTracker] = None  # a tracker whose last non-finite step awaits its origin

    # ---- what tests and users read -------------------------------------------------------------------
    health = property(lambda self: self.tracker.health, doc="The first optimizer's vanishing / exploding state.")
    nonfinite = property(lambda self: self.tracker.nonfinite, doc="Step, groups, parameter of the first non-finite gradient.")
    overflow_streak = property(lambda self: self.tracker.overflow_streak, doc="GradScaler overflows in a row.")

    @property
    def skipped_steps(self) -> int:
        return self.tracker.skipped_steps + sum(t.skipped_steps for t in self.extra_trackers.values())

    @property
    def state_key(self) -> str:
        return self._generate_state_key(groups=repr(self.groups), stats=self.stats)

    def _new_tracker(self) -> GradientTracker:
        return GradientTracker(None, *self._settings, check_every_step=bool(self.check_every_step), warn=self._warn)

    def _warn(self, message: str) -> None:
        if self._trainer is None or self._trainer.is_global_zero:
            warnings.warn(message, GradientHealthWarning, stacklevel=2)

    def _tell(self, message: str) -> None:
        if self._trainer is None or self._trainer.is_global_zero:
            warnings.warn(message, GradientFinding, stacklevel=2)

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
        if self.check_every_step is None:
            device = next(pl_module.parameters()).device.type
            self.check_every_step = device == "cpu"
            self.budget = CheckBudget() if self.check_every_step else None  # a CPU run decides by the cost
            if not self.check_every_step and trainer.is_global_zero:
                LOG.info("GradientMonitor: finiteness checked on logged steps only (parameters on %s, where a "
                         "per-step check is a host sync; set check_every_step to choose)", device)
        self._set_check(bool(self.check_every_step))
        by_norm = (trainer.gradient_clip_algorithm or "norm") == "norm"  # a value clip is no norm to compare
        self.doctor.clip_value = float(trainer.gradient_clip_val) if trainer.gradient_clip_val and by_norm else None
        data = getattr(trainer, "datamodule", None)
        self.doctor.hparams = {**dict(getattr(data, "hparams", {}) or {}), **dict(getattr(pl_module, "hparams", {}) or {})}
        self._install(pl_module)

    def _set_check(self, on: bool) -> None:
        self.check_every_step = on
        for tracker in (self.tracker, *self.extra_trackers.values()):
            tracker.check_every_step = on

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        """Keep a reference to the batch (for a non-finite step's replay); while the automatic choice of
        the per-step check is open, time the steps and decide once enough checks were timed."""
        self._batch = (batch, batch_idx)
        if self.budget is None or self.off:
            return
        keep = self.budget.decide(time.perf_counter(), self.tracker.check_seconds)
        if keep is not None:
            self._set_check(keep)
            if trainer.is_global_zero:
                LOG.info("GradientMonitor: finiteness checked on %s", self.budget.note)
            self.budget = None

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Write ``grad_update/<group>`` (‖Δw‖ / ‖w‖) of this batch's logged optimizer steps."""
        if self.off:
            return
        try:
            if self._replay is not None:
                self._replay_origin(trainer, pl_module)
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            if self.tracker.last_step == log_step(trainer) and isinstance(loss, torch.Tensor) and loss.numel() == 1:
                self.doctor.loss[self.tracker.last_step] = float(loss)  # logged steps only: they sync anyway
            for index, tracker in ((0, self.tracker), *self.extra_trackers.items()):
                tags = tracker.update_tags()
                if tags:
                    prefix = f"opt{index}/" if self.extra_trackers else ""
                    tags = {_prefixed(k, prefix): v for k, v in tags.items()} if prefix else tags
                    for logger in trainer.loggers:
                        logger.log_metrics(tags, step=tracker.last_update[0])
        except Exception as error:
            self._step_aside("measuring the update ratio", error)

    # ---- the doctor ---------------------------------------------------------------------------------
    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not self.off:
            self._examine(trainer, final=False)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if not self.off:
            self._examine(trainer, final=True)
            self.doctor.write_texts(trainer, self.tracker, log_step(trainer))

    def _examine(self, trainer: Any, final: bool) -> None:
        try:
            self.doctor.examine(trainer, self.tracker, log_step(trainer), final)
        except Exception as error:
            self._step_aside("diagnosing", error)

    def _install(self, pl_module: Any) -> None:
        install_clip_hooks(pl_module, self)

    def _uninstall(self, pl_module: Any) -> None:
        uninstall_clip_hooks(pl_module, self)

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
        if not pl_module.automatic_optimization:  # no clipping hook follows; any clipping was unseen
            self._after_clip(pl_module, optimizer, clip_may_act=False, clip_known=False)

    def _after_clip(self, pl_module: Any, optimizer: torch.optim.Optimizer, clip_may_act: bool,
                    clip_known: bool = True) -> None:
        if self.off:
            return
        trainer = pl_module.trainer
        try:
            tracker, prefix = self._tracker_of(trainer, raw_optimizer(optimizer))
            result = tracker.after_clip(clip_may_act, clip_known)
            self._publish(trainer, tracker, result, prefix)
        except FloatingPointError:
            raise  # on_nonfinite="raise": the user asked for it
        except Exception as error:
            self._step_aside("after clipping", error)

    def _replay_origin(self, trainer: Any, pl_module: Any) -> None:
        """Name where a non-finite gradient was born (:meth:`LiveDoctor.replay_origin`): the update was
        skipped, so the weights are still the ones that made it."""
        tracker, self._replay = self._replay, None
        event = tracker.nonfinite_events[-1]
        run_dir = next((getattr(logger, "log_dir", None) for logger in trainer.loggers), None)
        if run_dir and trainer.is_global_zero:
            self.doctor.nonfinite_forensics(tracker, event, run_dir)
        if pl_module.automatic_optimization and self._batch is not None:
            self.doctor.replay_origin(pl_module, *self._batch, event)

    def _publish(self, trainer: Any, tracker: GradientTracker, result: StepResult, prefix: str) -> None:
        """Write the tags at ``self.log``'s step (loggers write on rank 0 only; every rank holds the same
        all-reduced norms). ``self.log`` would re-write a key's last value on a later logged step that
        does not log it (a non-finite step): a stale point."""
        if result.stop:
            trainer.should_stop = True
        if result.nonfinite and self._replay is None and tracker.nonfinite_events and \
                "origin" not in tracker.nonfinite_events[-1]:
            self._replay = tracker  # after the batch, where training_step may be called again
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
        log_histograms(trainer.loggers, self.tracker.groups, trainer.global_step)

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
