"""Lightning CLI for lstm_grad: ``python -m lstm_grad.cli fit --config configs/residual.yaml``.

The data module knows the number of features and the horizon; they are linked into the model, so
a user never types them twice. Checkpointing (``last.ckpt`` every epoch, the best by ``val/loss``),
early stopping, the prediction writer, the gradient monitor, the gradient-through-time probe and
TensorBoard logging under ``runs/`` are on by default and configurable as ``--checkpoint.*``,
``--early_stopping.*``, ``--predictions.*``, ``--gradient_monitor.*``, ``--time_probe.*``, ``--trainer.logger.*``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from lstm_grad.diagnostics.monitor import GradientMonitor
from lstm_grad.diagnostics.probe import TimeGradientProbe
from lstm_grad.training.callbacks import EpochTimer, PredictionWriter
from lstm_grad.training import checkpoints
from lstm_grad.training.compat import read_checkpoint
from lstm_grad.training.run_dirs import resume_version
from lstm_grad.training.console import Console, release_logs
from lstm_grad.data import DataError, GoldDataModule
from lstm_grad.forecaster.module import LSTMForecaster

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
# The commands' default forecaster (fit, cli, backtest, tune), chosen on validation data only, never the test
# span: configs/default.yaml spells it out and says why. It is the recipe's clipped 3-layer stack with two data
# changes. The classes keep the recipe's defaults; the recipe's four configs pin them.
FORECASTER_DEFAULTS: dict[str, Any] = {
    "data.target_mode": "log_return",  # predict the change: a level target was 2.4-4x worse than persistence on val
    "data.price_levels": False,  # scale-free inputs: a trending price leaves the train span's range (val MASE 1.6)
    "model.hidden_sizes": [128, 64, 32],  # the recipe's plain stack: best on the validation walk-forward
    "model.residual": False,
    "model.init": "default",
}


class GoldCLI(LightningCLI):
    """LightningCLI over ``LSTMForecaster`` and ``GoldDataModule`` with the project's callbacks."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("trainer_defaults", TRAINER_DEFAULTS)
        kwargs.setdefault("seed_everything_default", 42)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("save_config_callback", ResolvedConfig)
        # exit_on_error=False: a bad flag, config key or value raises ArgumentError, which run_guarded
        # prints as one line (jsonargparse would print the whole usage block first)
        quiet = {"exit_on_error": False}
        kwargs.setdefault("parser_kwargs", {"description": __doc__.splitlines()[0], **quiet,
                                            **{name: dict(quiet) for name in self.subcommands()}})
        super().__init__(LSTMForecaster, GoldDataModule, *args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.n_features", "model.n_features", apply_on="instantiate")
        parser.link_arguments("data.horizon", "model.horizon", apply_on="instantiate")
        parser.set_defaults(FORECASTER_DEFAULTS)
        parser.add_lightning_class_args(checkpoints.EpochCheckpoint, "checkpoint")  # last.ckpt every epoch
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
        parser.add_lightning_class_args(GradientMonitor, "gradient_monitor")  # --gradient_monitor.vanish_threshold
        parser.add_lightning_class_args(TimeGradientProbe, "time_probe")  # --time_probe.every_n_epochs

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then refuse an unreadable ``--ckpt_path`` file in one line (LightningCLI loads it next)."""
        super().parse_arguments(parser, args)
        path = self.config.get(str(self.config.get("subcommand")), self.config).get("ckpt_path")
        if path and path not in ("last", "best", "hpc") and "://" not in str(path):
            read_checkpoint(path)

    def before_instantiate_classes(self) -> None:
        """Resolve ``--ckpt_path last`` to the newest run that has one; load with ``weights_only=True``."""
        config = self.config.get(str(self.subcommand), self.config)
        if "weights_only" in config and config.weights_only is None:
            config.weights_only = True  # plain tensors and containers only: our checkpoints need no more
        logger = config.trainer.logger
        init = getattr(logger, "init_args", None)
        if (config.get("ckpt_path") == "last" and config.checkpoint.dirpath is None and init is not None
                and "TensorBoardLogger" in str(logger.class_path) and init.version is None):
            version = resume_version(init.save_dir, init.name)
            if version is not None:  # same folder: the TensorBoard run and last.ckpt continue there
                init.version = version

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """Build the Trainer with atomic checkpoint writes, per-epoch reseeding (exact resume) and the
        release of held log lines once the data is set up."""
        trainer = checkpoints.install(super().instantiate_trainer(**kwargs))
        trainer.callbacks.append(ReleaseLogs())
        return trainer


def run_guarded(entry: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> int:
    """Run a command's ``entry(args)``; turn a bad-input error into one ``error:`` line and exit status 1
    (2 for a bad flag or config), with nothing else on stderr: log records are held (``console.py``)
    until the command calls :func:`~lstm_grad.training.console.release_logs` (the CLI's trainers do in their
    ``setup`` hook, once the data has loaded) and discarded on such an error.

    ``--debug`` anywhere on the command line keeps the full traceback; ``--verbose`` keeps Lightning's
    chatter (seed, hardware, tips) and its internal deprecation warnings. Every command
    (``fit``, ``cli``, ``forecast``, ``backtest``, ``tune``) goes through here.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug, verbose = "--debug" in args, "--verbose" in args
    args = [a for a in args if a not in ("--debug", "--verbose")]
    # the command line is handed over as ``args`` on purpose (to take --debug out of it)
    warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python")
    console = Console(verbose=verbose).install()
    try:
        entry(args)
    except (DataError, ValueError, OSError, FloatingPointError, argparse.ArgumentError,
            MisconfigurationException) as error:
        if debug:
            raise
        console.discard()
        hint = "; see --help" if isinstance(error, argparse.ArgumentError) else ""
        print(f"error: {' '.join(str(error).split())}{hint}", file=sys.stderr)  # one line, always
        return 1 if not isinstance(error, argparse.ArgumentError) else 2
    finally:
        console.restore()  # writes what is still held (a success, a bug's traceback, --debug)
    return 0


class ReleaseLogs(Callback):
    """Let the held log lines through once the trainer has set up the data (the input was good)."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        release_logs()


class ResolvedConfig(SaveConfigCallback):
    """Save ``config.yaml`` with the data's resolved target, features and date column instead of null."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        data = trainer.datamodule
        if isinstance(data, GoldDataModule) and data.target_name is not None and "data" in self.config:
            self.config.data.target = data.target_name
            self.config.data.features = list(data.feature_names)
            self.config.data.date_column = data.date_column_name
        super().setup(trainer, pl_module, stage)


def cli_main(args: Sequence[str] | None = None) -> GoldCLI:
    return GoldCLI(args=args)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run_guarded(cli_main))


if __name__ == "__main__":
    main()
