"""Write a walk-forward backtest's table (CSV + Markdown with command and commit), predictions and figure."""
from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

COLUMNS = ["fold", "train_start", "train_end", "val_start", "val_end", "test_start", "test_end", "windows",
           "mae", "naive_mae", "mase", "dm_p", "dir_acc", "epochs"]


def markdown_table(table: pd.DataFrame) -> str:
    """Render the backtest table as Markdown (MAE in price units, MASE, DM p, directional accuracy %)."""
    lines = ["| fold | train | validation | test | windows | MAE | persistence MAE | MASE | DM p | dir. acc. |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in table.itertuples():
        train = f"{row.train_start}..{row.train_end}" if row.train_start else "—"
        val = f"{row.val_start}..{row.val_end}" if row.val_start else "—"
        lines.append(f"| {row.fold} | {train} | {val} | {row.test_start}..{row.test_end} | {row.windows} | "
                     f"{row.mae:.3f} | {row.naive_mae:.3f} | {row.mase:.4f} | {row.dm_p:.3f} | {100 * row.dir_acc:.1f} % |")
    return "\n".join(lines)


def predictions_frame(results: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per (fold, test window, step): date, step, actual, forecast, persistence (price units)."""
    parts = []
    for r in results:
        n, horizon = r["actual"].shape
        parts.append(pd.DataFrame({"fold": r["fold"], "date": r["dates"].reshape(-1),
                                   "step": list(range(1, horizon + 1)) * n, "actual": r["actual"].reshape(-1),
                                   "forecast": r["pred"].reshape(-1), "persistence": r["anchor"].repeat(horizon)}))
    return pd.concat(parts, ignore_index=True)


def figure(table: pd.DataFrame, predictions: pd.DataFrame) -> Any:
    """Per-fold MASE against the persistence line at 1, and step-1 forecasts vs actual over all test spans."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    folds, pooled = table[table["fold"] != "all"], table[table["fold"] == "all"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), gridspec_kw={"height_ratios": [1, 2]})
    positions = list(range(len(folds)))
    top.bar(positions, folds["mase"], color="tab:orange", label="model MASE per fold")
    top.set_xticks(positions, [f"{r.fold}: {r.test_start[:7]}..{r.test_end[:7]}" for r in folds.itertuples()])
    top.axhline(1.0, color="black", linewidth=1, label="persistence (MASE 1)")
    if len(pooled):
        top.axhline(float(pooled["mase"].iloc[0]), color="tab:blue", linestyle="--", linewidth=1,
                    label=f"pooled MASE {float(pooled['mase'].iloc[0]):.3f}")
    low, high = float(folds["mase"].min()), float(folds["mase"].max())
    top.set_ylim(min(0.95, low - 0.02), max(1.05, high + 0.02))
    top.set_xlabel("fold: test span")
    top.set_ylabel("MASE")
    top.legend(loc="best", fontsize=8)
    first = predictions[predictions["step"] == 1]
    for k, (fold, part) in enumerate(first.groupby("fold", sort=True)):
        dates = pd.to_datetime(part["date"])
        bottom.plot(dates, part["actual"], color="black", linewidth=1, label="actual" if k == 0 else None)
        bottom.plot(dates, part["forecast"], color="tab:orange", linewidth=0.9,
                    label="forecast (step 1)" if k == 0 else None)
        bottom.axvspan(dates.iloc[0], dates.iloc[-1], color="tab:gray" if k % 2 else "white", alpha=0.12)
    bottom.set_ylabel("price")
    bottom.set_title("Test spans: forecast vs actual")
    bottom.legend(loc="best", fontsize=8)
    bottom.tick_params(axis="x", labelrotation=30)  # fig.autofmt_xdate would hide the fold labels above
    fig.tight_layout()
    plt.close(fig)
    return fig


def write_outputs(results: Sequence[dict[str, Any]], pooled_row: dict[str, Any], output: str | Path,
                  command: Sequence[str], commit: str) -> pd.DataFrame:
    """Write backtest.csv, backtest_predictions.csv, backtest.md and backtest.png under ``output``.

    ``commit`` is :func:`git_commit` taken when the run started (the code that ran)."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame([{k: r[k] for k in COLUMNS} for r in [*results, pooled_row]], columns=COLUMNS)
    table.to_csv(output / "backtest.csv", index=False, float_format="%.6g")
    predictions = predictions_frame(results)
    predictions.to_csv(output / "backtest_predictions.csv", index=False, float_format="%.6f")
    figure(table, predictions).savefig(output / "backtest.png", dpi=120)
    first = results[0]
    horizon = first["actual"].shape[1]
    text = [
        "# Walk-forward backtest", "",
        f"{len(results)} folds; each tests on {int(first['windows']) + horizon - 1} consecutive rows (trading days) "
        f"at horizon {horizon}, the test spans consecutive and ending at the series' last day. Each fold "
        "trains from scratch on the rows before its test span: validation (early stopping, best checkpoint) = "
        "the same number of rows just before the test span, train = the rows before that; the scaler is "
        "fitted on the fold's train span only. MAE in price units (float64, from the raw prices); MASE = MAE / "
        "persistence MAE on the same targets; DM p = Diebold-Mariano vs persistence (squared loss, HAC lag "
        "h-1, two-sided); the `all` row pools every fold's test days.", "",
        markdown_table(table), "",
        f"Command: `{shlex.join(command)}`", "",
        f"Commit: `{commit}` (when the run started)", "",
        "![backtest](backtest.png)", "",
    ]
    (output / "backtest.md").write_text("\n".join(text))
    return table
