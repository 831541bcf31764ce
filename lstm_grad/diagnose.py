"""Read runs' TensorBoard event files back and say what is wrong with their gradients, where, and what to do.

``python -m lstm_grad.diagnose RUN_DIR... [--json PATH] [--strict [error|warning]] [--png PATH | --no-png]``

Any TensorBoard run with ``grad_norm/*`` tags (ours, or a user's own model with
``lstm_grad.GradientMonitor``), or only Lightning's own ``grad_2.0_norm/<parameter>`` tags (summed
into the same groups). Per run: each group's first / median / last logged norm in the model's order,
the clip rate, non-finite steps and the time reach, then the doctor's findings
(:func:`lstm_grad.diagnostics.doctor.examine` on :func:`~lstm_grad.diagnostics.run_signals.signals_of`),
most severe first: what and where, the deciding numbers with their threshold and its source, the fix.
A run with no warning or error gets one ``gradients healthy: ...`` line with its evidence.

``--json PATH`` writes ``{"runs": [{"run": DIR, "findings": [{kind, severity, groups, steps, summary,
fix, evidence}, ...]}]}`` in the same order. The PNG (beside the run, or ``--png``) has one column per
run: every group's norm over steps in its own colour, legend in model order, the groups a finding names
drawn thicker, a vertical line at an exploding / loss-spike / non-finite step, the findings' kinds in
the title; below, the epoch x lag heat maps of the gradient through time on one shared colour scale.
``--strict`` exits 1 when an error remains, ``--strict warning`` when a warning or an error does; a
folder without event files is a one-line error and exit 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lstm_grad.diagnostics.doctor import SEVERITIES, Finding, Signals, examine
from lstm_grad.diagnostics.findings import json_safe
from lstm_grad.diagnostics.events import DiagnoseError, RunReport, find_event_dir, read_run
from lstm_grad.diagnostics.run_signals import signals_of
from lstm_grad.diagnostics.thresholds import VANISH_ABS
from lstm_grad.errors import DataError
from lstm_grad.training.entry import run_command

__all__ = ["DiagnoseError", "Diagnosis", "RunReport", "diagnose_run", "find_event_dir", "finding_lines",
           "findings_json", "format_reports", "format_run", "main", "plot_reports", "read_run", "report_figure"]

STRICT_LEVELS = ("error", "warning")
EMPHASIS = {"vanishing_depth": ("first", "last"), "exploding": ("moved first",), "loss_spike": ("moved first",),
            "gate_saturation": ("gates closed",), "nonfinite": ("non-finite",)}
MARKS = {"exploding": "tab:red", "loss_spike": "tab:purple", "nonfinite": "black"}


@dataclass
class Diagnosis:
    """One run read back: its scalars, the doctor's signals and findings, its groups in model order."""

    report: RunReport
    signals: Signals
    findings: list[Finding]
    order: list[str]  # every group with norms: the model's order (doctor/context), then total, total_clipped


def diagnose_run(run_dir: str | Path, threshold: float = VANISH_ABS) -> Diagnosis:
    """Read one run (:func:`read_run`) and examine it. The order is the ``doctor/context`` groups' (the
    monitor's model order) when the run has it, else the reader's (indexed stacks by index)."""
    report = read_run(run_dir, threshold)
    signals = _finite_signals(signals_of(report))
    known = [g for g in signals.groups if g in report.norms]
    order = known + [g for g in report.norms if g not in known]
    return Diagnosis(report, signals, examine(signals), order)


