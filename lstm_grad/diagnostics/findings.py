"""What the doctor reads (:class:`Signals`) and what it says (:class:`Finding`): plain data, JSON-ready."""

from __future__ import annotations

import math

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

SEVERITIES = ("error", "warning", "info")
Series = dict[int, float]


@dataclass
class Finding:
    """One diagnosis: ``kind`` (a contract name), ``severity`` (error / warning / info), the ``groups``
    (the user's module names), the ``steps`` span ``[first, last]``, ``evidence`` (the deciding numbers,
    the threshold and its source), a one-sentence ``summary`` and the ``fix``; ``strength`` orders
    findings of one severity (larger = further past the threshold)."""

    kind: str
    severity: str
    groups: list[str]
    steps: list[int]
    summary: str
    fix: str
    evidence: dict[str, Any]
    strength: float = 0.0

    def lines(self) -> list[str]:
        """Two or three lines for a person: what and where, the evidence, the fix."""
        numbers = ", ".join(f"{k} {_fmt(v)}" for k, v in self.evidence.items() if k != "source")
        return [f"[{self.severity}] {self.kind}: {self.summary}",
                f"    evidence: {numbers} (threshold source: {self.evidence.get('source', 'n/a')})",
                f"    fix: {self.fix}"]

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "strength"}


@dataclass
class Signals:
    """What the doctor reads, every series ``{step: value}`` on logged steps. ``groups`` in model order."""

    groups: list[str]
    norms: dict[str, Series] = field(default_factory=dict)  # group, "total", "total_clipped"
    updates: dict[str, Series] = field(default_factory=dict)  # grad_update/<group>
    loss: Series = field(default_factory=dict)
    clipped: Series = field(default_factory=dict)
    reach: Series = field(default_factory=dict)
    gates: dict[str, Series] = field(default_factory=dict)  # "<layer>/<gate>_closed" shares
    nonfinite: list[dict[str, Any]] = field(default_factory=list)  # {"step", "groups", "origin"}
    no_gradient: list[str] = field(default_factory=list)
    val_rel_mae: Series = field(default_factory=dict)  # forecasters: val MAE / persistence's
    window: Optional[int] = None
    clip_value: Optional[float] = None
    hparams: dict[str, Any] = field(default_factory=dict)  # the forecaster's (model.* / data.*), else {}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def json_safe(value: Any) -> Any:
    """Replace NaN / Inf by strings, in nested dicts and lists, so the JSON is standard (``json.dumps``
    would write bare ``NaN``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
