"""Speed and overhead of the real training path, as ratios measured in one process.

``python -m benchmarks.bench [--quick] [--json PATH] [--threads N] [--clock wall|cpu]``

Every comparison runs its variants interleaved (A B A B ...) after one warm-up round, reports
min / median / max over the repeats and the ratio of the medians, so a busy machine slows both
sides alike. ``--quick`` runs items 1-4 and 9 with 3-epoch fits and 3 rounds (item 1: 5 rounds, item 9: 20 rounds of
4-epoch fits; ~8 minutes on an idle 2-core box);
the full run adds the full 9,132-day series, data, scaling, predict and ``torch.compile``.
The helpers are pure functions (``benchmarks.stats``, ``benchmarks.flops``, ``benchmarks.headline``)
tested in ``tests/test_bench.py``; the timed items live in ``benchmarks.overhead`` (1-3),
``benchmarks.throughput`` (4-8) and ``benchmarks.peers`` (9).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from benchmarks.config import BenchConfig
from benchmarks.fits import make_data, quiet
from benchmarks.headline import details, table
from benchmarks.big_model import item_big_model
from benchmarks.overhead import item_diagnostics, item_lightning_vs_loop, item_monitor_user_model
from benchmarks.peers import item_darts
from benchmarks.stats import machine_note
from benchmarks.throughput import item_compile, item_data, item_gemm, item_predict, item_scaling


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the items in ``cfg.items``; return the JSON dict (headline keys + ``items`` + ``spread``)."""
    quiet()
    result: dict[str, Any] = {"machine": machine_note(), "items": {}, "spread": {}}
    items, spread = result["items"], result["spread"]
    dm = make_data(cfg, cfg.last_n_days)
    if 1 in cfg.items:
        items["lightning_vs_loop"] = item_lightning_vs_loop(cfg, dm, cfg.epochs, max(cfg.repeats, 5))
        result["lightning_vs_loop"] = items["lightning_vs_loop"]["ratio"]
        spread["lightning_vs_loop"] = items["lightning_vs_loop"]["pair_ratios"]
        log(f"1 lightning / loop ({len(dm.datasets['train'])} windows): {result['lightning_vs_loop']:.4f}")
        if not cfg.quick:
            full = make_data(cfg, cfg.full_days)
            items["lightning_vs_loop_full"] = item_lightning_vs_loop(cfg, full, 1, cfg.full_repeats)
            result["lightning_vs_loop_full"] = items["lightning_vs_loop_full"]["ratio"]
            spread["lightning_vs_loop_full"] = items["lightning_vs_loop_full"]["pair_ratios"]
            log(f"1 lightning / loop, full series: {result['lightning_vs_loop_full']:.4f}")
    for number, name, key, measure in ((2, "monitor_user_model", "monitor_overhead", item_monitor_user_model),
                                       (3, "diagnostics", "diagnostics_overhead", item_diagnostics)):
        if number in cfg.items:
            items[name] = measure(cfg, dm)
            result[key] = items[name]["overhead"]
            spread[key] = items[name]["share"]
            log(f"{number} {key}: {result[key]:.4f} (min {spread[key]['min']:.4f}, max {spread[key]['max']:.4f})")
    if 4 in cfg.items:
        items["gemm"] = item_gemm(cfg, dm)
        result["gemm_fraction"] = items["gemm"]["fraction"]
        spread["gemm_fraction"] = items["gemm"]["pair_fractions"]
        log(f"4 GFLOP/s {items['gemm']['achieved_gflops']['median']:.1f} of "
            f"{items['gemm']['ceiling_gflops']['median']:.1f}: {result['gemm_fraction']:.3f}")
    if 10 in cfg.items:
        items["big_model"] = item_big_model(cfg)
        result["big_model_check_share"] = items["big_model"]["check_share"]["median"]
        result["big_model_logged_share"] = items["big_model"]["logged_share"]["median"]
        spread["big_model_check_share"] = items["big_model"]["check_share"]
        log(f"10 50M-parameter step {items['big_model']['step_s']['median']:.3f} s: per-step check "
            f"{result['big_model_check_share']:+.2%}, logged step {result['big_model_logged_share']:+.2%}")
    if 5 in cfg.items:
        items["data"] = item_data(cfg)
        result["data_setup_s"] = items["data"]["setup_s"]["median"]
        spread["data_setup_s"] = items["data"]["setup_s"]
        log(f"5 data set-up {result['data_setup_s']:.3f} s, {items['data']['copies_of_series']:.2f} series copies")
    if 6 in cfg.items:
        items["scaling"] = item_scaling(cfg)
        result["scaling_exponent_days"] = items["scaling"]["exponent_days"]
        result["scaling_exponent_window"] = items["scaling"]["exponent_window"]
        log(f"6 exponents: days {result['scaling_exponent_days']:.3f}, window {result['scaling_exponent_window']:.3f}")
    if 7 in cfg.items:
        items["predict"] = item_predict(cfg, make_data(cfg, cfg.full_days))
        result["predict_windows_per_s"] = items["predict"]["windows_per_s"]["median"]
        log(f"7 predict {result['predict_windows_per_s']:.0f} windows/s")
    if 8 in cfg.items:
        items["compile"] = item_compile(cfg, dm)
        result["compile_vs_eager"] = items["compile"].get("ratio")
        log(f"8 torch.compile / eager: {result['compile_vs_eager']}; {items['compile'].get('error', '')}")
    if 9 in cfg.items:  # darts itself is imported only if installed
        items["darts"] = item_darts(cfg, dm)
        if "ratio" in items["darts"]:
            result["darts_ratio"] = items["darts"]["ratio"]
            spread["darts_ratio"] = items["darts"]["pair_ratios"]
        log(f"9 lstm_grad / darts epoch time: {result.get('darts_ratio', items['darts'].get('skipped'))}")
    result["machine"]["loadavg_end"] = machine_note()["loadavg"]
    return result


def parse_args(argv: Sequence[str] | None = None) -> tuple[BenchConfig, argparse.Namespace]:
    """The command line as a :class:`BenchConfig` (what to run) and the namespace (where to write)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="items 1-4 and 9, 3-epoch fits, 3 rounds (~8 min idle)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="which clock the ratios use; both are recorded")
    parser.add_argument("--repeats", type=int, help="timed rounds per comparison")
    parser.add_argument("--items", type=int, nargs="+", help="run only these items (1-10)")
    args = parser.parse_args(argv)
    cfg = BenchConfig.quick_config() if args.quick else BenchConfig()
    cfg.clock = args.clock
    if args.repeats:
        cfg.repeats = cfg.full_repeats = args.repeats
    if args.items:
        cfg.items = tuple(args.items)
    return cfg, args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the headline table and the details; return (and optionally write) the JSON."""
    cfg, args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    result = run_bench(cfg, log=lambda msg: print(msg, flush=True))
    result["config"] = {k: v for k, v in asdict(cfg).items() if k != "extra"}
    result["bench_seconds"] = time.perf_counter() - started
    print()
    print(table(result))
    print()
    print(details(result))
    print(f"\n{result['bench_seconds']:.0f} s; clock={cfg.clock}; {result['machine']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=str))
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
