"""How far back in time, and how deep, the gradient of the loss reaches: pure torch.

:func:`probe_gradients` runs one backward of the real loss on one batch with respect to the INPUT
(``‖∂L/∂x_t‖`` per time step) and watches each recurrent layer's output (``‖∂L/∂h‖``). A short
:func:`time_reach` means the gradient fades across time; a small ``∂L/∂h`` at the first layer next
to a large one at the last means it fades across depth. Works for any module that maps a batch-first
(B, T, F) tensor to a prediction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lstm_grad.diagnostics.groups import drop_shared_prefix

LossFn = Callable[[Tensor, Tensor], Tensor]
Layers = Union[Mapping[str, nn.Module], Sequence[str], None]


def recurrent_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Return the model's ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` submodules, named as the ``"auto"``
    groups name them (shared dotted prefix dropped).

    >>> net = nn.ModuleDict({"enc": nn.GRU(2, 3), "dec": nn.LSTM(3, 3), "head": nn.Linear(3, 1)})
    >>> list(recurrent_layers(net))
    ['enc', 'dec']
    """
    found = [(name, sub) for name, sub in model.named_modules() if isinstance(sub, nn.RNNBase)]
    return dict(zip(drop_shared_prefix([name for name, _ in found]), (sub for _, sub in found)))


def _watched(model: nn.Module, layers: Layers) -> dict[str, nn.Module]:
    if layers is None:
        return recurrent_layers(model)
    if isinstance(layers, Mapping):
        return dict(layers)
    return {name: model.get_submodule(name) for name in layers}


def probe_gradients(model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn = F.mse_loss,
                    layers: Layers = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Return ``(‖∂L/∂x_t‖ per time step, {layer: ‖∂L/∂h_layer‖})`` of ``loss_fn(model(x), y)``.

    ``x`` (B, T, F) batch first, ``y`` whatever ``loss_fn`` takes with the prediction. One backward
    with ``torch.autograd.grad`` with respect to the input only: the parameters' ``.grad`` stay
    untouched, so this may run in the middle of training. The model runs in eval mode (no dropout:
    the probe is deterministic) and its mode is restored. ``layers``: ``{tag: module}``, dotted
    submodule paths, or ``None`` = every recurrent submodule (:func:`recurrent_layers`); ``h`` is a
    watched module's first output (B, T, H), before any dropout or residual add after it. Values are
    float32 on ``x``'s device; the profile is ``sqrt(sum_{b,f} (∂L/∂x[b,t,f])^2)``, so index ``T - 1``
    is the last step of the window (lag 1). cuDNN's RNN backward refuses eval mode, hence
    ``cudnn.flags(enabled=False)`` around the pass.
    """
    watched = _watched(model, layers)
    captured: dict[str, Tensor] = {}
    handles = []

    def watch(name: str) -> Callable[..., None]:
        def forward_hook(module: nn.Module, args: Any, output: Any) -> None:
            h = output[0] if isinstance(output, (tuple, list)) else output
            if h.requires_grad:  # a tensor hook fires when the backward reaches this output
                h.register_hook(lambda g: captured.__setitem__(name, torch.linalg.vector_norm(g.float())))
        return forward_hook

    for name, module in watched.items():
        handles.append(module.register_forward_hook(watch(name)))
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
    return profile, {name: captured.get(name, zero) for name in watched}


def time_grad_profile(model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn = F.mse_loss) -> Tensor:
    """Return ‖∂L/∂x_t‖ for every time step t of the window, shape (T,); see :func:`probe_gradients`.

    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(3, 1, bias=False))
    >>> with torch.no_grad():
    ...     _ = net[1].weight.copy_(torch.tensor([[1.0, 0.0, 2.0]]))
    >>> time_grad_profile(net, torch.zeros(1, 3, 1), torch.ones(1, 1)).tolist()  # dL/dx = 2(0-1)w
    [2.0, 0.0, 4.0]
    """
    return probe_gradients(model, x, y, loss_fn, layers={})[0]


def lag_value(profile: Tensor | Sequence[float], lag: int) -> float | None:
    """Return the gradient norm ``lag`` steps before the target (lag 1 = last input step), or None
    when the window is shorter than ``lag``."""
    if not 1 <= lag <= len(profile):
        return None
    return float(profile[len(profile) - lag])


def time_reach(profile: Tensor | Sequence[float], fraction: float = 0.01) -> int:
    """Return the largest lag whose gradient is at least ``fraction`` of the largest.

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
