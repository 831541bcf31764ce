"""Read runs' TensorBoard event files back and report gradient health per layer group.

``python -m lstm_grad.diagnose runs/baseline/version_0 runs/residual/version_0 [--strict]``

Any TensorBoard run with ``grad_norm/*`` tags (ours, or a user's own module with
``lstm_grad.GradientMonitor``), or only Lightning's own ``grad_2.0_norm/<parameter>`` tags (summed
into the same groups). Per group: first / median / last logged norm and the logged steps under the
vanishing threshold. Per run: the depth ratio (median norm of the first layer of the largest
indexed stack, ``lstm_0`` / ``net.l0`` / ``blocks.0``, over that of its last: << 1 means the
gradient fades on its way down), the clip rate (share of logged steps where clipping changed the
gradient), non-finite steps, and the time reach (``grad_time/reach``: how many steps back the
gradient still arrives, first probe -> last probe). Several runs are printed side by side. A PNG of
every group's norm over steps (log scale), with the epoch x lag heat map of the gradient through
time below when the run has ``TimeGradientProbe`` profiles, is written beside the run (or to
``--png``). ``--strict`` exits 1 when a run vanished or went non-finite; a folder without event
files is a one-line error and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lstm_grad.diagnostics.events import DiagnoseError, RunReport, find_event_dir, read_run

__all__ = ["DiagnoseError", "RunReport", "find_event_dir", "format_reports", "main", "plot_reports", "read_run"]


def _short(name: str) -> str:
    parts = Path(name).parts
    return "/".join(parts[-2:]) if len(parts) >= 2 else name


def format_reports(reports: Sequence[RunReport]) -> str:
    """Render the per-group tables and the side-by-side summary as text."""
    lines: list[str] = []
    for report in reports:
        steps = len(next(iter(report.norms.values())))
        col = max(14, *(len(layer) + 2 for layer in report.norms))
        source = "" if report.source == "grad_norm" else f", from {report.source}"
        lines.append(f"== {_short(report.name)}  ({steps} logged steps, vanishing threshold "
                     f"{report.threshold:g}{source})")
        lines.append(f"{'group':<{col}}{'first':>11}{'median':>11}{'last':>11}{'< thr':>8}")
        for layer in report.norms:
            first, median, last = report.stats(layer)
            lines.append(f"{layer:<{col}}{first:>11.3e}{median:>11.3e}{last:>11.3e}{report.vanishing_steps(layer):>8d}")
        lines.append("")
    width = max(22, *(len(_short(r.name)) + 2 for r in reports))
    lines.append(f"{'summary':<26}" + "".join(f"{_short(r.name):>{width}}" for r in reports))
    rows = {
        "depth ratio (first/last)": [_num(r.depth_ratio()) for r in reports],
        "steps < threshold (any)": [str(r.steps_vanishing()) for r in reports],
        "clip rate": [_num(r.clip_rate(), ".1%") for r in reports],
        "non-finite steps": [str(r.nonfinite) for r in reports],
        "time reach (steps)": [" -> ".join(f"{v:.0f}" for v in (r.reach[0], r.reach[-1])) if r.reach else "n/a"
                               for r in reports],
    }
    for label, cells in rows.items():
        lines.append(f"{label:<26}" + "".join(f"{c:>{width}}" for c in cells))
    return "\n".join(lines)


def _num(value: float | None, spec: str = ".3g") -> str:
    return "n/a" if value is None else format(value, spec)


def plot_reports(reports: Sequence[RunReport], path: Path) -> Path:
    """Write one column per run: every group's gradient norm over steps (log scale) and, for runs with
    ``TimeGradientProbe`` profiles, the epoch x lag heat map of ‖∂L/∂x_t‖ (log colour) below it."""
    from lstm_grad.diagnostics.figures import pyplot, draw_heatmap

    plt = pyplot()
    with_maps = any(r.profiles for r in reports)
    figure, axes = plt.subplots(2 if with_maps else 1, len(reports), figsize=(6 * len(reports), 8 if with_maps else 4),
                                squeeze=False)
    for column, report in enumerate(reports):
        axis = axes[0][column]
        for layer in report.norms:
            if layer == "total_clipped":
                continue
            steps, values = zip(*report.norms[layer])
            axis.semilogy(steps, [max(v, 1e-30) for v in values], label=layer,
                          linestyle="--" if layer == "total" else "-", linewidth=1)
        axis.axhline(report.threshold, color="black", linewidth=0.6, linestyle=":", label="vanishing threshold")
        axis.set_title(_short(report.name))
        axis.set_xlabel("optimizer step")
        axis.set_ylabel("gradient L2 norm")
        axis.legend(fontsize=7, loc="best")
        if with_maps:
            below = axes[1][column]
            if report.profiles:
                image = draw_heatmap(below, [label for _, label, _ in report.profiles],
                                     [profile for _, _, profile in report.profiles], "gradient through time")
                figure.colorbar(image, ax=below, label="|dL/dx_t|")
            else:
                below.set_axis_off()
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