def _finite_signals(signals: Signals) -> Signals:
    """Drop the NaN / Inf points from every series the doctor takes statistics of, in place. The spike rule
    skips them itself, but the medians of the other rules (depth ratio, clip rate, update ratios, gates) do
    not, and an Inf total norm would pass the absolute ``exploding`` bound: a non-finite value is the
    ``nonfinite`` rule's alone. A dropped loss or norm point on a step the run's non-finite events do not
    name becomes such an event, so the run still gets its ``nonfinite`` error (a run with only Lightning's
    ``grad_2.0_norm`` tags has no other record of it)."""
    seen: dict[int, list[str]] = {}

    def finite(series: dict[int, float], name: str | None = None) -> dict[int, float]:
        for step in (s for s, v in series.items() if not math.isfinite(v)):
            if name is not None:
                seen.setdefault(step, []).append(name)
        return {s: v for s, v in series.items() if math.isfinite(v)}

    signals.loss = finite(signals.loss, "the training loss")
    signals.norms = {group: finite(series, group) for group, series in signals.norms.items()}
    signals.updates = {group: finite(series) for group, series in signals.updates.items()}
    signals.gates = {key: finite(series) for key, series in signals.gates.items()}
    signals.clipped, signals.reach = finite(signals.clipped), finite(signals.reach)
    signals.val_rel_mae = finite(signals.val_rel_mae)
    known = {event.get("step") for event in signals.nonfinite}
    for step in sorted(set(seen) - known):
        groups = [g for g in seen[step] if g in signals.norms and g not in ("total", "total_clipped")]
        signals.nonfinite.append({"step": step, "groups": groups,
                                  "origin": f"{', '.join(seen[step])} non-finite in the event files"})
    signals.nonfinite.sort(key=lambda event: event["step"])
    return signals


def _short(name: str) -> str:
    parts = Path(name).parts
    return "/".join(parts[-2:]) if len(parts) >= 2 else name


def _clip_rate(report: RunReport) -> str:
    rate = report.clip_rate()
    return "n/a" if rate is None else f"{rate:.1%}"


def _reach(d: Diagnosis) -> str:
    reach = d.report.reach
    if not reach:
        return "n/a"
    window = f" of {d.signals.window}" if d.signals.window else ""
    return f"{reach[0]:.0f} -> {reach[-1]:.0f}{window}"


def _nonfinite(d: Diagnosis) -> int:
    """Steps with a non-finite gradient or loss: the monitor's count, or the doctor's events if more."""
    return max(d.report.nonfinite, len({event["step"] for event in d.signals.nonfinite}))


def finding_lines(finding: Finding) -> list[str]:
    """A finding in plain words (:meth:`Finding.lines`); the healthy verdict as one line with its evidence."""
    if finding.kind != "healthy":
        return finding.lines()
    numbers = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in finding.evidence.items() if k != "source")
    return [f"{finding.summary} ({numbers}; {finding.evidence.get('source', '')})"]


def format_run(d: Diagnosis) -> list[str]:
    """One run's block: the per-group table in model order, the run's health line, its ranked findings."""
    report = d.report
    steps = len(report.norms[d.order[0]])
    col = max(14, *(len(group) + 2 for group in d.order))
    source = "" if report.source == "grad_norm" else f", from {report.source}"
    lines = [f"== {_short(report.name)}  ({steps} logged steps{source})",
             f"{'group':<{col}}{'first':>11}{'median':>11}{'last':>11}{'< ' + format(report.threshold, 'g'):>9}"]
    for group in d.order:
        first, median, last = report.stats(group)
        lines.append(f"{group:<{col}}{first:>11.3e}{median:>11.3e}{last:>11.3e}{report.vanishing_steps(group):>9d}")
    lines.append(f"clip rate {_clip_rate(report)}; non-finite steps {_nonfinite(d)}; "
                 f"time reach (steps) {_reach(d)}")
    lines.append(f"findings ({len(d.findings)}, most severe first):")
    for rank, finding in enumerate(d.findings, 1):
        first_line, *rest = finding_lines(finding)
        lines.append(f"  {rank}. {first_line}")
        lines.extend(f"  {line}" for line in rest)
    return lines


