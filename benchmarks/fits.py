"""The training paths the benchmark items time: the data, ``Trainer.fit`` as the CLI runs it, and the
hand-written PyTorch loop on the same ``ResidualLSTM`` and tensors."""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger

from benchmarks.config import BenchConfig
from lstm_grad.data import GoldDataModule
from lstm_grad.model import ResidualLSTM
from lstm_grad.forecaster.optimizer import make_adam
from lstm_grad.module import LSTMForecaster
from lstm_grad.training import checkpoints

CLIP = 1.0  # the recipe's clipnorm, as in the CLI defaults
LOG_EVERY = 10  # the CLI's default log_every_n_steps
PROBE_EVERY = 3  # the CLI's default --time_probe.every_n_epochs


def quiet() -> None:
    """Keep the timed runs' output to errors: Lightning's tips and data-loader warnings are noise here."""
    warnings.filterwarnings("ignore", message=".*(does not have many workers|LeafSpec|num_workers).*")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


def make_data(cfg: BenchConfig, days: int | None, window: int | None = None) -> GoldDataModule:
    """The embedded series' last ``days`` (None: all of it), set up for fitting."""
    dm = GoldDataModule(last_n_days=days, window=window or cfg.window, batch_size=cfg.batch_size)
    dm.setup("fit")
    return dm


def lightning_fit(cfg: BenchConfig, dm: GoldDataModule, epochs: int, module_cls: type = LSTMForecaster,
                  callbacks: Callable[[], list] | None = None, log_every: int = LOG_EVERY, seed: int = 0,
                  keep_in: Path | None = None) -> Callable[[], pl.Trainer]:
    """Return a thunk that runs ``Trainer.fit`` the way the CLI does: TensorBoard, metrics,
    checkpoint each epoch through the CLI's checkpoint IO (``lstm_grad.training.checkpoints.install``),
    clipnorm 1.0, no sanity check (``lstm_grad.cli.TRAINER_DEFAULTS``); progress bar and model summary off.
    The run's files go to a temporary folder, deleted after the run, or to ``keep_in``, kept."""
    def run() -> pl.Trainer:
        torch.manual_seed(seed)
        module = module_cls(n_features=dm.n_features, hidden_sizes=cfg.hidden_sizes, residual=True, init="orthogonal",
                            horizon=dm.horizon)  # the recipe's network, as ResidualLSTM's defaults on the hand side
        folder = str(keep_in) if keep_in else tempfile.mkdtemp(prefix="bench_")
        trainer = pl.Trainer(max_epochs=epochs, logger=TensorBoardLogger(folder, name="bench"),
                             enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=log_every,
                             gradient_clip_val=CLIP, default_root_dir=folder, num_sanity_val_steps=0,
                             callbacks=callbacks() if callbacks else None)
        checkpoints.install(trainer)  # the CLI's checkpoint writes: atomic, off the training thread
        trainer.fit(module, datamodule=dm)
        if keep_in is None:
            shutil.rmtree(folder, ignore_errors=True)
        return trainer
    return run


def train_epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, dm: GoldDataModule) -> None:
    """One shuffled epoch of the plain loop: batches gathered straight from the dataset."""
    data = dm.datasets["train"]
    model.train()
    for idx in torch.randperm(len(data)).split(dm.batch_size):
        x, y, *_ = data.__getitems__(idx)
        loss = F.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()


def hand_fit(cfg: BenchConfig, dm: GoldDataModule, epochs: int, validate: bool = True, seed: int = 0,
             compile_model: bool = False) -> Callable[[], float]:
    """Return a thunk: the hand-written loop on the same ``ResidualLSTM`` and tensors, with a
    validation pass (loss and MAE in price units) per epoch like the Lightning side."""
    def run() -> float:
        torch.manual_seed(seed)
        model = ResidualLSTM(dm.n_features, cfg.hidden_sizes, horizon=dm.horizon)
        opt = make_adam(model.parameters(), lr=1e-3)  # the forecaster's optimizer
        net = torch.compile(model) if compile_model else model
        mae = torch.zeros(())
        for _ in range(epochs):
            train_epoch(net, opt, dm)
            if validate:
                model.eval()
                with torch.no_grad():
                    for idx in torch.arange(len(dm.datasets["val"])).split(dm.batch_size):
                        x, y, anchor, _ = dm.datasets["val"].__getitems__(idx)
                        pred = net(x)
                        F.mse_loss(pred, y)
                        mae += (dm.inverse_transform(pred, anchor) - dm.inverse_transform(y, anchor)).abs().sum()
        return float(mae)
    return run
