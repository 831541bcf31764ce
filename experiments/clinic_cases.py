"""The clinic's patients: small synthetic tasks and models, each with one planted pathology, the healthy
controls, and the concrete change each of the doctor's fixes names.

A case is plain settings (a dict) that :func:`build` turns into a LightningModule and a train loader;
the doctor's fix for a finding is another dict (:func:`apply_fix`), so a case before and after its
fix differ only in what the fix text names. Everything is tiny: CPU, a few seconds per run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

Settings = dict[str, Any]

# the plain model every planted case starts from; a case changes what it plants
BASE: Settings = {"cell": "rnn", "layers": 1, "hidden": 16, "residual": False, "init": "default",
                  "forget_bias": None, "task": "recent", "window": 20, "n_train": 512, "batch": 32,
                  "epochs": 4, "lr": 1e-3, "clip": None, "unused": False, "inf_at": None, "seed": 0}


def synthetic(task: str, n: int, window: int, seed: int) -> tuple[Tensor, Tensor]:
    """Return ``x`` (n, window, 2) standard normal and ``y`` (n, 1) from a fixed seed.

    ``recent``: y = mean of the last 5 steps of feature 0 (learnable by any recurrent net);
    ``first``: y = x[:, 0, 0], the first step of the window (needs memory across the whole window).
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, window, 2, generator=generator)  # (N, T, F)
    if task == "recent":
        y = x[:, -5:, 0].mean(dim=1, keepdim=True) * math.sqrt(5)  # unit variance
    elif task == "first":
        y = x[:, :1, 0]
    else:
        raise ValueError(f"task={task!r} is unknown; use 'recent' or 'first'")
    return x, y  # (N, T, F), (N, 1)


class InfFrom(nn.Module):
    """Pass the input through until the ``at``-th training forward, then return ``x * inf`` (the planted
    non-finite source). Eval forwards (the probe) do not count and pass through."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        self.calls += 1
        return x * math.inf if self.calls >= self.at else x


class Net(nn.Module):
    """A stack of single-layer recurrent modules ``layers.0 .. layers.{k-1}`` and a linear ``head`` on the
    last step; ``residual`` adds each layer's input to its output from ``layers.1`` on (widths match)."""

    def __init__(self, s: Settings, n_features: int = 2) -> None:
        super().__init__()
        cell = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[s["cell"]]
        self.residual = s["residual"]
        self.layers = nn.ModuleList(cell(n_features if i == 0 else s["hidden"], s["hidden"], batch_first=True)
                                    for i in range(s["layers"]))
        self.blowup = InfFrom(s["inf_at"]) if s["inf_at"] else None
        self.head = nn.Linear(s["hidden"], 1)
        self.spare = nn.Linear(s["hidden"], s["hidden"]) if s["unused"] else None  # never called in forward
        for layer in self.layers:
            initialise(layer, s["init"], s["forget_bias"])

    def forward(self, x: Tensor) -> Tensor:
        # B batch, T window, F features, H hidden
        for i, layer in enumerate(self.layers):
            out, _ = layer(x)  # (B, T, F or H) -> (B, T, H)
            x = x + out if self.residual and i > 0 else out
        if self.blowup is not None:
            x = self.blowup(x)
        return self.head(x[:, -1])  # (B, H) -> (B, 1)


def initialise(layer: nn.RNNBase, init: str, forget_bias: float | None) -> None:
    """``orthogonal``: every gate's block of ``weight_hh`` orthogonal; ``forget_bias``: an LSTM's forget
    rows of ``bias_ih`` set to it and of ``bias_hh`` to 0 (the total bias is the value; torch's row order
    is i, f, g, o)."""
    hidden, blocks = layer.hidden_size, {"rnn": 1, "lstm": 4, "gru": 3}[layer.mode.split("_")[0].lower()]
    with torch.no_grad():
        if init == "orthogonal":
            for k in range(blocks):
                nn.init.orthogonal_(layer.weight_hh_l0[k * hidden:(k + 1) * hidden])
        if forget_bias is not None and isinstance(layer, nn.LSTM):
            layer.bias_ih_l0[hidden:2 * hidden].fill_(forget_bias)
            layer.bias_hh_l0[hidden:2 * hidden].zero_()


class Regressor(pl.LightningModule):
    """MSE regression of ``Net`` with Adam; logs ``train/loss`` on every logged step."""

    def __init__(self, s: Settings) -> None:
        super().__init__()
        self.settings = dict(s)
        self.net = Net(s)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train/loss", loss, on_step=True, on_epoch=False, batch_size=len(x))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.settings["lr"])


def build(s: Settings) -> tuple[pl.LightningModule, DataLoader]:
    """The module and the (shuffled, seeded) train loader of one case's settings."""
    pl.seed_everything(s["seed"], verbose=False)
    x, y = synthetic(s["task"], s["n_train"], s["window"], s["seed"])
    loader = DataLoader(TensorDataset(x, y), batch_size=s["batch"], shuffle=True,
                        generator=torch.Generator().manual_seed(s["seed"]))
    return Regressor(s), loader


