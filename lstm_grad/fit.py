"""One command: train, test, predict, and print the model next to persistence and drift.

``python -m lstm_grad.fit`` trains the default forecaster (the classes' own defaults, shown by
``--print_config``: the recipe's clipped 128/64/32 stack on a log-return target with scale-free
inputs, chosen on validation data, see ``docs/forecasting.md``) on the embedded real gold series
(last 1,247 days, window 60, 5 features); ``--config configs/residual.yaml`` is the recipe's full
network. It takes the same flags as ``python -m lstm_grad.cli fit`` (``--trainer.max_epochs 5``,
``--data.source my_gold.csv`` ...), then tests the best checkpoint, writes the test-span predictions
(CSV + PNG), prints a results table (model, persistence, drift: rel. MAE, MASE, DM p against each, the
share of "up" forecasts; step H alone for H > 1; the shrink weights and the intervals' coverage) and, as
its last line, the best checkpoint's forecast for the trading day(s) after the data's end.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any, Optional

import torch

from lstm_grad.diagnostics.monitor import GradientMonitor
from lstm_grad.training.callbacks import EpochTimer
from lstm_grad.training.console import QuietRuns
from lstm_grad.cli import GoldCLI
from lstm_grad.training.entry import main_of
from lstm_grad.forecast import forecast_frame, forecast_line


def aligned_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Render a Markdown table whose columns line up whatever the values' widths: the first column left-,
    the others right-aligned.

    >>> print(aligned_table(["name", "MAE"], [["model", "12.500"], ["persistence", "6.5"]]))
    | name        |    MAE |
    | ----------- | ------ |
    | model       | 12.500 |
    | persistence |    6.5 |
    """
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(f"{c:<{w}}" if k == 0 else f"{c:>{w}}" for k, (c, w) in enumerate(zip(cells, widths))) + " |"
    return "\n".join([line(header), "| " + " | ".join("-" * w for w in widths) + " |", *map(line, rows)])


def _pct(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.1f} %"


def _p(value: float | None) -> str:
    return "—" if value is None or value != value else f"{value:.3f}"


def results_table(metrics: dict[str, float]) -> str:
    """Format test metrics as model vs persistence vs drift: MAE in price units, rel. MAE, MASE, Diebold-Mariano
    p against persistence and drift, share of predicted up moves, directional accuracy, 100 - MAPE; for H > 1
    the MAE columns are over steps 1..H (the mean over every predicted day).

    >>> m = {"mae": 12.5, "rel_mae": 1.9, "mase": 1.25, "dm_p": 0.01, "dm_p_drift": 0.02, "up_pred": 1.0,
    ...      "dir_acc": 0.51, "mape": 0.8, "naive_mae": 6.5, "naive_mase": 0.65, "naive_mape": 0.4, "drift_mae": 7.0,
    ...      "drift_rel_mae": 1.08, "drift_mase": 0.7, "drift_dm_p": 0.5, "drift_up_pred": 1.0, "drift_dir_acc": 0.5,
    ...      "drift_mape": 0.45}
    >>> print(results_table({f"test/{k}": v for k, v in m.items()}))
    | forecaster  | MAE (price) | rel. MAE |  MASE | DM p vs persistence | DM p vs drift | predicted up | directional acc. | 100 - MAPE |
    | ----------- | ----------- | -------- | ----- | ------------------- | ------------- | ------------ | ---------------- | ---------- |
    | model       |      12.500 |    1.900 | 1.250 |               0.010 |         0.020 |      100.0 % |           51.0 % |    99.20 % |
    | persistence |       6.500 |    1.000 | 0.650 |                   — |         0.500 |        0.0 % |              n/a |    99.60 % |
    | drift       |       7.000 |    1.080 | 0.700 |               0.500 |             — |      100.0 % |           50.0 % |    99.55 % |
    """
    t = {k.removeprefix("test/"): v for k, v in metrics.items() if k.startswith("test/")}
    get = lambda key: t.get(key, float("nan"))  # noqa: E731
    rows = [
        ["model", f"{get('mae'):.3f}", f"{get('rel_mae'):.3f}", f"{get('mase'):.3f}", _p(get("dm_p")),
         _p(get("dm_p_drift")), _pct(get("up_pred")), _pct(get("dir_acc")), f"{100 - get('mape'):.2f} %"],
        ["persistence", f"{get('naive_mae'):.3f}", "1.000", f"{get('naive_mase'):.3f}", "—", _p(get("drift_dm_p")),
         "0.0 %", "n/a", f"{100 - get('naive_mape'):.2f} %"],
        ["drift", f"{get('drift_mae'):.3f}", f"{get('drift_rel_mae'):.3f}", f"{get('drift_mase'):.3f}",
         _p(get("drift_dm_p")), "—", _pct(get("drift_up_pred")), _pct(get("drift_dir_acc")), f"{100 - get('drift_mape'):.2f} %"],
    ]
    header = ["forecaster", "MAE (price)", "rel. MAE", "MASE", "DM p vs persistence", "DM p vs drift", "predicted up",
              "directional acc.", "100 - MAPE"]
    return aligned_table(header, rows)


