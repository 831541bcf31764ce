"""Keep the memory a training step frees inside the process, so the next step does not fault it back in.

With glibc's default ``malloc`` settings a CPU training step of the recipe's residual network (4
layers of 128 units, batch 32, 60 steps) frees its large activation and workspace buffers back to the
kernel at the end of the step and faults them in again at the next: 300,000-520,000 minor page faults
per 3-epoch fit of 1,247 days, measured with ``getrusage`` on item 1 of ``python -m benchmarks.bench``,
and the same fit took 5-25 % longer, varying from one fit to the next. Raising the mmap threshold
(allocations below it come from the heap, not a fresh ``mmap``) and the trim threshold (free memory at
the top of the heap kept up to it) keeps those buffers: 40 to 6,000 faults per fit, and steadier,
faster fits. The default forecaster (128, 64, 32 units) faulted 1.6 M times in a whole
``python -m lstm_grad.fit`` run and 0.12 M times with the setting, in the same 13.3-14.4 s end to end
(3 alternating runs each): a smaller network gains little.
Both are needed: either alone left the faults as they were (glibc's dynamic mmap threshold is turned
off by setting either one, ``mallopt(3)``).

The settings are glibc's ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` (``mallopt(3)``, the Linux
man-pages), the same as the environment variables ``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_``. PyTorch's performance tuning guide recommends a caching allocator
(jemalloc, tcmalloc) on CPU for the same reason. The commands apply them once per process
(:class:`lstm_grad.cli.GoldCLI`); a library user's process is left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>
MMAP_THRESHOLD = 64 * 2**20  # bytes: a step's buffers of the recipe's network are a few MiB each
TRIM_THRESHOLD = 256 * 2**20  # bytes of free heap top kept: the high-water mark of a step, with room
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_CONF")

_applied: bool | None = None  # this process's outcome, once decided


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once; later calls return the outcome).

    Returns True when applied. Leaves the allocator as it is, and says so in one log line, on a
    platform other than glibc Linux or when the user chose already: any of ``MALLOC_MMAP_THRESHOLD_``,
    ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_CONF`` (jemalloc) set, or another allocator in ``LD_PRELOAD``.
    """
    global _applied
    if _applied is not None:
        return _applied
    chosen = [name for name in USER_SETTINGS if os.environ.get(name)]
    if "malloc" in os.environ.get("LD_PRELOAD", ""):  # jemalloc, tcmalloc, mimalloc
        chosen.append("LD_PRELOAD")
    if chosen:
        log.info("memory: the allocator is left as %s sets it", ", ".join(chosen))
        _applied = False
        return False
    libc = _glibc()
    if libc is None:
        log.info("memory: the allocator is left as it is (not glibc Linux)")
        _applied = False
        return False
    _applied = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if _applied:
        log.info("memory: freed buffers stay in the process (glibc mmap threshold %d MiB, trim threshold %d MiB): "
                 "no page faults between training steps; MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ set others",
                 MMAP_THRESHOLD >> 20, TRIM_THRESHOLD >> 20)
    return _applied


def _glibc() -> ctypes.CDLL | None:
    """glibc's C library, or None elsewhere (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p  # only glibc has this symbol
        version = libc.gnu_get_libc_version()
    except (OSError, AttributeError):
        return None
    return libc if version else None
