"""Gradient diagnostics on a model you wrote: your own GRU forecaster, two callbacks on the Trainer.

    python examples/gru_forecaster.py                 # 5 epochs on the embedded daily gold series
    tensorboard --logdir runs/examples                # grad_norm/*, grad_health/*, grad_time/* (and the heat map image)
    python -m lstm_grad.diagnose runs/examples/gru    # the same numbers as a table, and a PNG

Nothing below is lstm-grad's model: the monitor groups the module's parameters itself (``"auto"``:
``gru.l0``, ``gru.l1`` for the two GRU layers, ``head``) and the probe reads the ``(x, y, ...)``
batches of the validation loader and the module's own ``loss_fn``.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn

from lstm_grad import GradientMonitor, TimeGradientProbe
from lstm_grad.data import GoldDataModule


class GRUForecaster(pl.LightningModule):
    """Next-day price (scaled) from a window of daily features: a 2-layer GRU and a linear head."""

    def __init__(self, n_features: int, hidden: int = 64, layers: int = 2, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.gru = nn.GRU(n_features, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, 1)
        self.loss_fn = nn.functional.mse_loss  # TimeGradientProbe uses the module's own loss_fn

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.gru(x)  # (B, T, F) -> (B, T, hidden)
        return self.head(out[:, -1])  # (B, 1)

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        x, y = batch[0], batch[1]  # GoldDataModule batches are (x, y, anchor price, window index)
        loss = self.loss_fn(self(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        self.log("val/loss", self.loss_fn(self(batch[0]), batch[1]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def main(epochs: int = 5, hidden: int = 64, window: int = 60, days: int = 1247, batches: int | None = None,
         log_dir: str = "runs/examples") -> str:
    """Train on the last ``days`` trading days (``batches`` per epoch, default all); return the run folder."""
    pl.seed_everything(0)
    data = GoldDataModule(last_n_days=days, window=window)
    trainer = pl.Trainer(
        max_epochs=epochs, gradient_clip_val=1.0, log_every_n_steps=5, limit_train_batches=batches,
        logger=TensorBoardLogger(log_dir, name="gru", default_hp_metric=False), enable_checkpointing=False,
        callbacks=[GradientMonitor(), TimeGradientProbe()],  # <- the line this example is about
    )
    trainer.fit(GRUForecaster(data.n_features, hidden), datamodule=data)
    return trainer.log_dir


if __name__ == "__main__":
    print(f"TensorBoard run: {main()}")
