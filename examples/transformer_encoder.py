"""Gradient diagnostics on a Transformer encoder over the same windows: one norm per block (``groups=2``).

    python examples/transformer_encoder.py
    python -m lstm_grad.diagnose runs/examples/transformer

``GradientMonitor(groups=2)`` groups parameters by the first two parts of their names: ``embed``,
``blocks.0`` .. ``blocks.{n-1}`` (one tag per encoder block instead of one per linear inside it),
``head``, and the learned ``position`` table (a parameter of the module itself is its own group).
``TimeGradientProbe(layers=...)`` also logs ``grad_act/blocks.<i>``: the gradient reaching each
block's output, the transformer's view of "how deep does the gradient get".
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn

from lstm_grad import GradientMonitor, TimeGradientProbe
from lstm_grad.data import GoldDataModule


class EncoderForecaster(pl.LightningModule):
    """Linear embedding + learned positions, ``n_blocks`` pre-norm encoder blocks, a head on the last step."""

    def __init__(self, n_features: int, window: int, d_model: int = 32, n_blocks: int = 2, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.embed = nn.Linear(n_features, d_model)
        self.position = nn.Parameter(torch.zeros(1, window, d_model))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d_model, nhead=4, dim_feedforward=2 * d_model, dropout=0.1,
                                       batch_first=True, norm_first=True) for _ in range(n_blocks))
        self.head = nn.Linear(d_model, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x) + self.position  # (B, T, F) -> (B, T, D)
        for block in self.blocks:
            h = block(h)  # (B, T, D)
        return self.head(h[:, -1])  # (B, 1)

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        loss = nn.functional.mse_loss(self(batch[0]), batch[1])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        self.log("val/loss", nn.functional.mse_loss(self(batch[0]), batch[1]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)


def main(epochs: int = 5, d_model: int = 32, n_blocks: int = 2, window: int = 60, days: int = 1247,
         batches: int | None = None, log_dir: str = "runs/examples") -> str:
    """Train on the last ``days`` trading days (``batches`` per epoch, default all); return the run folder."""
    pl.seed_everything(0)
    data = GoldDataModule(last_n_days=days, window=window)
    monitor = GradientMonitor(groups=2)  # embed, position, blocks.0 .. blocks.{n-1}, head
    probe = TimeGradientProbe(layers=[f"blocks.{i}" for i in range(n_blocks)])
    logger = TensorBoardLogger(log_dir, name="transformer", default_hp_metric=False)
    trainer = pl.Trainer(max_epochs=epochs, limit_train_batches=batches, gradient_clip_val=1.0, logger=logger,
                         log_every_n_steps=5, callbacks=[monitor, probe], enable_checkpointing=False)
    trainer.fit(EncoderForecaster(data.n_features, window, d_model, n_blocks), datamodule=data)
    return trainer.log_dir


if __name__ == "__main__":
    print(f"TensorBoard run: {main()}")