def last_step_table(metrics: dict[str, float], horizon: int) -> str:
    """Format step H alone (every window's H-th predicted day): MAE, rel. MAE and MASE of model, persistence, drift.

    >>> m = {"mae_last_step": 30.0, "rel_mae_last_step": 1.2, "mase_last_step": 3.0, "mase_scale": 10.0,
    ...      "drift_mae_last_step": 26.0, "drift_rel_mae_last_step": 1.04}
    >>> print(last_step_table({f"test/{k}": v for k, v in m.items()}, 30))
    | step 30 alone | MAE (price) | rel. MAE |  MASE |
    | ------------- | ----------- | -------- | ----- |
    | model         |      30.000 |    1.200 | 3.000 |
    | persistence   |      25.000 |    1.000 | 2.500 |
    | drift         |      26.000 |    1.040 | 2.600 |
    """
    t = {k.removeprefix("test/"): v for k, v in metrics.items() if k.startswith("test/")}
    scale = t.get("mase_scale", float("nan"))
    naive = t["mae_last_step"] / t["rel_mae_last_step"]
    rows = [[name, f"{mae:.3f}", f"{rel:.3f}", f"{mae / scale:.3f}"] for name, mae, rel in (
        ("model", t["mae_last_step"], t["rel_mae_last_step"]), ("persistence", naive, 1.0),
        ("drift", t.get("drift_mae_last_step", float("nan")), t.get("drift_rel_mae_last_step", float("nan"))))]
    return aligned_table([f"step {horizon} alone", "MAE (price)", "rel. MAE", "MASE"], rows)


class FitCLI(GoldCLI):
    """GoldCLI without subcommands, plus ``--ckpt_path`` (``last`` resumes the newest killed run)."""

    def add_arguments_to_parser(self, parser: Any) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument("--ckpt_path", type=Optional[str], default=None,
                            help="checkpoint to resume from: a path, or 'last' for the newest run's last.ckpt")


def nonfinite_stop_message(trainer: Any, step: int) -> str:
    """Say, in one line, which checkpoint holds the last finite weights after a non-finite stop.

    The checkpoints are read, not assumed: ``last.ckpt`` written after the stop holds the weights from
    before the skipped update; a NaN that slipped in earlier (``check_every_step: false``) would show.
    """
    callback = trainer.checkpoint_callback
    paths = [p for p in (getattr(callback, "last_model_path", ""), getattr(callback, "best_model_path", "")) if p]
    finite = []
    for path in dict.fromkeys(paths):
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if all(torch.isfinite(t).all() for t in saved["state_dict"].values() if t.is_floating_point()):
            finite.append(f"{path} (epoch {saved['epoch']}, step {saved['global_step']})")
    where = (f"the last finite weights are in {finite[0]}" if finite else
             "every checkpoint written holds non-finite weights" if paths else "no checkpoint was written")
    best, score = getattr(callback, "best_model_path", ""), getattr(callback, "best_model_score", None)
    if finite and best and score is not None and not finite[0].startswith(best):
        where += f"; the best by {callback.monitor} ({float(score):.4g}) is {best}"
    if finite and score is not None and not torch.isfinite(torch.as_tensor(score)):
        where += (f"; its {callback.monitor} is not finite: the weights had diverged before the gradient did, so "
                  "retrain with a lower model.lr or a trainer.gradient_clip_val")
    return (f"training stopped early on a non-finite gradient (step {step}, see the warning above), so there are "
            f"no test results; {where}")


def run(args: Sequence[str] | None = None) -> dict[str, Any]:
    """Fit (resuming from ``--ckpt_path``), test the best checkpoint, predict the test span."""
    cli = FitCLI(args=args, run=False)
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    trainer.fit(model, datamodule=data, ckpt_path=cli.config.get("ckpt_path"), weights_only=True)
    epochs = trainer.fit_loop.epoch_progress.current.completed  # the run's, restored epochs included
    monitor = next((c for c in trainer.callbacks if isinstance(c, GradientMonitor)), None)
    if monitor is not None and monitor.nonfinite is not None and monitor.on_nonfinite == "stop":
        # the non-finite guard's deliberate stop: one error line, no traceback (lstm_grad.training.entry)
        raise FloatingPointError(nonfinite_stop_message(trainer, monitor.nonfinite["step"]))
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    ckpt = best or None
    tested = trainer.test(model, datamodule=data, ckpt_path=ckpt, weights_only=True, verbose=False)  # our table instead
    metrics = {**{k: float(v) for k, v in tested[0].items()}, **model.epoch_metrics.get("test", {})}  # float64
    trainer.predict(model, datamodule=data, ckpt_path=ckpt, return_predictions=False, weights_only=True)
    timer = next((c for c in trainer.callbacks if isinstance(c, EpochTimer)), None)
    times = timer.epoch_times if timer else []
    return {"metrics": metrics, "best_checkpoint": best, "log_dir": trainer.log_dir, "horizon": data.horizon,
            "calibration": dict(model.calibration), "test_outputs": dict(model.test_outputs),
            "epoch_time_s": statistics.median(times) if times else float("nan"),
            "epochs": epochs, "epochs_here": len(times), "trainer": trainer}