# ---- the cases ----------------------------------------------------------------------------------------
CASES: list[dict[str, Any]] = [
    {"name": "deep_plain_lstm", "planted": "12 plain nn.LSTM layers, torch's default init",
     "expect": ["vanishing_depth"], "settings": {"cell": "lstm", "layers": 12}},
    {"name": "long_window_rnn", "planted": "plain nn.RNN, target = the first step of a 200-step window",
     "expect": ["short_memory"], "settings": {"task": "first", "window": 200, "epochs": 3}},
    {"name": "lr_far_too_high", "planted": "Adam lr 1.0 with gradient clipping at 1.0",
     "expect": ["clip_saturated", "lr_too_high"], "settings": {"cell": "gru", "lr": 1.0, "clip": 1.0}},
    {"name": "lr_far_too_low", "planted": "Adam lr 1e-7", "expect": ["lr_too_low"],
     "settings": {"cell": "gru", "lr": 1e-7}},
    {"name": "forget_gates_shut", "planted": "LSTM forget-gate bias -10", "expect": ["gate_saturation"],
     "settings": {"cell": "lstm", "forget_bias": -10.0}},
    {"name": "unused_layer", "planted": "a Linear layer never called in forward", "expect": ["no_gradient"],
     "settings": {"cell": "gru", "unused": True}},
    {"name": "inf_from_step_30", "planted": "a module that returns x * inf from its 30th training call",
     "expect": ["nonfinite"], "settings": {"cell": "gru", "inf_at": 30}},
    {"name": "healthy_gru", "planted": "none (control): a GRU that learns a 5-step mean", "expect": [],
     "settings": {"cell": "gru"}},
    {"name": "default_forecaster", "planted": "none (control): LSTMForecaster() on the embedded gold data",
     "expect": [], "metric": "not_learnable", "settings": {"forecaster": True, "epochs": 3}},
]


# ---- the doctor's fixes, made concrete ----------------------------------------------------------------
Fix = Callable[[Settings], tuple[Settings, str]]


def _residual(s: Settings) -> tuple[Settings, str]:
    return {**s, "residual": True, "init": "orthogonal"}, "residual connections + orthogonal init"


def _gated(s: Settings) -> tuple[Settings, str]:
    return ({**s, "cell": "lstm", "init": "orthogonal", "forget_bias": 1.0},
            "LSTM, orthogonal recurrent weights, forget bias 1")


def _lower_lr(s: Settings) -> tuple[Settings, str]:
    return {**s, "lr": s["lr"] / 30}, f"lr {s['lr']:.3g} → {s['lr'] / 30:.3g} (/30)"


def _clip_first(s: Settings) -> tuple[Settings, str]:
    """"clip the gradient ..., lower the learning rate": clipping at 1.0 when there is none, else a lower lr."""
    if s["clip"] is None:
        return {**s, "clip": 1.0}, "gradient clipping at 1.0"
    return _lower_lr(s)


def _raise_lr(s: Settings) -> tuple[Settings, str]:
    return {**s, "lr": s["lr"] * 100}, f"lr {s['lr']:.3g} → {s['lr'] * 100:.3g} (x100)"


def _forget_bias(s: Settings) -> tuple[Settings, str]:
    return {**s, "forget_bias": 1.0}, f"forget bias {s['forget_bias']:g} → 1"


def _remove_layer(s: Settings) -> tuple[Settings, str]:
    return {**s, "unused": False}, "unused layer removed"


def _remove_inf(s: Settings) -> tuple[Settings, str]:
    return {**s, "inf_at": None}, "the module named as the origin removed"


# kind -> (words the doctor's fix text must contain, the change); the words keep the mapping honest:
# a fix text that stops naming the change makes the clinic fail instead of applying something else
FIXES: dict[str, tuple[str, Fix]] = {
    "vanishing_depth": ("residual", _residual),
    "short_memory": ("forget-gate bias of 1", _gated),
    "clip_saturated": ("lower the learning rate", _lower_lr),
    "lr_too_high": ("lower the learning rate", _lower_lr),
    "exploding": ("clip the gradient", _clip_first),
    "loss_spike": ("lower learning rate", _lower_lr),
    "lr_too_low": ("raise the learning rate", _raise_lr),
    "gate_saturation": ("forget-gate bias to 1", _forget_bias),
    "no_gradient": ("remove the layer", _remove_layer),
    "nonfinite": ("origin", _remove_inf),
}


def apply_fix(kind: str, fix_text: str, s: Settings) -> tuple[Settings, str] | None:
    """The settings after the doctor's fix for ``kind`` and a short description; None when the clinic
    has no concrete change for it. Raises ``ValueError`` when the fix text no longer names the change."""
    if kind not in FIXES:
        return None
    words, change = FIXES[kind]
    if words not in fix_text:
        raise ValueError(f"the doctor's fix for {kind} no longer says {words!r} ({fix_text!r}); update "
                         "experiments.clinic_cases.FIXES")
    return change(s)
