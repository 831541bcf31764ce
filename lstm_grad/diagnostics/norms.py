"""True gradient norms per parameter group, in one fused pass, and the tags they are logged under.

A group's norm is the L2 norm over the ``.grad`` of all of its parameters, ``sqrt(sum_p ||g_p||^2)``;
``total`` is the same over every parameter (what ``clip_grad_norm_`` compares with ``max_norm``).
One ``torch._foreach_norm`` over all gradients (a fused kernel per device and dtype; bf16 / fp16
gradients are reduced in float32), then a segment sum of squares per group on the device: no
per-parameter ``.item()``, no host sync until :func:`tag_scalars` / :meth:`GroupNorms.values` turn
everything into floats at once. No Lightning here: this is what a hand-written loop uses.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lstm_grad.diagnostics.groups import GroupRule, ParameterGroups, parameter_groups

LOW_PRECISION = (torch.float16, torch.bfloat16)
STATS = ("rms", "max")


def dense_values(grad: Tensor) -> Tensor:
    """Return what a gradient's norm is taken over: a sparse gradient's coalesced values (duplicate
    indices summed, as the optimizer applies them: ``nn.Embedding(sparse=True)``), else itself.

    >>> g = torch.sparse_coo_tensor([[0, 0, 2]], [1.0, 2.0, 4.0], (3,))
    >>> dense_values(g).tolist()
    [3.0, 4.0]
    """
    return grad.coalesce().values() if grad.is_sparse else grad


def fused_norms(grads: Sequence[Tensor], ord: float = 2.0) -> Tensor:
    """Return the ``ord``-norm of every tensor as one float32 vector (P,) on the first one's device;
    sparse tensors are measured over their coalesced values.

    >>> fused_norms([torch.tensor([3.0, 4.0]), torch.tensor([-2.0], dtype=torch.bfloat16)]).tolist()
    [5.0, 2.0]
    """
    grads = [dense_values(g) for g in grads]
    low = [i for i, g in enumerate(grads) if g.dtype in LOW_PRECISION]
    high = [i for i, g in enumerate(grads) if g.dtype not in LOW_PRECISION]
    out: list[Tensor | None] = [None] * len(grads)
    if high:
        for i, norm in zip(high, torch._foreach_norm([grads[i] for i in high], ord)):
            out[i] = norm
    if low:
        for i, norm in zip(low, torch._foreach_norm([grads[i] for i in low], ord, dtype=torch.float32)):
            out[i] = norm
    device = grads[0].device
    return torch.stack([n.to(device=device, dtype=torch.float32) for n in out])  # (P,)


@dataclass
class GroupNorms:
    """One measurement: ``norms`` (G + 1,) = every group's L2 norm then the total, float32 on the
    gradients' device, already divided by ``scale``; ``maxima`` (G + 1,) max |g| per group and overall
    (only when asked for); per-parameter norms and names to say which parameter went non-finite."""

    keys: list[str]
    norms: Tensor
    maxima: Tensor | None
    param_norms: Tensor | None
    param_names: list[str]
    present: list[bool]  # the group had at least one gradient
    numel: list[int]  # gradient elements per group that had one (for the RMS)

    @property
    def total(self) -> Tensor:
        return self.norms[-1]

    def values(self, extra: Sequence[Tensor] = ()) -> tuple[dict[str, float], dict[str, float], list[float]]:
        """Return ``({group: norm, ..., "total": norm}, {group: max |g|} or {}, extra values)`` with ONE
        host sync for all of them."""
        parts = [self.norms] + ([self.maxima] if self.maxima is not None else [])
        parts += [e.detach().float().reshape(1).to(self.norms.device) for e in extra]
        flat = torch.cat(parts).tolist()
        n = len(self.keys)
        norms = dict(zip(self.keys, flat[:n]))
        maxima = dict(zip(self.keys, flat[n: 2 * n])) if self.maxima is not None else {}
        return norms, maxima, flat[n + len(maxima):]

    def nonfinite_parameters(self) -> list[str]:
        """Name the parameters whose gradient norm is not finite (a host sync; call on bad steps only)."""
        if self.param_norms is None:
            return []
        bad = (~torch.isfinite(self.param_norms)).tolist()
        return [name for name, is_bad in zip(self.param_names, bad) if is_bad]


def measure(groups: ParameterGroups, scale: float | Tensor | None = None, with_max: bool = False) -> GroupNorms:
    """Measure every group's gradient norm now (queued on the device, no host sync).

    Groups whose parameters have no ``.grad`` report 0 (and ``present`` False). ``scale`` divides
    every value (a GradScaler's scale: the result is the gradient of the real, unscaled loss).
    """
    picked = [(name, p.grad, index) for name, p, index in groups.members if p.grad is not None]
    n_groups = len(groups.names)
    keys = [*groups.names, "total"]
    present = [False] * n_groups
    numel = [0] * n_groups
    for _, grad, index in picked:
        present[index] = True
        numel[index] += grad.numel()
    if not picked:
        zero = torch.zeros(n_groups + 1)
        return GroupNorms(keys, zero, zero.clone() if with_max else None, None, [], present, numel)
    grads = [grad for _, grad, _ in picked]
    device = grads[0].device
    index = _index(groups, [i for _, _, i in picked], device)
    per_param = fused_norms(grads)  # (P,)
    squares = torch.zeros(n_groups, device=device).index_add_(0, index, per_param.square())  # (G,)
    norms = torch.cat([squares, squares.sum().reshape(1)]).sqrt()  # (G + 1,)
    maxima = None
    if with_max:
        largest = fused_norms(grads, float("inf"))  # (P,) max |g| per parameter
        per_group = torch.zeros(n_groups, device=device).scatter_reduce(0, index, largest, "amax")
        maxima = torch.cat([per_group, largest.max().reshape(1)])  # (G + 1,)
    if scale is not None:
        norms = norms / scale
        maxima = maxima / scale if maxima is not None else None
    return GroupNorms(keys, norms, maxima, per_param, [name for name, _, _ in picked], present, numel)


def _index(groups: ParameterGroups, owners: list[int], device: torch.device) -> Tensor:
    """The group index of every gradient as a device tensor, cached: building it from a list on
    each call would be a host-to-device copy (and so a wait) per logged step on a GPU."""
    key = (str(device), tuple(owners))
    if key not in groups.index_cache:
        groups.index_cache[key] = torch.tensor(owners, dtype=torch.long, device=device)
    return groups.index_cache[key]


def layer_grad_norms(module: nn.Module, groups: GroupRule | ParameterGroups = "auto",
                     scale: float | Tensor | None = None) -> dict[str, Tensor]:
    """Return ``{group: L2 norm of its .grad, ..., "total": norm over all}`` as 0-d float32 tensors.

    ``groups`` is a rule (see :mod:`lstm_grad.diagnostics.groups`) or a prebuilt
    :class:`ParameterGroups` (build it once with ``parameter_groups(module, rule)`` in a loop: the
    rule then runs once, not per step). No host sync: call ``.item()`` or :func:`tag_scalars` to read.

    >>> net = nn.Sequential(nn.Linear(2, 1, bias=False))
    >>> net[0].weight.grad = torch.tensor([[3.0, 4.0]])
    >>> {k: round(v.item(), 6) for k, v in layer_grad_norms(net).items()}
    {'0': 5.0, 'total': 5.0}
    """
    built = groups if isinstance(groups, ParameterGroups) else parameter_groups(module, groups)
    result = measure(built, scale)
    return dict(zip(result.keys, result.norms.unbind(0)))


def total_grad_norm(parameters: Iterable[nn.Parameter] | ParameterGroups) -> Tensor:
    """Return the L2 norm over all ``.grad`` now (after clipping: ``grad_norm/total_clipped``), 0-d
    float32, same fused kernel as :func:`measure` so an unchanged gradient gives the same bits."""
    if isinstance(parameters, ParameterGroups):
        parameters = [p for _, p, _ in parameters.members]
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return fused_norms(grads).square().sum().sqrt()


def tag_scalars(norms: dict[str, Tensor | float], total_clipped: Tensor | float | None = None,
                rms_numel: dict[str, int] | None = None) -> dict[str, float]:
    """Turn norms into the logged tags with one host sync: ``grad_norm/<group>``, ``grad_norm/total``,
    ``grad_norm/total_clipped`` and ``grad_health/clipped`` (1 when clipping changed the gradient),
    ``grad_health/nonfinite``; ``grad_rms/<group>`` = norm / sqrt(numel) for groups in ``rms_numel``.
    Non-finite norms are left out (a NaN point would hide the rest of the chart).

    >>> tag_scalars({"a": 3.0, "total": 3.0}, total_clipped=1.0)
    {'grad_norm/a': 3.0, 'grad_norm/total': 3.0, 'grad_norm/total_clipped': 1.0, 'grad_health/clipped': 1.0, 'grad_health/nonfinite': 0.0}
    """
    keys = list(norms)
    items = [norms[k] for k in keys] + ([total_clipped] if total_clipped is not None else [])
    flat = [None if isinstance(v, Tensor) else float(v) for v in items]
    on_device = [i for i, v in enumerate(items) if isinstance(v, Tensor)]
    if on_device:
        device = items[on_device[0]].device
        synced = torch.stack([items[i].detach().float().reshape(()).to(device) for i in on_device]).tolist()
        for i, value in zip(on_device, synced):
            flat[i] = value
    values = dict(zip(keys, flat[: len(keys)]))
    finite = all(math.isfinite(v) for v in values.values())
    out = {f"grad_norm/{k}": v for k, v in values.items() if math.isfinite(v)}
    if total_clipped is not None and finite:
        after = flat[-1]
        out["grad_norm/total_clipped"] = after
        out["grad_health/clipped"] = float(was_clipped(values["total"], after))
    for key, count in (rms_numel or {}).items():
        if count and math.isfinite(values.get(key, math.nan)):
            out[f"grad_rms/{key}"] = values[key] / math.sqrt(count)
    out["grad_health/nonfinite"] = float(not finite)
    return out


def was_clipped(total: float, after: float, rtol: float = 1e-6) -> bool:
    """True when the post-clip total is measurably below the pre-clip one (by norm or by value).

    >>> was_clipped(2.0, 1.0), was_clipped(2.0, 2.0), was_clipped(0.0, 0.0)
    (True, False, False)
    """
    return after < total * (1 - rtol)
