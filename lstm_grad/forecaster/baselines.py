"""Trivial forecasters on the model's own windows and metrics: persistence, drift and a linear AR.

Any network has to beat these on the same test targets before its architecture matters. Both work
on a fitted :class:`~lstm_grad.data.GoldDataModule` (its ``datasets[split]`` windows, scaled targets
and price anchors), so their numbers are comparable with ``LSTMForecaster``'s ``test/*`` metrics.
Numpy plus the models' own ``ForecastMetrics``: no Lightning, no new dependency.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lstm_grad.forecaster.intervals import trailing_scale
from lstm_grad.forecaster.metrics import ForecastMetrics, naive_scale

AR_LAGS = (1, 2, 5, 10, 20, 60)  # candidate context lengths for the linear AR, chosen on val MAE


def forecast_metrics(pred: np.ndarray, actual: np.ndarray, anchor: np.ndarray,
                     scale: float | None = None) -> dict[str, float]:
    """Return ``ForecastMetrics``' values (the models' own metrics) for numpy price forecasts.

    ``pred``, ``actual`` (N, H) prices, ``anchor`` (N,) last observed price, ``scale`` Hyndman's MASE
    scale of the training span (:func:`~lstm_grad.forecaster.metrics.naive_scale`; ``mase`` is NaN
    without it). ``mae``/``mse`` in price units, ``mape`` in percent, ``rel_mae`` = MAE / persistence
    MAE on the same targets, ``dir_acc`` = share of (window, step) pairs whose predicted change from
    the anchor has the sign of the actual change, pairs whose actual price equals the anchor left out
    (NaN when none moved): pass raw prices, not prices rebuilt from scaled targets.

    >>> m = forecast_metrics(np.array([[11.0], [9.0]]), np.array([[12.0], [8.0]]), np.array([10.0, 10.0]), 4.0)
    >>> {k: round(v, 4) for k, v in m.items() if k in ("mae", "rel_mae", "mase", "dir_acc", "up_pred", "up_actual")}
    {'mae': 1.0, 'rel_mae': 0.5, 'mase': 0.25, 'dir_acc': 1.0, 'up_pred': 0.5, 'up_actual': 0.5}
    """
    metrics = ForecastMetrics()  # float64 throughout, as the models' own
    metrics.scale = scale
    metrics.update(*(torch.as_tensor(np.asarray(a, dtype=np.float64)) for a in (pred, actual, anchor)))
    return {k: float(v) for k, v in metrics.compute().items()}


def train_prices(data: Any) -> np.ndarray:
    """Return the raw float64 target prices of a set-up data module's train span (N_train,)."""
    return np.asarray(data._raw["prices"][: data._raw["train_rows"]], dtype=np.float64)


def drift_slope(prices: np.ndarray) -> float:
    """Return the drift method's slope ``(p_last - p_first) / (n - 1)`` (price units per step).

    >>> drift_slope(np.array([1.0, 2.0, 4.0]))
    1.5
    """
    prices = np.asarray(prices, dtype=np.float64)
    if len(prices) < 2:
        raise ValueError(f"drift: need at least 2 train prices, got {len(prices)}")
    return float((prices[-1] - prices[0]) / (len(prices) - 1))


def train_reference(data: Any) -> dict[str, float]:
    """Return what a data module's train span fixes for evaluation: ``mase_scale`` (Hyndman's
    :func:`naive_scale`), ``drift_slope`` and ``train_log_vol`` (std, ddof 1, of its daily log returns,
    for persistence's random-walk interval; NaN for a series with non-positive prices)."""
    prices = train_prices(data)
    with np.errstate(invalid="ignore", divide="ignore"):
        log_vol = float(np.std(np.diff(np.log(prices)), ddof=1)) if (prices > 0).all() else float("nan")
    return {"mase_scale": naive_scale(prices), "drift_slope": drift_slope(prices), "train_log_vol": log_vol}


def anchor_scale(data: Any, split: str, index: Any) -> np.ndarray:
    """Return sigma_t (:func:`~lstm_grad.forecaster.intervals.trailing_scale`) at the last observed day
    of windows ``index`` of a split, from the raw float64 prices: (B,)."""
    ds = data.datasets[split]
    rows = ds.start[torch.as_tensor(index).cpu()].numpy() + data.window - 1  # each window's anchor row
    return trailing_scale(data._raw["prices"], rows)


def persistence_forecast(anchor: np.ndarray, horizon: int) -> np.ndarray:
    """Return "every future day = the last observed price": (N,) -> (N, H) prices.

    >>> persistence_forecast(np.array([5.0, 6.0]), 2).tolist()
    [[5.0, 5.0], [6.0, 6.0]]
    """
    anchor = np.asarray(anchor, dtype=float)
    return np.repeat(anchor[:, None], horizon, axis=1)


