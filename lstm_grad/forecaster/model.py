"""The recipe's stacked recurrent forecaster, in pure torch.

Each recurrent layer is its own single-layer ``nn.LSTM`` (or ``nn.GRU``) registered as a top-level
child ``lstm_0 .. lstm_{k-1}``, so every layer has its own parameters (and so its own gradient norm)
and a residual add can sit between two layers.

Low precision: a recurrent layer runs in bf16 / fp16 (``bf16-mixed``, ``bf16-true``, ``16-mixed`` on the
CPU) only where the device has a kernel for it. oneDNN builds its bf16 LSTM only on CPUs with bf16 /
AVX-512 support; elsewhere ``nn.LSTM`` under a bf16 autocast raises "could not create a primitive
descriptor for the LSTM forward propagation primitive". There the recurrent layers run in float32
(autocast off, input and weights cast up) and everything else stays in the low precision; one log line
says so (:func:`recurrent_kernel_ok`, probed once per process, cell, device and dtype).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}
INITS = ("orthogonal", "default", "glorot")
GATES = {"lstm": 4, "gru": 3}  # gate blocks stacked in weight_ih / weight_hh (torch order)
FORGET_GATE = 1  # torch packs LSTM gates as (input, forget, cell, output)


class UniformMaskDropout(nn.Dropout):
    """``nn.Dropout`` whose keep-mask comes from comparing 15-bit uniform integers with a threshold.

    Each element is dropped with probability ``k / 32768``, ``k = round(p * 32768)`` (within 2**-16 of
    ``p``), and a kept value is scaled by ``32768 / (32768 - k)``, the inverse of its keep probability, so
    the output's expectation is the input exactly, as ``nn.Dropout``'s; eval mode and ``p = 0`` are the
    identity, ``p = 1`` gives zeros. Why: the CPU's random numbers are the cost. torch's generator (the
    run's seed decides it) fills an int64 with 63 random bits from two 32-bit draws
    (``aten/src/ATen/core/DistributionsHelper.h``, ``uniform_int_distribution``); its four 16-bit parts,
    each cut to 15 bits, are four uniforms, half the draws of float32 uniforms. Forward + backward of a
    (32, 60, 128) layer output, median ms over 5 rounds: 0.74 here, 0.95 with float32 ``rand`` compared
    with p, 2.18 with ``F.dropout``'s ``bernoulli_`` (``python -m benchmarks.kernels``,
    ``docs/measured/kernels.json``, commit b09dc42, torch 2.13.0 CPU, 2 threads, the 2-core benchmark
    machine); dropout between the layers had been 9 % of an epoch of the default network (cProfile of
    ``benchmarks.peers``). The mask is cast to the input's dtype.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        n, dropped = x.numel(), round(self.p * 32768)
        if dropped == 32768:  # p = 1, or within 2**-16 of it: everything dropped
            return x * 0.0
        draws = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_()  # [0, 2**63)
        uniform = draws.view(torch.int16)[:n].view(x.shape).bitwise_and_(0x7FFF)  # four on [0, 32767] per int64
        keep = torch.where(uniform >= dropped, 32768 / (32768 - dropped), 0.0)  # P(keep) = 1 - k / 32768
        return x * keep.to(x.dtype)


