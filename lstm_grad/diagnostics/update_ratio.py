"""The update-to-weight ratio ‖Δw‖ / ‖w‖ per group over one optimizer step, for any optimizer.

The gradient norm says how steep the loss is; the update ratio says how far the optimizer actually
moved each layer relative to its size (Adam's update is nearly independent of the gradient's scale,
so a "healthy" gradient norm can hide a learning rate far too high or too low). A ratio around 1e-3
per step is the rule of thumb from practice (Karpathy, "A Recipe for Training Neural Networks", 2019,
and CS231n's "ratio of the update magnitudes to the value magnitudes"); OLMo logs per-parameter
update norms beside gradient norms for the same reason (allenai/OLMo ``olmo/optim.py``).

Measured on logged steps only: :meth:`UpdateRatio.before_step` copies the weights that have a
gradient (one fused copy), a one-shot ``register_step_post_hook`` on the optimizer computes the
per-group ``‖w_after - w_before‖`` and ``‖w_after‖`` on the device after the step, and
:meth:`UpdateRatio.take` reads them with one host sync.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from lstm_grad.diagnostics.groups import ParameterGroups
from lstm_grad.diagnostics.norms import fused_norms


class UpdateRatio:
    """One pending measurement at a time: ``before_step`` -> (the optimizer steps) -> ``take``."""

    def __init__(self) -> None:
        self._pending: Optional[tuple[int, list[str], Any]] = None  # step, group names, result holder
        self._handle: Any = None

    def before_step(self, optimizer: torch.optim.Optimizer, groups: ParameterGroups, step: int) -> None:
        """Copy the weights of the parameters that have a gradient; measure after ``optimizer`` steps."""
        self.cancel()
        members = [(param, index) for _, param, index in groups.members
                   if param.grad is not None and not param.grad.is_sparse]
        if not members:
            return
        params = [param for param, _ in members]
        before = torch._foreach_mul([p.detach() for p in params], 1.0)  # one fused copy
        device = params[0].device
        index = torch.tensor([i for _, i in members], dtype=torch.long, device=device)
        holder: dict[str, Tensor] = {}

        def after_step(opt: Any, args: Any, kwargs: Any) -> None:
            if "ratio" in holder:  # measured already (removed in take: not while torch iterates the hooks)
                return
            after = [p.detach() for p in params]
            delta = torch._foreach_sub(after, before)
            n = len(groups.names)
            moved = torch.zeros(n, device=device).index_add_(0, index, fused_norms(delta).square())
            size = torch.zeros(n, device=device).index_add_(0, index, fused_norms(after).square())
            holder["ratio"] = (moved / size.clamp_min(1e-30)).sqrt()  # (G,)
            holder["present"] = torch.zeros(n, dtype=torch.bool, device=device).index_fill_(0, index, True)

        self._handle = optimizer.register_step_post_hook(after_step)
        self._pending = (step, list(groups.names), holder)

    def take(self) -> tuple[int, dict[str, float]]:
        """Return ``(step, {group: ‖Δw‖/‖w‖})`` of the step measured (empty when it did not step:
        a skipped update, a GradScaler overflow); one host sync."""
        pending, self._pending = self._pending, None
        if pending is None:
            return -1, {}
        step, names, holder = pending
        self.cancel()
        if "ratio" not in holder:
            return step, {}
        values, present = holder["ratio"].tolist(), holder["present"].tolist()
        return step, {name: value for name, value, here in zip(names, values, present) if here}

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
