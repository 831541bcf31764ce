"""One ablation run (train, test, read its gradient norms back) and the baseline rows.

Used by ``python -m experiments.ablation`` (and the depth sweep's helpers); each function returns plain
``runs.csv`` rows (dicts of str / float), so a joblib or Dask worker can send them back
(``lstm_grad.training.parallel.run_jobs`` sets the worker's torch threads). This is an installed
package: a Dask worker imports these functions like any other installed code.
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np

from experiments import CODE_PATHS
from lstm_grad.diagnostics.events import DiagnoseError, read_run
from lstm_grad.training.console import QuietRuns
from lstm_grad.forecaster.baselines import baseline_forecasts
from lstm_grad.forecaster.significance import diebold_mariano
from lstm_grad.training.parallel import check_workers
from lstm_grad.training.provenance import code_state

MAX_LAYERS = 4  # grad-norm columns lstm_0..lstm_3 (the recipe's nets have 3 or 4 recurrent layers)
GRAD_COLUMNS = [f"grad_lstm_{i}_{when}" for when in ("epoch1", "end") for i in range(MAX_LAYERS)]
COLUMNS = ["config", "seed", "horizon", "target_mode", "last_n_days", "max_epochs",
           "mae", "mse", "rel_mae", "mase", "mae_last_step", "rel_mae_last_step", "dir_acc", "up_pred", "up_actual",
           "acc_100_minus_mape", "naive_mae", "drift_mae", "dm_sq_stat", "dm_sq_p", "dm_abs_stat", "dm_abs_p",
           "dm_drift_sq_stat", "dm_drift_sq_p", "coverage_80", "coverage_95", "winkler_95", "winkler_95_rw", "shrink_step_1",
           "shrink_step_h", "epoch_time_s", "epochs", "best_epoch", "best_val_loss", "val_rel_mae", *GRAD_COLUMNS,
           "val_losses", "wall_s", "log_dir", "commit", "torch", "lightning"]
KEY = ("config", "seed", "horizon", "target_mode", "last_n_days", "max_epochs")
BASELINES = ("persistence", "drift", "linear_ar")
TEST_KEYS = ("mae", "mse", "rel_mae", "mase", "mae_last_step", "rel_mae_last_step", "dir_acc", "up_pred", "up_actual",
             "naive_mae", "drift_mae", "coverage_80", "coverage_95", "winkler_95", "winkler_95_rw")  # test/<key>


def code_commit(folder: str | Path | None = None, allow_dirty: bool = False) -> str:
    """Return ``git rev-parse HEAD`` of the repository the runs' code comes from.

    Raises ``ValueError`` when any of ``experiments.CODE_PATHS`` has uncommitted or untracked changes (a
    "-dirty" run is refused: its rows could not be reproduced from any commit) or outside a git
    checkout. Changes elsewhere, such as the results being written, do not count.
    ``allow_dirty`` (tests, trying things out) returns ``"<sha>-dirty"`` instead of raising; the
    result pages flag such rows.
    """
    try:
        head, changed = code_state(folder, CODE_PATHS)
    except (OSError, subprocess.SubprocessError) as error:
        raise ValueError(f"runs.csv records the commit of each run, but {folder or 'this folder'} is not a git "
                         f"checkout ({error}); run from a clone") from error
    if changed and allow_dirty:
        return f"{head}-dirty"
    if changed:
        raise ValueError(f"uncommitted changes in {', '.join(changed[:5])}: commit them first, so that every "
                         f"row of runs.csv names a commit that reproduces it")
    return head


def versions() -> dict[str, str]:
    """The torch and lightning versions a row was made with."""
    import lightning
    import torch

    return {"torch": torch.__version__, "lightning": lightning.__version__}


def run_key(row: dict[str, Any]) -> tuple[str, ...]:
    """Identify a run by its settings, as strings (so CSV rows and planned runs compare equal)."""
    return tuple(str(row[k]) for k in KEY)


def data_args(spec: dict[str, Any]) -> list[str]:
    return ["--data.horizon", str(spec["horizon"]), "--data.target_mode", spec["target_mode"],
            "--data.last_n_days", str(spec["last_n_days"])]


def where(args: argparse.Namespace) -> str:
    """Describe where the runs go, for the progress line; checks workers x threads <= cores locally."""
    if args.cluster:
        return f"on the Dask cluster at {args.cluster}"
    return f"with {args.workers} worker(s) x {check_workers(args.workers, args.threads)} thread(s)"


class ValHistory(pl.Callback):
    """Keep each validation epoch's ``val/*`` metrics (the sanity check left out), as logged.

    The validation curve and the epoch of the tested checkpoint come from here; the gradient norms
    come from the run's event files through the diagnostics' reader (``read_run``).
    """

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.epochs.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})

    def curve(self, tag: str) -> list[float]:
        """The values of ``tag`` over the validation epochs that logged it."""
        return [epoch[tag] for epoch in self.epochs if tag in epoch]


def grad_norms(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Return the run's logged ``grad_norm/<group>`` series as ``{group: [(step, value), ...]}``;
    empty when no step was logged (a run shorter than ``log_every_n_steps``)."""
    try:
        return read_run(log_dir).norms
    except DiagnoseError:
        return {}


