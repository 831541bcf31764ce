"""Write a walk-forward backtest's tables (CSV + Markdown with command and commit), predictions and figure."""
from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lstm_grad.forecaster.evaluation import step_frame

SPAN_COLUMNS = ["fold", "train_start", "train_end", "val_start", "val_end", "test_start", "test_end", "windows"]
SCORE_COLUMNS = ["mae", "naive_mae", "drift_mae", "rel_mae", "drift_rel_mae", "rel_mae_drift", "mase",
                 "dm_p", "dm_p_drift", "drift_dm_p", "dir_acc", "up_pred", "up_actual", "mae_last_step",
                 "rel_mae_last_step", "coverage_80", "coverage_95", "winkler_95", "coverage_80_rw", "coverage_95_rw",
                 "winkler_95_rw"]
COLUMNS = [*SPAN_COLUMNS, *SCORE_COLUMNS, "calib_n", "shrink_step_1", "shrink_step_h", "epochs"]
PRICE_ARRAYS = ("pred", "actual", "drift", "lower_80", "upper_80", "lower_95", "upper_95")  # (N, H) each


def markdown_table(table: pd.DataFrame) -> str:
    """Render the backtest table as Markdown: errors against persistence and drift, DM p against each, the
    up-share, the intervals' coverage and the 95 % interval score beside persistence's random walk."""
    lines = ["| fold | train | validation | test | windows | MAE | persistence MAE | drift MAE | rel. MAE | drift rel. MAE | "
             "MASE | DM p vs persistence | DM p vs drift | predicted up (went up) | dir. acc. | coverage 80 / 95 % | "
             "95 % score: model / random walk |",
             "| --- " * 17 + "|"]
    for row in table.itertuples():
        train = f"{row.train_start}..{row.train_end}" if row.train_start else "—"
        val = f"{row.val_start}..{row.val_end}" if row.val_start else "—"
        lines.append(f"| {row.fold} | {train} | {val} | {row.test_start}..{row.test_end} | {row.windows} | "
                     f"{row.mae:.3f} | {row.naive_mae:.3f} | {row.drift_mae:.3f} | {row.rel_mae:.4f} | "
                     f"{row.drift_rel_mae:.4f} | {row.mase:.3f} | {row.dm_p:.3f} | {row.dm_p_drift:.3f} | "
                     f"{100 * row.up_pred:.1f} % ({100 * row.up_actual:.1f} %) | {100 * row.dir_acc:.1f} % | "
                     f"{100 * row.coverage_80:.1f} / {100 * row.coverage_95:.1f} % | "
                     f"{row.winkler_95:.2f} / {row.winkler_95_rw:.2f} |")
    return "\n".join(lines)


