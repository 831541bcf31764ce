"""The instance wrappers through which ``GradientMonitor`` sees clipping, for the length of ``fit``.

Lightning has no callback hook between clipping and the optimizer update, so the monitor wraps the
module's ``configure_gradient_clipping`` (automatic optimization: after the real one returns, the
post-clip total is measured) and ``clip_gradients`` (manual optimization: the user calls it before
``opt.step()``, so the pre-clip norms are measured first). Instance attributes, removed at teardown, so
the module's class is never changed; several monitors share one pair of wrappers.
"""

from __future__ import annotations

from typing import Any

import torch

from lstm_grad.diagnostics.trainer_state import overrides, raw_optimizer

_WRAPPED = "_gradient_monitor_original"  # instance attributes set on the module during fit
_MONITORS = "_gradient_monitors"


def install_clip_hooks(pl_module: Any, monitor: Any) -> None:
    """Wrap ``pl_module``'s clipping methods (once for every monitor on it) and register ``monitor``,
    which must offer ``_before_clip(module, optimizer, by_user)`` and ``_after_clip(module, optimizer, clip_may_act)``."""
    monitors = pl_module.__dict__.setdefault(_MONITORS, [])
    if monitor not in monitors:
        monitors.append(monitor)
    if _WRAPPED in pl_module.__dict__:
        return
    clip_hook, clip_call = pl_module.configure_gradient_clipping, pl_module.clip_gradients
    own_clipping = overrides(pl_module, "configure_gradient_clipping")

    def configure_gradient_clipping(optimizer: torch.optim.Optimizer, gradient_clip_val: Any = None,
                                    gradient_clip_algorithm: Any = None) -> None:
        clip_hook(optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm)
        for each in list(pl_module.__dict__.get(_MONITORS, [])):
            each._after_clip(pl_module, optimizer, bool(gradient_clip_val) or own_clipping)

    def clip_gradients(optimizer: Any, gradient_clip_val: Any = None, gradient_clip_algorithm: Any = None) -> None:
        manual = not pl_module.automatic_optimization
        for each in list(pl_module.__dict__.get(_MONITORS, [])) if manual else []:
            each._before_clip(pl_module, raw_optimizer(optimizer), by_user=True)
        clip_call(optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm)

    pl_module.__dict__[_WRAPPED] = (clip_hook, clip_call)
    pl_module.configure_gradient_clipping = configure_gradient_clipping
    pl_module.clip_gradients = clip_gradients


def uninstall_clip_hooks(pl_module: Any, monitor: Any) -> None:
    """Unregister ``monitor``; the last one out removes the wrappers."""
    monitors = pl_module.__dict__.get(_MONITORS, [])
    if monitor in monitors:
        monitors.remove(monitor)
    if not monitors and pl_module.__dict__.pop(_WRAPPED, None) is not None:
        del pl_module.configure_gradient_clipping
        del pl_module.clip_gradients
        pl_module.__dict__.pop(_MONITORS, None)
