"""Wall time of one 8-run sweep: in this process (1 worker), a 2-worker joblib pool, a 2-worker Dask LocalCluster.

    python -m benchmarks.sweep_timing                    # 4 configs x 2 seeds, 5 epochs, recipe data
    python -m benchmarks.sweep_timing --max-epochs 2 --configs baseline residual --seeds 4

The eight runs are ``experiments.runs.train_run`` jobs (the ablation's own runs) and go
through ``lstm_grad.training.parallel.run_jobs`` exactly as ``python -m experiments.ablation --workers N``
/ ``--cluster`` send them. Torch threads per job: ``cores // workers`` unless ``--threads`` is given
(give it to compare rows: the same seeds and thread counts give identical rows in every mode).
Run it on a quiet machine: the numbers are wall times, and neighbours' load is in them. Prints one
line per mode and the largest difference of the test MASE between modes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments.runs import train_run
from lstm_grad.training.parallel import check_workers, run_jobs


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["baseline", "clipped", "orthogonal", "residual"])
    p.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 per config (4 configs x 2 seeds = 8 runs)")
    p.add_argument("--max-epochs", type=int, default=5)
    p.add_argument("--last-n-days", type=int, default=1247)
    p.add_argument("--threads", type=int, default=None, help="torch threads per job (default: cores // workers)")
    p.add_argument("--modes", nargs="+", default=["1-worker", "2-workers", "2-worker-cluster"],
                   choices=["1-worker", "2-workers", "2-worker-cluster"])
    p.add_argument("--config-dir", default=str(Path(__file__).resolve().parents[1] / "configs"))
    return p.parse_args(argv)


def specs(args: argparse.Namespace, runs_dir: Path) -> list[dict[str, Any]]:
    """The sweep's jobs, as ``experiments.ablation`` plans them (patience high: every run trains all epochs)."""
    common = {"config_dir": args.config_dir, "runs_dir": str(runs_dir), "overrides": [], "patience": 10_000,
              "last_n_days": args.last_n_days, "horizon": 1, "target_mode": "level", "max_epochs": args.max_epochs}
    return [{**common, "config": c, "seed": s} for s in range(args.seeds) for c in args.configs]


def timed(mode: str, jobs: list[dict[str, Any]], threads: int | None) -> tuple[float, list[dict[str, Any]], str]:
    """Run the jobs one way; return wall seconds, rows and a description of the threads used."""
    if mode == "2-worker-cluster":
        from distributed import LocalCluster

        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
            start = time.perf_counter()  # cluster start-up left out, as a user's cluster is already up
            rows = run_jobs(train_run, jobs, threads_per_worker=threads, cluster=cluster.scheduler_address)
            return time.perf_counter() - start, rows, f"2 x {threads or max(1, (os.cpu_count() or 1) // 2)}"
    workers = 1 if mode == "1-worker" else 2
    used = check_workers(workers, threads)
    start = time.perf_counter()
    rows = run_jobs(train_run, jobs, workers=workers, threads_per_worker=threads)
    return time.perf_counter() - start, rows, f"{workers} x {used}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results: dict[str, tuple[float, list[dict[str, Any]]]] = {}
    with tempfile.TemporaryDirectory(prefix="sweep_timing_") as tmp:
        n = len(specs(args, Path(tmp)))
        print(f"{n} runs ({len(args.configs)} configs x {args.seeds} seeds, {args.max_epochs} epochs, "
              f"last {args.last_n_days} days) on {os.cpu_count()} cores", flush=True)
        for mode in args.modes:
            wall, rows, threads = timed(mode, specs(args, Path(tmp) / mode), args.threads)
            results[mode] = (wall, rows)
            print(f"{mode:<17} workers x threads {threads:<7} wall {wall:8.1f} s   "
                  f"{n / wall * 60:6.2f} runs/min", flush=True)
    base_mode = args.modes[0]
    base_wall, base_rows = results[base_mode]
    for mode, (wall, rows) in results.items():
        diff = max(abs(float(a["mase"]) - float(b["mase"])) for a, b in zip(base_rows, rows))
        print(f"{mode:<17} speed-up vs {base_mode}: {base_wall / wall:5.2f}x; max |test MASE - {base_mode}'s| = {diff:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
