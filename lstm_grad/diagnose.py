"""Read a run's TensorBoard event files back and report gradient health per layer.

``python -m lstm_grad.diagnose runs/baseline/version_0 runs/residual/version_0 [--strict]``

Per layer: first / median / last logged ``grad_norm/<layer>`` and the logged steps under the
vanishing threshold. Per run: the depth ratio (median norm of the first recurrent layer / that of
the last: << 1 means the gradient fades on its way down the stack), the clip rate (share of logged
steps where clipping changed the gradient), non-finite steps, and the time reach
(``grad_time/reach``: how many days back the gradient still arrives, first probe -> last probe).
Several runs are printed side by side. A PNG of every layer's norm over steps (log scale) is
written beside the run (or to ``--png``). ``--strict`` exits 1 when a run vanished or went
non-finite; a folder without event files is a one-line error and exit 2.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

RECURRENT = re.compile(r"^(lstm|gru)_(\d+)$")
SUMMARY = ("total", "total_clipped")


class DiagnoseError(ValueError):
    """A run folder that cannot be diagnosed (no event files, no gradient norms)."""


@dataclass
class RunReport:
    """Scalars of one run: ``norms[layer] = [(step, value), ...]`` and the health summaries."""

    name: str
    norms: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    clipped: list[float] = field(default_factory=list)
    nonfinite: int = 0
    reach: list[float] = field(default_factory=list)
    threshold: float = 1e-5

    def layers(self) -> list[str]:
        return [k for k in self.norms if k not in SUMMARY]

    def recurrent(self) -> list[str]:
        found = [k for k in self.norms if RECURRENT.match(k)]
        return sorted(found, key=lambda k: int(RECURRENT.match(k).group(2)))

    def stats(self, layer: str) -> tuple[float, float, float]:
        values = [v for _, v in self.norms[layer]]
        return values[0], statistics.median(values), values[-1]

    def vanishing_steps(self, layer: str) -> int:
        return sum(v < self.threshold for _, v in self.norms[layer])

    def depth_ratio(self) -> float | None:
        rec = self.recurrent()
        if len(rec) < 2:
            return None
        last = self.stats(rec[-1])[1]
        return self.stats(rec[0])[1] / last if last > 0 else float("inf")

    def clip_rate(self) -> float | None:
        return sum(self.clipped) / len(self.clipped) if self.clipped else None

    def steps_vanishing(self) -> int:
        """Logged steps on which at least one layer was under the threshold."""
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


def read_run(run_dir: str | Path, threshold: float = 1e-5) -> RunReport:
    """Load one run's gradient scalars with TensorBoard's own ``EventAccumulator`` (all events kept)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = find_event_dir(run_dir)
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    accumulator.Reload()
    tags = accumulator.Tags().get("scalars", [])

    def series(tag: str) -> list[tuple[int, float]]:
        by_step = {e.step: e.value for e in accumulator.Scalars(tag)}  # a resumed run may repeat a step
        return sorted(by_step.items())

    # Lightning re-writes a step's cached on_step value when a later logged step does not log that key,
    # so a non-finite step carries the previous step's norms: drop those steps.
    bad = {s for s, v in series("grad_health/nonfinite") if v > 0} if "grad_health/nonfinite" in tags else set()
    report = RunReport(name=str(folder), threshold=threshold, nonfinite=len(bad))
    for tag in tags:
        if tag.startswith("grad_norm/"):
            report.norms[tag.split("/", 1)[1]] = [(s, v) for s, v in series(tag) if s not in bad]
    if not report.layers():
        raise DiagnoseError(f"{folder}: the event files hold no grad_norm/* scalars; train with a logger and "
                            "trainer.log_every_n_steps smaller than the number of steps")
    report.norms = {k: report.norms[k] for k in sorted(report.norms, key=_layer_order)}
    if "grad_health/clipped" in tags:
        report.clipped = [v for s, v in series("grad_health/clipped") if s not in bad]
    if "grad_time/reach" in tags:
        report.reach = [v for _, v in series("grad_time/reach")]
    return report


