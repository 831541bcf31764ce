"""``GradientTracker``: the ONE gradient pipeline: measure, check and report per-group gradient norms.

No Lightning here. ``GradientMonitor`` (the Lightning callback) drives it from Lightning's hooks; a
hand-written loop or Lightning Fabric drives it with two calls per optimizer step::

    tracker = GradientTracker(model)
    loss.backward()                                         # (Fabric: fabric.backward(loss))
    tracker.before_clip(optimizer, step=step, log=step % 10 == 0)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # any clipping, or none
    result = tracker.after_clip()                            # one host sync on a logged step
    for tag, value in result.tags.items():
        writer.add_scalar(tag, value, step)
    if result.stop:
        break
    optimizer.step()
    for tag, value in tracker.update_tags().items():   # optional: ‖Δw‖/‖w‖ of a logged step
        writer.add_scalar(tag, value, step)

Measured: the gradient of the parameters the stepping ``optimizer`` holds (never another optimizer's
stale ``.grad``), so ``grad_norm/total`` is what ``clip_grad_norm_`` compares with ``max_norm``. Groups
span all parameters, trainable or not (unfreezing renames nothing; regrouped when parameters are added).
A group without a gradient at a step is left out of tags and alarms, never 0; one no step reached is
named once.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from torch import nn

from lstm_grad.diagnostics.groups import ParameterGroups, parameter_groups
from lstm_grad.diagnostics.health import GradientHealth, nonfinite_message
from lstm_grad.diagnostics.norms import STATS, GroupNorms, fused_norms, measure, tag_scalars, total_grad_norm, was_clipped
from lstm_grad.diagnostics.update_ratio import UpdateRatio

LOG = logging.getLogger("lstm_grad.diagnostics")

NONFINITE_POLICIES = ("stop", "skip", "raise")
FORENSICS_STEPS = 32  # logged steps of per-group values kept for a spike's or a non-finite step's record
OVERFLOW_LIMIT = 25  # consecutive GradScaler overflows before a run is called non-finite


class GradientHealthWarning(UserWarning):
    """A gradient vanished, exploded or became non-finite (filter with ``warnings`` by this class)."""


class GradientFinding(UserWarning):
    """A diagnosis of the doctor (:mod:`lstm_grad.diagnostics.doctor`): what, where, evidence, fix.
    Apart from :class:`GradientHealthWarning` (the live alarms) so either can be filtered alone."""


def _warn(message: str) -> None:
    warnings.warn(message, GradientHealthWarning, stacklevel=3)


@dataclass
class StepResult:
    """What :meth:`GradientTracker.after_clip` found: ``tags`` to log (empty on unlogged steps),
    ``nonfinite`` (the update must be skipped: the gradients were set to ``None``) and ``stop``
    (the ``on_nonfinite="stop"`` policy asks the loop to end)."""

    step: int
    tags: dict[str, float] = field(default_factory=dict)
    nonfinite: bool = False
    stop: bool = False


@dataclass
class _Pending:
    step: int
    log: bool
    key: int  # id of the stepping optimizer
    optimizer: Optional[torch.optim.Optimizer]
    measured: Optional[GroupNorms]  # None: a finite unlogged step, nothing left to do
    groups: ParameterGroups
    scaler_active: bool
    epoch: Optional[int]


class GradientTracker:
    """Measure the stepping optimizer's per-group gradient norms before and after clipping; guard
    against non-finite gradients; keep the vanishing / exploding verdicts and the clip rate.

    Args:
        module: the model whose parameters are grouped (or later, with :meth:`attach`).
        groups: ``"auto"``, ``"children"``, a depth, or ``{name: regex}`` (:mod:`lstm_grad.diagnostics.groups`).
        stats: any of ``"rms"`` (``grad_rms/<group>`` = norm / sqrt(numel)), ``"max"`` (``grad_max/*``, max |g|).
        vanish_threshold, relative_threshold, patience, explode_threshold: see
            :class:`~lstm_grad.diagnostics.health.GradientHealth`.
        on_nonfinite: ``stop``, ``skip`` or ``raise`` (``FloatingPointError``); in every case the
            update is skipped (the gradients are set to ``None``, which torch optimizers skip).
        check_every_step: check finiteness on unlogged steps too (one fused pass and one read).
        warn: called with each warning (default: ``warnings.warn`` with :class:`GradientHealthWarning`).

    Raises:
        ValueError: an unknown policy or statistic, or a group rule that matches nothing.
    """

    def __init__(self, module: Optional[nn.Module] = None, groups: Union[int, str, Mapping[str, str]] = "auto",
                 stats: Sequence[str] = (), vanish_threshold: float = 1e-5, relative_threshold: float = 1e-3,
                 patience: int = 3, explode_threshold: float = 100.0, on_nonfinite: str = "stop",
                 check_every_step: bool = True, warn: Callable[[str], None] = _warn) -> None:
        if on_nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"gradient_monitor.on_nonfinite={on_nonfinite!r} is unknown; use one of "
                             f"{list(NONFINITE_POLICIES)}")
        unknown = [s for s in stats if s not in STATS]
        if unknown:
            raise ValueError(f"need stats from {list(STATS)}; got {list(stats)}")
        self.rule, self.stats = groups, tuple(stats)
        self.health = GradientHealth(vanish_threshold, relative_threshold, patience, explode_threshold)
        self.on_nonfinite, self.check_every_step, self.warn = on_nonfinite, check_every_step, warn
        self.skipped_steps = self.overflow_streak = 0
        self.nonfinite: dict[str, Any] | None = None  # step, groups, parameter of the first non-finite gradient
        self.last_step, self.last_norms = -1, {}  # the last logged step's norms (+ "total_clipped")
        self.check_seconds: list[float] = []  # wall time of the per-step finiteness checks so far
        self.update = UpdateRatio()
        self.last_update: tuple[int, dict[str, float]] = (-1, {})
        # every logged step's values, for the doctor (floats already read: no extra host sync)
        self.norm_series: dict[str, dict[int, float]] = {}
        self.clipped_series: dict[int, float] = {}
        self.update_series: dict[str, dict[int, float]] = {}
        self.nonfinite_events: list[dict[str, Any]] = []
        self.recent: deque[dict[str, Any]] = deque(maxlen=FORENSICS_STEPS)  # spike forensics
        self._pending: _Pending | None = None
        if module is not None:
            self.attach(module)

    def attach(self, module: nn.Module) -> None:
        """Group ``module``'s parameters (a group rule that matches nothing raises ``ValueError`` here)."""
        self.module = module
        self.groups = self._build()
        self._signature = self._parameters_signature()
        self._by_optimizer: dict[int, tuple[tuple, ParameterGroups]] = {}
        self._logged_by_optimizer: dict[int, int] = {}
        self._with_gradient: set[str] = set()
        self._missing_reported = False
        self._pending = None

    # ---- groups that follow the parameter set ---------------------------------------------------------
    def _build(self) -> ParameterGroups:
        return parameter_groups(self.module, self.rule, trainable_only=False)

    def _parameters_signature(self) -> tuple:
        return tuple(id(p) for p in self.module.parameters())

    def groups_for(self, optimizer: Optional[torch.optim.Optimizer]) -> ParameterGroups:
        """Return the groups restricted to the parameters ``optimizer`` holds (all of them for ``None``);
        rebuilt when the module's or the optimizer's parameters change."""
        if optimizer is None:
            return self.groups
        held = tuple(id(p) for group in optimizer.param_groups for p in group["params"])
        cached = self._by_optimizer.get(id(optimizer))
        if cached is not None and cached[0] == held:
            return cached[1]
        signature = self._parameters_signature()
        if signature != self._signature:  # parameters added or replaced: regroup
            self.groups, self._signature = self._build(), signature
            self._by_optimizer.clear()
        ids = set(held)
        subset = ParameterGroups(self.groups.names, [m for m in self.groups.members if id(m[1]) in ids])
        self._by_optimizer[id(optimizer)] = (held, subset)
        return subset

    # ---- the two calls ---------------------------------------------------------------------------------
    def before_clip(self, optimizer: Optional[torch.optim.Optimizer] = None, *, step: int, log: bool = True,
                    scale: Optional[float] = None, scaler_active: bool = False, epoch: Optional[int] = None) -> None:
        """Queue this optimizer step's pre-clip measurement (no host sync on an accelerator).

        Args:
            optimizer: the optimizer about to step (``None``: every parameter of the module).
            step: the step the tags are logged at.
            log: whether this step's tags are written; on other steps only finiteness is checked,
                and only with ``check_every_step``.
            scale: divide by this (a GradScaler's scale, when the gradients are still scaled).
            scaler_active: a GradScaler handles overflows (25 in a row count as non-finite).
            epoch: named in the non-finite message when given.
        """
        groups = self.groups_for(optimizer)
        key = id(optimizer)
        if not log and not self.check_every_step:
            self._pending = None
            return
        if not log and self._timed_quick_check(groups):
            self._pending = _Pending(step, False, key, optimizer, None, groups, scaler_active, epoch)
            return
        with_max = log and "max" in self.stats
        self._pending = _Pending(step, log, key, optimizer, measure(groups, scale, with_max), groups, scaler_active, epoch)

    def after_clip(self, clip_may_act: bool = True, clip_known: bool = True) -> StepResult:
        """Finish the step queued by :meth:`before_clip`, after any clipping: measure the post-clip
        total (when ``clip_may_act``), read everything with ONE host sync, skip a non-finite update,
        return the tags and warn on vanishing / exploding groups. ``clip_known=False``: the norms were
        taken where clipping may already have acted unseen (manual optimization that clips by itself), so
        no ``total_clipped`` / ``clipped`` / ``clip_rate`` is claimed."""
        pending, self._pending = self._pending, None
        if pending is None:
            return StepResult(-1)
        if pending.measured is None:
            self.overflow_streak = 0
            return StepResult(pending.step)
        measured = pending.measured
        extra = [total_grad_norm(pending.groups)] if pending.log and clip_may_act else []
        norms, maxima, rest = measured.values(extra)  # the one host sync of this step
        norms = {k: v for k, v in norms.items() if k == "total" or measured.present[measured.keys.index(k)]}
        if not any(measured.present):
            return StepResult(pending.step)  # the optimizer holds no gradient this step
        after = rest[0] if rest else norms["total"]
        bad = [g for g, v in norms.items() if not math.isfinite(v)]
        if bad:
            return self._on_nonfinite(pending, norms, bad)
        self.overflow_streak = 0
        if not pending.log:
            return StepResult(pending.step)
        present = [g for g in norms if g != "total"]
        self._with_gradient.update(present)
        self._logged_by_optimizer[pending.key] = self._logged_by_optimizer.get(pending.key, 0) + 1
        numel = dict(zip(measured.keys, measured.numel)) if "rms" in self.stats else None
        tags = tag_scalars(norms, after if clip_known else None, numel)
        tags.update({f"grad_max/{k}": v for k, v in maxima.items() if k in norms})
        if clip_known:
            tags["grad_health/clip_rate"] = self.health.clip_rate(was_clipped(norms["total"], after))
            self.clipped_series[pending.step] = tags["grad_health/clipped"]
        self.last_step, self.last_norms = pending.step, {**norms, **({"total_clipped": after} if clip_known else {})}
        for group, value in self.last_norms.items():
            self.norm_series.setdefault(group, {})[pending.step] = value
        self.recent.append({"step": pending.step, "norms": self.last_norms, "maxima": maxima})
        for message in self.health.update(pending.step, norms, present):
            self.warn(message)
        self._report_missing()
        if pending.optimizer is not None:
            self.update.before_step(pending.optimizer, pending.groups, pending.step)
        return StepResult(pending.step, tags)

    def update_tags(self) -> dict[str, float]:
        """After ``optimizer.step()`` of a logged step: ``{"grad_update/<group>": ‖Δw‖ / ‖w‖}`` over that
        step (:mod:`lstm_grad.diagnostics.update_ratio`); empty when the step did not update."""
        step, ratios = self.update.take()
        self.last_update = (step, ratios)
        for group, value in ratios.items():
            self.update_series.setdefault(group, {})[step] = value
        return {f"grad_update/{group}": value for group, value in ratios.items()}

    # ---- checks ----------------------------------------------------------------------------------------
    def _timed_quick_check(self, groups: ParameterGroups) -> bool:
        """:meth:`_finite_quick`, its wall time kept in ``check_seconds`` (the monitor's automatic choice
        weighs it against the step; on a CPU the read makes the time the work's)."""
        start = time.perf_counter()
        finite = self._finite_quick(groups)
        self.check_seconds.append(time.perf_counter() - start)
        return finite

    def _finite_quick(self, groups: ParameterGroups) -> bool:
        """True when the sum of every gradient norm is finite: one fused pass and one read, about a
        quarter of the grouped measurement. False sends the step to the full measurement."""
        grads = [param.grad for _, param, _ in groups.members if param.grad is not None]
        if not grads:
            return True
        if len({g.device for g in grads}) > 1:
            return False
        return math.isfinite(float(fused_norms(grads).sum()))

    def missing_groups(self) -> list[str]:
        """The groups a stepping optimizer holds that no logged step gave a gradient, once every optimizer
        seen has had ``patience`` logged steps (empty before)."""
        if not self._logged_by_optimizer or min(self._logged_by_optimizer.values()) < self.health.patience:
            return []
        held = ({self.groups.names[i] for _, subset in self._by_optimizer.values() for _, _, i in subset.members}
                if self._by_optimizer else set(self.groups.names))
        return [g for g in self.groups.names if g in held and g not in self._with_gradient]

    def _report_missing(self) -> None:
        """Name, once, the groups :meth:`missing_groups` finds."""
        missing = self.missing_groups()
        if self._missing_reported or not self._logged_by_optimizer or \
                min(self._logged_by_optimizer.values()) < self.health.patience:
            return
        self._missing_reported = True
        if missing:
            LOG.info("GradientMonitor: no gradient reached %s in %d logged steps: not used in forward, frozen, or "
                     "in no optimizer; not logged (not 'vanishing') until one arrives",
                     ", ".join(f"'{g}'" for g in missing), sum(self._logged_by_optimizer.values()))

    def _on_nonfinite(self, pending: _Pending, norms: dict[str, float], bad: list[str]) -> StepResult:
        tags = tag_scalars({k: v for k, v in norms.items()}) if pending.log else {}
        if pending.scaler_active:
            self.overflow_streak += 1  # the scaler skips this step and lowers its scale
            if self.overflow_streak < OVERFLOW_LIMIT:
                return StepResult(pending.step, tags)
        parameters = pending.measured.nonfinite_parameters() if pending.measured is not None else []
        for _, param, _ in pending.groups.members:  # torch optimizers skip parameters whose grad is None
            param.grad = None
        layers = [g for g in bad if g != "total"] or ["total"]
        step = pending.step
        message = nonfinite_message(step, pending.epoch, layers, parameters, self.on_nonfinite)
        self.skipped_steps += 1
        if self.nonfinite is None:
            self.nonfinite = {"step": step, "groups": layers, "parameter": parameters[0] if parameters else None}
        self.nonfinite_events.append({"step": step, "groups": layers, "parameter": parameters[0] if parameters else None})
        self.recent.append({"step": step, "norms": norms, "nonfinite": True})
        if self.on_nonfinite == "raise":
            raise FloatingPointError(message)
        if self.on_nonfinite == "stop" or self.skipped_steps == 1:
            self.warn(message)
        return StepResult(step, tags, nonfinite=True, stop=self.on_nonfinite == "stop")

    # ---- state -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**self.health.state_dict(), "skipped_steps": self.skipped_steps, "nonfinite": self.nonfinite,
                "overflow_streak": self.overflow_streak}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.health.load_state_dict(state_dict)
        self.skipped_steps, self.nonfinite = state_dict["skipped_steps"], state_dict["nonfinite"]
        self.overflow_streak = state_dict.get("overflow_streak", 0)
