"""Write ``results/depth.md`` and ``results/depth.png`` from the depth-sweep rows."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from experiments.ablation_report import provenance

VARIANT_ORDER = ["plain/default", "plain/orthogonal", "residual/default", "residual/orthogonal"]


def f(row: dict[str, Any], key: str) -> float:
    try:
        return float(row[key])
    except (KeyError, TypeError, ValueError):
        return math.nan


def table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| variant (skip / init) | depth | window | grad ratio first/last, start | … end | "
             "time reach (lags), start | … end | test rel. MAE | epoch time (s) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        lines.append(f"| {row['variant']} | {row['depth']} | {row['window']} | {f(row, 'ratio_start'):.3g} | "
                     f"{f(row, 'ratio_end'):.3g} | {int(f(row, 'reach_start'))} | {int(f(row, 'reach_end'))} | "
                     f"{f(row, 'test_rel_mae'):.2f} | {f(row, 'epoch_time_s'):.2f} |")
    return lines


def ordered(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rank = {v: i for i, v in enumerate(VARIANT_ORDER)}
    return sorted(rows, key=lambda r: (rank.get(r["variant"], 9), int(r["window"]), int(r["depth"])))


def init_with_residuals(rows: list[dict[str, Any]]) -> list[str]:
    """Residual stack at its deepest (window 60): torch's default init vs orthogonal, side by side."""
    deep = [r for r in rows if int(r["window"]) == 60 and r["variant"].startswith("residual/")]
    if not deep:
        return ["(no residual rows)"]
    depth = max(int(r["depth"]) for r in deep)
    pair = {r["variant"]: r for r in deep if int(r["depth"]) == depth}
    lines = [f"Residual stack, depth {depth}, window 60: does orthogonal init still matter once the skips are there?", "",
             "| init | grad ratio first/last, start | … end | time reach, start | … end | test rel. MAE |",
             "| --- | --- | --- | --- | --- | --- |"]
    for variant in ("residual/default", "residual/orthogonal"):
        if variant in pair:
            r = pair[variant]
            lines.append(f"| {variant.split('/')[1]} | {f(r, 'ratio_start'):.3g} | {f(r, 'ratio_end'):.3g} | "
                         f"{int(f(r, 'reach_start'))} | {int(f(r, 'reach_end'))} | {f(r, 'test_rel_mae'):.2f} |")
    return lines


def write_depth_report(rows: list[dict[str, Any]], out: Path, args: argparse.Namespace) -> list[Path]:
    rows = ordered(rows)
    by_depth = [r for r in rows if int(r["window"]) == 60]
    by_window = [r for r in rows if int(r["depth"]) == args.sweep_depth]
    command = "python -m experiments.ablation " + " ".join(getattr(args, "argv_text", []))
    lines = [
        "# Depth / window sweep: where gradients vanish", "",
        f"Command: `{command.strip()}`; rebuild from `depth.csv` alone with `python -m experiments.results_pages`.", "",
        *provenance(rows), "",
        f"Settings (cheap on purpose, so read trends, not decimals): {args.sweep_width} units per LSTM layer, "
        f"{args.sweep_epochs} epochs, seed {args.sweep_seed}, one run per cell; otherwise `configs/clipped.yaml` "
        "(embedded gold, last 1,247 days, level target, horizon 1, batch 32, Adam 1e-3, dropout 0.2, clipnorm 1.0). "
        "Depths are swept at window 60, windows at depth "
        f"{args.sweep_depth}. `plain` = no skip connections, `residual` = `x + lstm_i(x)`; `default` = torch's "
        "init, `orthogonal` = per-gate orthogonal weights and forget bias 1.", "",
        "- **grad ratio first/last** = ‖∇ lstm_0‖ / ‖∇ lstm_{k−1}‖ (true L2 norms of each layer's parameter "
        "gradients): at the first step (before any update) and the median over the last epoch's steps. "
        "≪ 1 means the first layer receives almost nothing: vanishing across depth.",
        "- **time reach** = oldest lag (days before the target) whose ‖∂L/∂x_t‖ is ≥ 1 % of the largest, on 256 "
        "fixed train windows (`lstm_grad.diagnostics.time_grad_profile` / `time_reach`), at init and after training. "
        "A reach far below the window means the early days of the window get almost no gradient.",
        "- **test rel. MAE** (MAE / persistence MAE) of the final weights, the network as trained (no shrink, no early stopping in this sweep; persistence = 1).", "",
        *([(out / "depth_notes.md").read_text().strip(), ""] if (out / "depth_notes.md").exists() else []),
        "## Depth (window 60)", "", *table(by_depth), "",
        f"## Window (depth {args.sweep_depth})", "", *table(by_window), "",
        "## Orthogonal init in a residual stack", "", *init_with_residuals(rows), "",
    ]
    md = out / "depth.md"
    md.write_text("\n".join(lines) + "\n")
    png = out / "depth.png"
    plot(by_depth, by_window, args, png)
    return [md, png]


def plot(by_depth: list[dict[str, Any]], by_window: list[dict[str, Any]], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, (ratio_ax, reach_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for variant in VARIANT_ORDER:
        rows = [r for r in by_depth if r["variant"] == variant]
        if rows:
            depths = [int(r["depth"]) for r in rows]
            line, = ratio_ax.plot(depths, [f(r, "ratio_start") for r in rows], marker="o", label=f"{variant}, start")
            ratio_ax.plot(depths, [f(r, "ratio_end") for r in rows], marker="s", linestyle="--",
                          color=line.get_color(), label=f"{variant}, end")
        rows = [r for r in by_window if r["variant"] == variant]
        if rows:
            reach_ax.plot([int(r["window"]) for r in rows], [f(r, "reach_end") for r in rows], marker="o", label=variant)
    ratio_ax.set(xscale="log", yscale="log", xlabel="LSTM layers (window 60)", ylabel="‖∇ first layer‖ / ‖∇ last layer‖",
                 title="gradient ratio across depth (solid: first step, dashed: last epoch)")
    ratio_ax.set_xticks(args.depths, [str(d) for d in args.depths])
    ratio_ax.set_xticks([], minor=True)  # no 3x10^0-style minor labels between the depths
    ratio_ax.axhline(1.0, color="grey", linewidth=0.8)
    ratio_ax.legend(fontsize=7)
    windows = sorted({int(r["window"]) for r in by_window})
    if windows:
        reach_ax.plot(windows, windows, color="grey", linewidth=0.8, linestyle=":", label="whole window")
    reach_ax.set(xlabel=f"window (days), depth {args.sweep_depth}", ylabel="time reach after training (lags)",
                 title="oldest lag with ≥ 1 % of the largest input gradient")
    reach_ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
