"""Score one forecaster's test span against persistence and drift, from float64 price arrays.

One function for every place that reports a test span (``fit``'s table via ``LSTMForecaster``'s test
metrics, each backtest fold and its pooled row, the experiments' rows), so the numbers mean the same
everywhere: the accuracy metrics of :class:`~lstm_grad.forecaster.metrics.ForecastMetrics`, Hyndman's
MASE with a per-window scale (a pooled backtest mixes folds with their own training spans), the
Diebold-Mariano p-value against persistence and against drift, and the intervals' coverage and
interval score next to persistence's random-walk interval (:mod:`lstm_grad.forecaster.intervals`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from lstm_grad.forecaster.baselines import forecast_metrics
from lstm_grad.forecaster.intervals import LEVELS, coverage, interval_score, level_name
from lstm_grad.forecaster.significance import diebold_mariano

DRIFT_KEYS = ("mae", "rel_mae", "mape", "dir_acc", "up_pred", "mae_last_step", "rel_mae_last_step")
Bounds = dict[str, np.ndarray]  # {"lower_80": (N, H), "upper_80": ..., "lower_95": ..., "upper_95": ...}


def _dm(errors: np.ndarray, other: np.ndarray, horizon: int) -> tuple[float, float]:
    """DM statistic and p (squared loss, HAC lag h - 1, Harvey-Leybourne-Newbold small-sample correction with
    Student's t); NaN with too few windows for the horizon."""
    try:
        result = diebold_mariano(errors, other, horizon=horizon, small_sample=True)
    except ValueError:  # fewer than 2 windows, or too few for the correction at this horizon
        return float("nan"), float("nan")
    return result.stat, result.p_value


def evaluate(pred: Any, actual: Any, anchor: Any, drift: Any, scale: Any = None, bounds: Bounds | None = None,
             rw_bounds: Bounds | None = None) -> dict[str, float]:
    """Return the test-span numbers of a forecast: pred, actual, drift (N, H) prices, anchor (N,).

    ``scale`` (N,) or a number: Hyndman's MASE scale of each window's training span (``mase`` is
    ``mean(|pred - actual| / scale)``; NaN when None). ``dm_p`` / ``dm_stat``: Diebold-Mariano against
    persistence (stat > 0: the model's squared errors are larger), ``dm_p_drift`` / ``dm_stat_drift``
    against drift, ``drift_dm_p`` drift against persistence; ``drift_mae``, ``drift_rel_mae``, ``drift_up_pred``
    ... drift's own metrics, ``rel_mae_drift`` = MAE / drift MAE. With ``bounds``: ``coverage_80``,
    ``coverage_95``, ``winkler_95``; with ``rw_bounds``: the same with the suffix ``_rw``.
    """
    pred, actual, drift = (np.asarray(a, dtype=np.float64) for a in (pred, actual, drift))
    anchor = np.asarray(anchor, dtype=np.float64)
    horizon = actual.shape[1]
    out = forecast_metrics(pred, actual, anchor)
    naive = np.repeat(anchor[:, None], horizon, axis=1)
    for key, value in forecast_metrics(drift, actual, anchor).items():  # drift's own numbers, drift_*
        if key in DRIFT_KEYS:
            out[f"drift_{key}"] = value
    out["rel_mae_drift"] = out["mae"] / out["drift_mae"]
    if scale is not None:
        per_window = np.broadcast_to(np.asarray(scale, dtype=np.float64), anchor.shape)[:, None]
        out["mase"] = float(np.mean(np.abs(pred - actual) / per_window))
        for prefix, forecast in (("", pred), ("drift_", drift), ("naive_", naive)):
            errors = np.abs(forecast - actual) / per_window
            out[f"{prefix}mase"], out[f"{prefix}mase_last_step"] = float(errors.mean()), float(errors[:, -1].mean())
    out["dm_stat"], out["dm_p"] = _dm(pred - actual, naive - actual, horizon)
    out["dm_stat_drift"], out["dm_p_drift"] = _dm(pred - actual, drift - actual, horizon)
    out["drift_dm_stat"], out["drift_dm_p"] = _dm(drift - actual, naive - actual, horizon)
    for suffix, given in (("", bounds), ("_rw", rw_bounds)):
        if given is None:
            continue
        for level in LEVELS:
            name = level_name(level)
            lower, upper = given[f"lower_{name}"], given[f"upper_{name}"]
            out[f"coverage_{name}{suffix}"] = coverage(lower, upper, actual)
            if level == 0.95:
                out[f"winkler_95{suffix}"] = interval_score(lower, upper, actual, level)
    return out


def step_frame(pred: Any, actual: Any, anchor: Any, drift: Any, scale: Any = None,
               bounds: Bounds | None = None) -> pd.DataFrame:
    """Return one row per step h = 1..H: ``mae``, ``naive_mae``, ``drift_mae``, ``rel_mae``,
    ``rel_mae_drift``, ``mase`` (with ``scale``), and with ``bounds`` ``coverage_80``, ``coverage_95``,
    ``winkler_95``. The step-h row scores every window's h-th predicted day alone."""
    pred, actual, drift = (np.asarray(a, dtype=np.float64) for a in (pred, actual, drift))
    anchor = np.asarray(anchor, dtype=np.float64)
    errors, naive, drifted = np.abs(pred - actual), np.abs(anchor[:, None] - actual), np.abs(drift - actual)
    frame = pd.DataFrame({"step": np.arange(1, actual.shape[1] + 1), "mae": errors.mean(axis=0),
                          "naive_mae": naive.mean(axis=0), "drift_mae": drifted.mean(axis=0)})
    frame["rel_mae"] = frame["mae"] / frame["naive_mae"]
    frame["rel_mae_drift"] = frame["mae"] / frame["drift_mae"]
    if scale is not None:
        per_window = np.broadcast_to(np.asarray(scale, dtype=np.float64), anchor.shape)[:, None]
        frame["mase"] = (errors / per_window).mean(axis=0)
    if bounds is not None:
        for level in LEVELS:
            name = level_name(level)
            inside = (bounds[f"lower_{name}"] <= actual) & (actual <= bounds[f"upper_{name}"])
            frame[f"coverage_{name}"] = inside.mean(axis=0)
        frame["winkler_95"] = [interval_score(bounds["lower_95"][:, [h]], bounds["upper_95"][:, [h]], actual[:, [h]], 0.95)
                               for h in range(actual.shape[1])]
    return frame
