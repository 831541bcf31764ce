"""One command: train, test, predict, and print the model next to naive persistence.

``python -m lstm_grad.fit`` trains the default forecaster (the classes' own defaults, shown by
``--print_config``: the recipe's clipped 128/64/32 stack on a log-return target with scale-free
inputs, chosen on validation data, see ``docs/forecasting.md``) on the embedded real gold series
(last 1,247 days, window 60, 5 features); ``--config configs/residual.yaml`` is the recipe's full
network. It takes the same flags as ``python -m lstm_grad.cli fit`` (``--trainer.max_epochs 5``,
``--data.source my_gold.csv`` ...), then tests the best checkpoint, writes the test-span predictions
(CSV + PNG), prints a results table and, as its last line, the best checkpoint's forecast for the
trading day(s) after the data's end.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any, Optional

import torch

from lstm_grad.diagnostics.monitor import GradientMonitor
from lstm_grad.training.callbacks import EpochTimer
from lstm_grad.cli import GoldCLI
from lstm_grad.training.entry import main_of
from lstm_grad.forecast import forecast_frame, forecast_line


def results_table(metrics: dict[str, float]) -> str:
    """Format test metrics as a model-vs-persistence table (price units, MASE, directions, 100-MAPE).

    >>> print(results_table({"test/mae": 12.5, "test/mase": 1.9, "test/dir_acc": 0.51,
    ...                      "test/mape": 0.8, "test/naive_mae": 6.5, "test/naive_mape": 0.4}))
    | forecaster  | MAE (price) | MASE  | directional acc. | 100 - MAPE |
    | ----------- | ----------- | ----- | ---------------- | ---------- |
    | model       |      12.500 | 1.900 |           51.0 % |    99.20 % |
    | persistence |       6.500 | 1.000 |              n/a |    99.60 % |
    """
    rows = [
        ("model", metrics["test/mae"], metrics["test/mase"], f"{100 * metrics['test/dir_acc']:.1f} %",
         100 - metrics["test/mape"]),
        ("persistence", metrics["test/naive_mae"], 1.0, "n/a", 100 - metrics["test/naive_mape"]),
    ]
    lines = ["| forecaster  | MAE (price) | MASE  | directional acc. | 100 - MAPE |",
             "| ----------- | ----------- | ----- | ---------------- | ---------- |"]
    for name, mae, mase, direction, accuracy in rows:
        lines.append(f"| {name:<11} | {mae:>11.3f} | {mase:.3f} | {direction:>16} | {accuracy:>8.2f} % |")
    return "\n".join(lines)


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
    tested = trainer.test(model, datamodule=data, ckpt_path=ckpt, weights_only=True)
    metrics = {**{k: float(v) for k, v in tested[0].items()}, **model.epoch_metrics.get("test", {})}  # float64
    trainer.predict(model, datamodule=data, ckpt_path=ckpt, return_predictions=False, weights_only=True)
    timer = next((c for c in trainer.callbacks if isinstance(c, EpochTimer)), None)
    times = timer.epoch_times if timer else []
    return {"metrics": metrics, "best_checkpoint": best, "log_dir": trainer.log_dir,
            "epoch_time_s": statistics.median(times) if times else float("nan"),
            "epochs": epochs, "epochs_here": len(times), "trainer": trainer}


def report(result: dict[str, Any]) -> str:
    metrics = result["metrics"]
    note = ("MASE = model MAE / persistence MAE on the same test targets (< 1 beats 'tomorrow = "
            "today'); directional acc. = share of test days whose predicted change has the sign of "
            "the actual change (days without change left out).")
    return "\n".join([
        "", results_table(metrics), note,
        _epoch_line(result),
        f"best checkpoint: {result['best_checkpoint']}",
        f"TensorBoard: tensorboard --logdir {result['log_dir']}",
    ])


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
    print(forecast_line(forecast_frame(trainer.lightning_module, trainer.datamodule, end=trainer.datamodule.end)))


main = main_of(fit_main)


if __name__ == "__main__":
    main()
