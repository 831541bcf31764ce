"""What ``python -m benchmarks.bench`` measures and how often: the design's measurement protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
    items: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
    scaling_days: tuple[int | None, ...] = (1247, 2500, 5000, None)
    scaling_windows: tuple[int, ...] = (30, 60, 120, 240)
    warmup: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def quick_config(cls) -> BenchConfig:
        """``--quick``: items 1-4 and 9, 3-epoch fits, 3 rounds (items 1 and 9 take more; ~8 minutes on an
        idle 2-core box)."""
        return cls(quick=True, epochs=3, repeats=3, items=(1, 2, 3, 4, 9))
