"""Forecast metrics in price units (float64), shared by ``LSTMForecaster`` and the baselines.

"No change" (a day whose actual price equals the last observed one, so no direction to get right)
is decided in one place, :func:`moved`, on the raw prices the caller passes: never on prices
rebuilt from float32 scaled targets, whose rounding turns a no-change day into a tiny move.
"""

from __future__ import annotations

from typing import Any

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
    """Return 1.0 / 0.0 for each (window, step) that moved: does the predicted change from the anchor
    have the sign of the actual change? Days without change (:func:`moved`) are left out: (M,)."""
    naive = anchor.unsqueeze(-1)
    hits = (torch.sign(pred - naive) == torch.sign(actual - naive)).double()
    return hits[moved(actual, anchor)]


class ForecastMetrics(nn.Module):
    """Accumulate one stage's metrics in price units, in float64, and compute them at epoch end.

    ``mae``/``mse`` in price units, ``mape`` in percent, ``mase`` = model MAE / persistence MAE on the
    same targets (< 1 beats "tomorrow = today"), ``dir_acc`` = share of (window, horizon step) pairs
    where the predicted change from the last observed price has the sign of the actual change; pairs
    whose raw actual price equals the last observed one are left out (no direction to get right).
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
        self.dir_acc = MeanMetric()
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
        hits = direction_hits(pred, actual, anchor)
        if hits.numel():
            self.dir_acc.update(hits)

    def compute(self) -> dict[str, Tensor]:
        mae = self.mae.compute()
        return {
            "mae": mae,
            "mse": self.mse.compute(),
            "mape": 100.0 * self.mape.compute(),
            "mase": mae / self.naive_mae.compute(),
            "naive_mae": self.naive_mae.compute(),
            "naive_mape": 100.0 * self.naive_mape.compute(),
            "dir_acc": self.dir_acc.compute(),
        }

    def reset(self) -> None:
        for metric in self.children():
            metric.reset()
