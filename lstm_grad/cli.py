"""Lightning CLI for lstm_grad: ``python -m lstm_grad.cli fit --config configs/residual.yaml``.

The data module knows the number of features and the horizon; they are linked into the model, so
a user never types them twice. Checkpointing (``last.ckpt`` every epoch, the best by ``val/loss``),
early stopping, the prediction writer and TensorBoard logging under ``runs/`` are on by default and
configurable as ``--checkpoint.*``, ``--early_stopping.*``, ``--predictions.*``, ``--trainer.logger.*``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lstm_grad.callbacks import EpochTimer, PredictionWriter
from lstm_grad.data import DataError, GoldDataModule
from lstm_grad.module import LSTMForecaster

TRAINER_DEFAULTS: dict[str, Any] = {
    "max_epochs": 50,  # the recipe's 50 epochs; early stopping usually ends sooner
    "gradient_clip_val": 1.0,  # the recipe's clipnorm=1.0
    "gradient_clip_algorithm": "norm",
    "log_every_n_steps": 10,
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs", "name": "lstm_grad", "default_hp_metric": False},
    },
}


class GoldCLI(LightningCLI):
    """LightningCLI over ``LSTMForecaster`` and ``GoldDataModule`` with the project's callbacks."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("trainer_defaults", TRAINER_DEFAULTS)
        kwargs.setdefault("seed_everything_default", 42)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"description": __doc__.splitlines()[0]})
        super().__init__(LSTMForecaster, GoldDataModule, *args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.n_features", "model.n_features", apply_on="instantiate")
        parser.link_arguments("data.horizon", "model.horizon", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/loss",
            "checkpoint.mode": "min",
            "checkpoint.save_last": True,
            "checkpoint.filename": "best-epoch{epoch:02d}",
            "checkpoint.auto_insert_metric_name": False,  # "val/loss" in a file name makes folders
        })
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.set_defaults({"early_stopping.monitor": "val/loss", "early_stopping.patience": 10})
        parser.add_lightning_class_args(PredictionWriter, "predictions")
        parser.add_lightning_class_args(EpochTimer, "epoch_timer")


def run_guarded(entry: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> int:
    """Run ``entry`` and turn a bad-input error into one line on stderr and exit status 1.

    ``--debug`` anywhere on the command line keeps the full traceback.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug:
        args.remove("--debug")
    try:
        entry(args)
    except (DataError, ValueError, FileNotFoundError, OSError) as error:
        if debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def cli_main(args: Sequence[str] | None = None) -> GoldCLI:
    return GoldCLI(args=args)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run_guarded(cli_main))


if __name__ == "__main__":
    main()
