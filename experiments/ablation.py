"""The recipe's ablation, honestly: configs x seeds against persistence and a linear AR, plus a
depth / window sweep that shows where gradients really vanish.

    python -m experiments.ablation --part ablation --workers 2 --max-epochs 25  # results/ablation.md, runs.csv
    python -m experiments.ablation --part depth --workers 2                     # results/depth.md, depth.png

Every run is a normal TensorBoard run under ``--runs-dir`` (``python -m lstm_grad.diagnose`` reads
them). ``results/runs.csv`` gets one row per finished run, rewritten atomically after each one:
a run already in it (same config, seed, horizon, target mode, span, max epochs) is not redone, and
Ctrl-C leaves complete rows only. ``--workers N`` runs N joblib (loky) processes with the CPU threads
split between them (``torch.set_num_threads``, workers x threads <= cores); ``--cluster tcp://host:8786``
sends the same runs to a Dask scheduler instead (``pip install -e ".[cluster]"``); the rows come back
here and are the same as local ones for the same seeds and thread counts.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments.ablation_report import write_ablation_report
from experiments.depth_sweep import run_depth_sweep
from experiments.rows import read_rows, write_rows
from experiments.runs import BASELINES, COLUMNS, baseline_rows, code_commit, run_key, train_run, where
from lstm_grad.errors import UserError
from lstm_grad.training.parallel import run_jobs

CONFIGS = ("baseline", "clipped", "orthogonal", "residual")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("ablation", "depth", "all"), default="ablation")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), help="config names in --config-dir")
    p.add_argument("--config-dir", default="configs")
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per config")
    p.add_argument("--max-epochs", type=int, default=25, help="cap per run; early stopping on val/loss ends sooner")
    p.add_argument("--patience", type=int, default=10, help="early-stopping patience in epochs (val/loss)")
    p.add_argument("--horizon", type=int, nargs="+", default=[1], help="e.g. 1 30")
    p.add_argument("--target-mode", nargs="+", default=["level"], choices=("level", "log_return"))
    p.add_argument("--last-n-days", type=int, default=1247)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra CLI override for every run, e.g. --set model.hidden_sizes=[8] (repeatable)")
    p.add_argument("--allow-dirty", action="store_true",
                   help="run from uncommitted code anyway; rows record '<sha>-dirty' and the pages flag them")
    p.add_argument("--report-only", action="store_true", help="train nothing; rewrite the pages from runs.csv")
    p.add_argument("--workers", type=int, default=1, help="parallel joblib processes (threads split between them)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per worker (default: cores / workers; on a cluster: its machine's cores / slots)")
    p.add_argument("--cluster", default=None, metavar="ADDRESS",
                   help="Dask scheduler, e.g. tcp://10.0.0.5:8786: run the trainings there (needs the [cluster] extra)")
    p.add_argument("--out", default="results", help="folder for runs.csv, *.md, *.png")
    p.add_argument("--runs-dir", default="runs/ablation", help="TensorBoard runs (not committed)")
    # depth / window sweep
    p.add_argument("--depths", type=int, nargs="+", default=[2, 4, 8, 16])
    p.add_argument("--windows", type=int, nargs="+", default=[60, 120, 240])
    p.add_argument("--sweep-depth", type=int, default=4, help="depth at which the window axis is swept")
    p.add_argument("--sweep-width", type=int, default=32, help="units per layer in the sweep")
    p.add_argument("--sweep-epochs", type=int, default=4)
    p.add_argument("--sweep-seed", type=int, default=0)
    args = p.parse_args(argv)
    args.argv_text = list(sys.argv[1:] if argv is None else argv)
    args.overrides = [f"--{item}" for item in args.overrides]
    if args.workers < 1 or args.seeds < 1 or args.max_epochs < 1:
        p.error("--workers, --seeds and --max-epochs must be >= 1")
    return args


# ---- runs.csv: resumable, complete rows only ----------------------------------------------------
class RunTable:
    """The rows of ``runs.csv`` keyed by run settings; ``add`` writes the file at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = {run_key(r): r for r in read_rows(path)}

    def __contains__(self, spec: dict[str, Any]) -> bool:
        return run_key(spec) in self.rows

    def add(self, row: dict[str, Any]) -> None:
        self.rows[run_key(row)] = row
        write_rows(self.path, self.rows.values(), COLUMNS)


# ---- the ablation ------------------------------------------------------------------------------
def plan(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Return the baseline specs (one per horizon x mode) and the training specs (config x seed)."""
    common = {"config_dir": args.config_dir, "runs_dir": args.runs_dir, "commit": args.commit,
              "overrides": args.overrides, "patience": args.patience, "last_n_days": args.last_n_days}
    base, train = [], []
    for horizon in args.horizon:
        for mode in args.target_mode:
            group = {**common, "horizon": horizon, "target_mode": mode}
            base.append({**group, "config": args.configs[0], "seed": 0, "max_epochs": 0})
            for seed in range(args.seeds):  # seed-major: an interrupted sweep still has every config
                for config in args.configs:
                    train.append({**group, "config": config, "seed": seed, "max_epochs": args.max_epochs})
    return base, train


def run_ablation(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = RunTable(out / "runs.csv")
    base, train = plan(args)
    for spec in base:
        if not all({**spec, "config": name} in table for name in BASELINES):
            for row in baseline_rows(spec):
                table.add(row)
    todo = [] if args.report_only else [s for s in train if s not in table]
    print(f"ablation: {len(train) - len(todo)} of {len(train)} runs already in {table.path}; "
          f"running {len(todo)} {where(args)}", flush=True)
    started = time.perf_counter()

    def done(index: int, row: dict[str, Any]) -> None:
        table.add(row)
        print(f"[{time.perf_counter() - started:7.0f} s] {row['config']:<10} seed {row['seed']} h{row['horizon']} "
              f"{row['target_mode']}: MAE {row['mae']:.3f} rel. MAE {row['rel_mae']:.3f} best epoch {row['best_epoch']}"
              f"/{row['epochs']} {row['epoch_time_s']:.2f} s/epoch", flush=True)

    run_jobs(train_run, todo, args.workers, args.threads, args.cluster, on_result=done)
    keys = {tuple(str(s[k]) for k in ("horizon", "target_mode", "last_n_days")) for s in base}
    rows = [r for r in table.rows.values()
            if (str(r["horizon"]), r["target_mode"], str(r["last_n_days"])) in keys
            and (r["config"] in BASELINES or str(r["max_epochs"]) == str(args.max_epochs))]
    paths = write_ablation_report(rows, out, args)
    print("wrote " + ", ".join(str(p) for p in paths), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        where(args)  # workers x threads <= cores, before anything runs
        args.commit = "" if args.report_only else code_commit(allow_dirty=args.allow_dirty)
        if args.part in ("ablation", "all"):
            run_ablation(args)
        if args.part in ("depth", "all"):
            run_depth_sweep(args)
    except KeyboardInterrupt:
        print("interrupted: runs.csv holds the complete runs only; rerun to resume", file=sys.stderr)
        return 130
    except (UserError, ValueError, OSError, argparse.ArgumentError) as error:  # bad flags or config, no scheduler, no Dask
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
