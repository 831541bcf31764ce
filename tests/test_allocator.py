"""The commands keep the memory a step frees: page faults counted in a fresh process, before and after."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# a 48 MiB buffer allocated, touched and freed 10 times after 10 warm-up rounds: glibc's default maps
# anything above 32 MiB (its largest dynamic mmap threshold) afresh each time, 12,288 page faults apiece;
# kept, the heap reaches a steady size in the warm-up (measured: 7 rounds) and no page is faulted again
SNIPPET = """
import json, logging, resource, sys
import torch
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
from lstm_grad.training.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
def step():
    torch.empty(12 * 2**20).fill_(1.0)  # 48 MiB of float32
for _ in range(10):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": applied, "faults": faults}))
"""


def run(mode: str, **env: str) -> tuple[dict, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run([sys.executable, "-c", SNIPPET, mode], capture_output=True, text=True, check=True,
                          env={**clean, **env}, timeout=120)
    *lines, last = done.stdout.strip().splitlines()
    return json.loads(last), "\n".join(lines)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_buffers_are_not_faulted_back_in_and_a_users_setting_is_left_alone() -> None:
    default, _ = run("default")
    kept, said = run("keep")
    # 12,288 faults per round with 4 KiB pages; with transparent huge pages always on, 24 (2 MiB pages)
    assert default["faults"] >= 10 * 24 * 0.9
    assert kept["applied"] is True and kept["faults"] * 20 < default["faults"]
    assert said.count("memory: freed buffers stay in the process (glibc mmap threshold 64 MiB") == 1
    users, said = run("keep", MALLOC_TRIM_THRESHOLD_="131072")
    assert users["applied"] is False and said == "memory: the allocator is left as MALLOC_TRIM_THRESHOLD_ sets it"