def format_reports(diagnoses: Sequence[Diagnosis]) -> str:
    """Render every run's block; several runs get a side-by-side comparison first."""
    lines: list[str] = []
    if len(diagnoses) > 1:
        width = max(22, *(len(_short(d.report.name)) + 2 for d in diagnoses))
        rows = {"logged steps": [str(len(d.report.norms[d.order[0]])) for d in diagnoses],
                "clip rate": [_clip_rate(d.report) for d in diagnoses],
                "non-finite steps": [str(_nonfinite(d)) for d in diagnoses],
                "time reach (steps)": [_reach(d) for d in diagnoses]}
        rows.update({f"{severity}s": [str(sum(f.severity == severity for f in d.findings)) for d in diagnoses]
                     for severity in STRICT_LEVELS})
        lines.append(f"{'compared':<20}" + "".join(f"{_short(d.report.name):>{width}}" for d in diagnoses))
        lines.extend(f"{label:<20}" + "".join(f"{c:>{width}}" for c in cells) for label, cells in rows.items())
        lines.append("")
    for d in diagnoses:
        lines.extend(format_run(d))
        lines.append("")
    return "\n".join(lines).rstrip()


def findings_json(diagnoses: Sequence[Diagnosis]) -> dict[str, Any]:
    """The ``--json`` document: every run's findings (:meth:`Finding.to_json`), most severe first."""
    return {"runs": [{"run": d.report.name, "findings": [json_safe(f.to_json()) for f in d.findings]}
                     for d in diagnoses]}


def _figure_notes(d: Diagnosis) -> tuple[dict[str, str], list[tuple[int, str, str]], list[str]]:
    """What the PNG marks for a run's findings: thick groups with a note, vertical lines, annotations."""
    emphasis: dict[str, str] = {}
    marks: list[tuple[int, str, str]] = []
    notes: list[str] = []
    for finding in d.findings:
        labels = EMPHASIS.get(finding.kind, ())
        labels = labels if len(labels) == len(finding.groups) else labels[:1] * len(finding.groups)
        for group, label in zip(finding.groups, labels):
            if group in d.report.norms:
                emphasis.setdefault(group, f"{finding.kind}: {label}")
        if finding.kind in MARKS and finding.steps:
            for step in sorted(set(finding.steps)):
                marks.append((step, f"{finding.kind} at step {step}", MARKS[finding.kind]))
        if finding.kind == "vanishing_depth":
            first, last = finding.groups
            notes.append(f"{first} / {last} = {finding.evidence['ratio_first_last']:.2g} "
                         f"(threshold {finding.evidence['threshold']:g})")
    return emphasis, marks, notes


