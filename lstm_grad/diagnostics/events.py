"""Read a TensorBoard run's gradient scalars back: ours, or Lightning's own ``grad_norm`` utility's.

Tags read: ``grad_norm/<group>`` (``GradientMonitor`` or a hand loop logging the same tags),
``grad_health/clipped`` and ``grad_health/nonfinite``, ``grad_time/reach`` and the per-probe profile
text ``grad_time/profile_values`` (``TimeGradientProbe``). A run that only has Lightning's
``self.log_dict(grad_norm(self, norm_type=2))`` tags (``grad_2.0_norm/<parameter>``, one per parameter
tensor) gets them summed into the ``"auto"`` groups: ``sqrt(sum of squares)`` over each group's
parameters at every step, so ``diagnose`` works on a run someone already has.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from lstm_grad.diagnostics.groups import group_names
from lstm_grad.diagnostics.texts import data_of

SUMMARY = ("total", "total_clipped")
LIGHTNING_NORM = re.compile(r"^grad_2\.0_norm/(?P<param>.+?)(?P<suffix>_step|_epoch)?$")
INDEXED = re.compile(r"^(?P<stem>.*?[._]l?)(?P<k>\d+)$")  # lstm_0, net.l1, blocks.2


class DiagnoseError(ValueError):
    """A run folder that cannot be diagnosed (no event files, no gradient norms)."""


@dataclass
class RunReport:
    """Scalars of one run: ``norms[group] = [(step, value), ...]`` and the health summaries."""

    name: str
    norms: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    clipped: list[float] = field(default_factory=list)
    nonfinite: int = 0
    reach: list[float] = field(default_factory=list)
    profiles: list[tuple[int, str, list[float]]] = field(default_factory=list)  # (step, label, time order)
    threshold: float = 1e-5
    source: str = "grad_norm"
    scalars: dict[str, dict[int, float]] = field(default_factory=dict, repr=False)  # every scalar tag
    texts: dict[str, list[tuple[int, str]]] = field(default_factory=dict, repr=False)  # every text tag

    def layers(self) -> list[str]:
        return [k for k in self.norms if k not in SUMMARY]

    def depth_family(self) -> list[str]:
        """The largest family of groups that differ only by a trailing layer index (``lstm_0..3``,
        ``net.l0..l2``, ``blocks.0..5``), in index order: the stack whose depth ratio is reported."""
        families: dict[str, list[tuple[int, str]]] = {}
        for name in self.layers():
            match = INDEXED.match(name)
            if match:
                families.setdefault(match["stem"], []).append((int(match["k"]), name))
        best = max(families.values(), key=len, default=[])
        return [name for _, name in sorted(best)] if len(best) >= 2 else []

    def stats(self, layer: str) -> tuple[float, float, float]:
        values = [v for _, v in self.norms[layer]]
        return values[0], statistics.median(values), values[-1]

    def vanishing_steps(self, layer: str) -> int:
        return sum(v < self.threshold for _, v in self.norms[layer])

    def depth_ratio(self) -> float | None:
        family = self.depth_family()
        if not family:
            return None
        last = self.stats(family[-1])[1]
        return self.stats(family[0])[1] / last if last > 0 else float("inf")

    def clip_rate(self) -> float | None:
        return sum(self.clipped) / len(self.clipped) if self.clipped else None

    def steps_vanishing(self) -> int:
        """Logged steps on which at least one group was under the threshold."""
        return len({step for layer in self.layers() for step, v in self.norms[layer] if v < self.threshold})

    def vanished(self) -> bool:
        return self.steps_vanishing() > 0


def find_event_dir(run_dir: str | Path) -> Path:
    """Return the folder holding the event files: ``run_dir`` itself, or its direct sub-folder with
    the newest ones (so ``runs/residual`` means its latest ``version_N``)."""
    root = Path(run_dir)
    if not root.is_dir():
        raise DiagnoseError(f"{root}: not a folder; pass a run folder such as runs/residual/version_0")
    if any(root.glob("events.out.tfevents.*")):
        return root
    candidates = {p.parent for p in root.glob("*/events.out.tfevents.*")}
    if not candidates:
        raise DiagnoseError(f"{root}: no TensorBoard event files (events.out.tfevents.*) here or one folder below; "
                            "pass the folder a run logged to, such as runs/residual/version_0")
    return max(candidates, key=lambda p: max(f.stat().st_mtime for f in p.glob("events.out.tfevents.*")))


def load_events(run_dir: str | Path) -> tuple[Path, dict[str, dict[int, float]], dict[str, list[tuple[int, str]]]]:
    """Load one run's event files with TensorBoard's own ``EventAccumulator`` (all events kept): the
    folder read, every scalar tag as ``{step: value}`` (a resumed run's repeated step keeps the last
    value) and every text tag as ``[(step, text), ...]``. The one reader of event files here."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = find_event_dir(run_dir)
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    scalars = {tag: {e.step: e.value for e in accumulator.Scalars(tag)} for tag in tags.get("scalars", [])}
    texts = {tag: [(e.step, e.tensor_proto.string_val[0].decode("utf-8", "replace")) for e in accumulator.Tensors(tag)]
             for tag in tags.get("tensors", []) if tag.endswith("/text_summary")}  # add_text's tags
    return folder, scalars, texts


