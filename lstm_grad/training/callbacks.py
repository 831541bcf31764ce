"""Callbacks of the commands: the prediction writer (CSV + PNG + TensorBoard figure), the epoch timer,
the run's TensorBoard card, the mark of the command that made a run, and the clean-up of a refused run."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pandas as pd
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from lstm_grad.errors import UserError
from lstm_grad.training.board import CARD_TAG, SCALARS_LAYOUT, results_card, run_card
from lstm_grad.training.run_dirs import write_atomic

__all__ = ["DiscardRefusedRun", "EpochTimer", "PredictionWriter", "RunCard", "RunKind"]

log = logging.getLogger(__name__)


INTERVAL_COLUMNS = ("lower_80", "upper_80", "lower_95", "upper_95")


class PredictionWriter(BasePredictionWriter):
    """Write the predict span as ``predictions.csv`` and ``predictions.png``, and log the figure.

    The CSV has one row per (window, horizon step): ``date`` (the day being predicted; with the
    time for intraday bars), ``step`` (1..H), ``actual``, ``predicted`` and ``persistence`` (the last
    observed price) and the conformal bounds ``lower_80, upper_80, lower_95, upper_95``, all in price units,
    float64 whatever the network's precision, written in full precision. Files go to
    ``output_dir``, by default the TensorBoard run's folder.

    Args:
        output_dir: folder for the CSV and PNG; ``null`` means the logger's run folder.
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir
        self.written: list[Path] = []

    def _folder(self, trainer: pl.Trainer) -> Path:
        folder = Path(self.output_dir or trainer.log_dir or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def write_on_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           predictions: Any, batch_indices: Any) -> None:
        if not trainer.is_global_zero or not predictions:
            return
        batches = predictions[0] if isinstance(predictions[0], list) else predictions
        # prices as float64 whatever the model returned (numpy has no bfloat16)
        predicted = torch.cat([b["predicted"] for b in batches]).cpu().double()  # (N, H)
        actual = torch.cat([b["actual"] for b in batches]).cpu().double()  # (N, H)
        persistence = torch.cat([b["persistence"] for b in batches]).cpu().double()  # (N,)
        dates = pd.DatetimeIndex(trainer.datamodule.predict_target_dates().reshape(-1))  # predicted days
        n, horizon = predicted.shape
        intraday = bool((dates != dates.normalize()).any())  # bars with a time of day (MetaTrader H1 ...)
        frame = pd.DataFrame({
            "date": dates.strftime("%Y-%m-%d %H:%M" if intraday else "%Y-%m-%d"),
            "step": torch.arange(1, horizon + 1).repeat(n).numpy(),
            "actual": actual.reshape(-1).numpy(),
            "predicted": predicted.reshape(-1).numpy(),
            "persistence": persistence.repeat_interleave(horizon).numpy(),
            **{name: torch.cat([b[name] for b in batches]).cpu().double().reshape(-1).numpy()
               for name in INTERVAL_COLUMNS if name in batches[0]},
        })
        folder = self._folder(trainer)
        csv_path, png_path = folder / "predictions.csv", folder / "predictions.png"
        # whole files: two tune processes may test the same best trial at once
        write_atomic(csv_path, lambda tmp: frame.to_csv(tmp, index=False))  # full float64 precision
        figure = prediction_figure(frame)
        write_atomic(png_path, lambda tmp: figure.savefig(tmp, dpi=120, format="png"))
        experiment = getattr(trainer.logger, "experiment", None)
        if hasattr(experiment, "add_figure"):
            experiment.add_figure("predictions/test_span", figure, global_step=trainer.global_step)
        self.written = [csv_path, png_path]
        log.info("wrote %d predictions to %s and %s", len(frame), csv_path, png_path)


