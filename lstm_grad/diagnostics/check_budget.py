"""Whether the per-step finiteness check is worth its cost on this model: decided by measuring it.

On a CPU the check (one fused norm pass over every gradient and one read) costs little next to a
small model's step and a lot next to a big one's (a 50 M-parameter model on CPU: see
``python -m benchmarks.bench``, item 10). :class:`CheckBudget` times the first ``SAMPLES`` steps and
checks, and keeps the check only when its median is within ``BUDGET`` of the median step.
"""

from __future__ import annotations

import statistics
from typing import Optional

SAMPLES = 5  # unlogged steps timed before the automatic per-step check is kept or dropped
BUDGET = 0.005  # the per-step check may cost this share of a step


class CheckBudget:
    """Feed it each batch's start time and the checks' durations; it answers once, then ``note`` says why."""

    def __init__(self) -> None:
        self.step_seconds: list[float] = []
        self.last_start: Optional[float] = None
        self.note = ""

    def decide(self, now: float, check_seconds: list[float]) -> Optional[bool]:
        """Return ``None`` while timing, then whether to keep the per-step check."""
        if self.last_start is not None:
            self.step_seconds.append(now - self.last_start)
        self.last_start = now
        if len(check_seconds) < SAMPLES or len(self.step_seconds) < SAMPLES:
            return None
        check, step = statistics.median(check_seconds), statistics.median(self.step_seconds)
        keep = check <= BUDGET * step
        self.note = (f"{'every optimizer step' if keep else 'logged steps only'}: the per-step check costs "
                     f"{1e3 * check:.2f} ms of a {1e3 * step:.1f} ms step ({100 * check / step:.2f} %, budget "
                     f"{100 * BUDGET:.1f} %; set check_every_step to choose)")
        return keep