def _layer_order(name: str) -> tuple[int, int, str]:
    match = re.search(r"_(\d+)$", name)
    group = 2 if name in SUMMARY else 1 if name == "head" else 0
    return group, int(match.group(1)) if match else 0, name


def _short(name: str) -> str:
    parts = Path(name).parts
    return "/".join(parts[-2:]) if len(parts) >= 2 else name


def format_reports(reports: Sequence[RunReport]) -> str:
    """Render the per-layer tables and the side-by-side summary as text."""
    lines: list[str] = []
    for report in reports:
        steps = len(next(iter(report.norms.values())))
        lines.append(f"== {_short(report.name)}  ({steps} logged steps, vanishing threshold {report.threshold:g})")
        lines.append(f"{'layer':<14}{'first':>11}{'median':>11}{'last':>11}{'< thr':>8}")
        for layer in report.norms:
            first, median, last = report.stats(layer)
            lines.append(f"{layer:<14}{first:>11.3e}{median:>11.3e}{last:>11.3e}{report.vanishing_steps(layer):>8d}")
        lines.append("")
    width = max(22, *(len(_short(r.name)) + 2 for r in reports))
    lines.append(f"{'summary':<26}" + "".join(f"{_short(r.name):>{width}}" for r in reports))
    rows = {
        "depth ratio (first/last)": [_num(r.depth_ratio()) for r in reports],
        "steps < threshold (any)": [str(r.steps_vanishing()) for r in reports],
        "clip rate": [_num(r.clip_rate(), ".1%") for r in reports],
        "non-finite steps": [str(r.nonfinite) for r in reports],
        "time reach (days)": [" -> ".join(f"{v:.0f}" for v in (r.reach[0], r.reach[-1])) if r.reach else "n/a"
                              for r in reports],
    }
    for label, cells in rows.items():
        lines.append(f"{label:<26}" + "".join(f"{c:>{width}}" for c in cells))
    return "\n".join(lines)


def _num(value: float | None, spec: str = ".3g") -> str:
    return "n/a" if value is None else format(value, spec)


def plot_reports(reports: Sequence[RunReport], path: Path) -> Path:
    """Write one panel per run: every layer's gradient norm over steps, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(1, len(reports), figsize=(6 * len(reports), 4), sharey=True, squeeze=False)
    for axis, report in zip(axes[0], reports):
        for layer in report.norms:
            if layer == "total_clipped":
                continue
            steps, values = zip(*report.norms[layer])
            axis.semilogy(steps, [max(v, 1e-30) for v in values], label=layer,
                          linestyle="--" if layer == "total" else "-", linewidth=1)
        axis.axhline(report.threshold, color="black", linewidth=0.6, linestyle=":", label="vanishing threshold")
        axis.set_title(_short(report.name))
        axis.set_xlabel("optimizer step")
        axis.legend(fontsize=7, loc="best")
    axes[0][0].set_ylabel("gradient L2 norm")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lstm_grad.diagnose", description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folder(s), e.g. runs/residual/version_0")
    parser.add_argument("--threshold", type=float, default=1e-5, help="vanishing threshold (default 1e-5)")
    parser.add_argument("--png", type=Path, default=None,
                        help="figure path (default: RUN_DIR/grad_norms.png, or ./grad_norms_compare.png for several)")
    parser.add_argument("--no-png", action="store_true", help="do not write the figure")
    parser.add_argument("--strict", action="store_true", help="exit 1 when vanishing or non-finite gradients were seen")
    args = parser.parse_args(argv)
    try:
        reports = [read_run(run_dir, args.threshold) for run_dir in args.run_dirs]
    except DiagnoseError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_reports(reports))
    if not args.no_png:
        default = Path(reports[0].name) / "grad_norms.png" if len(reports) == 1 else Path("grad_norms_compare.png")
        print(f"wrote {plot_reports(reports, args.png or default)}")
    unhealthy = [_short(r.name) for r in reports if r.vanished() or r.nonfinite]
    if args.strict and unhealthy:
        print(f"strict: vanishing or non-finite gradients in {', '.join(unhealthy)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
