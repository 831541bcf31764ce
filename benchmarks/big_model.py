"""Item 10: what the gradient pipeline costs on a 50 M-parameter model on the CPU.

A stack of five 3,200 x 3,200 linear layers (51.2 M parameters), batch 64, Adam: one training step
with nothing measured, with the per-step finiteness check (what ``GradientMonitor`` adds on a step the
logger does not write when ``check_every_step`` is on), and with a logged step's full measurement
(per-group norms before and after clipping, the alarms, the update-to-weight ratio). Each is timed
as a whole step, interleaved A B C A B C, after a warm-up; the shares are of the plain step. Also the
automatic choice (:mod:`lstm_grad.diagnostics.check_budget`) on these numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from benchmarks.config import BenchConfig
from benchmarks.stats import interleave, pick, summary
from lstm_grad.diagnostics import GradientTracker
from lstm_grad.diagnostics.check_budget import BUDGET

WIDTH, DEPTH, BATCH = 3200, 5, 64


def big_model() -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(DEPTH):
        layers += [nn.Linear(WIDTH, WIDTH), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def item_big_model(cfg: BenchConfig) -> dict[str, Any]:
    """Return the step times (s) of the three variants, the per-step check's and a logged step's
    overhead as shares of a plain step (min / median / max over rounds), and the automatic choice."""
    model = big_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    tracker = GradientTracker(model, check_every_step=True)
    x, y = torch.randn(BATCH, WIDTH), torch.randn(BATCH, WIDTH)
    step = [0]

    def train_step(measure: Callable[[], None] | None) -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.mse_loss(model(x), y).backward()
        if measure is not None:
            measure()
        optimizer.step()
        if measure is not None:
            tracker.update_tags()
        step[0] += 1

    def checked() -> None:
        tracker.before_clip(optimizer, step=step[0], log=False)
        tracker.after_clip(clip_may_act=False)

    def logged() -> None:  # the post-clip pass is measured as if a clip could have acted
        tracker.before_clip(optimizer, step=step[0], log=True)
        tracker.after_clip(clip_may_act=True)

    runs = interleave({"plain": lambda: train_step(None), "checked": lambda: train_step(checked),
                       "logged": lambda: train_step(logged)}, cfg.repeats, cfg.warmup)
    plain, check, log = (pick(runs[k], cfg.clock) for k in ("plain", "checked", "logged"))
    check_share = [c / p - 1 for c, p in zip(check, plain)]
    log_share = [g / p - 1 for g, p in zip(log, plain)]
    check_seconds = summary(tracker.check_seconds)
    return {"parameters": sum(p.numel() for p in model.parameters()), "batch": BATCH,
            "step_s": summary(plain), "checked_step_s": summary(check), "logged_step_s": summary(log),
            "check_share": summary(check_share), "logged_share": summary(log_share),
            "check_s": check_seconds, "budget": BUDGET,
            "automatic_keeps_check": check_seconds["median"] <= BUDGET * summary(plain)["median"]}