def grad_summary(norms: dict[str, list[tuple[int, float]]], steps_per_epoch: int, epochs: int) -> dict[str, float]:
    """Median logged ``grad_norm/lstm_i`` over epoch 1 and over the last epoch, per layer."""
    row: dict[str, float] = {}
    last_start = (epochs - 1) * steps_per_epoch
    for i in range(MAX_LAYERS):
        series = norms.get(f"lstm_{i}", [])
        first = [v for s, v in series if s < steps_per_epoch]
        last = [v for s, v in series if s >= last_start]
        row[f"grad_lstm_{i}_epoch1"] = statistics.median(first) if first else math.nan
        row[f"grad_lstm_{i}_end"] = statistics.median(last) if last else math.nan
    return row


def dm_columns(pred: np.ndarray, actual: np.ndarray, naive: np.ndarray, horizon: int,
               drift: np.ndarray | None = None) -> dict[str, float]:
    """Diebold–Mariano of a forecast against persistence, squared and absolute loss, HAC lag h-1, with the
    Harvey-Leybourne-Newbold small-sample correction (as the commands report it); with ``drift``, against
    drift too (squared loss)."""
    out: dict[str, float] = {}
    for loss, tag in (("squared", "sq"), ("absolute", "abs")):
        result = diebold_mariano(pred - actual, naive - actual, horizon=horizon, loss=loss, small_sample=True)
        out[f"dm_{tag}_stat"], out[f"dm_{tag}_p"] = result.stat, result.p_value
    if drift is not None:
        result = diebold_mariano(pred - actual, drift - actual, horizon=horizon, small_sample=True)
        out["dm_drift_sq_stat"], out["dm_drift_sq_p"] = result.stat, result.p_value
    return out


def train_run(spec: dict[str, Any]) -> dict[str, Any]:
    """See :func:`_train_run`; logging quieted for the run and restored after (a test session goes on)."""
    with QuietRuns("lstm_grad"):
        return _train_run(spec)


