"""The doctor's :class:`~lstm_grad.diagnostics.doctor.Signals` of a finished run, from its event files.

Scalars: ``grad_norm/*``, ``grad_health/clipped``, ``grad_update/*``, ``grad_time/reach``,
``gate_sat/<layer>/<gate>``, ``train/loss_step`` (or ``train/loss``), and for forecasters
``val/rel_mae`` (or the older ``val/mase``, the same relative MAE). What the scalars cannot say
(the groups' model order, the clip value, groups without a gradient, a non-finite step's origin, the
forecaster's settings) comes from the ``doctor/context`` text the monitor writes when training ends;
a run without it (Lightning's own ``grad_norm`` tags, an older run) is diagnosed from the scalars.
"""

from __future__ import annotations

from typing import Any

from lstm_grad.diagnostics.doctor import Signals
from lstm_grad.diagnostics.events import RunReport
from lstm_grad.diagnostics.texts import data_of

CONTEXT_TAG = "doctor/context"


def context_of(report: RunReport) -> dict[str, Any]:
    """The values of the last ``doctor/context`` text the run wrote ({} when none)."""
    tag = next((t for t in report.texts if t.startswith(CONTEXT_TAG)), None)
    return data_of(report.texts[tag][-1][1]) if tag else {}


def signals_of(report: RunReport) -> Signals:
    """Assemble the doctor's signals from one run (:func:`lstm_grad.diagnostics.events.read_run`)."""
    context = context_of(report)
    scalars = report.scalars
    norms = {group: dict(points) for group, points in report.norms.items()}
    order = [g for g in context.get("groups", []) if g in norms] or list(norms)
    prefix = "grad_update/"
    updates = {tag[len(prefix):]: values for tag, values in scalars.items() if tag.startswith(prefix)}
    gates = {tag[len("gate_sat/"):]: values for tag, values in scalars.items() if tag.startswith("gate_sat/")}
    loss = scalars.get("train/loss_step") or scalars.get("train/loss") or {}
    rel_mae = scalars.get("val/rel_mae") or scalars.get("val/mase") or {}
    nonfinite = context.get("nonfinite") or [{"step": s, "groups": []} for s, v in
                                             sorted(scalars.get("grad_health/nonfinite", {}).items()) if v > 0]
    window = context.get("window") or (len(report.profiles[-1][2]) if report.profiles else None)
    return Signals(groups=order, norms=norms, updates=updates, loss=dict(loss),
                   clipped=dict(scalars.get("grad_health/clipped", {})),
                   reach=dict(scalars.get("grad_time/reach", {})), gates=gates, nonfinite=list(nonfinite),
                   no_gradient=list(context.get("no_gradient", [])), val_rel_mae=dict(rel_mae), window=window,
                   clip_value=context.get("clip_value"), hparams=dict(context.get("hparams", {})))
