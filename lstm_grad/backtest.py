"""Walk-forward (rolling-origin) backtest: K folds, each trained from scratch on the data before its test span.

``python -m lstm_grad.backtest [--config ...] [any fit flag] --folds K --test_days N [--output DIR]
[--workers W] [--threads T] [--cluster ADDR]``

Fold k of K tests on the k-th of K consecutive, non-overlapping spans of N trading days (rows of
the series) that end at the series' last day. Each fold is an ordinary ``fit`` run on the data up to
its test span's last day (``data.end``), with exact row counts: its validation span (early stopping,
best checkpoint, shrink weights, interval calibration) is the N rows just before the test span, its train
span everything before that (at most ``data.last_n_days`` rows in all, so the default 1,247 gives a
rolling window and ``--data.last_n_days null`` an expanding one); the scaler, the drift slope and the
MASE scale are fitted on that fold's train span only. The best checkpoint by ``val/loss`` is tested.
Errors in price units are computed in float64 from the raw prices of the source. Folds are independent runs: ``lstm_grad.training.parallel.run_jobs`` runs them in
this process one after another, or in ``--workers`` processes, or on a Dask ``--cluster``.

Writes DIR/backtest.csv (one row per fold and a pooled row ``fold=all`` over every test day: errors
against persistence and drift with DM p against each, up-shares, step H alone, interval coverage and
interval scores), DIR/backtest_steps.csv (each step h alone, per fold and pooled),
DIR/backtest_predictions.csv (forecasts, 80 % / 95 % bounds, persistence, drift; full float64),
DIR/backtest.md (the table, the command, the commit) and DIR/backtest.png.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from lstm_grad.forecaster.backtest_report import SCORE_COLUMNS, pooled_arrays, write_outputs
from lstm_grad.training.provenance import git_commit
from lstm_grad.forecaster.baselines import anchor_scale, drift_forecast, train_prices, train_reference
from lstm_grad.forecaster.evaluation import evaluate
from lstm_grad.forecaster.intervals import LEVELS, level_name, random_walk_interval
from lstm_grad.cli import GoldCLI
from lstm_grad.training.console import QuietRuns, release_logs
from lstm_grad.training.entry import main_of
from lstm_grad.data import DataError, GoldDataModule
from lstm_grad.data.calendar import stamp_format
from lstm_grad.errors import ConfigError
from lstm_grad.training.parallel import run_jobs

LOG = logging.getLogger("lstm_grad.backtest")
FOLD_DEFAULTS = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
SPANS = ("train", "val", "test")


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Split the command line into the backtest's own flags and the fit flags passed to every fold."""
    parser = argparse.ArgumentParser(prog="python -m lstm_grad.backtest", description=__doc__.splitlines()[0],
                                     allow_abbrev=False, exit_on_error=False)
    parser.add_argument("--folds", type=int, default=5, help="number of test spans K (default 5)")
    parser.add_argument("--test_days", type=int, default=250, help="trading days (rows) per test span N (default 250)")
    parser.add_argument("--output", default="backtest", help="folder for the tables, figure and fold runs")
    parser.add_argument("--workers", type=int, default=1, help="folds trained at once (joblib processes)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per fold (default: cores / workers)")
    parser.add_argument("--cluster", default=None, help="Dask scheduler address, e.g. tcp://host:8786")
    own, rest = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    if own.folds < 1 or own.test_days < 2:
        raise ConfigError(f"--folds {own.folds} must be >= 1 and --test_days {own.test_days} >= 2")
    return own, rest