def _train_run(spec: dict[str, Any]) -> dict[str, Any]:
    """Fit one config with one seed via ``lstm_grad.fit.run``; return its ``runs.csv`` row.

    The TensorBoard run lands in ``{runs_dir}/{config}_h{H}_{mode}_n{days}/seed{seed}`` (removed
    first, so an interrupted run never mixes event files); the test metrics are those of the best
    checkpoint (by what the config's checkpoint monitors: ``val/loss``, or the tuning objective in a
    config written by ``lstm_grad.tune``), ``val_rel_mae`` is that checkpoint's validation rel. MAE (the
    network's, before the shrink), the DM tests use its float64 test prices (``fit.run``'s ``test_outputs``,
    not the CSV's text). The run carries a :class:`ValHistory` for its validation curve.
    """
    from lstm_grad.fit import run

    name = f"{spec['config']}_h{spec['horizon']}_{spec['target_mode']}_n{spec['last_n_days']}"
    version = f"seed{spec['seed']}"
    run_dir = Path(spec["runs_dir"]) / name / version
    shutil.rmtree(run_dir, ignore_errors=True)
    args = [*config_args(spec),
            "--seed_everything", str(spec["seed"]), "--trainer.max_epochs", str(spec["max_epochs"]),
            "--early_stopping.patience", str(spec["patience"]),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.logger.init_args.save_dir", str(spec["runs_dir"]),
            "--trainer.logger.init_args.name", name, "--trainer.logger.init_args.version", version,
            "--trainer.callbacks+=experiments.runs.ValHistory", *data_args(spec), *spec["overrides"]]
    start = time.perf_counter()
    result = run(args)
    wall = time.perf_counter() - start
    metrics, trainer = result["metrics"], result["trainer"]
    horizon = int(spec["horizon"])
    outputs = result["test_outputs"]  # float64 prices of the tested checkpoint's calibrated forecast
    pred, actual, drift = outputs["pred"], outputs["actual"], outputs["drift"]
    naive = np.repeat(outputs["anchor"][:, None], horizon, axis=1)
    history = next(c for c in trainer.callbacks if isinstance(c, ValHistory))
    val_losses, val_rel_mae = history.curve("val/loss"), history.curve("val/rel_mae")
    # the epoch of the tested checkpoint: the minimum of what the checkpoint monitors (the objective in a tuned config)
    monitor = getattr(trainer.checkpoint_callback, "monitor", None) or "val/loss"
    selected = history.curve(monitor) or val_losses
    best = int(np.argmin(selected)) if selected else -1
    row = {k: spec[k] for k in KEY}
    row.update({
        **{k: metrics[f"test/{k}"] for k in TEST_KEYS if f"test/{k}" in metrics},
        "acc_100_minus_mape": 100.0 - metrics["test/mape"], **dm_columns(pred, actual, naive, horizon, drift),
        "shrink_step_1": result["calibration"].get("shrink", [math.nan])[0],
        "shrink_step_h": result["calibration"].get("shrink", [math.nan])[-1],
        "epoch_time_s": result["epoch_time_s"], "epochs": result["epochs"], "best_epoch": best + 1,
        "best_val_loss": val_losses[best] if val_losses else math.nan,
        "val_rel_mae": val_rel_mae[best] if val_rel_mae else math.nan,
        **grad_summary(grad_norms(result["log_dir"]), trainer.num_training_batches, result["epochs"]),
        "val_losses": ";".join(f"{v:.6g}" for v in val_losses), "wall_s": wall, "log_dir": str(result["log_dir"]),
        "commit": spec["commit"], **versions(),
    })
    return row


def config_args(spec: dict[str, Any]) -> list[str]:
    """``--config configs/<name>.yaml``; none for ``default``: the classes' own defaults are the default
    forecaster (defined once, in ``LSTMForecaster`` and ``GoldDataModule``)."""
    if spec["config"] == "default":
        return []
    return ["--config", str(Path(spec["config_dir"]) / f"{spec['config']}.yaml")]


def baseline_rows(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """See :func:`_baseline_rows`; logging quieted for the run and restored after (a test session goes on)."""
    with QuietRuns("lstm_grad"):
        return _baseline_rows(spec)


def _baseline_rows(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Persistence and linear-AR rows for one (horizon, target mode, span), from the first config's data."""
    from lstm_grad.cli import GoldCLI

    args = [*config_args(spec), "--trainer.logger", "false",
            *data_args(spec), *spec["overrides"]]
    data = GoldCLI(args=args, run=False).datamodule
    data.setup("fit")
    horizon = int(spec["horizon"])
    rows = []
    forecasts = baseline_forecasts(data)
    for name, fc in forecasts.items():
        m = fc["metrics"]
        naive = np.repeat(fc["anchor"][:, None], horizon, axis=1)
        drift = forecasts["drift"]["pred"] if name not in ("drift", "persistence") else None
        dm = dm_columns(fc["pred"], fc["actual"], naive, horizon, drift) if name != "persistence" else {}
        row = {k: spec[k] for k in KEY}
        row.update({"config": name, "seed": 0, "max_epochs": 0,
                    **{k: m[k] for k in ("mae", "mse", "rel_mae", "mase", "mae_last_step", "rel_mae_last_step",
                                         "up_pred", "up_actual", "naive_mae")},
                    "dir_acc": m["dir_acc"] if name != "persistence" else math.nan,
                    "drift_mae": forecasts["drift"]["metrics"]["mae"],
                    "acc_100_minus_mape": 100.0 - m["mape"], **dm,
                    "log_dir": f"linear AR lags={fc['lags']}" if name == "linear_ar" else "",
                    "commit": spec["commit"], **versions()})
        rows.append(row)
    return rows
