"""``TimeGradientProbe``: how far back in time, and how deep, the gradient of the loss reaches.

Once before training and every ``every_n_epochs`` after that, one backward on a fixed probe batch
(the first ``probe_size`` validation windows, eval mode) gives ‖∂L/∂x_t‖ for every day of the
window and ‖∂L/∂h‖ at each recurrent layer's output (:func:`lstm_grad.gradients.probe_gradients`).
Vanishing across depth shows as small ``grad_act/lstm_0`` next to a large ``grad_act/lstm_{k-1}``;
vanishing across time as a short ``grad_time/reach``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from lstm_grad.gradients import lag_value, probe_gradients, time_reach


class TimeGradientProbe(pl.Callback):
    """Log the gradient's reach through time and depth on a fixed batch.

    Scalars (rank 0, at the current ``global_step``): ``grad_time/lag_<k>`` for each of ``lags``
    that fits in the window (lag 1 = the last input day), ``grad_time/reach`` (largest lag whose
    gradient is >= ``fraction`` of the largest: the network's effective memory in days) and
    ``grad_act/<layer>``. A TensorBoard figure ``grad_time/profile`` (log scale over lag).

    Args:
        every_n_epochs: probe after every n-th training epoch (and once before the first step);
            0 turns the probe off.
        probe_size: windows in the probe batch (taken once, from the validation loader).
        lags: lags logged as scalars; lags beyond the window are skipped.
        fraction: share of the largest gradient that still counts as reached.
        log_figure: also log the last profile as a TensorBoard figure when training ends (once per
            run: drawing one costs more than the probe itself).
    """

    def __init__(self, every_n_epochs: int = 1, probe_size: int = 16,
                 lags: Sequence[int] = (1, 10, 30, 60), fraction: float = 0.01, log_figure: bool = True) -> None:
        if every_n_epochs < 0 or probe_size < 1 or not 0 < fraction < 1 or min(lags, default=1) < 1:
            raise ValueError(f"need every_n_epochs >= 0, probe_size >= 1, 0 < fraction < 1 and lags >= 1; got "
                             f"{every_n_epochs}, {probe_size}, {fraction}, {list(lags)}")
        self.every_n_epochs, self.probe_size = every_n_epochs, probe_size
        self.lags, self.fraction, self.log_figure = tuple(lags), fraction, log_figure
        self.batch: tuple[Tensor, Tensor] | None = None
        self.last: dict[str, float] = {}
        self.last_step = 0
        self.profile: Tensor | None = None

    def _take_batch(self, trainer: pl.Trainer) -> tuple[Tensor, Tensor]:
        datamodule = trainer.datamodule
        loader = datamodule.val_dataloader() if datamodule is not None else trainer.train_dataloader
        xs, ys, have = [], [], 0
        for x, y, *_ in loader:
            xs.append(x[: self.probe_size - have])
            ys.append(y[: self.probe_size - have])
            have += len(xs[-1])
            if have >= self.probe_size:
                break
        if not xs:
            raise ValueError("TimeGradientProbe: the validation loader is empty; set time_probe.every_n_epochs: 0")
        return torch.cat(xs), torch.cat(ys)  # (N, T, F), (N, H)

    def probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Run the probe now and log its scalars; return them."""
        if self.batch is None:
            self.batch = self._take_batch(trainer)
        x, y = (t.to(pl_module.device) for t in self.batch)
        loss_fn = getattr(pl_module, "loss_fn", F.mse_loss)
        profile, acts = probe_gradients(pl_module.model, x, y, loss_fn)
        flat = torch.cat([profile, *(a.reshape(1) for a in acts.values())]).tolist()  # one host sync
        profile_list, act_values = flat[: len(profile)], flat[len(profile):]
        self.profile = profile.detach().cpu()
        scalars = {f"grad_time/lag_{lag}": lag_value(self.profile, lag) for lag in self.lags}
        scalars = {k: v for k, v in scalars.items() if v is not None}
        scalars["grad_time/reach"] = float(time_reach(profile_list, self.fraction))
        scalars.update({f"grad_act/{name}": v for name, v in zip(acts, act_values)})
        self.last, self.last_step = scalars, trainer.global_step
        if trainer.logger is not None:
            trainer.logger.log_metrics(scalars, step=trainer.global_step)
        return scalars

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_epochs and trainer.is_global_zero:
            self.probe(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0 and trainer.is_global_zero:
            self.probe(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Draw the last probe's profile (the scalars above track it every epoch)."""
        experiment = getattr(trainer.logger, "experiment", None)
        if (self.every_n_epochs and trainer.is_global_zero and self.log_figure and self.profile is not None
                and hasattr(experiment, "add_figure")):
            figure = profile_figure(self.profile, self.last["grad_time/reach"], self.last_step)
            experiment.add_figure("grad_time/profile", figure, global_step=self.last_step)


def profile_figure(profile: Tensor, reach: float, step: int) -> Any:
    """Plot ‖∂L/∂x_t‖ against lag in days (1 = last input day), log scale, reach marked."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    lags = torch.arange(1, len(profile) + 1)
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.semilogy(lags.numpy(), profile.flip(0).clamp_min(1e-30).numpy(), color="tab:blue")
    if reach:
        axis.axvline(reach, color="tab:red", linestyle="--", linewidth=0.8, label=f"reach = {reach:.0f} days")
        axis.legend(loc="best")
    axis.set_xlabel("lag (days before the forecast)")
    axis.set_ylabel("|dL/dx_t|")
    axis.set_title(f"Gradient through time, step {step}")
    figure.tight_layout()
    plt.close(figure)
    return figure
