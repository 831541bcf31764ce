"""One command: train, test, predict, and print the model next to naive persistence.

``python -m lstm_grad.fit`` trains the recipe's full network (residual, orthogonal init, clipnorm
1.0) on the embedded real gold series (last 1,247 days, window 60, 5 features). It takes the same
flags as ``python -m lstm_grad.cli fit`` (``--config configs/baseline.yaml``,
``--trainer.max_epochs 5``, ``--data.source my_gold.csv`` ...), then tests the best checkpoint,
writes the test-span predictions (CSV + PNG) and prints a results table.
"""

from __future__ import annotations

import logging
import statistics
import sys
from collections.abc import Sequence
from typing import Any, Optional

from lstm_grad.callbacks import EpochTimer, GradientMonitor
from lstm_grad.cli import GoldCLI, run_guarded


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


def run(args: Sequence[str] | None = None) -> dict[str, Any]:
    """Fit (resuming from ``--ckpt_path``), test the best checkpoint, predict the test span."""
    cli = FitCLI(args=args, run=False)
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    trainer.fit(model, datamodule=data, ckpt_path=cli.config.get("ckpt_path"), weights_only=True)
    monitor = next((c for c in trainer.callbacks if isinstance(c, GradientMonitor)), None)
    if monitor is not None and monitor.nonfinite is not None and monitor.on_nonfinite == "stop":
        last = getattr(trainer.checkpoint_callback, "last_model_path", "") or "none written"
        raise FloatingPointError(f"training stopped early on a non-finite gradient (see the message above), so "
                                 f"there are no test results; last finite checkpoint: {last}")
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    ckpt = best or None
    tested = trainer.test(model, datamodule=data, ckpt_path=ckpt, weights_only=True)
    metrics = {k: float(v) for k, v in tested[0].items()}
    trainer.predict(model, datamodule=data, ckpt_path=ckpt, return_predictions=False, weights_only=True)
    timer = next((c for c in trainer.callbacks if isinstance(c, EpochTimer)), None)
    times = timer.epoch_times if timer else []
    return {"metrics": metrics, "best_checkpoint": best, "log_dir": trainer.log_dir,
            "epoch_time_s": statistics.median(times) if times else float("nan"),
            "epochs": len(times), "trainer": trainer}


def report(result: dict[str, Any]) -> str:
    metrics = result["metrics"]
    note = ("MASE = model MAE / persistence MAE on the same test targets (< 1 beats 'tomorrow = "
            "today'); directional acc. = share of test days whose predicted change has the sign of "
            "the actual change (days without change left out).")
    return "\n".join([
        "", results_table(metrics), note,
        f"epochs: {result['epochs']}, median epoch time: {result['epoch_time_s']:.2f} s",
        f"best checkpoint: {result['best_checkpoint']}",
        f"TensorBoard: tensorboard --logdir {result['log_dir']}",
    ])


def fit_main(args: Sequence[str] | None = None) -> None:
    print(report(run(args)))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run_guarded(fit_main))


if __name__ == "__main__":
    main()
