"""Gradient diagnostics for any torch / Lightning model: true per-layer norms, clip statistics, alarms,
and the gradient's reach through time. Imports nothing else from ``lstm_grad``.

Pure torch, for a hand-written loop or Lightning Fabric (no Lightning imported): the same pipeline
as the callback, two calls per optimizer step::

    from lstm_grad.diagnostics import GradientTracker
    tracker = GradientTracker(model)
    ...; tracker.before_clip(optimizer, step=step, log=True); clip; result = tracker.after_clip()

and the plain functions ``layer_grad_norms``, ``total_grad_norm``, ``tag_scalars``, ``parameter_groups``.

Lightning callbacks (imported on first use)::

    from lstm_grad.diagnostics import GradientMonitor, TimeGradientProbe
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from lstm_grad.diagnostics.groups import ParameterGroups, drop_shared_prefix, group_names, parameter_groups
from lstm_grad.diagnostics.norms import GroupNorms, layer_grad_norms, measure, tag_scalars, total_grad_norm
from lstm_grad.diagnostics.tracker import GradientFinding, GradientHealthWarning, GradientTracker, StepResult
from lstm_grad.diagnostics.timegrad import lag_value, probe_gradients, recurrent_layers, time_grad_profile, time_reach

_LAZY = {  # these import lightning (and tensorboard): loaded only when asked for
    "GradientMonitor": "lstm_grad.diagnostics.monitor",
    "TimeGradientProbe": "lstm_grad.diagnostics.probe",
    "read_run": "lstm_grad.diagnostics.events",
    "RunReport": "lstm_grad.diagnostics.events",
}

__all__ = ["GradientFinding", "GradientHealthWarning", "GradientMonitor", "GradientTracker", "GroupNorms", "StepResult", "ParameterGroups", "RunReport",
           "TimeGradientProbe", "drop_shared_prefix", "group_names", "lag_value", "layer_grad_norms", "measure",
           "parameter_groups", "probe_gradients", "read_run", "recurrent_layers", "tag_scalars", "time_grad_profile",
           "time_reach", "total_grad_norm"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lstm_grad.diagnostics' has no attribute {name!r}")