class ResidualLSTM(nn.Module):
    """Stacked recurrent layers with residual adds, dropout between layers and a linear head.

    Layer 0 reads the raw features. Every later layer ``i`` adds its input to its output when
    ``residual`` is on: unchanged where widths match, through a linear projection ``proj_i`` where
    they differ (the recipe's "add a Dense layer to project dimensions"). With the default sizes
    this is the recipe's Step-4 network: 128 -> +128 -> +128 -> 64 (+projection) -> head.

    Args:
        n_features: input features per time step (F).
        hidden_sizes: width of each recurrent layer, first to last.
        residual: add skip connections between recurrent layers.
        dropout: dropout probability applied to each layer's output.
        cell: ``"lstm"`` or ``"gru"`` (the recipe's advice for windows beyond ~100 steps).
        init: ``"orthogonal"`` (per gate block), ``"glorot"`` or ``"default"`` (torch's own).
        gain: gain of the orthogonal / Glorot recurrent and input weights.
        forget_bias: LSTM forget-gate bias (Keras' ``unit_forget_bias``); ignored for ``"default"``.
        horizon: outputs of the head, one per forecast day (H).

    >>> net = ResidualLSTM(5, hidden_sizes=(8, 8, 4), horizon=2)
    >>> [name for name, _ in net.named_children() if name != "dropout"]
    ['lstm_0', 'lstm_1', 'lstm_2', 'proj_2', 'head']
    >>> net(torch.zeros(3, 10, 5)).shape
    torch.Size([3, 2])
    """

    def __init__(
        self,
        n_features: int,
        hidden_sizes: Sequence[int] = (128, 128, 128, 64),
        residual: bool = True,
        dropout: float = 0.2,
        cell: str = "lstm",
        init: str = "orthogonal",
        gain: float = 1.0,
        forget_bias: float = 1.0,
        horizon: int = 1,
    ) -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell={cell!r} is unknown; use one of {sorted(CELLS)}")
        if init not in INITS:
            raise ValueError(f"init={init!r} is unknown; use one of {list(INITS)}")
        if not hidden_sizes or min(hidden_sizes) < 1 or n_features < 1 or horizon < 1:
            raise ValueError(
                f"need n_features >= 1, horizon >= 1 and at least one positive hidden size; "
                f"got n_features={n_features}, hidden_sizes={tuple(hidden_sizes)}, horizon={horizon}"
            )
        self.cell = cell
        self.residual = residual
        self.layer_names: list[str] = []
        self.skips: dict[str, str | None] = {}  # layer -> "identity", projection name, or None
        width = n_features
        for i, size in enumerate(hidden_sizes):
            name = f"{cell}_{i}"
            self.add_module(name, CELLS[cell](width, size, batch_first=True))
            self.layer_names.append(name)
            if not residual or i == 0:
                self.skips[name] = None
            elif width == size:
                self.skips[name] = "identity"
            else:
                self.add_module(f"proj_{i}", nn.Linear(width, size))
                self.skips[name] = f"proj_{i}"
            width = size
        self.dropout = UniformMaskDropout(dropout)
        self.head = nn.Linear(width, horizon)
        init_recurrent_(self, init, gain=gain, forget_bias=forget_bias)

    def forward(self, x: Tensor) -> Tensor:
        # B batch, T window, F features, H_i width of layer i, H horizon
        last = self.layer_names[-1]
        for name in self.layer_names:
            out = run_recurrent(getattr(self, name), x)  # (B, T, H_{i-1}) -> (B, T, H_i)
            if name == last:  # only the last time step reaches the head: no dropout or skip on the rest
                out, x = out[:, -1], x[:, -1]  # (B, H_last), (B, H_{last-1})
            out = self.dropout(out)
            skip = self.skips[name]
            if skip == "identity":
                out = out + x
            elif skip is not None:
                out = out + getattr(self, skip)(x)  # (B, [T,] H_{i-1}) -> (B, [T,] H_i)
            x = out
        return self.head(x)  # (B, H_last) -> (B, H)

    def recurrent_layers(self) -> list[nn.Module]:
        return [getattr(self, name) for name in self.layer_names]


def low_precision(x: Tensor) -> tuple[torch.dtype, bool] | None:
    """Return the 16-bit dtype a recurrent layer would compute ``x`` in, and whether autocast chose it.

    >>> low_precision(torch.zeros(1)) is None
    True
    >>> with torch.autocast("cpu", dtype=torch.bfloat16):
    ...     low_precision(torch.zeros(1))
    (torch.bfloat16, True)
    """
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        return (dtype, True) if dtype in (torch.bfloat16, torch.float16) else None
    return (x.dtype, False) if x.dtype in (torch.bfloat16, torch.float16) else None


