"""Depth / window sweep: where do gradients really vanish, and do the recipe's fixes cure it?

Plain vs residual stacks, torch's default vs orthogonal init, depths ``--depths`` at window 60 and
windows ``--windows`` at depth ``--sweep-depth``; narrow layers (``--sweep-width`` units), a few
epochs, one seed, clipnorm 1.0 (``configs/clipped.yaml`` otherwise). Per run: the first / last
recurrent layer gradient-norm ratio at the first step (before any update) and over the last epoch
(median of per-step ratios), the time reach (oldest lag whose ‖∂L/∂x_t‖ is >= 1 % of the largest,
on 256 fixed train windows) at init and at the end, and the test rel. MAE (MAE / persistence MAE) of the
final weights, the network as trained (``--model.shrink_prior null``: no shrink toward persistence).
Writes ``results/depth.csv``, ``results/depth.md`` and ``results/depth.png``; run it with
``python -m experiments.ablation --part depth`` (its flags: ``--depths``, ``--windows``, ``--sweep-*``).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from experiments.depth_report import write_depth_report
from experiments.rows import read_rows, write_rows
from lstm_grad.training.console import QuietRuns
from experiments.runs import versions, where
from lstm_grad.diagnostics.events import read_run
from lstm_grad.training.parallel import run_jobs

VARIANTS = [("plain", "default"), ("plain", "orthogonal"), ("residual", "default"), ("residual", "orthogonal")]
COLUMNS = ["variant", "depth", "window", "width", "epochs", "ratio_start", "ratio_end", "reach_start",
           "reach_end", "test_rel_mae", "test_mae", "epoch_time_s", "grad_first_start", "grad_last_start",
           "grad_first_end", "grad_last_end", "wall_s", "log_dir", "commit", "torch", "lightning"]


def step_norms(log_dir: str | Path) -> list[dict[str, float]]:
    """Return each logged step's per-layer gradient norms (``{group: norm}``) in step order, read back
    from the run's event files (``log_every_n_steps=1``: every step)."""
    by_step: dict[int, dict[str, float]] = {}
    for group, series in read_run(log_dir).norms.items():
        for step, value in series:
            by_step.setdefault(step, {})[group] = value
    return [by_step[step] for step in sorted(by_step)]


def reach(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    from lstm_grad.diagnostics import time_grad_profile, time_reach

    return time_reach(time_grad_profile(net, x, y))


def sweep_run(spec: dict[str, Any]) -> dict[str, Any]:
    """See :func:`_sweep_run`; logging quieted for the run and restored after (a test session goes on)."""
    with QuietRuns("lstm_grad"):
        return _sweep_run(spec)


def _sweep_run(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one (variant, depth, window) for a few epochs; return its ``depth.csv`` row."""
    from lstm_grad.cli import GoldCLI
    from lstm_grad.training.callbacks import EpochTimer

    start = time.perf_counter()
    residual, init = spec["variant"].split("/")
    depth, window, width = spec["depth"], spec["window"], spec["width"]
    version = f"d{depth}_w{window}"
    args = ["--config", str(Path(spec["config_dir"]) / "clipped.yaml"), "--seed_everything", str(spec["seed"]),
            f"--model.hidden_sizes=[{','.join([str(width)] * depth)}]", "--model.residual", str(residual == "residual"),
            "--model.init", init, "--model.shrink_prior", "null", "--data.window", str(window), "--trainer.max_epochs", str(spec["epochs"]),
            "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--early_stopping.patience", "1000",
            "--trainer.logger.init_args.save_dir", spec["runs_dir"],
            "--trainer.logger.init_args.name", spec["variant"].replace("/", "_"),
            "--trainer.logger.init_args.version", version]
    cli = GoldCLI(args=args, run=False)
    trainer, module, data = cli.trainer, cli.model, cli.datamodule
    data.setup("fit")
    train = data.datasets["train"]
    idx = torch.arange(min(256, len(train)))
    x, y = train.windows[train.start[idx]], train.targets[idx]  # (B, T, F), (B, H)
    reach_start = reach(module.model, x, y)
    trainer.fit(module, datamodule=data)
    reach_end = reach(module.model, x, y)
    metrics = trainer.test(module, datamodule=data, verbose=False)[0]
    steps = step_norms(trainer.log_dir)
    first, last = "lstm_0", f"lstm_{depth - 1}"
    per_epoch = trainer.num_training_batches
    tail = steps[-per_epoch:]
    timer = next(c for c in trainer.callbacks if isinstance(c, EpochTimer))
    ratios = [s[first] / s[last] for s in tail if s[last] > 0]
    return {
        "variant": spec["variant"], "depth": depth, "window": window, "width": width, "epochs": spec["epochs"],
        "ratio_start": steps[0][first] / steps[0][last] if steps[0][last] > 0 else math.inf,
        "ratio_end": statistics.median(ratios) if ratios else math.nan,
        "reach_start": reach_start, "reach_end": reach_end,
        "test_rel_mae": float(metrics["test/rel_mae"]), "test_mae": float(metrics["test/mae"]),
        "epoch_time_s": statistics.median(timer.epoch_times),
        "grad_first_start": steps[0][first], "grad_last_start": steps[0][last],
        "grad_first_end": statistics.median(s[first] for s in tail),
        "grad_last_end": statistics.median(s[last] for s in tail), "wall_s": time.perf_counter() - start,
        "log_dir": trainer.log_dir, "commit": spec["commit"], **versions(),
    }


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    shapes = [(d, 60) for d in args.depths] + [(args.sweep_depth, w) for w in args.windows if w != 60]
    common = {"width": args.sweep_width, "epochs": args.sweep_epochs, "seed": args.sweep_seed, "commit": args.commit,
              "config_dir": args.config_dir, "runs_dir": str(Path(args.runs_dir).parent / "depth")}
    # deepest / longest first, so the slow runs do not end up alone at the tail of the pool
    shapes.sort(key=lambda s: -s[0] * s[1])
    return [{**common, "variant": f"{r}/{i}", "depth": d, "window": w} for d, w in shapes for r, i in VARIANTS]


def key(row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(row[k]) for k in ("variant", "depth", "window", "width", "epochs"))


def run_depth_sweep(args: argparse.Namespace) -> None:
    """Run the sweep's missing cells (``python -m experiments.ablation --part depth``), then write its page."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "depth.csv"
    rows = {key(r): r for r in read_rows(path)}
    specs = plan(args)
    todo = [] if args.report_only else [s for s in specs if key(s) not in rows]
    print(f"depth sweep: {len(specs) - len(todo)} of {len(specs)} runs already in {path}; running {len(todo)} {where(args)}", flush=True)
    started = time.perf_counter()

    def done(index: int, row: dict[str, Any]) -> None:
        rows[key(row)] = row
        write_rows(path, rows.values(), COLUMNS)
        print(f"[{time.perf_counter() - started:6.0f} s] {row['variant']:<20} depth {row['depth']:>2} window "
              f"{row['window']:>3}: ratio {row['ratio_start']:.3g} -> {row['ratio_end']:.3g}, reach "
              f"{row['reach_start']} -> {row['reach_end']}, rel. MAE {row['test_rel_mae']:.2f}", flush=True)

    run_jobs(sweep_run, todo, args.workers, args.threads, args.cluster, on_result=done)
    wanted = {key(s) for s in specs}
    paths = write_depth_report([r for k, r in rows.items() if k in wanted], out, args)
    print("wrote " + ", ".join(str(p) for p in paths), flush=True)