def report_figure(diagnoses: Sequence[Diagnosis]) -> Any:
    """Build the figure: one column per run, the norms over steps above, the heat maps (if any) below on
    one colour scale (:func:`~lstm_grad.diagnostics.figures.log_range` over every run's profiles)."""
    from lstm_grad.diagnostics.figures import draw_heatmap, draw_norms, log_range, pyplot

    plt = pyplot()
    with_maps = any(d.report.profiles for d in diagnoses)
    figure, axes = plt.subplots(2 if with_maps else 1, len(diagnoses), squeeze=False, layout="constrained",
                                figsize=(7.5 * len(diagnoses), 8.5 if with_maps else 4.5))
    vmin, vmax = log_range([[p for _, _, p in d.report.profiles] for d in diagnoses if d.report.profiles])
    maps = []
    for column, d in enumerate(diagnoses):
        axis = axes[0][column]
        emphasis, marks, notes = _figure_notes(d)
        draw_norms(axis, d.report.norms, d.order, emphasis=emphasis, marks=marks, threshold=d.report.threshold)
        kinds = ", ".join(f.kind for f in d.findings)
        axis.set_title(f"{_short(d.report.name)}\n{kinds}", fontsize=9)
        for row, note in enumerate(notes):
            axis.text(0.01, 0.02 + 0.06 * row, note, transform=axis.transAxes, fontsize=8,
                      bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
        if with_maps:
            below = axes[1][column]
            if not d.report.profiles:
                below.set_axis_off()
                continue
            maps.append(below)
            image = draw_heatmap(below, [label for _, label, _ in d.report.profiles],
                                 [profile for _, _, profile in d.report.profiles], "gradient through time",
                                 vmin=vmin, vmax=vmax)
            for finding in (f for f in d.findings if f.kind == "short_memory"):
                below.axvline(finding.evidence["reach"], color="white", linestyle="--", linewidth=1.2)
                below.set_title(f"gradient through time: reach {finding.evidence['reach']:.0f} of "
                                f"{finding.evidence['window']} (short_memory)")
    if maps:
        figure.colorbar(image, ax=maps, label="|dL/dx_t|" + (" (one scale for all runs)" if len(maps) > 1 else ""))
    plt.close(figure)
    return figure


def plot_reports(diagnoses: Sequence[Diagnosis], path: Path) -> Path:
    """Write :func:`report_figure` to ``path`` (PNG); return the path."""
    figure = report_figure(diagnoses)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    return path


class NotARunError(DataError):
    """A RUN_DIR that cannot be diagnosed (no event files, no gradient norms): a bad argument, exit status 2."""

    exit_status = 2


def _strict_bare(argv: Sequence[str]) -> list[str]:
    """Give a bare ``--strict`` its default level, so ``--strict RUN_DIR`` does not read the folder as a level."""
    args = list(argv)
    return [("--strict=error" if a == "--strict" and (i + 1 == len(args) or args[i + 1] not in STRICT_LEVELS) else a)
            for i, a in enumerate(args)]


def diagnose_main(argv: Sequence[str]) -> int:
    """Run the command on ``argv``; return 1 when ``--strict`` finds a finding at or above its level."""
    parser = argparse.ArgumentParser(prog="python -m lstm_grad.diagnose", description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folder(s), e.g. runs/residual/version_0")
    parser.add_argument("--threshold", type=float, default=VANISH_ABS,
                        help=f"vanishing threshold of the table's '< thr' column (default {VANISH_ABS:g})")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the findings as JSON to PATH")
    parser.add_argument("--png", type=Path, default=None,
                        help="figure path (default: RUN_DIR/grad_norms.png, or ./grad_norms_compare.png for several)")
    parser.add_argument("--no-png", action="store_true", help="do not write the figure")
    parser.add_argument("--strict", nargs="?", choices=STRICT_LEVELS, default=None, metavar="LEVEL",
                        help="exit 1 when a finding of LEVEL or worse remains: error (default when bare) or warning")
    args = parser.parse_args(_strict_bare(argv))
    try:
        diagnoses = [diagnose_run(run_dir, args.threshold) for run_dir in args.run_dirs]
    except DiagnoseError as error:
        raise NotARunError(str(error)) from None
    print(format_reports(diagnoses))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(findings_json(diagnoses), indent=1) + "\n")
        print(f"wrote {args.json}")
    if not args.no_png:
        several = Path("grad_norms_compare.png")
        default = Path(diagnoses[0].report.name) / "grad_norms.png" if len(diagnoses) == 1 else several
        print(f"wrote {plot_reports(diagnoses, args.png or default)}")
    if args.strict is None:
        return 0
    levels = SEVERITIES[:SEVERITIES.index(args.strict) + 1]
    failing = [f"{_short(d.report.name)} ({', '.join(f.kind for f in d.findings if f.severity in levels)})"
               for d in diagnoses if any(f.severity in levels for f in d.findings)]
    if failing:
        print(f"strict ({args.strict}): {' or '.join(levels)} findings in {'; '.join(failing)}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command (``argv``: default the command line) through the commands' one guard
    (:func:`~lstm_grad.training.entry.run_command`); return its exit status."""
    return run_command(diagnose_main, argv)


if __name__ == "__main__":
    sys.exit(main())
