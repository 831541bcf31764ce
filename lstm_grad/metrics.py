"""Forecast metrics in price units, shared by ``LSTMForecaster`` and the baselines."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError, MeanAbsolutePercentageError, MeanMetric, MeanSquaredError


class ForecastMetrics(nn.Module):
    """Accumulate one stage's metrics in price units and compute them at epoch end.

    ``mae``/``mse`` in price units, ``mape`` in percent, ``mase`` = model MAE / persistence MAE on the
    same targets (< 1 beats "tomorrow = today"), ``dir_acc`` = share of (window, horizon step) pairs
    where the predicted change from the last observed price has the sign of the actual change; pairs
    whose actual change is exactly zero are left out (no direction to get right).
    """

    def __init__(self) -> None:
        super().__init__()
        self.mae = MeanAbsoluteError()
        self.mse = MeanSquaredError()
        self.mape = MeanAbsolutePercentageError()
        self.naive_mae = MeanAbsoluteError()
        self.naive_mape = MeanAbsolutePercentageError()
        self.dir_acc = MeanMetric()

    def update(self, pred: Tensor, actual: Tensor, anchor: Tensor) -> None:
        # pred, actual (B, H) prices; anchor (B,) last observed price
        naive = anchor.unsqueeze(1).expand_as(actual).contiguous()  # (B,) -> (B, H); torchmetrics views it flat
        self.mae.update(pred, actual)
        self.mse.update(pred, actual)
        self.mape.update(pred, actual)
        self.naive_mae.update(naive, actual)
        self.naive_mape.update(naive, actual)
        moved = actual != naive
        hits = (torch.sign(pred - naive) == torch.sign(actual - naive)).float()
        if moved.any():
            self.dir_acc.update(hits[moved])

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
