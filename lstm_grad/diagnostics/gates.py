"""How often the gates of ``nn.LSTM`` / ``nn.GRU`` layers sit shut or wide open: pure torch.

torch's fused RNN kernels (cuDNN, MKL-DNN, the ATen loop) never show the gates, so
:func:`recompute_gates` rebuilds them layer by layer from the module's own weights
(``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``, ``_reverse`` for the
backward direction, ``weight_hr_l{k}`` for an LSTM's ``proj_size``), with the equations of torch's
``nn.LSTM`` / ``nn.GRU`` documentation (rows of the weights in that order: LSTM i, f, g, o; GRU r, z, n)::

    LSTM  i = σ(W_ii x + b_ii + W_hi h + b_hi)    f = σ(W_if x + b_if + W_hf h + b_hf)
          g = tanh(W_ig x + b_ig + W_hg h + b_hg) o = σ(W_io x + b_io + W_ho h + b_ho)
          c' = f ⊙ c + i ⊙ g                       h' = o ⊙ tanh(c')   (h' = W_hr h' with proj_size)
    GRU   r = σ(W_ir x + b_ir + W_hr h + b_hr)    z = σ(W_iz x + b_iz + W_hz h + b_hz)
          n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))                 h' = (1 - z) ⊙ n + z ⊙ h

A sigmoid gate below ``low`` is closed, above ``high`` open; either way it is saturated: its
derivative σ(1 - σ) < 0.05 · 0.95 ≈ 0.0475 (of a maximum 0.25), so its weights barely learn.
A closed LSTM forget gate (or GRU update gate, which in torch's convention KEEPS the old state
when near 1) means no memory across steps; a closed input gate means nothing is written.

:func:`gate_saturation` keys (values: shares in [0, 1] of the (batch, time, unit) entries, both
directions of a bidirectional layer together, every call of the module in the forward pooled)::

    <layer>/<gate>          saturated share, closed + open: LSTM input, forget, output; GRU reset, update
    <layer>/<gate>_closed   share below ``low``:  LSTM input, forget; GRU update
    <layer>/<gate>_open     share above ``high``: LSTM input, forget; GRU update

``<layer>`` is, by default, the parameter group that layer k's ``weight_ih_l<k>`` belongs to under
``parameter_groups(model, "auto", trainable_only=False)`` (the monitor's ``grad_norm/<group>`` names, so
a gate finding and a gradient finding name one layer alike): ``layers.0``, ``lstm_0``, ``encoder.rnn.l0``
(``.l<k>`` for layer k of a multi-layer module). A model that is itself the LSTM / GRU (its groups are
its parameters) is ``lstm`` / ``gru`` (``lstm.l<k>``). With ``layers=`` the names are the ones given,
plus ``.l<k>`` for a multi-layer module. The tanh candidates (LSTM g, GRU n) are recomputed but not
summarised.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from lstm_grad.diagnostics.groups import parameter_groups

GatedRNN = nn.LSTM | nn.GRU
Hidden = Tensor | tuple[Tensor, Tensor] | None
SIGMOID_GATES = {True: ("input", "forget", "output"), False: ("reset", "update")}  # keyed by "is an LSTM"
SPLIT_GATES = ("input", "forget", "update")  # also reported as <gate>_closed / <gate>_open
MISMATCH = 0.05  # largest |recomputed h - output| / max(1, |output|) still trusted: TF32 / fp16 noise


def _direction(module: GatedRNN, suffix: str, seq: Tensor, h: Tensor, c: Tensor) -> dict[str, Tensor]:
    """Run one direction of one layer over ``seq`` (B, T, F_in) from state h (B, P), c (B, H);
    return its gates (B, T, H) each and its hidden sequence ``"h"`` (B, T, P)."""
    def weight(name: str) -> Tensor | None:
        value = getattr(module, f"{name}{suffix}", None)  # None: bias=False, or no proj_size
        return None if value is None else value.float()

    w_ih, w_hh, b_ih, b_hh, w_hr = (weight(n) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"))
    xi = F.linear(seq, w_ih, b_ih)  # (B, T, F_in) -> (B, T, G*H), G = 4 (LSTM) or 3 (GRU)
    lstm = isinstance(module, nn.LSTM)
    names = ("input", "forget", "cell", "output") if lstm else ("reset", "update", "new")
    steps: dict[str, list[Tensor]] = {name: [] for name in (*names, "h")}
    for t in range(seq.shape[1]):
        gh = F.linear(h, w_hh, b_hh)  # (B, P) -> (B, G*H)
        if lstm:
            pre_i, pre_f, pre_g, pre_o = (xi[:, t] + gh).chunk(4, dim=-1)  # 4 x (B, H)
            gates = (torch.sigmoid(pre_i), torch.sigmoid(pre_f), torch.tanh(pre_g), torch.sigmoid(pre_o))
            c = gates[1] * c + gates[0] * gates[2]
            h = gates[3] * torch.tanh(c)
            if w_hr is not None:
                h = F.linear(h, w_hr)  # (B, H) -> (B, P)
        else:
            x_r, x_z, x_n = xi[:, t].chunk(3, dim=-1)
            h_r, h_z, h_n = gh.chunk(3, dim=-1)
            r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
            gates = (r, z, torch.tanh(x_n + r * h_n))
            h = (1 - z) * gates[2] + z * h
        for name, value in zip(names, (*gates, h)):
            steps[name].append(value)
        steps["h"].append(h)
    return {name: torch.stack(values, dim=1) for name, values in steps.items()}  # T x (B, U) -> (B, T, U)


def _one_shot(module: GatedRNN, seq: Tensor, h0: Tensor, output: Tensor) -> dict[str, Tensor]:
    """Gates of a single-layer, one-direction torch ``nn.LSTM`` / ``nn.GRU`` without projection from its own
    output: h_{t-1} is the output shifted by one step, so every step's gates come from two matmuls at once
    (no loop over time). ``seq`` (B, T, F), ``h0`` (B, H), ``output`` (B, T, H), batch first."""
    h_prev = torch.cat([h0.unsqueeze(1), output[:, :-1]], dim=1)  # (B, T, H)
    xi = F.linear(seq, module.weight_ih_l0.float(), None if module.bias_ih_l0 is None else module.bias_ih_l0.float())
    gh = F.linear(h_prev, module.weight_hh_l0.float(), None if module.bias_hh_l0 is None else module.bias_hh_l0.float())
    if isinstance(module, nn.LSTM):
        i, f, g, o = (xi + gh).chunk(4, dim=-1)  # 4 x (B, T, H)
        return {"input": torch.sigmoid(i), "forget": torch.sigmoid(f), "cell": torch.tanh(g),
                "output": torch.sigmoid(o), "h": output}
    (x_r, x_z, x_n), (h_r, h_z, h_n) = xi.chunk(3, dim=-1), gh.chunk(3, dim=-1)
    r = torch.sigmoid(x_r + h_r)
    return {"reset": r, "update": torch.sigmoid(x_z + h_z), "new": torch.tanh(x_n + r * h_n), "h": output}


def _plain_single_layer(module: GatedRNN) -> bool:
    return (type(module) in (nn.LSTM, nn.GRU) and module.num_layers == 1 and not module.bidirectional
            and not getattr(module, "proj_size", 0))


def recompute_gates(module: GatedRNN, x: Tensor, hx: Hidden = None, output: Tensor | None = None) -> list[dict[str, Tensor]]:
    """Return, for every layer of ``module``, its gate activations and hidden sequence on input ``x``.

    ``x`` as the module takes it: (T, B, F), (B, T, F) with ``batch_first``, or unbatched (T, F);
    ``hx`` as its forward takes it (``(h0, c0)`` for an LSTM, ``h0`` for a GRU; default zeros).
    Eval semantics (no dropout between layers), float32, no autograd. Each layer's dict holds
    batch-first (B, T, D*H) tensors, D = 2 for a bidirectional module (forward units first, the
    backward direction's aligned to input time t): ``input, forget, cell, output`` (LSTM) or
    ``reset, update, new`` (GRU), and ``"h"`` (B, T, D*P) (P = ``proj_size`` or H), the layer's
    output; layer k + 1 reads layer k's ``"h"``. ``output``: the module's own output for ``x``; for a
    single-layer, one-direction torch module without projection it gives h_{t-1} directly, so the gates
    are computed for all steps at once instead of stepping through time (same values).

    >>> lstm = nn.LSTM(2, 3, num_layers=2, batch_first=True)
    >>> layers = recompute_gates(lstm, torch.randn(4, 5, 2))
    >>> len(layers), sorted(layers[1]), tuple(layers[1]["forget"].shape)
    (2, ['cell', 'forget', 'h', 'input', 'output'], (4, 5, 3))
    """
    if isinstance(x, PackedSequence):
        raise ValueError(f"{type(module).__name__} got a PackedSequence; gates are recomputed for padded tensors only")  # noqa: TRY004
    if not isinstance(module, (nn.LSTM, nn.GRU)):
        raise ValueError(f"{type(module).__name__} has no gates to recompute; pass an nn.LSTM or nn.GRU")  # noqa: TRY004
    lstm, n_dir = isinstance(module, nn.LSTM), 2 if module.bidirectional else 1
    h0, c0 = (hx if lstm else (hx, None)) if hx is not None else (None, None)
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        seq = x.float()
        if seq.dim() == 2:  # unbatched (T, F); its states are (D*L, H)
            seq, h0, c0 = seq.unsqueeze(0), *(None if s is None else s.unsqueeze(1) for s in (h0, c0))
        elif not module.batch_first:
            seq = seq.transpose(0, 1)  # (T, B, F) -> (B, T, F)
        batch, width = seq.shape[0], module.proj_size or module.hidden_size
        states = module.num_layers * n_dir
        h0 = seq.new_zeros(states, batch, width) if h0 is None else h0.float()
        c0 = seq.new_zeros(states, batch, module.hidden_size) if c0 is None else c0.float()
        if output is not None and _plain_single_layer(module) and seq.dim() == 3 and x.dim() == 3:
            out = output.float() if module.batch_first else output.float().transpose(0, 1)
            return [_one_shot(module, seq, h0[0], out)]
        layers = []
        for k in range(module.num_layers):
            runs = []
            for d in range(n_dir):  # the reverse direction reads the sequence backwards
                run = _direction(module, f"_l{k}" + "_reverse" * d, seq.flip(1) if d else seq,
                                 h0[k * n_dir + d], c0[k * n_dir + d])
                runs.append({name: v.flip(1) for name, v in run.items()} if d else run)
            layers.append({name: torch.cat([run[name] for run in runs], dim=-1) for name in runs[0]})
            seq = layers[-1]["h"]
    return layers


def _gated(model: nn.Module, layers: Mapping[str, nn.Module] | Sequence[str] | None
           ) -> tuple[dict[str, GatedRNN], dict[str, list[str]]]:
    """The watched modules ``{name: module}`` and, per module, the names of its layers (see the module
    docstring: by default the parameter groups' names)."""
    if layers is None:
        found = {path: m for path, m in model.named_modules() if isinstance(m, (nn.LSTM, nn.GRU))}
        if not found:
            return {}, {}
        groups = parameter_groups(model, "auto", trainable_only=False)
        group_of = {name: groups.names[index] for name, _, index in groups.members}
        watched, names = {}, {}
        for path, module in found.items():
            label = path or type(module).__name__.lower()  # the model itself: its groups are its parameters
            own = [group_of.get(f"{path}.weight_ih_l{k}") if path else None for k in range(module.num_layers)]
            watched[label] = module
            names[label] = [g or (f"{label}.l{k}" if module.num_layers > 1 else label) for k, g in enumerate(own)]
        return watched, names
    chosen = dict(layers) if isinstance(layers, Mapping) else {n: model.get_submodule(n) for n in layers}
    for name, module in chosen.items():
        if not isinstance(module, (nn.LSTM, nn.GRU)):
            raise ValueError(f"layers[{name!r}] is a {type(module).__name__}; gate saturation needs an nn.LSTM or nn.GRU")  # noqa: TRY004
    return chosen, {name: [f"{name}.l{k}" if m.num_layers > 1 else name for k in range(m.num_layers)]
                    for name, m in chosen.items()}


def _mismatch(name: str, module: GatedRNN, x: Tensor, output: Tensor, h: Tensor) -> Tensor:
    """Return max |recomputed h - output| / max(1, max |output|), a 0-d tensor (no sync); a module
    whose hidden sequence this does not reproduce (a subclass with its own forward) has other gates."""
    h = h.squeeze(0) if x.dim() == 2 else h if module.batch_first else h.transpose(0, 1)
    if h.shape != output.shape:
        raise ValueError(f"{name}: {type(module).__name__} returned {tuple(output.shape)}, its weights give "
                         f"{tuple(h.shape)} (a custom forward?); pass layers= without it")
    return (h - output.float()).abs().max() / output.abs().max().float().clamp(min=1.0)


class GateCapture:
    """Catch the input, ``hx`` and output (detached) of every watched ``nn.LSTM`` / ``nn.GRU`` in each
    forward run inside ``with GateCapture(model) as capture:``; :meth:`shares` turns them into gate
    saturation shares. A forward the caller runs anyway (the time probe's, in eval mode) thus gives the
    gates without a second forward. ``layers``: as :func:`gate_saturation` takes them.
    """

    def __init__(self, model: nn.Module, layers: Mapping[str, nn.Module] | Sequence[str] | None = None) -> None:
        self.watched, self.layer_names = _gated(model, layers)
        self.calls: dict[str, list[tuple[Any, Hidden, Tensor | None]]] = {name: [] for name in self.watched}
        self._handles: list[Any] = []

    def _hooks(self, name: str) -> tuple[Callable[..., None], Callable[..., None]]:
        def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            inp = args[0] if args else kwargs.get("input")
            hx = args[1] if len(args) > 1 else kwargs.get("hx")
            self.calls[name].append((_detached(inp), _detached(hx), None))

        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            inp, hx, _ = self.calls[name][-1]
            out = output[0] if isinstance(output, tuple) else output
            self.calls[name][-1] = (inp, hx, out.detach() if isinstance(out, Tensor) else out)
        return pre_hook, hook

    def __enter__(self) -> GateCapture:
        for name, module in self.watched.items():
            pre_hook, hook = self._hooks(name)
            self._handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
            self._handles.append(module.register_forward_hook(hook))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def shares(self, low: float = 0.05, high: float = 0.95) -> dict[str, float]:
        """The saturated / closed / open shares of the caught calls (keys: the module docstring); ``{}``
        when no watched module ran. One host sync. Raises ``ValueError`` as :func:`gate_saturation`."""
        _check_band(low, high)
        counts: dict[str, Tensor] = {}
        totals: dict[str, int] = {}
        mismatch: dict[str, Tensor] = {}
        for name, module in self.watched.items():
            for inp, hx, output in self.calls[name]:
                per_layer = recompute_gates(module, inp, hx, output if isinstance(output, Tensor) else None)
                if isinstance(output, Tensor) and not _plain_single_layer(module):
                    mismatch[name] = torch.maximum(mismatch.get(name, torch.zeros((), device=output.device)),
                                                   _mismatch(name, module, inp, output, per_layer[-1]["h"]))
                for k, gates in enumerate(per_layer):
                    _count(gates, SIGMOID_GATES[isinstance(module, nn.LSTM)], self.layer_names[name][k], low, high,
                           counts, totals)
        if not counts:  # the watched modules never ran in this forward
            return {}
        tags = list(counts)
        values = torch.stack([counts[tag].double() / totals[tag] for tag in tags]
                             + [error.double() for error in mismatch.values()]).tolist()  # the one host sync
        for name, error in zip(mismatch, values[len(tags):]):
            if error > MISMATCH:
                raise ValueError(f"{name}: the gates recomputed from {type(self.watched[name]).__name__}'s weights do "
                                 f"not reproduce its output (off by {error:.3g}; a custom forward?); pass layers= "
                                 "without it")
        return dict(zip(tags, values))


def _check_band(low: float, high: float) -> None:
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"low={low}, high={high}: need 0 <= low < high <= 1")


def _detached(value: Any) -> Any:
    """A tensor, or a tuple of them (an LSTM's ``(h0, c0)``), without its graph; anything else as it is."""
    if isinstance(value, Tensor):
        return value.detach()
    if type(value) is tuple and all(isinstance(v, Tensor) for v in value):  # not a PackedSequence (a namedtuple)
        return tuple(v.detach() for v in value)
    return value


def gate_saturation(model: nn.Module, x: Any, layers: Mapping[str, nn.Module] | Sequence[str] | None = None,
                    low: float = 0.05, high: float = 0.95) -> dict[str, float]:
    """Return the saturated / closed / open shares of every LSTM and GRU gate on one forward of ``x``.

    Runs ``model(x)`` once in eval mode under ``torch.no_grad()`` (the mode is restored), catching
    each watched module's input, ``hx`` and output (:class:`GateCapture`), then :func:`recompute_gates`.
    Keys and meaning: the module docstring. ``layers``: ``{name: module}``, dotted submodule paths, or
    ``None`` = every ``nn.LSTM`` / ``nn.GRU`` (an ``nn.RNN`` has no gates). ``{}`` without a forward
    when there is none. One host sync. Raises ``ValueError`` (every refusal: a caller that turns the
    diagnostic off catches one type) for ``low >= high``, a watched module fed a PackedSequence, or
    one whose recomputed hidden sequence is not its output.

    >>> lstm = nn.LSTM(1, 2)
    >>> with torch.no_grad():
    ...     _ = lstm.bias_ih_l0[2:4].fill_(-20.0)  # forget gate rows: i, f, g, o
    >>> shares = gate_saturation(lstm, torch.zeros(3, 4, 1))
    >>> shares["lstm/forget"], shares["lstm/forget_closed"], shares["lstm/forget_open"]
    (1.0, 1.0, 0.0)
    """
    _check_band(low, high)  # before the forward
    capture = GateCapture(model, layers)
    if not capture.watched:
        return {}
    was_training = model.training
    model.eval()
    try:
        with capture, torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
    return capture.shares(low, high)


def _count(gates: Mapping[str, Tensor], names: Sequence[str], layer: str, low: float, high: float,
           counts: dict[str, Tensor], totals: dict[str, int]) -> None:
    """Add one layer's entries below ``low`` / above ``high`` to ``counts`` (on device) and ``totals``."""
    for gate in names:
        value = gates[gate]
        shut, wide = (value < low).sum(), (value > high).sum()
        found = {gate: shut + wide}
        if gate in SPLIT_GATES:
            found.update({f"{gate}_closed": shut, f"{gate}_open": wide})
        for key, count in found.items():
            tag = f"{layer}/{key}"
            counts[tag] = counts[tag] + count if tag in counts else count
            totals[tag] = totals.get(tag, 0) + value.numel()
