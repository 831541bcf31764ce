"""Cost of gradient monitoring on a user's model: lstm-grad's GradientMonitor vs Lightning's ``grad_norm``.

``python -m benchmarks.monitor [--rounds 5] [--epochs 2] [--device cpu|cuda] [--json PATH]``

The model is one a user would write (not ours): a 3-layer ``nn.LSTM`` (hidden 64) and a linear head,
on the embedded gold windows (last 1,247 days, window 60, 5 features, batch 32), Adam 1e-3, MSE,
``gradient_clip_val=1.0``. Two measurements, each interleaved (A B C ... A B C ...) after a warm-up
round so a busy machine slows every variant alike; min / median / max over the rounds:

1. **Per logged step, the computation alone** (after one real backward, repeated ``--calls`` times,
   with a device synchronisation per call, i.e. what reaching a float for the logger costs):
   ``ours`` = ``measure`` + post-clip ``total_grad_norm`` + one host sync + ``tag_scalars``;
   ``lightning`` = ``grad_norm(module, 2)`` and turning every value into a float (the logger does).
2. **Per training epoch, in the loop**, at ``log_every_n_steps`` 1 and 50:
   ``none`` (no monitoring), ``monitor`` (``GradientMonitor()``), ``grad_norm_logged`` (Lightning's
   utility called in ``on_before_optimizer_step`` only on steps the logger writes, then
   ``log_dict``), ``grad_norm_every_step`` (the same on every optimizer step, as Lightning's docs show
   it; per-parameter statistics on every step is also what the open GradientStatsMonitor PRs
   #21596 / #21720 do for their epoch aggregates, so this is a lower bound for their cost). The
   overhead per logged step is (median epoch - median ``none`` epoch) / logged steps per epoch.

Timings on a loaded machine are not worth reporting: run it on a quiet one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import grad_norm
from torch import Tensor, nn

from benchmarks.stats import interleave, machine_note, summary
from lstm_grad.data import GoldDataModule
from lstm_grad.diagnostics import GradientMonitor, measure, parameter_groups, tag_scalars, total_grad_norm


class UserLSTM(pl.LightningModule):
    """A user's forecaster: ``nn.LSTM(F, 64, num_layers=3)`` and a linear head on the last step."""

    def __init__(self, n_features: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.LSTM(n_features, hidden, num_layers=3, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.net(x)[0][:, -1])  # (B, T, F) -> (B, 1)

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        loss = nn.functional.mse_loss(self(batch[0]), batch[1])
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class LightningGradNorm(pl.Callback):
    """Lightning's ``grad_norm`` utility in ``on_before_optimizer_step`` (unscaled grads, pre-clip)."""

    def __init__(self, every_step: bool) -> None:
        self.every_step = every_step

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        writes = trainer.log_every_n_steps > 0 and (trainer.global_step + 1) % trainer.log_every_n_steps == 0
        if self.every_step or writes:
            pl_module.log_dict(grad_norm(pl_module, norm_type=2))


class EpochClock(pl.Callback):
    """Wall seconds of each training epoch (validation is off in these fits)."""

    def __init__(self, device: str) -> None:
        self.device, self.seconds, self._start = device, [], 0.0

    def _sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sync()
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sync()
        self.seconds.append(time.perf_counter() - self._start)


def fit_epochs(data: GoldDataModule, callbacks: list[pl.Callback], log_every: int, epochs: int, device: str) -> float:
    """Train a fresh model for ``epochs`` and return the median epoch seconds after the first."""
    pl.seed_everything(0, verbose=False)
    clock = EpochClock(device)
    trainer = pl.Trainer(max_epochs=epochs + 1, accelerator=device, devices=1, gradient_clip_val=1.0,
                         log_every_n_steps=log_every, callbacks=[clock, *callbacks], limit_val_batches=0,
                         logger=pl.loggers.CSVLogger(RUNS, name=f"bench_monitor_{log_every}"),
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(UserLSTM(data.n_features), datamodule=data)
    return statistics.median(clock.seconds[1:])  # the first epoch warms caches and kernels


def per_call(device: str, data: GoldDataModule, calls: int, rounds: int) -> dict[str, Any]:
    """Item 1: the computation of one logged step, ours vs Lightning's utility."""
    module = UserLSTM(data.n_features).to(device)
    x, y = (t.to(device) for t in next(iter(data.train_dataloader()))[:2])
    nn.functional.mse_loss(module(x), y).backward()
    groups = parameter_groups(module)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def ours() -> None:
        for _ in range(calls):
            norms = measure(groups)
            norms_dict, _, rest = norms.values([total_grad_norm(groups)])  # the one host sync
            tag_scalars(norms_dict, rest[0])
        sync()

    def lightning() -> None:
        for _ in range(calls):
            {k: float(v) for k, v in grad_norm(module, norm_type=2).items()}  # the logger reads floats
        sync()

    runs = interleave({"ours": ours, "lightning": lightning}, repeats=rounds)
    out = {name: summary([t.wall / calls * 1e3 for t in timings]) for name, timings in runs.items()}
    out["unit"] = "ms per logged step"
    out["parameters"] = sum(1 for _ in module.parameters())
    out["groups"] = groups.names
    return out


def in_loop(device: str, data: GoldDataModule, epochs: int, rounds: int) -> dict[str, Any]:
    """Item 2: epoch time with each kind of monitoring, at log_every_n_steps 1 and 50."""
    variants: dict[str, Callable[[], list[pl.Callback]]] = {
        "none": list,
        "monitor": lambda: [GradientMonitor()],
        "grad_norm_logged": lambda: [LightningGradNorm(every_step=False)],
        "grad_norm_every_step": lambda: [LightningGradNorm(every_step=True)],
    }
    steps = len(data.train_dataloader())
    result: dict[str, Any] = {"steps_per_epoch": steps}
    for log_every in (1, 50):
        seconds: dict[str, list[float]] = {name: [] for name in variants}
        for round_ in range(rounds + 1):  # round 0 warms up; then A B C D, A B C D, ...
            for name, make in variants.items():
                value = fit_epochs(data, make(), log_every, epochs, device)
                if round_:
                    seconds[name].append(value)
        epoch = {name: summary(values) for name, values in seconds.items()}
        logged = steps / log_every  # Lightning counts logged steps across epochs: a fraction per epoch
        base = epoch["none"]["median"]
        result[f"log_every_{log_every}"] = {
            "epoch_s": epoch,
            "overhead_per_epoch": {k: v["median"] / base - 1 for k, v in epoch.items() if k != "none"},
            "ms_per_logged_step": {k: (v["median"] - base) / logged * 1e3 for k, v in epoch.items() if k != "none"},
            "logged_steps_per_epoch": logged,
        }
    return result


RUNS = "runs/bench_monitor"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per comparison, after one warm-up")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per fit (after one warm-up epoch)")
    parser.add_argument("--calls", type=int, default=50, help="calls per round in the per-step item")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--days", type=int, default=1247)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = GoldDataModule(last_n_days=args.days, window=60, batch_size=32)
    data.setup("fit")
    result = {"machine": {**machine_note(), "device": args.device}, "rounds": args.rounds,
              "per_logged_step": per_call(args.device, data, args.calls, args.rounds),
              "in_loop": in_loop(args.device, data, args.epochs, args.rounds)}
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


def report(result: dict[str, Any]) -> str:
    """The numbers as text: min / median / max per variant."""
    lines = [f"machine: {result['machine']}"]
    step = result["per_logged_step"]
    lines.append(f"per logged step, computation only ({step['parameters']} parameter tensors, "
                 f"{len(step['groups'])} groups {step['groups']}), ms:")
    for name in ("ours", "lightning"):
        s = step[name]
        lines.append(f"  {name:<10} min {s['min']:.3f}  median {s['median']:.3f}  max {s['max']:.3f}")
    loop = result["in_loop"]
    for key in ("log_every_1", "log_every_50"):
        block = loop[key]
        lines.append(f"{key} ({loop['steps_per_epoch']} steps / epoch, {block['logged_steps_per_epoch']:.2f} logged), "
                     "epoch s:")
        for name, s in block["epoch_s"].items():
            extra = "" if name == "none" else (f"  overhead {100 * block['overhead_per_epoch'][name]:+.1f} %  "
                                               f"{block['ms_per_logged_step'][name]:+.2f} ms / logged step")
            lines.append(f"  {name:<21} min {s['min']:.3f}  median {s['median']:.3f}  max {s['max']:.3f}{extra}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