def drift_forecast(anchor: np.ndarray, train_prices: np.ndarray, horizon: int) -> np.ndarray:
    """Return the random walk with drift: (N,) anchors -> (N, H) prices, anchor + h x slope.

    The slope is the mean daily change over the train span, ``(p_last - p_first) / (n - 1)`` in
    price units (Hyndman & Athanasopoulos, *Forecasting: Principles and Practice*, 3rd ed., 5.2
    "Drift method"), fitted on ``train_prices`` (n,) only, so the test span never informs it.
    Raises ``ValueError`` with fewer than two train prices.

    >>> drift_forecast(np.array([10.0]), np.array([1.0, 2.0, 4.0]), 2).tolist()
    [[11.5, 13.0]]
    """
    slope = drift_slope(train_prices)
    steps = np.arange(1, horizon + 1, dtype=np.float64)
    return np.asarray(anchor, dtype=np.float64)[:, None] + slope * steps[None, :]


def ar_design(windows: np.ndarray, lags: int) -> np.ndarray:
    """Return the AR design matrix: the last ``lags`` days of every feature, flattened, and a 1.

    ``windows`` (N, T, F) -> (N, lags * F + 1); oldest lag first, features of a day side by side.
    """
    n, t, f = windows.shape
    if not 1 <= lags <= t:
        raise ValueError(f"linear AR lags={lags} must be between 1 and the window length {t}")
    recent = windows[:, t - lags:, :].reshape(n, lags * f)  # (N, lags, F) -> (N, lags * F)
    return np.hstack([recent, np.ones((n, 1))])


def fit_linear_ar(windows: np.ndarray, targets: np.ndarray, lags: int) -> np.ndarray:
    """Fit targets (N, H) on the last ``lags`` days of the windows (N, T, F) by least squares.

    Returns coefficients (lags * F + 1, H), the last row being the intercept: the minimum-norm
    ``numpy.linalg.lstsq`` solution, one independent regression per horizon step.
    """
    coef, *_ = np.linalg.lstsq(ar_design(windows, lags), targets, rcond=None)
    return coef


def predict_linear_ar(coef: np.ndarray, windows: np.ndarray, lags: int) -> np.ndarray:
    """Apply :func:`fit_linear_ar` coefficients: windows (N, T, F) -> (N, H) scaled targets."""
    return ar_design(windows, lags) @ coef


def _split_arrays(data: Any, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return windows (N, T, F), scaled targets (N, H), raw anchor (N,) and raw actual prices (N, H)."""
    ds = data.datasets[split]
    windows = ds.windows[ds.start].double().numpy()  # (N, T, F): one gather, float64 for lstsq
    anchor, actual = data.window_prices(split, torch.arange(len(ds)))  # raw float64 prices
    return windows, ds.targets.double().numpy(), anchor.numpy(), actual.numpy()


def _prices(data: Any, scaled: np.ndarray, anchor: np.ndarray) -> np.ndarray:
    return data.inverse_transform(torch.from_numpy(scaled), torch.from_numpy(anchor)).numpy()


def baseline_forecasts(data: Any, lags_grid: Sequence[int] = AR_LAGS) -> dict[str, dict[str, Any]]:
    """Forecast the test span of a set-up ``GoldDataModule`` with persistence, drift and a linear AR.

    The AR is fitted on the train windows in the data module's scaled target space (scaled price
    for ``level``, scaled log return for ``log_return``) and its number of lags is chosen by val
    MAE in price units; the test span is never used to choose. Returns ``{name: {"pred", "actual",
    "anchor" (test prices: raw float64), "metrics" (with Hyndman's ``mase`` on the train span's scale),
    "lags"}}`` for ``persistence``, ``drift`` (slope from the raw train-span prices, :func:`drift_forecast`)
    and ``linear_ar``.
    """
    x_train, y_train, _, _ = _split_arrays(data, "train")
    x_val, _, a_val, actual_val = _split_arrays(data, "val")
    x_test, y_test, a_test, actual = _split_arrays(data, "test")
    horizon = y_test.shape[1]
    best: tuple[float, int, np.ndarray] | None = None
    for lags in (k for k in lags_grid if k <= x_train.shape[1]):
        coef = fit_linear_ar(x_train, y_train, lags)
        val_mae = float(np.mean(np.abs(_prices(data, predict_linear_ar(coef, x_val, lags), a_val) - actual_val)))
        if best is None or val_mae < best[0]:
            best = (val_mae, lags, coef)
    if best is None:
        raise ValueError(f"linear AR: no lag in {tuple(lags_grid)} fits a window of {x_train.shape[1]} days")
    _, lags, coef = best
    ar_pred = _prices(data, predict_linear_ar(coef, x_test, lags), a_test)
    naive = persistence_forecast(a_test, horizon)
    prices = train_prices(data)
    drift, scale = drift_forecast(a_test, prices, horizon), naive_scale(prices)
    forecasts = {"persistence": (naive, 0), "drift": (drift, 0), "linear_ar": (ar_pred, lags)}
    return {name: {"pred": pred, "actual": actual, "anchor": a_test, "lags": k,
                   "metrics": forecast_metrics(pred, actual, a_test, scale)}
            for name, (pred, k) in forecasts.items()}
