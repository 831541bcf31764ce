"""The two per-step kernels the forecaster chose for speed, against the alternatives, interleaved.

    python -m benchmarks.kernels --json docs/measured/kernels.json [--steps 200] [--rounds 5]

- the optimizer step (``lstm_grad.forecaster.optimizer.make_adam``): torch's default Adam on the CPU
  (the for-loop), ``foreach`` and ``fused``, on the recipe's residual network and on the plain 3 x 128
  stack, gradients set once;
- dropout on one (32, 60, 128) layer output, forward + backward: ``F.dropout`` (``bernoulli_``),
  float32 uniforms compared with p, and ``UniformMaskDropout`` (15-bit uniforms, four per int64 draw).

Each round times every variant once (``--steps`` calls) in turn; milliseconds per call, min / median /
max over the rounds, with the machine's note (commit, load average).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.stats import machine_note, summary
from lstm_grad.forecaster.model import ResidualLSTM, UniformMaskDropout

SHAPE, P = (32, 60, 128), 0.2  # one layer output of a training batch; the recipe's dropout
NETWORKS = {"residual 128-128-128-64": (128, 128, 128, 64), "plain 128-128-128": (128, 128, 128)}


def float32_uniform_dropout(x: torch.Tensor) -> torch.Tensor:
    """The mask the forecaster used before: float32 uniforms compared with p, scaled by 1 / (1 - p)."""
    keep = torch.rand(x.shape, device=x.device).ge_(P).mul_(1.0 / (1.0 - P))
    return x * keep


def optimizer_steps(hidden_sizes: tuple[int, ...]) -> dict[str, Callable[[], None]]:
    """One ``step()`` of each Adam implementation over the network's parameters (gradients set once)."""
    torch.manual_seed(0)
    model = ResidualLSTM(5, hidden_sizes, horizon=1)
    for param in model.parameters():
        param.grad = torch.randn_like(param)
    flags = {"for-loop (torch's CPU default)": {"foreach": False}, "foreach": {"foreach": True},
             "fused": {"fused": True}}
    return {name: torch.optim.Adam(model.parameters(), lr=1e-3, **kw).step for name, kw in flags.items()}


def dropouts() -> dict[str, Callable[[], None]]:
    """Forward + backward of each dropout on one layer output."""
    x = torch.randn(SHAPE, requires_grad=True)
    ours = UniformMaskDropout(P)
    variants = {"F.dropout (bernoulli_)": lambda t: F.dropout(t, P, training=True),
                "float32 uniforms": float32_uniform_dropout, "UniformMaskDropout (15-bit)": ours}
    return {name: (lambda fn=fn: fn(x).sum().backward()) for name, fn in variants.items()}


def per_call_ms(variants: dict[str, Callable[[], None]], steps: int, rounds: int) -> dict[str, dict]:
    """Milliseconds per call of each variant, interleaved over ``rounds`` after one warm-up round."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(rounds + 1):
        for name, fn in variants.items():
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            if round_:  # round 0 warms up
                times[name].append((time.perf_counter() - start) / steps * 1e3)
    return {name: summary(values) for name, values in times.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, help="where to write the timings")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    result: dict = {"machine": machine_note(), "unit": "ms per call", "optimizer_step": {}}
    for label, sizes in NETWORKS.items():
        result["optimizer_step"][label] = per_call_ms(optimizer_steps(sizes), args.steps, args.rounds)
    result["dropout_forward_backward"] = per_call_ms(dropouts(), args.steps, args.rounds)
    result["machine"]["loadavg_end"] = os.getloadavg()
    Path(args.json).write_text(json.dumps(result, indent=1))
    for group, rows in (*result["optimizer_step"].items(), ("dropout", result["dropout_forward_backward"])):
        for name, stats in rows.items():
            print(f"{group:26s} {name:32s} {stats['min']:.3f} / {stats['median']:.3f} / {stats['max']:.3f} ms")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
