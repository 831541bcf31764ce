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
  gates caught in its forward), its scalars and its Markdown profile; at the end the heat map image.

Not done here and so counted as Lightning's: the live doctor's epoch checks, the hyperparameters
view, Lightning's own loops, hooks, result collection and data loader.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.tensorboard import SummaryWriter

from benchmarks.config import BenchConfig
from benchmarks.fits import CLIP, LOG_EVERY, PROBE_EVERY
from lstm_grad.data import GoldDataModule
from lstm_grad.diagnostics import GradientTracker
from lstm_grad.diagnostics.figures import heatmap_image
from lstm_grad.diagnostics.gates import GateCapture
from lstm_grad.diagnostics.texts import profile_markdown, with_data
from lstm_grad.diagnostics.timegrad import lag_value, probe_gradients, time_reach
from lstm_grad.forecaster.baselines import anchor_scale, train_reference
from lstm_grad.forecaster.metrics import ForecastMetrics
from lstm_grad.forecaster.shrinkage import PRIOR_WINDOWS, fit_calibration
from lstm_grad.model import ResidualLSTM
from lstm_grad.training.checkpoints import atomic_torch_save

PROBE_SIZE, LAGS, FRACTION = 8, (1, 10, 30, 60), 0.01  # TimeGradientProbe's defaults


class Probe:
    """The time probe by hand: scalars and the Markdown profile per probe, the heat map at the end."""

    def __init__(self, dm: GoldDataModule, writer: SummaryWriter) -> None:
        x, y, *_ = dm.datasets["val"].__getitems__(torch.arange(PROBE_SIZE))  # the probe's default batch
        self.x, self.y, self.writer = x, y, writer
        self.labels: list[str] = []
        self.rows: list[list[float]] = []

    def __call__(self, model: torch.nn.Module, label: str, step: int) -> None:
        with GateCapture(model) as gates:
            profile, acts = probe_gradients(model, self.x, self.y, F.mse_loss)
        flat = torch.cat([profile, *(a.reshape(1) for a in acts.values())]).tolist()
        values = flat[: len(profile)]
        scalars = {f"grad_time/lag_{lag}": lag_value(values, lag) for lag in LAGS if lag <= len(values)}
        scalars["grad_time/reach"] = float(time_reach(values, FRACTION))
        scalars.update({f"grad_act/{name}": v for name, v in zip(acts, flat[len(profile):])})
        scalars.update({f"gate_sat/{key}": share for key, share in gates.shares().items()})
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        text = profile_markdown(label, values, scalars["grad_time/reach"], FRACTION)
        self.writer.add_text("grad_time/profile_values", with_data(text, {"label": label, "profile": values}), step)
        self.labels.append(label)
        self.rows.append(values)

    def heatmap(self, step: int) -> None:
        self.writer.add_image("grad_time/heatmap", heatmap_image(self.labels, self.rows).numpy(), step,
                              dataformats="HWC")


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
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        folder = keep_in or Path(tempfile.mkdtemp(prefix="bench_loop_"))
        writer = SummaryWriter(str(folder))
        tracker, probe = GradientTracker(model), Probe(dm, writer)
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
                    for tag, value in {"train/loss_step": loss.item(), **result.tags, **tracker.update_tags()}.items():
                        writer.add_scalar(tag, value, step)
                step += 1
            writer.add_scalar("train/loss_epoch", float(loss_sum) / len(data), step)
            val = validate(model, dm, metrics)
            for tag, value in val["values"].items():
                writer.add_scalar(tag, value, step)
            mae = val["values"]["val/mae"]
            if (epoch + 1) % PROBE_EVERY == 0:
                probe(model, f"epoch {epoch}", step)
            atomic_torch_save({"epoch": epoch, "state_dict": model.state_dict(), "optimizer": opt.state_dict(),
                               "calibration": val["calibration"], "tracker": tracker.state_dict()},
                              folder / "last.ckpt")
        probe.heatmap(step)
        writer.close()
        if keep_in is None:
            shutil.rmtree(folder, ignore_errors=True)
        return mae
    return run
