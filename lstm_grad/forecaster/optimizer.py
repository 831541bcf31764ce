"""The forecaster's optimizer: Adam, run by torch's fused kernel wherever torch has one.

``torch.optim.Adam`` with no implementation flag runs its Python for-loop over the parameters on the CPU:
torch picks ``foreach`` only when every parameter is on an accelerator and never picks ``fused`` by itself
(``torch/optim/optimizer.py``, ``_default_to_fused_or_foreach``). ``fused=True`` runs the same update rule
(Kingma & Ba 2015, Algorithm 1, with torch's L2 ``weight_decay``) as one kernel per parameter, on every
device torch lists in ``_get_fused_kernels_supported_devices`` (the CPU among them since torch 2.4). The
result agrees with the for-loop to float rounding (``tests/test_optimizer.py``).

Not under mixed precision (Lightning's ``16-mixed`` and ``bf16-mixed``): a fused Adam unscales inside its own
step, so Lightning's ``MixedPrecision`` skips ``scaler.unscale_`` before clipping and refuses to clip at all,
with or without a scaler ("does not allow for gradient clipping because it performs unscaling of gradients
internally", ``lightning/pytorch/plugins/precision/amp.py``, ``MixedPrecision.clip_gradients``); there it is
torch's default Adam.

Measured on this project's 2-core CPU (``python -m benchmarks.kernels``, ``docs/measured/kernels.json``,
commit b09dc42, torch 2.13.0, 2 threads; median ms per step over 5 rounds of 200): 1.00 for-loop, 0.94
foreach, 0.27 fused on the recipe's residual network (128, 128, 128, 64; 391,297 parameters); 0.58, 0.48
and 0.17 on the plain 3 x 128 stack (333,441): about 1-2 % of a training step, every step.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torch.optim.optimizer import _get_fused_kernels_supported_devices

__all__ = ["make_adam", "uses_mixed_precision"]


def make_adam(parameters: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0,
              mixed_precision: bool = False) -> torch.optim.Adam:
    """Return ``torch.optim.Adam`` over ``parameters``, fused when torch has a fused kernel for all of them.

    Fused needs every parameter floating point and on a device in torch's fused list, and no
    ``mixed_precision`` (Lightning's ``MixedPrecision`` plugin or any plugin with a ``GradScaler``, which
    unscales the gradients before they are clipped); otherwise this is torch's default Adam, the same
    update. Raises what ``torch.optim.Adam`` raises (a negative ``lr`` or ``weight_decay``, no parameters).
    """
    params = list(parameters)
    devices = set(_get_fused_kernels_supported_devices())
    fused = not mixed_precision and bool(params) and all(
        p.is_floating_point() and p.device.type in devices for p in params)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def uses_mixed_precision(trainer: Any | None) -> bool:
    """Say whether ``trainer`` (a Lightning ``Trainer``, or None) runs Lightning's ``MixedPrecision`` plugin
    (``16-mixed``, ``bf16-mixed``) or any precision plugin with a ``GradScaler``: ``make_adam``'s
    ``mixed_precision``."""
    plugin = getattr(trainer, "precision_plugin", None)
    return isinstance(plugin, MixedPrecision) or getattr(plugin, "scaler", None) is not None
