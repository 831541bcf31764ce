"""True gradient norms, grouped by layer, in one fused pass.

The recipe's monitor printed ``tf.norm(weights)`` and called it a gradient norm. Here a layer's norm
is the L2 norm over the ``.grad`` of all of its parameters, ``sqrt(sum_p ||grad_p||^2)``, and the
total is the same over every parameter (what ``clip_grad_norm_`` compares with ``max_norm``).
No logging and no Lightning here: these are pure functions of a module. The probe functions
(:func:`probe_gradients`, :func:`time_grad_profile`, :func:`time_reach`) measure how far back in time
(‖∂L/∂x_t‖ per input day) and how deep (‖∂L/∂h‖ at each recurrent layer's output) the gradient reaches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def layer_of(parameter_name: str) -> str:
    """Name the top-level child that owns a parameter: ``"lstm_0.weight_hh_l0"`` -> ``"lstm_0"``."""
    return parameter_name.split(".", 1)[0]


def layer_grad_norms(model: nn.Module, scale: float | Tensor | None = None) -> dict[str, Tensor]:
    """Return the L2 gradient norm of every top-level child of ``model`` with parameters, plus ``"total"``.

    One ``torch._foreach_norm`` over all gradients (a fused kernel per device and dtype), then a
    segment sum of squares per layer: no per-parameter ``.item()``, no host sync. Layers whose
    parameters have no gradient yet report 0. ``scale`` divides every norm (a GradScaler's scale,
    so the result is the gradient of the real, unscaled loss). Values are 0-d float32 tensors on
    the gradients' device.

    >>> net = nn.Sequential(nn.Linear(2, 1, bias=False))
    >>> net[0].weight.grad = torch.tensor([[3.0, 4.0]])
    >>> {k: round(v.item(), 6) for k, v in layer_grad_norms(net).items()}
    {'0': 5.0, 'total': 5.0}
    """
    names = [name for name, child in model.named_children() if any(True for _ in child.parameters())]
    index = {name: i for i, name in enumerate(names)}
    owners, grads = [], []
    for pname, param in model.named_parameters():
        if param.grad is not None:
            owners.append(index.setdefault(layer_of(pname), len(index)))
            grads.append(param.grad)
    if not grads:
        zero = torch.zeros(())
        return {**{name: zero for name in index}, "total": zero}
    device = grads[0].device
    norms = torch.stack([n.float().to(device) for n in torch._foreach_norm(grads)])  # (P,)
    squares = torch.zeros(len(index), device=device).index_add_(
        0, torch.tensor(owners, device=device), norms.square()
    )  # (L,)
    per_layer = torch.cat([squares, squares.sum().unsqueeze(0)]).sqrt()  # (L + 1,)
    if scale is not None:
        per_layer = per_layer / scale
    keys = [*index, "total"]
    return dict(zip(keys, per_layer.unbind(0)))


def clipped_total(total: float, clip_val: float | None, eps: float = 1e-6) -> float:
    """Return the total norm after ``clip_grad_norm_(max_norm=clip_val)``.

    torch scales every gradient by ``min(1, clip_val / (total + eps))`` (``eps`` = 1e-6 in
    ``torch/nn/utils/clip_grad.py``), so the clipped total follows without a second pass.

    >>> clipped_total(4.0, 1.0) < 1.0, clipped_total(0.5, 1.0), clipped_total(4.0, None)
    (True, 0.5, 4.0)
    """
    if not clip_val:
        return total
    return total * min(1.0, clip_val / (total + eps))


# ---- gradient flow through time and depth ---------------------------------------------------------
def probe_gradients(model: nn.Module, x: Tensor, y: Tensor,
                    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.mse_loss,
                    layers: Sequence[str] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Return ``(‖∂L/∂x_t‖ per time step, {layer: ‖∂L/∂h_layer‖})`` of the real loss on one batch.

    ``x`` (B, T, F), ``y`` (B, H). One backward with ``torch.autograd.grad`` with respect to the input
    only: the parameters' ``.grad`` are left untouched, so this may run in the middle of training.
    The model runs in eval mode (no dropout, so the probe is deterministic) and its mode is restored.
    ``layers`` (default: ``model.layer_names`` when present) are children whose first output is
    watched by a tensor hook; ``h`` is that output (B, T, H_i), before dropout and residual add.
    Values are float32 0-d / (T,) tensors on ``x``'s device; the time profile is
    ``sqrt(sum_{b,f} (∂L/∂x[b,t,f])^2)``, so index ``T - 1`` is the last observed day (lag 1).
    cuDNN's RNN backward refuses eval mode, hence ``cudnn.flags(enabled=False)`` around the pass.
    """
    names = list(layers if layers is not None else getattr(model, "layer_names", []))
    captured: dict[str, Tensor] = {}
    handles = []

    def watch(name: str) -> Callable[..., None]:
        def forward_hook(module: nn.Module, args: Any, output: Any) -> None:
            h = output[0] if isinstance(output, (tuple, list)) else output
            if h.requires_grad:  # a tensor hook fires when the backward reaches this output
                h.register_hook(lambda g: captured.__setitem__(name, torch.linalg.vector_norm(g.float())))
        return forward_hook

    for name in names:
        handles.append(getattr(model, name).register_forward_hook(watch(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
            inputs = x.detach().requires_grad_(True)
            loss = loss_fn(model(inputs), y)
            (grad,) = torch.autograd.grad(loss, inputs)  # (B, T, F)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    profile = grad.float().square().sum(dim=(0, 2)).sqrt()  # (B, T, F) -> (T,)
    zero = torch.zeros((), device=x.device)
    return profile, {name: captured.get(name, zero) for name in names}


def time_grad_profile(model: nn.Module, x: Tensor, y: Tensor,
                      loss_fn: Callable[[Tensor, Tensor], Tensor] = F.mse_loss) -> Tensor:
    """Return ‖∂L/∂x_t‖ for every time step t of the window, shape (T,); see :func:`probe_gradients`.

    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(3, 1, bias=False))
    >>> with torch.no_grad():
    ...     _ = net[1].weight.copy_(torch.tensor([[1.0, 0.0, 2.0]]))
    >>> time_grad_profile(net, torch.zeros(1, 3, 1), torch.ones(1, 1)).tolist()  # dL/dx = 2(0-1)w
    [2.0, 0.0, 4.0]
    """
    return probe_gradients(model, x, y, loss_fn, layers=[])[0]


def lag_value(profile: Tensor, lag: int) -> float | None:
    """Return the gradient norm ``lag`` days before the target (lag 1 = last input day), or None
    when the window is shorter than ``lag``."""
    if not 1 <= lag <= len(profile):
        return None
    return float(profile[len(profile) - lag])


def time_reach(profile: Tensor | Sequence[float], fraction: float = 0.01) -> int:
    """Return the largest lag (in days) whose gradient is at least ``fraction`` of the largest.

    ``profile`` is ordered by time (last element = lag 1). 0 when every value is 0 or any is
    non-finite: no gradient arrives, or none that can be trusted.

    >>> time_reach([0.001, 0.05, 1.0, 2.0])  # 1 % of 2.0 is 0.02: lags 1..3 qualify
    3
    >>> time_reach([0.0, 0.0, 0.0])
    0
    """
    values = torch.as_tensor(profile, dtype=torch.float64).flatten()
    if len(values) == 0 or not bool(torch.isfinite(values).all()) or float(values.max()) <= 0:
        return 0
    keep = torch.nonzero(values >= fraction * values.max()).flatten()  # time indices, ascending
    return len(values) - int(keep[0])
