"""Speed and overhead of the real training path, as ratios measured in one process.

``python scripts/bench.py [--quick] [--json PATH] [--threads N] [--clock wall|cpu]``

Every comparison runs its variants interleaved (A B A B ...) after one warm-up round, reports
min / median / max over the repeats and the ratio of the medians, so a busy machine slows both
sides alike. ``--quick`` runs items 1-4 and 9 with 3-epoch fits and 3 rounds (~3 minutes on an idle 2-core box);
the full run adds the full 9,132-day series, data, scaling, predict and ``torch.compile``.
The helpers are pure functions tested in ``tests/test_bench.py``; the timed parts live in
``scripts/bench_items.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

GATES = {"lstm": 4, "gru": 3}


@dataclass
class BenchConfig:
    """What to measure and how often; the defaults are the design's measurement protocol."""

    quick: bool = False
    last_n_days: int = 1247
    full_days: int | None = None  # None: the whole embedded series (9,132 days)
    window: int = 60
    batch_size: int = 32
    hidden_sizes: tuple[int, ...] = (128, 128, 128, 64)
    epochs: int = 2  # epochs per timed fit on last_n_days (one on the full series)
    repeats: int = 4  # timed rounds per comparison, after one warm-up round
    full_repeats: int = 2  # rounds on the full series (an epoch there is ~13 s on 2 idle cores)
    clock: str = "wall"  # "wall" (perf_counter) or "cpu" (process_time, steadier on a shared box)
    items: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9)
    scaling_days: tuple[int | None, ...] = (1247, 2500, 5000, None)
    scaling_windows: tuple[int, ...] = (30, 60, 120, 240)
    warmup: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def quick_config(cls, **kw: Any) -> "BenchConfig":
        base = dict(quick=True, epochs=3, repeats=3, items=(1, 2, 3, 4, 9))
        return cls(**{**base, **kw})


# ---- pure helpers ------------------------------------------------------------------------------
@dataclass
class Timing:
    wall: float
    cpu: float


