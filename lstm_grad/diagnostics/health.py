"""Vanishing / exploding verdicts over logged steps, and the clip rate: plain Python state.

Two vanishing rules, each over ``patience`` consecutive logged steps:

- absolute: a group's norm under ``vanish_threshold`` (the recipe's 1e-5). It depends on the
  loss's scale: a loss 1000x smaller has gradients 1000x smaller and the same health;
- relative: a group's norm under ``relative_threshold`` x the largest group's norm at that step.
  Scale-free; it says "this layer learns that many times slower than the fastest one".

Exploding: the pre-clip total above ``explode_threshold``. Each verdict is given once per group.
The fixes named are the recipe's (init, skip connections, gated cells against vanishing; clipping
against exploding), phrased for any model.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

VANISH_FIXES = ("an orthogonal / scaled init of the weights (for an LSTM also a forget-gate bias of 1), residual "
                "(skip) connections or normalisation between layers, a gated cell (LSTM / GRU) instead of a plain "
                "RNN, or fewer layers / a shorter window")
EXPLODE_FIXES = ("clip the gradient (Trainer(gradient_clip_val=1.0)), a lower learning rate, or an orthogonal / "
                 "scaled init of the weights")
EXPLODE = "__explode__"


class GradientHealth:
    """Track per-group streaks under the thresholds and the share of logged steps that were clipped.

    ``update`` takes one logged step's finite norms and returns the warnings due now (strings).
    """

    def __init__(self, vanish_threshold: float = 1e-5, relative_threshold: float = 1e-3, patience: int = 3,
                 explode_threshold: float = 100.0) -> None:
        if not vanish_threshold > 0 or not explode_threshold > vanish_threshold:
            raise ValueError(f"need 0 < vanish_threshold < explode_threshold; got {vanish_threshold} "
                             f"and {explode_threshold}")
        if not 0 <= relative_threshold < 1 or patience < 1:
            raise ValueError(f"need 0 <= relative_threshold < 1 (0 = off) and patience >= 1; got "
                             f"{relative_threshold} and {patience}")
        self.vanish_threshold, self.relative_threshold = vanish_threshold, relative_threshold
        self.patience, self.explode_threshold = patience, explode_threshold
        self.low_streak: dict[str, int] = {}  # logged steps in a row under the absolute threshold
        self.relative_streak: dict[str, int] = {}  # ... under the relative one
        self.warned: set[str] = set()  # groups warned as vanishing, and EXPLODE
        self.logged_steps = self.clipped_steps = 0

    def clip_rate(self, clipped: bool) -> float:
        """Count one logged step and return the share of logged steps clipping changed so far."""
        self.logged_steps += 1
        self.clipped_steps += bool(clipped)
        return self.clipped_steps / self.logged_steps

    def update(self, step: int, norms: dict[str, float], groups: Iterable[str]) -> list[str]:
        """Advance the streaks with one logged step's norms of ``groups``; return new warnings."""
        groups = [g for g in groups if g in norms]
        largest = max((norms[g] for g in groups), default=0.0)
        messages = []
        for group in groups:
            value = norms[group]
            self.low_streak[group] = self.low_streak.get(group, 0) + 1 if value < self.vanish_threshold else 0
            relative = self.relative_threshold * largest
            self.relative_streak[group] = (self.relative_streak.get(group, 0) + 1
                                           if value < relative and len(groups) > 1 else 0)
            if group in self.warned:
                continue
            if self.low_streak[group] >= self.patience:
                why = f"norm {value:.3g} < {self.vanish_threshold:g} for {self.low_streak[group]} logged steps in a row"
            elif self.relative_streak[group] >= self.patience:
                why = (f"norm {value:.3g} < {self.relative_threshold:g} x the largest group's {largest:.3g} for "
                       f"{self.relative_streak[group]} logged steps in a row")
            else:
                continue
            self.warned.add(group)
            messages.append(f"vanishing gradient in group {group} at step {step}: {why}; this layer barely "
                            f"learns. Try: {VANISH_FIXES}")
        total = norms.get("total", 0.0)
        if total > self.explode_threshold and EXPLODE not in self.warned:
            self.warned.add(EXPLODE)
            messages.append(f"exploding gradient at step {step}: total norm {total:.3g} > {self.explode_threshold:g} "
                            f"(warned once). Try: {EXPLODE_FIXES}")
        return messages

    def state_dict(self) -> dict[str, Any]:
        return {"low_streak": dict(self.low_streak), "relative_streak": dict(self.relative_streak),
                "warned": sorted(self.warned), "logged_steps": self.logged_steps,
                "clipped_steps": self.clipped_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.low_streak = dict(state["low_streak"])
        self.relative_streak = dict(state.get("relative_streak", {}))
        self.warned = set(state["warned"])
        self.logged_steps, self.clipped_steps = state["logged_steps"], state["clipped_steps"]


def nonfinite_message(step: int, epoch: int | None, layers: list[str], parameters: list[str], policy: str) -> str:
    """The one warning of a non-finite step: where (step, epoch, groups, first parameter), what was done
    (``policy``: stop / skip / raise), and the fixes."""
    what = {"stop": "the update was skipped and training stops after this step",
            "skip": "the update was skipped", "raise": "the update was skipped"}[policy]
    when = f" (epoch {epoch})" if epoch is not None else ""
    where = f" (parameter {parameters[0]})" if parameters else ""
    also = f" (also {', '.join(layers[1:])})" if len(layers) > 1 else ""
    return (f"non-finite gradient at step {step}{when} in group {layers[0]}{where}{also}: {what}; the weights were "
            f"not updated, so they are still the finite ones from before step {step}. Lower the learning rate, clip "
            "the gradient (Trainer(gradient_clip_val=1.0)), or rerun with Trainer(detect_anomaly=True) to find the "
            "op that made it")
