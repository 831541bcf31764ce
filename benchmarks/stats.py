"""Timing and its statistics, pure helpers of every benchmark: interleaved A/B rounds, min / median /
max summaries, ratios of medians, power-law exponents, time inside hooks, the machine's note."""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from experiments import CODE_PATHS
from lstm_grad.training.allocator import keep_freed_memory
from lstm_grad.training.provenance import git_commit


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
    """The ``clock`` ("wall" or "cpu") seconds of each run."""
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


def machine_note() -> dict[str, Any]:
    """Versions, threads, cores, load average, the allocator setting the commands use (applied here by
    ``keep_freed_memory``, so every side of every item runs with it) and the code measured (its commit,
    "with uncommitted changes" if any of ``experiments.CODE_PATHS`` has some)."""
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none available"
    allocator = ("glibc: freed memory kept (lstm_grad.training.allocator)" if keep_freed_memory()
                 else "as the platform / the environment sets it")
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "loadavg": os.getloadavg(), "python": sys.version.split()[0], "commit": git_commit(paths=CODE_PATHS),
            "cuda": cuda, "allocator": allocator}
