"""Lightning CLI for lstm_grad: ``python -m lstm_grad.cli fit --config configs/residual.yaml``.

The data module knows the number of features and the horizon; they are linked into the model, so
a user never types them twice. Checkpointing (``last.ckpt`` every epoch, the best by ``val/loss``),
early stopping, the prediction writer, the gradient monitor, the gradient-through-time probe and
TensorBoard logging under ``runs/<config>-<source>/version_N`` are on by default and configurable as
``--checkpoint.*``, ``--early_stopping.*``, ``--predictions.*``, ``--gradient_monitor.*``, ``--time_probe.*``,
``--trainer.logger.*``.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from lstm_grad.diagnostics.monitor import GradientMonitor
from lstm_grad.diagnostics.probe import TimeGradientProbe
from lstm_grad.training.callbacks import DiscardRefusedRun, EpochTimer, PredictionWriter, RunCard, RunKind
from lstm_grad.training import checkpoints
from lstm_grad.training.allocator import keep_freed_memory
from lstm_grad.training.compat import read_checkpoint
from lstm_grad.training.run_dirs import NAME_TEMPLATE, resume_version, run_name
from lstm_grad.training.console import release_logs
from lstm_grad.training.entry import main_of, one_line, run_command
from lstm_grad.data import GoldDataModule
from lstm_grad.errors import ConfigError, UserError
from lstm_grad.forecaster.module import LSTMForecaster

run_guarded = run_command  # the name the commands' tests import
log = logging.getLogger("lstm_grad.cli")

# The default forecaster is LSTMForecaster's and GoldDataModule's own signature (``--print_config`` shows it);
# the recipe's configs pin the recipe's values. The trainer's defaults are these; the configs state only
# where they deviate.
TRAINER_DEFAULTS: dict[str, Any] = {
    "max_epochs": 50,  # the recipe's 50 epochs; early stopping usually ends sooner
    "gradient_clip_val": 1.0,  # the recipe's clipnorm=1.0
    "gradient_clip_algorithm": "norm",
    "log_every_n_steps": 10,
    # no sanity check: 2 validation batches before the first step cost 1.0 % of a default fit (benchmarks.fit_profile)
    # and check code the tests already run; --trainer.num_sanity_val_steps 2 brings it back
    "num_sanity_val_steps": 0,
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs", "name": NAME_TEMPLATE, "default_hp_metric": False},
    },
}


class GoldCLI(LightningCLI):
    """LightningCLI over ``LSTMForecaster`` and ``GoldDataModule`` with the project's callbacks.

    ``run_kind`` marks the checkpoints with the command that trains (``fit``; ``tune`` and ``backtest``
    for their trials and folds), so that ``--ckpt_path last`` / ``best`` find the user's fits.
    """

    def __init__(self, *args: Any, run_kind: str = "fit", **kwargs: Any) -> None:
        self.run_kind, self._named = run_kind, False
        kwargs.setdefault("trainer_defaults", TRAINER_DEFAULTS)
        kwargs.setdefault("seed_everything_default", 42)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("save_config_callback", ResolvedConfig)
        # exit_on_error=False: a bad flag, config key or value raises ArgumentError, which run_command
        # prints as one line (jsonargparse would print the whole usage block first)
        quiet = {"exit_on_error": False}
        kwargs.setdefault("parser_kwargs", {"description": __doc__.splitlines()[0], **quiet,
                                            **{name: dict(quiet) for name in self.subcommands()}})
        super().__init__(LSTMForecaster, GoldDataModule, *args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.n_features", "model.n_features", apply_on="instantiate")
        parser.link_arguments("data.horizon", "model.horizon", apply_on="instantiate")
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
        # a probe every 3rd epoch: every epoch cost 3.9 % of a default fit with the gate and doctor signals
        # (python -m benchmarks.bench --items 3, docs/measured/bench_items2_3.json), every 2nd 2.8-3.2 % once
        # the epochs got faster (docs/measured/bench_quick_run1.json, docs/benchmarks.json at 042fda6); the
        # budget is 3 %
        parser.set_defaults({"time_probe.every_n_epochs": 3})

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then refuse an unreadable ``--ckpt_path`` file in one line (LightningCLI loads it next)."""
        super().parse_arguments(parser, args)
        path = self.config.get(str(self.config.get("subcommand")), self.config).get("ckpt_path")
        if path and path not in ("last", "best", "hpc") and "://" not in str(path):
            read_checkpoint(path)

    def before_instantiate_classes(self) -> None:
        """Name the run folder by config and source; resolve ``--ckpt_path last`` to the newest run of that
        name that has one; load with ``weights_only=True``."""
        config = self.config.get(str(self.subcommand), self.config)
        if "weights_only" in config and config.weights_only is None:
            config.weights_only = True  # plain tensors and containers only: our checkpoints need no more
        logger = config.trainer.logger
        init = getattr(logger, "init_args", None)
        tensorboard = init is not None and "TensorBoardLogger" in str(getattr(logger, "class_path", ""))
        if tensorboard and isinstance(init.name, str) and ("{config}" in init.name or "{source}" in init.name):
            init.name = run_name(init.name, [str(c) for c in (config.get("config") or self.config.get("config") or [])],
                                 config.data.get("source") if "data" in config else None)
            self._named = True
        if (config.get("ckpt_path") == "last" and config.checkpoint.dirpath is None and tensorboard
                and init.version is None):
            version = resume_version(init.save_dir, init.name)
            if version is not None:  # same folder: the TensorBoard run and last.ckpt continue there
                init.version = version
                log.info("--ckpt_path last: resuming %s, the newest run of this config and source",
                         Path(init.save_dir, init.name, f"version_{version}"))

    def instantiate_classes(self) -> None:
        """Build the model, data, callbacks and trainer; a setting one of them refuses is a ConfigError:
        Lightning's ``MisconfigurationException`` (``--trainer.accelerator gpu`` without a GPU) and a
        ``ValueError`` raised by a constructor's own argument check (``--model.loss l7``,
        ``--model.dropout 5``). A ``ValueError`` from deeper down stays a bug."""
        try:
            super().instantiate_classes()
        except MisconfigurationException as error:
            raise ConfigError(one_line(error)) from error
        except ValueError as error:
            if isinstance(error, UserError) or not _from_constructor(error):
                raise
            raise ConfigError(one_line(error)) from error

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """Build the Trainer with atomic checkpoint writes, per-epoch reseeding (exact resume) and the
        release of held log lines once the data is set up; this process keeps the memory a step frees
        (:func:`lstm_grad.training.allocator.keep_freed_memory`: no page faults between steps on CPU)."""
        keep_freed_memory()
        trainer = checkpoints.install(super().instantiate_trainer(**kwargs))
        trainer.callbacks.extend([ReleaseLogs(), RunKind(self.run_kind), RunCard(), DiscardRefusedRun()])
        if self._named and trainer.log_dir:
            log.info("run folder: %s (named by config and data source; --trainer.logger.init_args.name sets another)",
                     trainer.log_dir)
        return trainer


def _from_constructor(error: BaseException) -> bool:
    """True when ``error`` was raised in the body of an ``__init__`` (a class refusing its arguments)."""
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and frames[-1].name in ("__init__", "__post_init__")


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


main = main_of(cli_main)


if __name__ == "__main__":
    main()
