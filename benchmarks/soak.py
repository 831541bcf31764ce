"""Soak: the full 9,132-day embedded series, window 240, GRU and LSTM, many epochs; watch memory.

Per epoch it records the training time (validation excluded), the process's current RSS and its
peak RSS; at the end it fits a least-squares line to RSS over epochs (MiB per epoch, epoch 1
onwards so that the first epoch's allocator warm-up is not counted as growth). A leak shows up as
a positive slope of the order of the per-epoch data volume; noise is a fraction of a MiB.

    python -m benchmarks.soak                      # the full soak: 20 epochs per cell
    python -m benchmarks.soak --epochs 3 --limit_train_batches 40   # the short version
    python -m benchmarks.soak --page docs/reliability.md --also results/soak_gru_12.json  # only the page's block

It runs with the allocator setting the commands use (``lstm_grad.training.allocator``, applied by
``benchmarks.stats.machine_note``, which also records the commit and the load average). Not a test: it
takes long. ``--page`` rewrites the paragraph between ``<!-- soak:begin -->`` and ``<!-- soak:end -->``
of a page from the JSON, never typed.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch

from benchmarks.stats import machine_note
from experiments.blocks import replace_block
from lstm_grad.data import GoldDataModule
from lstm_grad.module import LSTMForecaster


def rss_mib() -> float:
    """Current resident set size of this process in MiB (``/proc/self/statm``, Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class MemoryProbe(pl.Callback):
    """Record epoch time (validation excluded), RSS and peak RSS after every training epoch."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self._start = self._val = self._val_start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start, self._val = time.perf_counter(), 0.0

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val += time.perf_counter() - self._val_start

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        row = {"epoch": trainer.current_epoch, "epoch_s": time.perf_counter() - self._start - self._val,
               "rss_mib": rss_mib(), "peak_rss_mib": peak_rss_mib()}
        self.rows.append(row)
        print(f"  epoch {row['epoch']:2d}: {row['epoch_s']:7.2f} s  RSS {row['rss_mib']:7.1f} MiB  "
              f"peak {row['peak_rss_mib']:7.1f} MiB", flush=True)


def slope(rows: list[dict[str, float]]) -> float:
    """MiB of RSS per epoch, least squares over epochs 1.. (all epochs when there are only two)."""
    use = rows[1:] if len(rows) > 2 else rows
    if len(use) < 2:
        return float("nan")
    return float(np.polyfit([r["epoch"] for r in use], [r["rss_mib"] for r in use], 1)[0])


def soak(cell: str, args: argparse.Namespace) -> dict:
    pl.seed_everything(0)
    data = GoldDataModule(source="embedded", last_n_days=None, window=args.window, batch_size=args.batch_size)
    model = LSTMForecaster(n_features=data.n_features, hidden_sizes=tuple(args.hidden_sizes), cell=cell,
                           horizon=data.horizon)
    probe = MemoryProbe()
    trainer = pl.Trainer(max_epochs=args.epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, callbacks=[probe],
                         limit_train_batches=args.limit_train_batches, limit_val_batches=args.limit_val_batches)
    print(f"{cell}: {args.epochs} epochs, window {args.window}, hidden {args.hidden_sizes}", flush=True)
    trainer.fit(model, datamodule=data)
    times = [r["epoch_s"] for r in probe.rows]
    return {"cell": cell, "rows": probe.rows, "rss_slope_mib_per_epoch": slope(probe.rows),
            "median_epoch_s": float(np.median(times)), "peak_rss_mib": max(r["peak_rss_mib"] for r in probe.rows),
            "train_windows": len(data.datasets["train"]), "days": len(data._raw["index"])}


def paragraph(results: dict) -> str:
    """The page's sentences on a soak: per cell its median epoch, RSS range, slope and peak, and the run."""
    machine, args = results["machine"], results["args"]
    cells = []
    for cell in results["cells"]:
        rss = [row["rss_mib"] for row in cell["rows"]]
        cells.append(f"{cell['cell'].upper()} median epoch {cell['median_epoch_s']:.1f} s, RSS {min(rss):.0f}-"
                     f"{max(rss):.0f} MiB (slope {cell['rss_slope_mib_per_epoch']:+.1f} MiB/epoch from epoch 1), "
                     f"peak {cell['peak_rss_mib']:.0f} MiB")
    return (f"Soak (`{results['command']}`, {args['epochs']} epochs per cell, {results['cells'][0]['days']} "
            f"days, window {args['window']}, hidden {args['hidden_sizes']}; commit `{machine['commit'][:7]}`, "
            f"allocator: {machine['allocator']}; load average {machine['loadavg'][0]:.2f} at the start, "
            f"{machine['loadavg_end'][0]:.2f} at the end): " + "; ".join(cells) + ".")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--window", type=int, default=240)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--hidden_sizes", type=int, nargs="+", default=[128, 128, 128, 64])
    parser.add_argument("--cells", nargs="+", default=["gru", "lstm"])
    parser.add_argument("--limit_train_batches", type=float, default=1.0, help="fraction or count per epoch")
    parser.add_argument("--limit_val_batches", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=Path("results/soak.json"))
    parser.add_argument("--page", type=Path, help="only rewrite this page's soak block from --out (and --also)")
    parser.add_argument("--also", type=Path, action="append", default=[], help="with --page: another soak's JSON")
    args = parser.parse_args()
    if args.page:
        texts = [paragraph(json.loads(path.read_text())) for path in (args.out, *args.also)]
        replace_block(args.page, "\n\n".join(texts), "<!-- soak:begin -->", "<!-- soak:end -->")
        print(f"rewrote the soak block of {args.page}")
        return
    for name in ("limit_train_batches", "limit_val_batches"):
        value = getattr(args, name)
        setattr(args, name, int(value) if value > 1 else value)
    results = {"machine": machine_note(), "command": "python -m benchmarks.soak " + " ".join(sys.argv[1:]), "args": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "cells": []}
    for cell in args.cells:
        result = soak(cell, args)
        results["cells"].append(result)
        print(f"{cell}: median epoch {result['median_epoch_s']:.2f} s, peak RSS {result['peak_rss_mib']:.0f} MiB, "
              f"RSS slope {result['rss_slope_mib_per_epoch']:+.2f} MiB/epoch", flush=True)
    results["machine"]["loadavg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