def plan_folds(fit_args: Sequence[str], folds: int, test_days: int, output: str | Path) -> list[dict[str, Any]]:
    """Place K folds on the series' rows; return one picklable job per fold (dates as ISO strings).

    Raises ConfigError when ``test_days`` leaves fewer than 2 test windows, DataError when a fold's
    train span would be too short for one window.
    """
    cli = GoldCLI(args=[*fit_args, "--trainer.logger", "false"], run=False)
    settings = {k: v for k, v in cli.datamodule.hparams.items() if not k.startswith("_")}
    full = GoldDataModule(**{**settings, "last_n_days": None})
    full.setup("fit")
    dates, length = full.row_dates(), len(full.row_dates())
    stamp = stamp_format(dates)  # intraday rows keep their time of day, so data.end cuts at the fold's last bar
    window, horizon, cap = full.window, full.horizon, settings["last_n_days"] or length
    if test_days - horizon + 1 < 2:
        raise ConfigError(f"--test_days {test_days} leaves fewer than 2 test windows at data.horizon={horizon}")
    jobs = []
    for k in range(1, folds + 1):
        end_row = length - (folds - k) * test_days - 1  # the fold's last test row
        rows = min(end_row + 1, cap)  # rows the fold's data module keeps (data.last_n_days)
        first, train_rows = end_row + 1 - rows, rows - 2 * test_days
        if train_rows < window + horizon:
            raise DataError(f"{full.source}: fold {k} of {folds} has {max(train_rows, 0)} train rows before its "
                            f"validation and test spans of {test_days} rows; it needs >= {window + horizon} "
                            "(data.window + data.horizon): use fewer --folds, a smaller --test_days or more data "
                            "(--data.last_n_days null)")
        bounds = [first, first + train_rows, first + train_rows + test_days, end_row + 1]
        spans = {f"{name}_{edge}": f"{dates[bounds[i] if edge == 'start' else bounds[i + 1] - 1]:{stamp}}"
                 for i, name in enumerate(SPANS) for edge in ("start", "end")}
        split = [train_rows / rows, test_days / rows, test_days / rows]
        args = [*FOLD_DEFAULTS, *fit_args, "--data.end", spans["test_end"], "--data.last_n_days", str(rows),
                "--data.split", json.dumps(split), "--trainer.logger.init_args.save_dir", str(output),
                "--trainer.logger.init_args.name", f"fold_{k}"]
        jobs.append({"fold": k, "folds": folds, "args": args, **spans})
    LOG.info("%s: %d folds of %d test rows; validation = the %d rows before each test span; %s train window",
             full.source, folds, test_days, test_days, "expanding" if cap >= length else f"rolling {cap}-row")
    return jobs


def fold_forecasts(model: torch.nn.Module, data: GoldDataModule) -> dict[str, Any]:
    """Predict the test span with the fold's calibrated forecaster; return float64 prices ``pred``, ``actual``,
    ``drift``, ``lower_80`` .. ``upper_95``, persistence's random-walk bounds ``*_rw`` (N, H), ``anchor`` and
    ``mase_scale`` (N,), ``dates`` (N, H), and the calibration's ``calib_n`` and shrink weights.

    ``actual`` and ``anchor`` (the last observed price) are the source's raw float64 prices
    (``GoldDataModule.window_prices``), not the float32 training tensors; drift, the MASE scale and the
    random-walk volatility come from the fold's train span.
    """
    test = data.datasets["test"]
    index = torch.arange(len(test))
    anchor, actual = data.window_prices("test", index)
    model.eval()
    with torch.no_grad():
        scaled = model(test.windows[test.start].to(model.device)).cpu()  # (N, T, F) -> (N, H)
    pred = model.shrink_prices(data.inverse_transform(scaled, anchor), anchor).numpy()  # float64
    horizon, prices, reference = pred.shape[1], train_prices(data), train_reference(data)
    out: dict[str, Any] = {"pred": pred, "actual": actual.numpy(), "anchor": anchor.numpy(),
                           "drift": drift_forecast(anchor.numpy(), prices, horizon),
                           "mase_scale": np.full(len(pred), reference["mase_scale"]),
                           **model.interval_bounds(pred, anchor_scale(data, "test", index))}
    for level in LEVELS:  # persistence's random-walk interval, for its interval score
        lower, upper = random_walk_interval(anchor.numpy(), prices, horizon, level)
        out[f"lower_{level_name(level)}_rw"], out[f"upper_{level_name(level)}_rw"] = lower, upper
    shrink = model.calibration.get("shrink") or [float("nan")]
    dates = data.predict_target_dates()  # (N, H)
    return {**out, "calib_n": model.calibration.get("calib_n", 0), "shrink_step_1": shrink[0],
            "shrink_step_h": shrink[-1],
            "dates": pd.DatetimeIndex(dates.reshape(-1)).strftime("%Y-%m-%d").to_numpy().reshape(dates.shape)}


