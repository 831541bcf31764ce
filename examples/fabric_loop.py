"""Gradient diagnostics in a Lightning Fabric loop: the same pipeline and tags as the callback.

    python examples/fabric_loop.py
    python -m lstm_grad.diagnose runs/examples/fabric

Fabric owns the device, precision and backward (``fabric.backward`` unscales nothing under bf16 and
all-reduces under DDP); the tracker needs two calls per step, around the clipping: ``before_clip``
after the backward, ``after_clip`` after ``fabric.clip_gradients``. Under ``precision="16-mixed"``
Fabric's ``clip_gradients`` unscales first; call ``before_clip`` with ``scale=`` the scaler's scale
(``fabric.strategy.precision.scaler.get_scale()``) to log the unscaled gradient.
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.fabric import Fabric
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter

from lstm_grad.data import GoldDataModule
from lstm_grad.diagnostics import GradientTracker


class GRURegressor(nn.Module):
    """A 2-layer ``nn.GRU`` (groups ``net.l0``, ``net.l1``) and a linear head."""

    def __init__(self, n_features: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.GRU(n_features, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.net(x)  # (B, T, F) -> (B, T, H)
        return self.head(out[:, -1])  # (B, 1)


def main(epochs: int = 5, hidden: int = 64, window: int = 60, days: int = 1247, batches: int | None = None,
         clip: float = 1.0, log_every: int = 5, log_dir: str = "runs/examples") -> str:
    """Train with Fabric on the CPU, clip the total norm at ``clip``, log every ``log_every`` steps; return the run folder."""
    fabric = Fabric(accelerator="cpu", devices=1)
    fabric.seed_everything(0)
    data = GoldDataModule(last_n_days=days, window=window)
    data.setup("fit")
    model = fabric.setup_module(GRURegressor(data.n_features, hidden))
    optimizer = fabric.setup_optimizers(torch.optim.Adam(model.parameters(), lr=1e-3))
    tracker = GradientTracker(model.module)  # the user's module: its own parameter names
    run_dir = Path(log_dir) / "fabric"
    writer = SummaryWriter(run_dir)
    step = 0
    for _ in range(epochs):
        for batch_idx, (x, y, *_) in enumerate(fabric.setup_dataloaders(data.train_dataloader())):
            if batches is not None and batch_idx >= batches:
                break
            loss = nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            fabric.backward(loss)
            tracker.before_clip(optimizer.optimizer, step=step, log=step % log_every == 0)
            fabric.clip_gradients(model, optimizer, max_norm=clip)
            result = tracker.after_clip()
            for tag, value in {**result.tags, **({"train/loss": loss.item()} if result.tags else {})}.items():
                writer.add_scalar(tag, value, step)
            if result.stop:
                break
            optimizer.step()
            step += 1
    writer.close()
    return str(run_dir)


if __name__ == "__main__":
    print(f"TensorBoard run: {main()}")
