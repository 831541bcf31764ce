"""Forecast metrics in price units (float64), shared by ``LSTMForecaster``, the baselines and the commands.

Two scaled errors, named as the field names them (definitions in ``docs/forecasting.md``, "Metrics"):

- ``rel_mae`` = MAE / persistence MAE **on the same targets** (the head-to-head: < 1 beats "tomorrow = today"
  on these very days);
- ``mase`` = MAE / the **in-sample one-step naive MAE of the training span**, ``mean |p_t - p_{t-1}|`` over
  the train prices (Hyndman & Koehler 2006, "Another look at measures of forecast accuracy", eq. for MASE
  with m = 1; as ``darts.metrics.mase``, sktime's ``MeanAbsoluteScaledError`` and the M4 competition).

"No change" (a day whose actual price equals the last observed one, so no direction to get right)
is decided in one place, :func:`moved`, on the raw prices the caller passes: never on prices
rebuilt from float32 scaled targets, whose rounding turns a no-change day into a tiny move.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError, MeanAbsolutePercentageError, MeanMetric, MeanSquaredError


def moved(actual: Tensor, anchor: Tensor) -> Tensor:
    """Return True where the raw actual price (B, H) differs from the last observed price (B,).

    >>> moved(torch.tensor([[1.0, 2.0]], dtype=torch.float64), torch.tensor([2.0], dtype=torch.float64)).tolist()
    [[True, False]]
    """
    return actual != anchor.unsqueeze(-1)


def direction_hits(pred: Tensor, actual: Tensor, anchor: Tensor) -> Tensor:
    """Return 1.0 / 0.0 for each (window, step) that moved and was predicted to move: does the predicted
    change from the anchor have the sign of the actual change? Days without an actual change
    (:func:`moved`) and forecasts of no change (persistence's, or a shrink weight of 0) have no direction
    to compare and are left out: (M,)."""
    naive = anchor.unsqueeze(-1)
    hits = (torch.sign(pred - naive) == torch.sign(actual - naive)).double()
    return hits[moved(actual, anchor) & (pred != naive)]


def naive_scale(train_prices: Any) -> float:
    """Return Hyndman & Koehler's MASE scale: the in-sample one-step naive MAE of the training span,
    ``sum_{t=2..n} |p_t - p_{t-1}| / (n - 1)`` in price units (float64).

    Raises ``ValueError`` with fewer than two prices or a constant span (the scale would be 0).

    >>> naive_scale([10.0, 12.0, 11.0, 11.0])
    1.0
    """
    prices = np.asarray(train_prices, dtype=np.float64)
    if prices.ndim != 1 or len(prices) < 2:
        raise ValueError(f"MASE scale: need at least 2 train prices, got shape {prices.shape}")
    scale = float(np.mean(np.abs(np.diff(prices))))
    if not scale > 0:
        raise ValueError("MASE scale: the train span never changes (scale 0); MASE is undefined")
    return scale


def rel_mae(pred: Any, actual: Any, anchor: Any) -> float:
    """Return MAE / persistence MAE on the same targets: ``sum |pred - actual| / sum |anchor - actual|``.

    ``pred``, ``actual`` (N, H), ``anchor`` (N,) prices; every (window, step) pair weighs the same.

    >>> rel_mae(np.array([[11.0], [9.0]]), np.array([[12.0], [8.0]]), np.array([10.0, 10.0]))
    0.5
    """
    pred, actual = np.asarray(pred, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    naive = np.asarray(anchor, dtype=np.float64)[:, None]
    return float(np.mean(np.abs(pred - actual)) / np.mean(np.abs(naive - actual)))


def mase(pred: Any, actual: Any, scale: float) -> float:
    """Return Hyndman's MASE: MAE over every (window, step) pair / ``scale`` (:func:`naive_scale`).

    >>> mase(np.array([[11.0], [9.0]]), np.array([[12.0], [8.0]]), 2.0)
    0.5
    """
    return float(np.mean(np.abs(np.asarray(pred, np.float64) - np.asarray(actual, np.float64))) / scale)


def up_share(pred: Any, anchor: Any) -> float:
    """Return the share of (window, step) pairs whose price is above the last observed one: for a
    forecast, how often it says "up"; for the actual prices, how often the market went up.

    >>> up_share(np.array([[11.0, 10.0], [9.0, 12.0]]), np.array([10.0, 10.0]))
    0.5
    """
    pred = np.asarray(pred, dtype=np.float64)
    return float(np.mean(pred > np.asarray(anchor, dtype=np.float64)[:, None]))


class ForecastMetrics(nn.Module):
    """Accumulate one stage's metrics in price units, in float64, and compute them at epoch end.

    Over every (window, step) pair: ``mae``/``mse`` in price units, ``mape`` in percent, ``rel_mae`` =
    MAE / persistence MAE on the same targets, ``mase`` = MAE / :attr:`scale` (Hyndman's; NaN until the
    training span's :func:`naive_scale` is set), ``naive_mae`` (persistence's MAE), ``dir_acc`` = share of
    pairs whose predicted change from the last observed price has the sign of the actual change (pairs
    without change left out), ``up_pred`` / ``up_actual`` = share of pairs predicted / observed above the
    last price (an "always up" model shows ``up_pred`` = 1). Step H alone: ``mae_last_step``,
    ``rel_mae_last_step``, ``mase_last_step`` (equal to the above at H = 1). With :attr:`drift_slope` set
    (the train span's mean daily change): ``drift_mae`` and ``rel_mae_drift`` = MAE / drift MAE.

    Inputs are cast to float64 and the states stay float64 even when Lightning casts the module
    (``*-true`` precisions call ``module.to(dtype)``, which torchmetrics lets through).
    """

    def __init__(self) -> None:
        super().__init__()
        self.mae = MeanAbsoluteError()
        self.mse = MeanSquaredError()
        self.mape = MeanAbsolutePercentageError()
        self.naive_mae = MeanAbsoluteError()
        self.naive_mape = MeanAbsolutePercentageError()
        self.drift_mae = MeanAbsoluteError()
        self.last_mae = MeanAbsoluteError()
        self.last_naive_mae = MeanAbsoluteError()
        self.dir_acc = MeanMetric()
        self.up_pred = MeanMetric()
        self.up_actual = MeanMetric()
        self.scale: float | None = None  # Hyndman's MASE scale of the training span (price units)
        self.drift_slope: float | None = None  # train span's mean daily change (price units per step)
        self._keep_float64()

    def _keep_float64(self) -> None:
        for metric in self.children():
            metric.set_dtype(torch.float64)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> ForecastMetrics:
        super()._apply(fn, *args, **kwargs)
        self._keep_float64()  # a device move keeps float64; a dtype cast is undone
        return self

    def update(self, pred: Tensor, actual: Tensor, anchor: Tensor) -> None:
        # pred, actual (B, H) prices; anchor (B,) last observed price; all raw prices, cast to float64
        pred, actual, anchor = pred.double(), actual.double(), anchor.double()
        naive = anchor.unsqueeze(1).expand_as(actual).contiguous()  # (B,) -> (B, H); torchmetrics views it flat
        self.mae.update(pred, actual)
        self.mse.update(pred, actual)
        self.mape.update(pred, actual)
        self.naive_mae.update(naive, actual)
        self.naive_mape.update(naive, actual)
        self.last_mae.update(pred[:, -1], actual[:, -1])
        self.last_naive_mae.update(naive[:, -1], actual[:, -1])
        if self.drift_slope is not None:
            steps = torch.arange(1, actual.shape[1] + 1, dtype=torch.float64, device=actual.device)
            self.drift_mae.update(naive + self.drift_slope * steps, actual)  # (B, H) + (H,)
        self.up_pred.update((pred > naive).double())
        self.up_actual.update((actual > naive).double())
        hits = direction_hits(pred, actual, anchor)
        if hits.numel():
            self.dir_acc.update(hits)

    def compute(self) -> dict[str, Tensor]:
        mae, naive_mae = self.mae.compute(), self.naive_mae.compute()
        last_mae = self.last_mae.compute()
        nan = torch.tensor(math.nan, dtype=torch.float64, device=mae.device)
        scale = nan if self.scale is None else torch.tensor(self.scale, dtype=torch.float64, device=mae.device)
        values = {
            "mae": mae,
            "mse": self.mse.compute(),
            "mape": 100.0 * self.mape.compute(),
            "rel_mae": mae / naive_mae,
            "mase": mae / scale,
            "naive_mae": naive_mae,
            "naive_mape": 100.0 * self.naive_mape.compute(),
            "dir_acc": self.dir_acc.compute(),
            "up_pred": self.up_pred.compute(),
            "up_actual": self.up_actual.compute(),
            "mae_last_step": last_mae,
            "rel_mae_last_step": last_mae / self.last_naive_mae.compute(),
            "mase_last_step": last_mae / scale,
        }
        if self.drift_slope is not None:
            drift_mae = self.drift_mae.compute()
            values.update({"drift_mae": drift_mae, "rel_mae_drift": mae / drift_mae})
        return values

    def reset(self) -> None:
        for metric in self.children():
            metric.reset()