def score(arrays: dict[str, np.ndarray]) -> dict[str, float]:
    """The table's numbers for one fold's (or the pooled) test windows, by :func:`evaluate`: errors against
    persistence and drift, DM p against each, up-shares, step H alone, interval coverage and scores."""
    bounds = {k: arrays[k] for k in ("lower_80", "upper_80", "lower_95", "upper_95")}
    rw = {k: arrays[f"{k}_rw"] for k in bounds}
    scores = evaluate(arrays["pred"], arrays["actual"], arrays["anchor"], arrays["drift"], arrays["mase_scale"],
                      bounds, rw)
    return {k: scores[k] for k in SCORE_COLUMNS}


def run_fold(job: dict[str, Any]) -> dict[str, Any]:
    """Train one fold from scratch, test its best checkpoint, and score its test span (picklable in and out).

    The fold's output is kept to warnings (also in a worker process): the backtest prints one line per fold.
    """
    with QuietRuns("lstm_grad"):
        cli = GoldCLI(args=job["args"], run=False, run_kind="backtest")  # not a fit for --ckpt_path last
        trainer, model, data = cli.trainer, cli.model, cli.datamodule
        trainer.fit(model, datamodule=data)
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(model, datamodule=data, ckpt_path=best or None, weights_only=True, verbose=False)  # loads best
        forecasts = fold_forecasts(model, data)
    return {**{k: v for k, v in job.items() if k != "args"}, **score(forecasts),
            "windows": forecasts["actual"].shape[0], "epochs": trainer.current_epoch,
            "best_checkpoint": best, "scaler": data.state_dict(), **forecasts}


def pooled(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The ``fold=all`` row: metrics over every fold's test days together."""
    arrays = pooled_arrays(results)
    arrays.update({f"{side}_{level_name(c)}_rw": np.concatenate([r[f"{side}_{level_name(c)}_rw"] for r in results])
                   for side in ("lower", "upper") for c in LEVELS})
    first, last = results[0], results[-1]
    return {"fold": "all", **{k: "" for k in ("train_start", "train_end", "val_start", "val_end")},
            "test_start": first["test_start"], "test_end": last["test_end"],
            "windows": sum(r["windows"] for r in results), "epochs": sum(r["epochs"] for r in results),
            "calib_n": sum(r["calib_n"] for r in results), **score(arrays)}


def progress(result: dict[str, Any]) -> str:
    """One line per finished fold."""
    return (f"fold {result['fold']}/{result['folds']}: train {result['train_start']}..{result['train_end']}, val "
            f"{result['val_start']}..{result['val_end']}, test {result['test_start']}..{result['test_end']} "
            f"({result['windows']} windows, {result['epochs']} epochs): MAE {result['mae']:.3f} vs persistence "
            f"{result['naive_mae']:.3f} and drift {result['drift_mae']:.3f}, rel. MAE {result['rel_mae']:.3f}, DM p "
            f"{result['dm_p']:.3f} (vs drift {result['dm_p_drift']:.3f}), coverage 80/95 % "
            f"{100 * result['coverage_80']:.0f}/{100 * result['coverage_95']:.0f}")


def backtest(argv: Sequence[str] | None = None) -> pd.DataFrame:
    """Run the command; return the table (K fold rows and the pooled row) that it writes."""
    own, fit_args = parse_args(argv)
    output = Path(own.output)
    with QuietRuns("matplotlib"):  # progress lines instead of Lightning's
        commit = git_commit()  # the code that runs, before anything can change it
        jobs = plan_folds(fit_args, own.folds, own.test_days, output)
        try:
            output.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"--output {output}: cannot create the folder ({error.strerror or error}); "
                              "choose another --output") from None
        release_logs()  # the settings and data were good: show the held log lines
        results = run_jobs(run_fold, jobs, workers=own.workers, threads_per_worker=own.threads, cluster=own.cluster,
                           on_result=lambda _, result: print(progress(result), flush=True))
        command = ["python", "-m", "lstm_grad.backtest", *(sys.argv[1:] if argv is None else argv)]
        table = write_outputs(results, pooled(results), output, command, commit)
    shown = ["fold", "test_start", "test_end", "windows", "mae", "naive_mae", "drift_mae", "rel_mae", "mase", "dm_p",
             "dm_p_drift", "up_pred", "coverage_80", "coverage_95", "winkler_95", "winkler_95_rw"]
    print(table[shown].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"wrote {output / 'backtest.csv'}, backtest.md, backtest.png, backtest_steps.csv, backtest_predictions.csv")
    return table


main = main_of(backtest)


if __name__ == "__main__":
    main()