def steps_markdown(steps: pd.DataFrame, horizon: int) -> str:
    """Render the pooled per-step rows (steps 1, 5, 10, ... and H when H > 10)."""
    pooled = steps[steps["fold"] == "all"]
    shown = pooled if horizon <= 10 else pooled[(pooled["step"] == 1) | (pooled["step"] % 5 == 0) | (pooled["step"] == horizon)]
    lines = ["| step | MAE | persistence MAE | drift MAE | rel. MAE | rel. MAE vs drift | MASE | coverage 80 / 95 % |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in shown.itertuples():
        lines.append(f"| {row.step} | {row.mae:.3f} | {row.naive_mae:.3f} | {row.drift_mae:.3f} | {row.rel_mae:.4f} | "
                     f"{row.rel_mae_drift:.4f} | {row.mase:.3f} | {100 * row.coverage_80:.1f} / {100 * row.coverage_95:.1f} % |")
    return "\n".join(lines)


def steps_frame(results: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per (fold, step) and per step pooled over the folds (``fold = all``): errors of step h alone."""
    parts = []
    for fold, r in [*((r["fold"], r) for r in results), ("all", pooled_arrays(results))]:
        bounds = {k: r[k] for k in ("lower_80", "upper_80", "lower_95", "upper_95")}
        parts.append(step_frame(r["pred"], r["actual"], r["anchor"], r["drift"], r["mase_scale"], bounds).assign(fold=fold))
    frame = pd.concat(parts, ignore_index=True)
    return frame[["fold", *[c for c in frame.columns if c != "fold"]]]


def pooled_arrays(results: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Every fold's test windows together: the price arrays, anchors and MASE scales (one per window)."""
    return {k: np.concatenate([r[k] for r in results]) for k in (*PRICE_ARRAYS, "anchor", "mase_scale")}


def predictions_frame(results: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per (fold, test window, step): date, step, actual, forecast, its 80 % / 95 % bounds,
    persistence and drift (price units, float64)."""
    parts = []
    for r in results:
        n, horizon = r["actual"].shape
        parts.append(pd.DataFrame({"fold": r["fold"], "date": r["dates"].reshape(-1),
                                   "step": list(range(1, horizon + 1)) * n, "actual": r["actual"].reshape(-1),
                                   "forecast": r["pred"].reshape(-1),
                                   **{k: r[k].reshape(-1) for k in ("lower_80", "upper_80", "lower_95", "upper_95")},
                                   "persistence": r["anchor"].repeat(horizon), "drift": r["drift"].reshape(-1)}))
    return pd.concat(parts, ignore_index=True)


def figure(table: pd.DataFrame, predictions: pd.DataFrame) -> Any:
    """Per-fold rel. MAE of the model and of drift against persistence's line at 1; step-1 forecasts with their
    95 % interval vs actual over all test spans."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    folds, pooled = table[table["fold"] != "all"], table[table["fold"] == "all"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), gridspec_kw={"height_ratios": [1, 2]})
    positions = np.arange(len(folds))
    top.bar(positions - 0.2, folds["rel_mae"], 0.4, color="tab:orange", label="model rel. MAE per fold")
    top.bar(positions + 0.2, folds["drift_rel_mae"], 0.4, color="tab:blue", alpha=0.6, label="drift rel. MAE")
    top.set_xticks(positions, [f"{r.fold}: {r.test_start[:7]}..{r.test_end[:7]}" for r in folds.itertuples()])
    top.axhline(1.0, color="black", linewidth=1, label="persistence (rel. MAE 1)")
    if len(pooled):
        value = float(pooled["rel_mae"].iloc[0])
        top.axhline(value, color="tab:orange", linestyle="--", linewidth=1, label=f"pooled model rel. MAE {value:.3f}")
    values = pd.concat([folds["rel_mae"], folds["drift_rel_mae"]])
    top.set_ylim(min(0.95, float(values.min()) - 0.02), max(1.05, float(values.max()) + 0.02))
    top.set_xlabel("fold: test span")
    top.set_ylabel("rel. MAE")
    top.legend(loc="best", fontsize=8)
    first = predictions[predictions["step"] == 1]
    for k, (fold, part) in enumerate(first.groupby("fold", sort=True)):
        dates = pd.to_datetime(part["date"])
        bottom.fill_between(dates, part["lower_95"], part["upper_95"], color="tab:orange", alpha=0.2, linewidth=0,
                            label="95 % interval (conformal)" if k == 0 else None)
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
    """Write backtest.csv, backtest_steps.csv, backtest_predictions.csv, backtest.md and backtest.png under
    ``output``. ``commit`` is :func:`git_commit` taken when the run started (the code that ran)."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame([{k: r.get(k, "") for k in COLUMNS} for r in [*results, pooled_row]], columns=COLUMNS)
    table.to_csv(output / "backtest.csv", index=False, float_format="%.6g")
    predictions = predictions_frame(results)
    predictions.to_csv(output / "backtest_predictions.csv", index=False)  # full float64 precision
    first = results[0]
    horizon = first["actual"].shape[1]
    steps = steps_frame(results)
    steps.to_csv(output / "backtest_steps.csv", index=False, float_format="%.6g")
    figure(table, predictions).savefig(output / "backtest.png", dpi=120)
    per_step = []
    if horizon > 1:
        per_step = [f"Step h alone, pooled over the folds (`backtest_steps.csv` has every step of every fold): the "
                    f"table above averages steps 1..{horizon}; `mae_last_step` / `rel_mae_last_step` in the CSV are step "
                    f"{horizon} alone.", "", steps_markdown(steps, horizon), ""]
    text = [
        "# Walk-forward backtest", "",
        f"{len(results)} folds; each tests on {int(first['windows']) + horizon - 1} consecutive rows (trading days) "
        f"at horizon {horizon}, the test spans consecutive and ending at the series' last day. Each fold "
        "trains from scratch on the rows before its test span: validation (early stopping, best checkpoint, the "
        "shrink weights and the interval calibration) = the same number of rows just before the test span, train = "
        "the rows before that; the scaler, drift slope and MASE scale are fitted on the fold's train span only. "
        f"MAE in price units (float64, from the raw prices){f' over steps 1..{horizon}' if horizon > 1 else ''}; "
        "rel. MAE = MAE / persistence MAE "
        "on the same targets; MASE = MAE / the fold's train-span one-step naive MAE (Hyndman & Koehler 2006); DM p = "
        "Diebold-Mariano (squared loss, HAC lag h-1, Harvey-Leybourne-Newbold corrected, two-sided Student t) against "
        "persistence and against drift; predicted up "
        "= share of forecasts above the last price (in brackets: share of prices that went up); coverage = share of "
        "test prices inside the conformal 80 % / 95 % intervals (split conformal per step, calibrated on the fold's "
        "validation span, `calib_n` windows); 95 % score = Winkler interval score (lower is better) of the model's "
        "interval and of persistence's random-walk interval (train-span volatility of log returns x sqrt(h)). The "
        "`all` row pools every fold's test days.", "",
        markdown_table(table), "", *per_step,
        f"Command: `{shlex.join(command)}`", "",
        f"Commit: `{commit}` (when the run started)", "",
        "![backtest](backtest.png)", "",
    ]
    (output / "backtest.md").write_text("\n".join(text))
    return table
