"""True gradient norms, grouped by layer, in one fused pass.

The recipe's monitor printed ``tf.norm(weights)`` and called it a gradient norm. Here a layer's norm
is the L2 norm over the ``.grad`` of all of its parameters, ``sqrt(sum_p ||grad_p||^2)``, and the
total is the same over every parameter (what ``clip_grad_norm_`` compares with ``max_norm``).
No logging and no Lightning here: these are pure functions of a module.
"""

from __future__ import annotations

import torch
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