@functools.lru_cache(maxsize=None)
def recurrent_kernel_ok(cell: type[nn.Module], device_type: str, dtype: torch.dtype, autocast: bool) -> bool:
    """Say whether ``cell`` (``nn.LSTM`` / ``nn.GRU``) runs forward and backward in ``dtype`` on this device.

    Probed once on a 2-unit layer (inference mode and ``no_grad`` lifted); a missing kernel is logged in
    one line, since the layers then run in float32 (:func:`run_recurrent`).
    """
    device = torch.device(device_type, torch.cuda.current_device()) if device_type == "cuda" else torch.device(device_type)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            layer = cell(2, 2, batch_first=True).to(device)
            x = torch.zeros(1, 3, 2, device=device)
            if autocast:
                with torch.autocast(device_type, dtype=dtype):
                    out, _ = layer(x)
            else:
                out, _ = layer.to(dtype)(x.to(dtype))
            out.float().sum().backward()
    except RuntimeError as error:
        name = str(dtype).removeprefix("torch.")
        log.info("%s %s: this %s has no %s %s kernel (%s), so the recurrent layers run in float32 and the rest "
                 "in %s", name, "autocast" if autocast else "weights", device_type.upper(), name, cell.__name__,
                 " ".join(str(error).split())[:100], name)
        return False
    return True


def run_recurrent(layer: nn.Module, x: Tensor) -> Tensor:
    """Return ``layer(x)``'s output sequence, in float32 where the device lacks the low-precision kernel.

    Under autocast the float32 output goes on as it is (the next ``nn.Linear`` casts it down again);
    with 16-bit weights (``*-true``) it is cast back to ``x``'s dtype. Gradients reach the 16-bit
    weights through the casts.
    """
    low = low_precision(x)
    if low is None or recurrent_kernel_ok(type(layer), x.device.type, *low):
        return layer(x)[0]
    dtype, autocast = low
    with torch.autocast(x.device.type, enabled=False):
        params = dict(layer.named_parameters())
        if all(p.dtype == torch.float32 for p in params.values()):
            out, _ = layer(x.float())
        else:  # 16-bit weights: run on float32 copies (the casts are differentiable)
            floats = {name: p.float() for name, p in params.items()}
            out, _ = torch.func.functional_call(layer, floats, (x.float(),))
    return out if autocast else out.to(dtype)


def init_recurrent_(
    model: ResidualLSTM, mode: str = "orthogonal", gain: float = 1.0, forget_bias: float = 1.0
) -> None:
    """Initialise every recurrent layer, projection and the head of ``model`` in place.

    ``orthogonal`` makes each gate's block of ``weight_hh`` (H x H) orthogonal on its own, not the
    stacked (G*H x H) matrix as one, so every gate starts as a norm-preserving map; each block of
    ``weight_ih`` is (semi-)orthogonal too. ``glorot`` draws every block Glorot-uniform. Both zero
    the biases except the LSTM forget gate, set to ``forget_bias`` (split so that
    ``bias_ih + bias_hh`` equals it). ``default`` keeps torch's recurrent init untouched.
    Projections and the head are Glorot-uniform with zero bias in every mode, as the recipe advises.
    """
    if mode not in INITS:
        raise ValueError(f"init={mode!r} is unknown; use one of {list(INITS)}")
    draw = {"orthogonal": nn.init.orthogonal_, "glorot": nn.init.xavier_uniform_}.get(mode)
    with torch.no_grad():
        if draw is not None:
            gates = GATES[model.cell]
            for layer in model.recurrent_layers():
                for weight in (layer.weight_ih_l0, layer.weight_hh_l0):
                    for block in weight.chunk(gates, dim=0):  # views: (G*H, in) -> G x (H, in)
                        draw(block, gain=gain)
                layer.bias_ih_l0.zero_()
                layer.bias_hh_l0.zero_()
                if model.cell == "lstm":
                    layer.bias_ih_l0.chunk(gates)[FORGET_GATE].fill_(forget_bias)
        for name, module in model.named_children():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
