"""Where ``Trainer.fit``'s time goes besides the network, by cost, from a ``cProfile`` run.

    python -m benchmarks.fit_profile --json docs/profile.json [--epochs 3] [--rounds 2]

Profiles item 1's Lightning side (``benchmarks.overhead``: TensorBoard, price metrics, a
checkpoint per epoch, ``GradientMonitor`` + ``TimeGradientProbe``) after a warm-up fit, and reports
the cumulative time of each named cost as a share of the profiled fit, the smallest share over
``--rounds`` profiled fits. The diagnostics' rows are work the hand loop of item 1 does too
(``benchmarks.same_work``); the data path, the result collection, the teardown and the
hyperparameters are Lightning's own. The sanity check's share includes its own validation step, logging and
metrics, which are also counted in their rows. ``cProfile`` adds its own per-call cost, so read the shares as an order,
not to the decimal; ``python -m benchmarks.report --profile`` puts them on the benchmark page.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.config import BenchConfig
from benchmarks.fits import PROBE_EVERY, lightning_fit, make_data, quiet
from benchmarks.stats import machine_note
from lstm_grad import GradientMonitor, TimeGradientProbe
from lstm_grad.training.allocator import keep_freed_memory

# cost -> (file suffix, function name) entries whose cumulative time it is; "minus" entries are
# work the hand loop does too (clipping), taken out of the hook that runs it.
COSTS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "checkpoint writes (ModelCheckpoint every epoch; the file written on a worker thread)": {
        "plus": [("pytorch/trainer/trainer.py", "save_checkpoint")]},
    "self.log / log_dict (Lightning's result collection)": {"plus": [("pytorch/core/module.py", "log")]},
    f"TimeGradientProbe (before training, every {PROBE_EVERY} epochs, the heat map at the end)": {
        "plus": [("diagnostics/probe.py", "on_train_start"), ("diagnostics/probe.py", "on_train_epoch_end"),
                 ("diagnostics/probe.py", "on_train_end")]},
    "sanity check (2 validation batches before training)": {"plus": [("pytorch/trainer/trainer.py", "_run_sanity_check")]},
    "GradientMonitor (clipping itself left out)": {
        "plus": [("diagnostics/monitor.py", hook) for hook in ("on_train_batch_start", "on_before_optimizer_step",
                                                               "on_train_batch_end", "on_train_epoch_end", "on_train_end")]
        + [("diagnostics/clip_hooks.py", "configure_gradient_clipping")],  # the wrapper that runs the clipping
        "minus": [("pytorch/core/module.py", "clip_gradients")]},
    "TensorBoard writes and hyperparameters": {
        "plus": [("fabric/loggers/tensorboard.py", "log_metrics"), ("pytorch/loggers/tensorboard.py", "save"),
                 ("pytorch/loggers/tensorboard.py", "log_hyperparams")]},
    "data loading and batch transfer (the DataLoader's iterator, the transfer hook)": {
        "plus": [("torch/utils/data/dataloader.py", "__next__"),
                 ("pytorch/core/module.py", "_apply_batch_transfer_handler")]},
    "teardown (the last checkpoint write awaited, the logger closed, results moved to the CPU)": {
        "plus": [("pytorch/trainer/trainer.py", "_teardown")]},
    "hyperparameters at the start (TensorBoard's HPARAMS, hparams.yaml)": {
        "plus": [("pytorch/loggers/utilities.py", "_log_hyperparams")]},
    "validation metrics' compute (ForecastMetrics, its log_dict left out)": {
        "plus": [("lstm_grad/forecaster/module.py", "_log_epoch_metrics")], "minus": [("pytorch/core/module.py", "log_dict")]},
}


def cumulative(stats: pstats.Stats, entries: list[tuple[str, str]]) -> float:
    """Sum of the cumulative seconds of the functions named by (file suffix, function name)."""
    total = 0.0
    for (path, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if any(path.endswith(suffix) and name == func for suffix, func in entries):
            total += ct
    return total


def profile_shares(epochs: int, rounds: int) -> dict[str, object]:
    """Profile ``rounds`` fits of item 1's Lightning side after a warm-up; each cost's smallest share."""
    quiet()
    keep_freed_memory()  # as the commands run (lstm_grad.cli.GoldCLI)
    cfg = BenchConfig.quick_config()
    dm = make_data(cfg, cfg.last_n_days)
    fit = lightning_fit(cfg, dm, epochs,
                        callbacks=lambda: [GradientMonitor(), TimeGradientProbe(every_n_epochs=PROBE_EVERY)])
    fit()  # warm-up
    shares: dict[str, list[float]] = {name: [] for name in COSTS}
    walls = []
    for _ in range(rounds):
        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.runcall(fit)
        wall = time.perf_counter() - start
        walls.append(wall)
        stats = pstats.Stats(profiler)
        for name, parts in COSTS.items():
            seconds = cumulative(stats, parts["plus"]) - cumulative(stats, parts.get("minus", []))
            shares[name].append(seconds / wall)
    return {"epochs": epochs, "rounds": rounds, "fit_s": walls, "shares": {k: min(v) for k, v in shares.items()},
            "machine": machine_note()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, help="where to write the shares")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    result = profile_shares(args.epochs, args.rounds)
    result["machine"]["loadavg_end"] = os.getloadavg()
    Path(args.json).write_text(json.dumps(result, indent=1))
    for name, share in sorted(result["shares"].items(), key=lambda kv: -kv[1]):
        print(f"{share:7.2%}  {name}")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