def report(result: dict[str, Any]) -> str:
    """The lines ``fit`` prints after training: the tables, what they mean, the calibration, the run."""
    metrics, horizon = result["metrics"], result.get("horizon", 1)
    over = f" over steps 1..{horizon} (every predicted day)" if horizon > 1 else ""
    note = (f"MAE in price units{over}; rel. MAE = MAE / persistence MAE on the same test days (< 1 beats 'no "
            "change'); MASE = MAE / the training span's one-step naive MAE (Hyndman & Koehler 2006); DM p = "
            "Diebold-Mariano, squared loss, small-sample (HLN) corrected, two-sided; predicted up = share of forecasts above the last price "
            f"(the prices went up on {_pct(metrics.get('test/up_actual', float('nan')))} of them); directional acc. "
            "= share whose predicted change has the sign of the actual one (days without an actual or a predicted change left out).")
    lines = ["", results_table(metrics), note]
    if horizon > 1:
        lines += ["", last_step_table(metrics, horizon)]
    lines += [line for line in (calibration_line(result.get("calibration") or {}), interval_line(metrics)) if line]
    lines += [_epoch_line(result), f"best checkpoint: {result['best_checkpoint']}",
              f"TensorBoard: tensorboard --logdir {result['log_dir']}"]
    return "\n".join(lines)


def calibration_line(calibration: dict[str, Any]) -> str:
    """Say how far the network's move was kept (the shrink weights fitted on validation, per step) and what
    the validation span alone would have given (the least-squares weight, no prior).

    >>> calibration_line({"shrink": [0.8, 0.5, 0.1]})
    'shrink toward persistence (fitted on validation): weight 0.80 at step 1 .. 0.10 at step 3 (1 = the network, 0 = persistence)'
    >>> calibration_line({"shrink": [0.0], "shrink_least_squares": [0.64]})
    'shrink toward persistence (fitted on validation): weight 0.00 (1 = the network, 0 = persistence; the validation span alone: 0.64)'
    """
    def steps(weights: list[float]) -> str:
        return f"{weights[0]:.2f}" if len(weights) == 1 else \
            f"{weights[0]:.2f} at step 1 .. {weights[-1]:.2f} at step {len(weights)}"

    weights, alone = calibration.get("shrink"), calibration.get("shrink_least_squares")
    if not weights:
        return ""
    note = f"; the validation span alone: {steps(alone)}" if alone else ""
    return f"shrink toward persistence (fitted on validation): weight {steps(weights)} (1 = the network, 0 = persistence{note})"


def interval_line(metrics: dict[str, float]) -> str:
    """Say how often the conformal intervals covered the test prices, and their score next to the random walk's."""
    if "test/coverage_80" not in metrics:
        return ""
    rw = ""
    if "test/winkler_95_rw" in metrics:
        rw = (f" vs {metrics['test/winkler_95_rw']:.2f} for persistence's random-walk interval (covering "
              f"{_pct(metrics['test/coverage_80_rw'])} / {_pct(metrics['test/coverage_95_rw'])})")
    return (f"intervals (split conformal, per step, calibrated on the validation span): 80 % covered "
            f"{_pct(metrics['test/coverage_80'])}, 95 % covered {_pct(metrics['test/coverage_95'])} of the test prices; "
            f"95 % interval score {metrics['test/winkler_95']:.2f}{rw}")


def _epoch_line(result: dict[str, Any]) -> str:
    """Say how many epochs the run has trained, and over which of them the epoch time is a median.

    >>> _epoch_line({"epochs": 4, "epochs_here": 3, "epoch_time_s": 1.5})
    'epochs: 4 (3 after resuming), median epoch time: 1.50 s (over those 3)'
    """
    here, total, median = result.get("epochs_here", result["epochs"]), result["epochs"], result["epoch_time_s"]
    if here == total:
        return f"epochs: {total}, median epoch time: {median:.2f} s"
    return f"epochs: {total} ({here} after resuming), median epoch time: {median:.2f} s (over those {here})"


def fit_main(args: Sequence[str] | None = None) -> None:
    result = run(args)
    print(report(result))
    trainer = result["trainer"]  # the tested best weights are loaded in its module: forecast past the data
    with QuietRuns("lstm_grad.data"):  # the data lines were said once, at setup: not again under the table
        frame = forecast_frame(trainer.lightning_module, trainer.datamodule, end=trainer.datamodule.end)
    print(forecast_line(frame))


main = main_of(fit_main)


if __name__ == "__main__":
    main()