def timed(fn: Callable[[], Any]) -> tuple[Timing, Any]:
    """Run ``fn`` once and return its wall and process-CPU seconds with its result."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return Timing(time.perf_counter() - w, time.process_time() - c), out


def interleave(variants: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1
               ) -> dict[str, list[Timing]]:
    """Time each variant ``repeats`` times in the order A B A B ..., after ``warmup`` untimed rounds."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    runs: dict[str, list[Timing]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            runs[name].append(timed(fn)[0])
    return runs


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Return ``{"min", "median", "max", "runs"}`` of some timings (seconds or rates).

    >>> summary([3.0, 1.0, 2.0])
    {'min': 1.0, 'median': 2.0, 'max': 3.0, 'runs': [3.0, 1.0, 2.0]}
    """
    values = [float(v) for v in values]
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "runs": values}


def pick(runs: Sequence[Timing], clock: str) -> list[float]:
    return [getattr(t, clock) for t in runs]


def compare(runs: dict[str, list[Timing]], a: str, b: str, clock: str) -> dict[str, Any]:
    """Summarise two interleaved variants: each one's seconds and ``ratio`` = median(a) / median(b).

    Both clocks are kept (``wall`` and ``cpu``); ``ratio`` uses ``clock``.
    """
    out: dict[str, Any] = {"clock": clock}
    for name in (a, b):
        out[name] = summary(pick(runs[name], clock))
        other = "cpu" if clock == "wall" else "wall"
        out[name][f"{other}_median"] = statistics.median(pick(runs[name], other))
    out["ratio"] = out[a]["median"] / out[b]["median"]
    pairs = [x / y for x, y in zip(pick(runs[a], clock), pick(runs[b], clock))]
    out["pair_ratios"] = summary(pairs)  # each round's a/b: its spread shows the noise
    return out


def lstm_gate_flops(n_features: int, hidden_sizes: Sequence[int], window: int, cell: str = "lstm") -> int:
    """Return the forward FLOPs of the gate matmuls for one window (one sample).

    Layer ``i`` with input width ``I`` and hidden width ``H`` computes, at each of the ``T`` steps,
    ``W_ih x_t`` (G*H x I) and ``W_hh h_{t-1}`` (G*H x H), G = 4 gates (3 for a GRU): a multiply and
    an add per weight, so ``2 * T * G*H * (I + H)`` FLOPs. A training step costs about 3x the forward
    (backward = input gradients + weight gradients, each one more matmul of the same size).
    Projections, the head, biases and the element-wise gate math are left out (< 3 % here).

    >>> lstm_gate_flops(1, [2], window=3)  # 2 * 3 steps * 8 gate rows * (1 + 2) inputs
    144
    """
    gates, total, width = GATES[cell], 0, n_features
    for size in hidden_sizes:
        total += 2 * window * gates * size * (width + size)
        width = size
    return total


def gemm_shapes(n_features: int, hidden_sizes: Sequence[int], window: int, batch: int,
                cell: str = "lstm") -> list[tuple[int, int, int, int]]:
    """Return the ``(m, k, n, count)`` matmuls of one training batch's gate math, as GEMMs.

    Per layer (input I, hidden H, G*H gate rows): the input projection of the whole window at once
    ``(T*B, I) @ (I, GH)``, and per step ``(B, H) @ (H, GH)``; backward: the input and weight
    gradients of both, ``(T*B, GH) @ (GH, I)``, ``(GH, T*B) @ (T*B, I)``, and per step
    ``(B, GH) @ (GH, H)``, ``(GH, B) @ (B, H)``. Their FLOPs sum to 3x :func:`lstm_gate_flops` x B.

    >>> gemm_shapes(1, [2], window=3, batch=4)[:2]
    [(12, 1, 8, 1), (4, 2, 8, 3)]
    """
    shapes, width, tb = [], n_features, window * batch
    for size in hidden_sizes:
        gh = GATES[cell] * size
        shapes += [(tb, width, gh, 1), (batch, size, gh, window),  # forward
                   (tb, gh, width, 1), (gh, tb, width, 1),  # backward of the input projection
                   (batch, gh, size, window), (gh, batch, size, window)]  # backward, per step
        width = size
    return shapes


def gemm_flops(shapes: Sequence[tuple[int, int, int, int]]) -> int:
    """FLOPs of a list of ``(m, k, n, count)`` GEMMs: ``2 m k n`` each."""
    return sum(2 * m * k * n * count for m, k, n, count in shapes)


def fit_exponent(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Return the slope of the least-squares line through ``(log x, log y)``: ``y ~ x ** slope``.

    >>> round(fit_exponent([1, 2, 4, 8], [3, 6, 12, 24]), 6)
    1.0
    """
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def tensor_bytes(tensors: Sequence[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views of one storage count once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


class HookClock:
    """Sum the time spent inside chosen methods of live objects (callbacks, a LightningModule's hooks).

    An A/B comparison of two whole fits measures a few-percent cost as the difference of two noisy
    numbers (rounds swung +-20 % on a quiet box); timing the diagnostics' own hook calls inside one
    run measures the same cost directly, as a share of that run, with far less noise. Each wrapped
    method is replaced by an instance attribute that calls the original; ``seconds[name]`` and
    ``calls[name]`` accumulate per ``"<label>.<method>"``. ``clock`` is injectable for tests.

    >>> ticks = iter([0.0, 0.5, 1.0, 1.25])
    >>> class Hooks:
    ...     def on_a(self, x): return x + 1
    >>> hooks = Hooks()
    >>> clock = HookClock(clock=lambda: next(ticks))
    >>> clock.wrap(hooks, "cb", ["on_a"])
    >>> hooks.on_a(1), hooks.on_a(2), clock.seconds, clock.calls
    (2, 3, {'cb.on_a': 0.75}, {'cb.on_a': 2})
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, target: Any, label: str, methods: Sequence[str]) -> None:
        for method in methods:
            key = f"{label}.{method}"
            self.seconds.setdefault(key, 0.0)
            self.calls.setdefault(key, 0)
            setattr(target, method, self._timed(getattr(target, method), key))

    def _timed(self, original: Callable[..., Any], key: str) -> Callable[..., Any]:
        def timed_call(*args: Any, **kwargs: Any) -> Any:  # the hook's own signature, passed through
            start = self.clock()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[key] += self.clock() - start
                self.calls[key] += 1
        return timed_call

    def total(self) -> float:
        return sum(self.seconds.values())


def overridden_hooks(obj: Any, base: type) -> list[str]:
    """Names of the ``on_*`` / ``setup`` / ``teardown`` hooks that ``type(obj)`` overrides from ``base``."""
    return sorted(name for name in dir(type(obj))
                  if (name.startswith("on_") or name in ("setup", "teardown"))
                  and callable(getattr(type(obj), name)) and getattr(type(obj), name) is not getattr(base, name, None))


HEADLINE = {  # JSON key -> (item, target, "max" if the value must stay below the target else "min")
    "lightning_vs_loop": (1, 1.03, "max"),
    "lightning_vs_loop_full": (1, 1.03, "max"),
    "monitor_overhead": (2, 0.01, "max"),
    "diagnostics_overhead": (3, 0.03, "max"),
    "gemm_fraction": (4, 0.9, "min"),
    "data_setup_s": (5, 0.5, "max"),
    "scaling_exponent_days": (6, 1.0, "about"),
    "scaling_exponent_window": (6, 1.0, "about"),
    "darts_ratio": (9, 1.0, "max"),
}


def verdict(key: str, value: float | None) -> str:
    """Say whether a headline value meets its target: ``ok``, ``MISS`` or ``n/a``."""
    if value is None or key not in HEADLINE:
        return "n/a"
    _, target, kind = HEADLINE[key]
    if kind == "about":
        return "ok" if abs(value - target) <= 0.15 else "MISS"
    return "ok" if (value <= target if kind == "max" else value >= target) else "MISS"


def table(result: dict[str, Any]) -> str:
    """Format the headline keys with min / median / max (from their items) and targets."""
    lines = ["| key | item | value | min / median / max | target | verdict |",
             "| --- | --- | --- | --- | --- | --- |"]
    for key, (item, target, kind) in HEADLINE.items():
        value = result.get(key)
        spread = result.get("spread", {}).get(key)
        span = " / ".join(f"{spread[k]:.4g}" for k in ("min", "median", "max")) if spread else ""
        sign = {"max": "<=", "min": ">=", "about": "~"}[kind]
        shown = "not measured" if value is None else f"{value:.4g}"
        lines.append(f"| {key} | {item} | {shown} | {span} | {sign} {target:g} | {verdict(key, value)} |")
    return "\n".join(lines)


def details(result: dict[str, Any]) -> str:
    """One line per measured comparison: both sides' median seconds (min..max) and the ratio."""
    lines = []
    for name, item in result.get("items", {}).items():
        sides = [k for k, v in item.items() if isinstance(v, dict) and "median" in v and "runs" in v
                 and k not in ("pair_ratios", "pair_fractions")]
        parts = [f"{k} {item[k]['median']:.4g} ({item[k]['min']:.4g}..{item[k]['max']:.4g})" for k in sides]
        if "ratio" in item:
            parts.append(f"ratio {item['ratio']:.4f}")
        parts += [f"{k} {item[k]:.4g}" for k in ("exponent_days", "exponent_window", "copies_of_series",
                                                 "max_rel_grad_norm_diff") if isinstance(item.get(k), float)]
        parts += [f"{k} {item[k]}" for k in ("bytes_held", "bytes_if_windows_copied", "callbacks", "error")
                  if k in item]
        lines.append(f"- {name}: " + "; ".join(parts))
    return "\n".join(lines)


def machine_note() -> dict[str, Any]:
    from lstm_grad.forecaster.backtest_report import git_commit  # the code measured, "with uncommitted changes" if so

    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "loadavg": os.getloadavg(), "python": sys.version.split()[0], "commit": git_commit()}


def parse_args(argv: Sequence[str] | None = None) -> tuple[BenchConfig, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="items 1-4 and 9, 3-epoch fits, 3 rounds (~3 min idle)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="which clock the ratios use; both are recorded")
    parser.add_argument("--repeats", type=int, help="timed rounds per comparison")
    parser.add_argument("--items", type=int, nargs="+", help="run only these items (1-9)")
    args = parser.parse_args(argv)
    cfg = BenchConfig.quick_config() if args.quick else BenchConfig()
    cfg.clock = args.clock
    if args.repeats:
        cfg.repeats = cfg.full_repeats = args.repeats
    if args.items:
        cfg.items = tuple(args.items)
    return cfg, args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    cfg, args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_items import run_bench  # the timed half; needs lightning and the package

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
