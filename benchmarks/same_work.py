"""Item 1's hand-written side: a plain PyTorch loop doing the work a default ``Trainer.fit`` run does.

What the Lightning side of item 1 runs (``benchmarks.fits.lightning_fit``: TensorBoard, price metrics, a
checkpoint per epoch, ``GradientMonitor``, ``TimeGradientProbe`` every ``PROBE_EVERY`` epochs) written
out by hand with the library's own plain-loop pieces, so that the ratio of the two is what Lightning
adds, not what the work costs:

- every optimizer step: ``GradientTracker.before_clip`` / ``after_clip`` around ``clip_grad_norm_``
  (the monitor's engine, as ``examples/plain_pytorch_loop.py`` uses it), and on each logged step
  (every ``LOG_EVERY``) the loss, the gradient tags and ``update_tags()`` to a ``SummaryWriter``;
- every epoch: the mean training loss; validation with the same ``ForecastMetrics`` in float64
  price units and the same calibration (``fit_calibration``) as ``LSTMForecaster``, all written;
  a checkpoint (weights, optimizer, calibration, tracker state) through ``atomic_torch_save``
  (temp file, fsync, rename), synchronously;
- before training and every ``PROBE_EVERY`` epochs: the time probe (``probe_gradients`` with the
  gates caught in its forward), its scalars and its Markdown profile; at the end the heat map image;
- the doctor (``LiveDoctor``, the monitor's, fed plain values): the custom-scalars layout at the start,
  its checks at every epoch's end and at the end of training, then its context and findings texts.

Not done here and so counted as Lightning's: the hyperparameters view, Lightning's own loops, hooks,
result collection and data loader.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.tensorboard import SummaryWriter

from benchmarks.config import BenchConfig
from benchmarks.fits import CLIP, LOG_EVERY, PROBE_EVERY
from lstm_grad.data import GoldDataModule
from lstm_grad.diagnostics import GradientFinding, GradientTracker
from lstm_grad.diagnostics.figures import heatmap_image
from lstm_grad.diagnostics.gates import GateCapture
from lstm_grad.diagnostics.live_doctor import LiveDoctor
from lstm_grad.diagnostics.probe import probe_scalars
from lstm_grad.diagnostics.texts import profile_markdown, with_data
from lstm_grad.diagnostics.views import custom_scalars_layout
from lstm_grad.diagnostics.timegrad import probe_gradients
from lstm_grad.forecaster.baselines import anchor_scale, train_reference
from lstm_grad.forecaster.metrics import ForecastMetrics
from lstm_grad.forecaster.optimizer import make_adam
from lstm_grad.forecaster.shrinkage import PRIOR_WINDOWS, fit_calibration
from lstm_grad.model import ResidualLSTM
from lstm_grad.training.checkpoints import atomic_torch_save

PROBE_SIZE, LAGS, FRACTION = 8, (1, 10, 30, 60), 0.01  # TimeGradientProbe's defaults


class Probe:
    """The time probe by hand: scalars and the Markdown profile per probe, the heat map at the end; its
    ``history``, ``gate_history`` and ``fraction`` are what the doctor reads of a ``TimeGradientProbe``."""

    def __init__(self, dm: GoldDataModule, writer: SummaryWriter) -> None:
        x, y, *_ = dm.datasets["val"].__getitems__(torch.arange(PROBE_SIZE))  # the probe's default batch
        self.x, self.y, self.writer, self.fraction = x, y, writer, FRACTION
        self.history: list[dict[str, Any]] = []
        self.gate_history: dict[str, dict[int, float]] = {}

    def __call__(self, model: torch.nn.Module, label: str, step: int) -> None:
        with GateCapture(model) as gates:
            profile, acts = probe_gradients(model, self.x, self.y, F.mse_loss)
        values, scalars = probe_scalars(profile, acts, LAGS, FRACTION)
        shares = gates.shares()
        scalars.update({f"gate_sat/{key}": share for key, share in shares.items()})
        for key, share in shares.items():
            self.gate_history.setdefault(key, {})[step] = share
        self.history.append({"label": label, "step": step, "profile": values})
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        text = profile_markdown(label, values, scalars["grad_time/reach"], FRACTION)
        self.writer.add_text("grad_time/profile_values", with_data(text, {"label": label, "profile": values}), step)

    def heatmap(self, step: int) -> None:
        labels, rows = [h["label"] for h in self.history], [h["profile"] for h in self.history]
        self.writer.add_image("grad_time/heatmap", heatmap_image(labels, rows).numpy(), step, dataformats="HWC")


def validate(model: torch.nn.Module, dm: GoldDataModule, metrics: ForecastMetrics) -> dict[str, Any]:
    """One validation pass as ``LSTMForecaster`` runs it: loss, float64 price metrics, the calibration."""
    data = dm.datasets["val"]
    model.eval()
    loss_sum, outputs = torch.zeros(()), []
    with torch.no_grad():
        for idx in torch.arange(len(data)).split(dm.batch_size):
            x, y, _, index = data.__getitems__(idx)
            pred = model(x)
            loss_sum += F.mse_loss(pred, y) * len(x)
            anchor, actual = dm.window_prices("val", index)
            prices = dm.inverse_transform(pred, anchor)
            metrics.update(prices, actual, anchor)
            outputs.append((prices, actual, anchor, index))
    prices, actual, anchor, index = (torch.cat(column).numpy() for column in zip(*outputs))
    calibration = fit_calibration(prices, actual, anchor, anchor_scale(dm, "val", index), PRIOR_WINDOWS)
    values = {f"val/{k}": float(v) for k, v in metrics.compute().items()}
    values["val/loss"] = float(loss_sum) / len(data)
    metrics.reset()
    return {"values": values, "calibration": calibration}


def same_work_fit(cfg: BenchConfig, dm: GoldDataModule, epochs: int, seed: int = 0,
                  keep_in: Path | None = None) -> Callable[[], float]:
    """Return a thunk: the hand loop with a default run's logging, metrics, checkpoints and diagnostics
    (the module docstring); it returns the last validation MAE. The run's files go to a temporary
    folder, deleted after the run, or to ``keep_in``, kept."""
    def run() -> float:
        torch.manual_seed(seed)
        model = ResidualLSTM(dm.n_features, cfg.hidden_sizes, horizon=dm.horizon)
        opt = make_adam(model.parameters(), lr=1e-3)  # the forecaster's optimizer
        folder = keep_in or Path(tempfile.mkdtemp(prefix="bench_loop_"))
        writer = SummaryWriter(str(folder))
        tracker, probe = GradientTracker(model), Probe(dm, writer)
        doctor = LiveDoctor(lambda message: warnings.warn(message, GradientFinding, stacklevel=2))
        doctor.clip_value, doctor.hparams = CLIP, dict(dm.hparams)
        writer.add_custom_scalars(custom_scalars_layout())
        metrics = ForecastMetrics()
        reference = train_reference(dm)
        metrics.scale, metrics.drift_slope = reference["mase_scale"], reference["drift_slope"]
        data, step, mae = dm.datasets["train"], 0, float("nan")
        probe(model, "before training", step)
        for epoch in range(epochs):
            model.train()
            loss_sum = torch.zeros(())
            for idx in torch.randperm(len(data)).split(dm.batch_size):
                x, y, *_ = data.__getitems__(idx)
                loss = F.mse_loss(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                logged = (step + 1) % LOG_EVERY == 0  # Lightning's cadence: global step + 1
                tracker.before_clip(opt, step=step, log=logged)
                torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
                result = tracker.after_clip()
                opt.step()
                loss_sum += loss.detach() * len(x)
                if logged:
                    doctor.loss[step] = loss.item()
                    tags = {"train/loss_step": doctor.loss[step], **result.tags, **tracker.update_tags()}
                    for tag, value in tags.items():
                        writer.add_scalar(tag, value, step)
                step += 1
            writer.add_scalar("train/loss_epoch", float(loss_sum) / len(data), step)
            val = validate(model, dm, metrics)
            for tag, value in val["values"].items():
                writer.add_scalar(tag, value, step)
            mae = val["values"]["val/mae"]
            if (epoch + 1) % PROBE_EVERY == 0:
                probe(model, f"epoch {epoch}", step)
            doctor.val_rel_mae[step] = val["values"]["val/rel_mae"]
            doctor.read_probe(probe)
            doctor.check(tracker, final=False, run_dir=str(folder))
            atomic_torch_save({"epoch": epoch, "state_dict": model.state_dict(), "optimizer": opt.state_dict(),
                               "calibration": val["calibration"], "tracker": tracker.state_dict()},
                              folder / "last.ckpt")
        doctor.check(tracker, final=True, run_dir=str(folder))
        for tag, text in doctor.texts(tracker).items():
            writer.add_text(tag, text, step)
        probe.heatmap(step)
        writer.close()
        if keep_in is None:
            shutil.rmtree(folder, ignore_errors=True)
        return mae
    return run
