"""``TimeGradientProbe``: how far back in time, and how deep, the gradient reaches, for any sequence model.

Once before training and every ``every_n_epochs`` after that, one backward on a fixed probe batch
(eval mode, parameters' ``.grad`` untouched) gives ‖∂L/∂x_t‖ for every step of the window and
‖∂L/∂h‖ at each recurrent layer's output (:func:`lstm_grad.diagnostics.timegrad.probe_gradients`).
Vanishing across depth shows as a small ``grad_act`` at the first recurrent layer next to a large
one at the last; vanishing across time as a short ``grad_time/reach``; across training as the
heat map's rows.

A probe that cannot run on a model (input that is not (B, T, F), a dict batch without ``split_batch``,
reentrant activation checkpointing, packed sequences, a custom autograd Function without double
backward ...) says so in one warning and turns itself off; training goes on.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lstm_grad.diagnostics.gates import GateCapture
from lstm_grad.diagnostics.figures import heatmap_image, profile_figure
from lstm_grad.diagnostics.texts import profile_markdown, with_data
from lstm_grad.diagnostics.timegrad import lag_value, probe_gradients, time_reach
from lstm_grad.diagnostics.trainer_state import Callback, overrides
from lstm_grad.diagnostics.tracker import GradientHealthWarning

PROFILE_TAG = "grad_time/profile_values"  # the full profile per probe, as JSON text (diagnose reads it)


def probe_scalars(profile: Tensor, acts: dict[str, Tensor], lags: Sequence[int], fraction: float
                  ) -> tuple[list[float], dict[str, float]]:
    """Read one probe's results with one host sync: the profile (T,) as a list, and its scalars
    ``grad_time/lag_<k>`` (the lags that fit in the window), ``grad_time/reach`` and ``grad_act/<layer>``
    (what :func:`probe_gradients` returned; see :class:`TimeGradientProbe`)."""
    flat = torch.cat([profile, *(a.reshape(1) for a in acts.values())]).tolist()  # one host sync
    values, act_values = flat[: len(profile)], flat[len(profile):]
    scalars = {f"grad_time/lag_{lag}": lag_value(values, lag) for lag in lags}
    scalars = {k: v for k, v in scalars.items() if v is not None}
    scalars["grad_time/reach"] = float(time_reach(values, fraction))
    scalars.update({f"grad_act/{name}": v for name, v in zip(acts, act_values)})
    return values, scalars


class TimeGradientProbe(Callback):
    """Log the gradient's reach through time and depth on a fixed batch, for any (B, T, F) model.

    Scalars (rank 0, at the current ``global_step``, through every logger): ``grad_time/lag_<k>`` for
    each of ``lags`` that fits in the window (lag 1 = the last input step), ``grad_time/reach``
    (largest lag whose gradient is >= ``fraction`` of the largest: the model's effective memory in
    steps) and ``grad_act/<layer>``. TensorBoard-like loggers also get the profile as text
    (``grad_time/profile_values``: a Markdown table, every value in a comment, :mod:`.texts`) after
    every probe, and at the end of training the last profile (``grad_time/profile``, with
    ``log_figure``) and the epoch x lag heat map (``grad_time/heatmap``) as images.

    Args:
        every_n_epochs: probe after every n-th training epoch (and once before the first step); 0 = off.
        probe_size: windows in the probe batch when it is taken from a loader (8: a probe of 8 windows
            costs 11 ms against 16 ms for 16 on the default network, and the default run's diagnostics
            stay under 3 % of the run; ``benchmarks.bench`` item 3).
        lags: lags logged as scalars; lags beyond the window are skipped.
        fraction: share of the largest gradient that still counts as reached.
        log_figure: also draw the last profile (``grad_time/profile``) as a matplotlib figure when training
            ends; the labelled heat map ``grad_time/heatmap`` (axes, probe labels, colour bar) is always logged.
        probe_batch: ``(x, y)`` to probe, x (B, T, F) batch first; default: the first ``probe_size``
            windows of the validation loader, else of the train loader (batches read as ``(x, y, ...)``).
        loss_fn: ``loss_fn(prediction, y)``; default the module's own ``loss_fn`` attribute, else MSE.
        layers: dotted paths of the submodules whose output gradient is logged as ``grad_act/<path>``;
            default every ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` (shared prefix dropped, as the groups).
        split_batch: turns one of the loader's batches into ``(x, y)``: x the model's (B, T, F) input, y
            what ``loss_fn`` takes; default: a batch is ``(x, y, ...)``.
        gates: also log ``gate_sat/<layer>/<gate>`` for every ``nn.LSTM`` / ``nn.GRU`` layer: the share of
            gate values saturated (below 0.05 or above 0.95), and ``..._closed`` / ``..._open`` for the
            forget / input / update gates, recomputed from the layers' inputs and outputs caught in the
            probe's own forward (:class:`lstm_grad.diagnostics.gates.GateCapture`; the same values as
            :func:`lstm_grad.diagnostics.gates.gate_saturation` on the probe batch, one forward fewer).
    """

    def __init__(self, every_n_epochs: int = 1, probe_size: int = 8, lags: Sequence[int] = (1, 10, 30, 60),
                 fraction: float = 0.01, log_figure: bool = False, probe_batch: Any = None,
                 loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
                 layers: Sequence[str] | None = None,
                 split_batch: Callable[[Any], tuple[Tensor, Tensor]] | None = None, gates: bool = True) -> None:
        if every_n_epochs < 0 or probe_size < 1 or not 0 < fraction < 1 or min(lags, default=1) < 1:
            raise ValueError(f"need every_n_epochs >= 0, probe_size >= 1, 0 < fraction < 1 and lags >= 1; got "
                             f"{every_n_epochs}, {probe_size}, {fraction}, {list(lags)}")
        if probe_batch is not None and (not isinstance(probe_batch, (tuple, list)) or len(probe_batch) < 2):
            raise ValueError("TimeGradientProbe: probe_batch must be (x, y) with x (B, T, F)")
        self.every_n_epochs, self.probe_size = every_n_epochs, probe_size
        self.lags, self.fraction, self.log_figure = tuple(lags), fraction, log_figure
        self.loss_fn, self.layers = loss_fn, list(layers) if layers is not None else None
        self.batch: tuple[Tensor, Tensor] | None = (probe_batch[0], probe_batch[1]) if probe_batch is not None else None
        self._given_shape = tuple(probe_batch[0].shape) if probe_batch is not None else None  # part of state_key
        self.last: dict[str, float] = {}
        self.last_step = 0
        self.profile: Tensor | None = None
        self.history: list[dict[str, Any]] = []  # {"label", "step", "profile" (time order)} per probe
        self.split_batch = split_batch
        self.off = False  # set when the probe cannot run on this model
        self.gates = gates
        self.gate_history: dict[str, dict[int, float]] = {}  # "<layer>/<gate>" -> {step: share}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(probe_size=self.probe_size, lags=self.lags, layers=self.layers,
                                        batch=self._given_shape)

    # ---- the probe batch --------------------------------------------------------------------------
    def _loaders(self, trainer: Any) -> list[Callable[[], Any]]:
        """Where a batch may come from, in order: validation loaders, then the train loader."""
        module, datamodule = trainer.lightning_module, trainer.datamodule
        found: list[Callable[[], Any]] = []
        if trainer.val_dataloaders is not None:  # set once a validation loop (or sanity check) has run
            found.append(lambda: trainer.val_dataloaders)
        if datamodule is not None and overrides(datamodule, "val_dataloader"):
            found.append(datamodule.val_dataloader)
        if overrides(module, "val_dataloader"):
            found.append(module.val_dataloader)
        found.append(lambda: trainer.train_dataloader)
        return found

    def _take_batch(self, trainer: Any) -> tuple[Tensor, Tensor]:
        for make in self._loaders(trainer):
            loader = make()
            if isinstance(loader, dict):
                loader = next(iter(loader.values()), None)
            if isinstance(loader, (list, tuple)):
                loader = loader[0] if loader else None
            if loader is None:
                continue
            with torch.random.fork_rng(devices=[]):  # iterating a shuffled loader must not move the run's RNG
                taken = self._first_windows(loader)
            if taken is not None:
                return taken
        raise ValueError("TimeGradientProbe: the validation and train loaders gave no batch; pass "
                         "probe_batch=(x, y) or every_n_epochs=0")

    def _first_windows(self, loader: Any) -> tuple[Tensor, Tensor] | None:
        xs, ys, have = [], [], 0
        for batch in loader:
            if self.split_batch is not None:
                x, y = self.split_batch(batch)
            elif not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ValueError(f"TimeGradientProbe reads (x, y, ...) batches; got {type(batch).__name__}; pass "
                                 "split_batch=lambda batch: (x, y) or probe_batch=(x, y)")
            else:
                x, y = batch[0], batch[1]
            xs.append(x[: self.probe_size - have])
            ys.append(y[: self.probe_size - have])
            have += len(xs[-1])
            if have >= self.probe_size:
                break
        return (torch.cat(xs), torch.cat(ys)) if xs else None  # (N, T, F), (N, ...)

    # ---- probing ----------------------------------------------------------------------------------
    def probe(self, trainer: Any, pl_module: Any, label: str = "") -> dict[str, float]:
        """Run the probe now and log its scalars; return them ({} once the probe has turned itself off)."""
        if self.off:
            return {}
        try:
            return self._probe(trainer, pl_module, label)
        except Exception as error:  # a model the probe cannot take: say so once, step aside
            self.off = True
            if trainer.is_global_zero:
                first = str(error).strip().splitlines()[0] if str(error).strip() else ""
                warnings.warn(f"TimeGradientProbe cannot probe {type(pl_module).__name__} ({type(error).__name__}: "
                              f"{first}); it is turned off and training goes on. It needs a (B, T, F) input whose "
                              "gradient autograd can take (no reentrant checkpointing); pass split_batch= or "
                              "probe_batch= for other batches", GradientHealthWarning, stacklevel=2)
            return {}

    def _probe(self, trainer: Any, pl_module: Any, label: str) -> dict[str, float]:
        if self.batch is None:
            self.batch = self._take_batch(trainer)
        x, y = (t.to(pl_module.device) for t in self.batch)
        if x.dim() != 3:
            raise ValueError(f"the input has shape {tuple(x.shape)}, not (batch, time, features)")
        own = getattr(pl_module, "loss_fn", None)
        loss_fn = self.loss_fn or (own if callable(own) else F.mse_loss)
        gates = GateCapture(pl_module) if self.gates else nullcontext()
        with gates:  # the gates are caught in the probe's own forward (eval mode): no second forward
            profile, acts = probe_gradients(pl_module, x, y, loss_fn, self.layers)
        profile_list, scalars = probe_scalars(profile, acts, self.lags, self.fraction)
        self.profile = profile.detach().cpu()
        for key, share in (self._gate_shares(gates) if isinstance(gates, GateCapture) else {}).items():
            scalars[f"gate_sat/{key}"] = share
            self.gate_history.setdefault(key, {})[trainer.global_step] = share
        self.last, self.last_step = scalars, trainer.global_step
        self.history.append({"label": label or f"step {trainer.global_step}", "step": trainer.global_step,
                             "profile": profile_list})
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=trainer.global_step)
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_text"):
                entry = {"label": self.history[-1]["label"], "profile": profile_list}
                text = profile_markdown(entry["label"], profile_list, scalars["grad_time/reach"], self.fraction)
                experiment.add_text(PROFILE_TAG, with_data(text, entry), trainer.global_step)
        return scalars

    def _gate_shares(self, gates: GateCapture) -> dict[str, float]:
        """Gate saturation on the probe batch (:meth:`GateCapture.shares`); a model whose recurrent layers
        cannot be recomputed (a subclass with its own forward, packed input) loses this signal alone,
        with one warning."""
        try:
            return gates.shares()
        except ValueError as error:
            self.gates = False
            warnings.warn(f"TimeGradientProbe: gate saturation turned off ({error})", GradientHealthWarning, stacklevel=2)
            return {}

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self.every_n_epochs and trainer.is_global_zero and not self.history:
            self.probe(trainer, pl_module, "before training")

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        epoch = trainer.current_epoch
        if self.every_n_epochs and (epoch + 1) % self.every_n_epochs == 0 and trainer.is_global_zero:
            self.probe(trainer, pl_module, f"epoch {epoch}")

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """Draw the last profile and the heat map (the scalars above track them every epoch)."""
        if self.off or not (self.every_n_epochs and trainer.is_global_zero and self.profile is not None):
            return
        rows, labels = [h["profile"] for h in self.history], [h["label"] for h in self.history]
        experiments = [e for e in (getattr(logger, "experiment", None) for logger in trainer.loggers)
                       if hasattr(e, "add_image")]
        image = heatmap_image(labels, rows).numpy() if experiments else None
        for experiment in experiments:
            experiment.add_image("grad_time/heatmap", image, global_step=self.last_step, dataformats="HWC")
            if self.log_figure and hasattr(experiment, "add_figure"):
                experiment.add_figure("grad_time/profile", profile_figure(self.profile, self.last["grad_time/reach"],
                                                                          self.last_step), global_step=self.last_step)

    # ---- state: the heat map continues across a resume ----------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(h) for h in self.history], "gate_history": dict(self.gate_history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(h) for h in state_dict.get("history", [])]
        self.gate_history = {k: dict(v) for k, v in state_dict.get("gate_history", {}).items()}
