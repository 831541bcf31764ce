"""Name where a non-finite gradient was born by replaying the one offending batch with hooks.

``torch.autograd.detect_anomaly`` finds the operation that made a NaN, but it records a traceback
for every autograd node of every step and checks every node's output in the backward, so it costs
on every step whether anything goes wrong or not. Measured here (torch 2.13 CPU, one thread, two
``nn.LSTM`` layers + ``Linear``, batch 32, window 60, 5 features, Adam; 60 forward + backward +
step pairs with and without it, interleaved, median of each): 19-24 ms -> 22-28 ms per step at
hidden 64 (1.11-1.16x), 4.1 -> 6.4 ms at hidden 16 (1.57x): about 3 ms per step on this small
model, so the smaller the model, the larger the share (on a GPU each node's NaN check also reads
back to the host; not measured here). Instead, training runs bare; when a step's gradient is non-finite, the caller
replays that batch once through :func:`nonfinite_origin` with the current weights:

1. forward, with a pre-hook and a hook on every module: the first module, in execution order, whose
   output is non-finite while its inputs were finite. Forward hooks fire when a module returns, so
   the innermost module (a leaf) reports before the containers that pass the same value on. A
   non-finite input of a module that no submodule produced blames the code around it (the
   enclosing module running at the time, or ``"<input>"``: the batch or the closure before the
   model). A finite model with a non-finite loss blames ``"<loss>"``.
2. only if the forward and the loss are finite: ``torch.autograd.grad`` of the loss with respect to
   the parameters (their ``.grad`` stays untouched), with full backward hooks on every module and a
   hook on every parameter: the first module whose incoming gradient (grad_output) is finite while
   its grad_input or a parameter's gradient is not. A non-finite grad_output blames the nearest
   enclosing module whose own grad_output was finite (its own code), or ``"<loss>"``.

Modules whose full backward hook breaks the forward (an in-place op on a hooked tensor, e.g.
``nn.ReLU(inplace=True)``) are left unhooked and the replay repeated. Every attempt starts from the
same random state (``torch.random.fork_rng``: the same dropout mask each time, and the training run's
random stream is left as it was). Hooks are removed, train / eval flags and buffers (BatchNorm
statistics) restored, weights never written. Pure torch: no Lightning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch
from torch import Tensor, nn

LOSS = "<loss>"  # the loss computation outside the model (forward or backward)
INPUT = "<input>"  # the batch, or the closure's code before the model


@dataclass(frozen=True)
class Origin:
    """Where a non-finite value first appeared in one replayed step.

    ``module``: dotted name as ``named_modules`` spells it (``""`` = the root), or ``LOSS`` / ``INPUT``.
    ``step_in_order``: how many module calls of that phase had finished before it was seen (forward:
    modules returned; backward: full backward hooks fired), 0 = none.
    """

    module: str
    phase: Literal["forward", "backward"]
    what: str
    step_in_order: int
    module_type: str = ""

    def describe(self) -> str:
        """Say it in one line, e.g. ``non-finite born in the forward of '1' (Blowup): output (...)``."""
        where = {LOSS: "the loss", INPUT: "the input batch", "": "the root module"}.get(self.module, f"'{self.module}'")
        kind = f" ({self.module_type})" if self.module_type else ""
        return (f"non-finite born in the {self.phase} of {where}{kind}: {self.what} "
                f"(after {self.step_in_order} module calls of the {self.phase})")


def _finite(value: Any) -> bool:
    """Return whether every floating tensor in ``value`` (nested in tuples, lists, dicts) is finite."""
    if isinstance(value, Tensor):
        return not (value.is_floating_point() or value.is_complex()) or bool(torch.isfinite(value).all())
    if isinstance(value, Mapping):
        return all(_finite(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return all(_finite(v) for v in value)
    return True


class _Replay:
    """One attempt: hooks on ``root`` (no full backward hooks on ``skip``), the state they record."""

    def __init__(self, root: nn.Module, skip: set[str]) -> None:
        self.root, self.origin, self.done = root, None, 0
        self.names = {m: n for n, m in root.named_modules()}
        self.stack: list[nn.Module] = []  # forward: modules running now, innermost last
        self.returned: list[nn.Module] = []  # forward: modules in the order they returned
        self.seen: set[str] = set()  # backward: modules whose grad_output has arrived
        self.handles: list[Any] = []
        for name, m in root.named_modules():
            self._hook(m.register_forward_pre_hook, self._pre, with_kwargs=True)
            self._hook(m.register_forward_hook, self._post, with_kwargs=True)
            if name not in skip:
                self._hook(m.register_full_backward_pre_hook, self._grad_out)
                self._hook(m.register_full_backward_hook, self._grad_in)

    def _hook(self, register: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        try:
            self.handles.append(register(*args, **kwargs))
        except RuntimeError:  # e.g. a module with an old-style backward hook: left unhooked
            pass

    def _found(self, module: str, phase: Literal["forward", "backward"], what: str, kind: str = "") -> None:
        if self.origin is None:
            self.origin = Origin(module, phase, what, self.done, kind)

    def _pre(self, m: nn.Module, args: tuple, kwargs: dict) -> None:
        if self.origin is None and not (_finite(args) and _finite(kwargs)):
            outer = self.stack[-1] if self.stack else None
            if outer is None:  # nothing is running yet: the batch or the closure's own code
                self._found(INPUT, "forward", f"input of '{self.names[m]}'")
            else:
                self._found(self.names[outer], "forward", f"input of '{self.names[m]}' (made outside any submodule)",
                            type(outer).__name__)
        self.stack.append(m)

    def _post(self, m: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if self.stack and self.stack[-1] is m:
            self.stack.pop()
        self.returned.append(m)
        if self.origin is None and not _finite(output):
            bad = ", ".join(n for n, p in m.named_parameters(recurse=False) if not _finite(p))
            self._found(self.names[m], "forward", f"output (non-finite parameters: {bad})" if bad else "output",
                        type(m).__name__)
        self.done += 1

    def _grad_out(self, m: nn.Module, grad_output: tuple) -> None:
        name = self.names[m]
        if self.origin is None and not _finite(grad_output):
            parts = name.split(".") if name else []
            ancestors = (".".join(parts[:k]) for k in range(len(parts) - 1, -1, -1))  # "a.b" -> "a", ""
            outer = next((a for a in ancestors if a in self.seen), LOSS)  # innermost whose grad_output was finite
            if outer == LOSS:
                self._found(LOSS, "backward", f"gradient of the loss w.r.t. the output of '{name}'")
            else:
                self._found(outer, "backward", f"grad_output of '{name}' (made outside any submodule)",
                            type(self.root.get_submodule(outer)).__name__)
        self.seen.add(name)

    def _grad_in(self, m: nn.Module, grad_input: tuple, grad_output: tuple) -> None:
        if self.origin is None and not _finite(grad_input):
            self._found(self.names[m], "backward", "grad_input", type(m).__name__)
        self.done += 1

    def _grad_param(self, owner: str, leaf: str, grad: Tensor) -> None:
        if self.origin is None and not _finite(grad):
            self._found(owner, "backward", f"parameter gradient {leaf}", type(self.root.get_submodule(owner)).__name__)

    def run(self, loss_of: Callable[[], Tensor]) -> Origin | None:
        loss = loss_of()
        if self.origin is not None:
            return self.origin
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(f"loss_of() must return a one-element tensor; got {type(loss).__name__} "
                             f"{tuple(loss.shape) if isinstance(loss, Tensor) else ''}")
        if not _finite(loss):
            return Origin(LOSS, "forward", "loss", self.done)
        params = [(n, p) for n, p in self.root.named_parameters() if p.requires_grad]
        if not loss.requires_grad or not params:
            return None
        self.done = 0
        for full, p in params:
            self.handles.append(p.register_hook(partial(self._grad_param, *full.rpartition(".")[::2])))
        torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
        return self.origin

    def culprits(self) -> list[set[str]]:
        """Name the modules whose hooked tensors an in-place op may have hit, narrowest guess first.

        The module running and the last one returned (``nn.ReLU(inplace=True)`` after a layer), then
        every module returned so far, then all.
        """
        running = {self.names[self.stack[-1]]} if self.stack else set()
        returned = [self.names[m] for m in self.returned]
        return [running | set(returned[-1:]), running | set(returned), set(self.names.values())]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def nonfinite_origin(module: nn.Module, loss_of: Callable[[], Tensor], eval_mode: bool = False) -> Origin | None:
    """Replay one batch with hooks and name the first module where a value became non-finite.

    ``loss_of()`` recomputes the offending batch's scalar loss with the current weights, e.g.
    ``lambda: loss_fn(model(x), y)``. The replay runs in each module's current train / eval mode
    (``eval_mode=True``: in eval mode, without dropout). Returns ``None`` when the replay is finite
    everywhere (forward, loss, every gradient): the value was not reproduced, e.g. a dropout mask.

    >>> class Blowup(nn.Module):
    ...     def forward(self, x): return x * float("inf")
    >>> net = nn.Sequential(nn.Linear(2, 2), Blowup(), nn.Linear(2, 1))
    >>> nonfinite_origin(net, lambda: net(torch.ones(1, 2)).sum()).describe()
    "non-finite born in the forward of '1' (Blowup): output (after 1 module calls of the forward)"
    """
    modes = {m: m.training for m in module.modules()}
    buffers = [(b, b.detach().clone()) for b in module.buffers()]
    devices = sorted({p.device.index or 0 for p in module.parameters() if p.device.type == "cuda"})
    skip: set[str] = set()
    try:
        if eval_mode:
            module.eval()
        while True:
            replay = _Replay(module, skip)
            try:
                with torch.random.fork_rng(devices=devices), torch.enable_grad(), warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="Full backward hook is firing")
                    return replay.run(loss_of)
            except Exception as err:
                if replay.origin is not None and replay.origin.phase == "forward":
                    return replay.origin  # the non-finite value broke something later; its origin stands
                new = next((names - skip for names in replay.culprits() if names - skip), set())
                if not isinstance(err, RuntimeError) or "BackwardHookFunction" not in str(err) or not new:
                    raise
                skip |= new
            finally:
                replay.remove()
                with torch.no_grad():
                    for buffer, saved in buffers:
                        buffer.copy_(saved)
    finally:
        for m, training in modes.items():
            m.training = training