def read_run(run_dir: str | Path, threshold: float = 1e-5) -> RunReport:
    """Load one run's gradient scalars (:func:`load_events`) into a :class:`RunReport`."""
    folder, scalars, texts = load_events(run_dir)

    def series(tag: str) -> list[tuple[int, float]]:
        return sorted(scalars[tag].items())

    bad = {s for s, v in series("grad_health/nonfinite") if v > 0} if "grad_health/nonfinite" in scalars else set()
    report = RunReport(name=str(folder), threshold=threshold, nonfinite=len(bad))
    for tag in scalars:
        if tag.startswith("grad_norm/"):
            report.norms[tag.split("/", 1)[1]] = [(s, v) for s, v in series(tag) if s not in bad]
    if not report.layers():
        report.norms = _from_lightning({t: series(t) for t in scalars if LIGHTNING_NORM.match(t)
                                        and not t.endswith("_epoch")})
        report.source = "lightning grad_2.0_norm (summed per group)"
    if not report.layers():
        raise DiagnoseError(f"{folder}: the event files hold no grad_norm/* (lstm_grad.GradientMonitor) or "
                            "grad_2.0_norm/* (lightning's grad_norm) scalars; train with a logger and "
                            "log_every_n_steps smaller than the number of steps")
    report.norms = {k: report.norms[k] for k in sorted(report.norms, key=_group_order)}
    if "grad_health/clipped" in scalars:
        report.clipped = [v for s, v in series("grad_health/clipped") if s not in bad]
    if "grad_time/reach" in scalars:
        report.reach = [v for _, v in series("grad_time/reach")]
    text_tag = next((t for t in texts if t.startswith("grad_time/profile_values")), None)
    for step, text in texts.get(text_tag, []) if text_tag else []:
        entry = data_of(text)
        report.profiles.append((step, entry["label"], [float(v) for v in entry["profile"]]))
    report.scalars, report.texts = scalars, texts
    return report


def _from_lightning(tagged: dict[str, list[tuple[int, float]]]) -> dict[str, list[tuple[int, float]]]:
    """Sum per-parameter L2 norms into ``"auto"`` groups and a total, step by step."""
    params = {tag: LIGHTNING_NORM.match(tag)["param"] for tag in tagged}
    if not params:
        return {}
    groups = dict(zip(params, group_names(list(params.values()))))
    squares: dict[str, dict[int, float]] = {}
    for tag, points in tagged.items():
        for step, value in points:
            for key in (groups[tag], "total"):
                squares.setdefault(key, {}).setdefault(step, 0.0)
                squares[key][step] += value * value
    return {k: sorted((s, math.sqrt(v)) for s, v in steps.items()) for k, steps in squares.items()}


def _group_order(name: str) -> tuple[int, str, int, str]:
    """Indexed stacks by index, then the other groups, then total and total_clipped."""
    match = INDEXED.match(name)
    if name in SUMMARY:
        return 2, "", SUMMARY.index(name), name
    if match:
        return 0, match["stem"], int(match["k"]), name
    return 1, name, 0, name
