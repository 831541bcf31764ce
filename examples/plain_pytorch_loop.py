"""The same gradient tags from a hand-written PyTorch loop: no Lightning, a SummaryWriter.

    python examples/plain_pytorch_loop.py
    python -m lstm_grad.diagnose runs/examples/plain

The same pipeline as the Lightning callback, in two calls per optimizer step: ``before_clip`` queues
the per-layer norms of the optimizer's gradient (no host sync), ``after_clip`` measures the total
after clipping, reads everything with one host sync, skips a non-finite update and warns on
vanishing / exploding layers. The tags are the ones ``GradientMonitor`` writes (``grad_norm/<group>``,
``grad_norm/total``, ``grad_norm/total_clipped``, ``grad_health/*``), so ``diagnose`` and TensorBoard
read both alike. Unlogged steps cost one finiteness check (``check_every_step=False``: nothing).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter

from lstm_grad.data import GoldDataModule
from lstm_grad.diagnostics import GradientTracker


class LSTMRegressor(nn.Module):
    """A plain 2-layer ``nn.LSTM`` (groups ``net.l0``, ``net.l1``) and a linear head."""

    def __init__(self, n_features: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.LSTM(n_features, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.net(x)  # (B, T, F) -> (B, T, H)
        return self.head(out[:, -1])  # (B, 1)


def main(epochs: int = 5, hidden: int = 64, window: int = 60, days: int = 1247, batches: int | None = None,
         clip: float = 1.0, log_every: int = 5, log_dir: str = "runs/examples") -> str:
    """Train with a max total gradient norm of ``clip``, log every ``log_every`` steps; return the run folder."""
    torch.manual_seed(0)
    data = GoldDataModule(last_n_days=days, window=window)
    data.setup("fit")
    model = LSTMRegressor(data.n_features, hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    tracker = GradientTracker(model)  # groups by the "auto" rule: net.l0, net.l1, head
    run_dir = Path(log_dir) / "plain"
    writer = SummaryWriter(run_dir)
    step = 0
    for _ in range(epochs):
        for batch_idx, (x, y, *_) in enumerate(data.train_dataloader()):
            if batches is not None and batch_idx >= batches:
                break
            loss = nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            logged = step % log_every == 0
            tracker.before_clip(optimizer, step=step, log=logged)
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            result = tracker.after_clip()  # one host sync on a logged step
            if logged:
                writer.add_scalar("train/loss", loss.item(), step)
            for tag, value in result.tags.items():
                writer.add_scalar(tag, value, step)
            if result.stop:  # a non-finite gradient: the update was skipped
                break
            optimizer.step()
            step += 1
    writer.close()
    return str(run_dir)


if __name__ == "__main__":
    print(f"TensorBoard run: {main()}")