def prediction_figure(frame: pd.DataFrame) -> Any:
    """Plot actual vs predicted vs persistence prices of horizon step 1 over the dates."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    first = frame[frame["step"] == 1]
    dates = pd.to_datetime(first["date"])
    figure, axis = plt.subplots(figsize=(10, 4))
    axis.plot(dates, first["actual"], label="actual", color="black", linewidth=1.2)
    axis.plot(dates, first["predicted"], label="predicted (step 1)", color="tab:orange", linewidth=1)
    axis.plot(dates, first["persistence"], label="persistence (last price)", color="tab:gray",
              linewidth=0.8, linestyle="--")
    axis.set_ylabel("price")
    axis.set_title("Test span: predicted vs actual")
    axis.legend(loc="best")
    figure.autofmt_xdate()
    figure.tight_layout()
    plt.close(figure)
    return figure


class EpochTimer(pl.Callback):
    """Log ``time/epoch_s``: wall-clock seconds of each training epoch, validation time excluded.

    Lightning runs validation inside the training epoch (before ``on_train_epoch_end``), so the
    time spent between ``on_validation_start`` and ``on_validation_end`` is subtracted.
    """

    def __init__(self) -> None:
        self.epoch_times: list[float] = []
        self._start = self._val_start = self._val_spent = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_spent = 0.0
        self._start = time.perf_counter()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_spent += time.perf_counter() - self._val_start

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seconds = time.perf_counter() - self._start - self._val_spent
        self.epoch_times.append(seconds)
        pl_module.log("time/epoch_s", seconds, on_step=False, on_epoch=True)


class RunKind(pl.Callback):
    """Mark every checkpoint with the command that made it (``fit``, ``tune``, ``backtest``), so that
    ``--ckpt_path last`` / ``best`` take the user's newest fit, not a tuning trial
    (:func:`lstm_grad.training.run_dirs.newest_fit`)."""

    def __init__(self, command: str = "fit") -> None:
        self.command = command

    def state_dict(self) -> dict[str, Any]:
        return {"command": self.command}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass  # a resumed run is still made by the command that resumes it


class RunCard(pl.Callback):
    """Write the run's card (``about/run``) to TensorBoard's TEXT tab (the settings in words when training
    starts, the test results beside persistence when a test ends) and its ``start here`` page of custom
    scalars (:mod:`lstm_grad.training.board`)."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        data = getattr(trainer.datamodule, "hparams", {})
        settings = {"precision": trainer.precision, "max_epochs": trainer.max_epochs,
                    "gradient_clip_val": trainer.gradient_clip_val,
                    "gradient_clip_algorithm": trainer.gradient_clip_algorithm}
        self._write(trainer, run_card(dict(pl_module.hparams), dict(data), settings))
        experiment = getattr(trainer.logger, "experiment", None)
        if trainer.is_global_zero and hasattr(experiment, "add_custom_scalars"):
            experiment.add_custom_scalars(SCALARS_LAYOUT)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        metrics.update(getattr(pl_module, "epoch_metrics", {}).get("test", {}))  # float64 where the module has them
        if metrics:
            self._write(trainer, results_card(metrics))

    @staticmethod
    def _write(trainer: pl.Trainer, text: str) -> None:
        experiment = getattr(trainer.logger, "experiment", None)
        if trainer.is_global_zero and hasattr(experiment, "add_text"):
            experiment.add_text(CARD_TAG, text, global_step=trainer.global_step)


class DiscardRefusedRun(pl.Callback):
    """Remove the run folder of a run refused for bad input before it trained.

    Lightning creates the logger's folder (and an event file) before the DataModule's ``setup`` reads
    the data (``pytorch/trainer/call.py``, ``_call_setup_hook``); a file refused there would leave an
    empty ``version_N`` that TensorBoard lists as a run. On a :class:`~lstm_grad.errors.UserError`
    (``on_exception`` runs before the loggers are finalized: ``call.py``, ``_interrupt``) the folder is
    removed if nothing was trained and no checkpoint is in it, with the parents the run left empty.
    """

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        folder = trainer.log_dir if trainer.logger is not None else None
        if not isinstance(exception, UserError) or not folder or not trainer.is_global_zero:
            return
        run = Path(folder)
        if trainer.global_step > 0 or not run.is_dir() or any(run.rglob("*.ckpt")):
            return  # it trained, or holds a checkpoint (a resumed run): the user's, kept
        trainer.logger.finalize("failed")  # close the event file before its folder goes
        shutil.rmtree(run, ignore_errors=True)
        save_dir = Path(str(getattr(trainer.logger, "save_dir", "") or run.parent))
        for parent in run.parents:  # the name folder, then save_dir itself, if the run left them empty
            if parent == save_dir.parent or not parent.is_dir() or any(parent.iterdir()):
                break
            parent.rmdir()
        log.info("removed %s: the run was refused before training", run)
