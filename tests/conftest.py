"""Fixtures shared by the test modules: synthetic price CSVs, an in-memory logger, a weight-snapshot
callback, and the tiny forecaster and quiet trainer most training tests build.

A test module never imports another; it asks for these by name. Each fixture hands out the helper itself
(a function or a class, session-scoped, so module-scoped fixtures can use it too), so a test calls
``synthetic_csv(tmp_path)`` or ``MemoryLogger()`` as before. Lightning, torch and pandas are imported on
first use: a test that never trains does not pay for them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


def _price_csv(folder: str | Path, rows: int, seed: int, start: str) -> Path:
    """Write ``folder/gold.csv`` (``date,price``): ``rows`` business days from ``start``, a Gaussian random
    walk from 100 drawn from ``torch.Generator().manual_seed(seed)``, prices rounded to 3 decimals."""
    import pandas as pd
    import torch

    generator = torch.Generator().manual_seed(seed)
    price = 100 + torch.cumsum(torch.randn(rows, generator=generator), 0)
    path = Path(folder) / "gold.csv"
    pd.DataFrame({"date": pd.bdate_range(start, periods=rows).strftime("%Y-%m-%d"),
                  "price": price.numpy().round(3)}).to_csv(path, index=False)
    return path


def _synthetic_csv(folder: str | Path, rows: int = 160) -> Path:
    return _price_csv(folder, rows, seed=0, start="2020-01-01")


def _tiny_csv(folder: str | Path, rows: int = 240) -> Path:
    return _price_csv(folder, rows, seed=3, start="2019-01-01")


@pytest.fixture(scope="session")
def synthetic_csv() -> Callable[..., Path]:
    """``synthetic_csv(folder, rows=160) -> folder/gold.csv``: 160 business days from 2020-01-01 (seed 0),
    the series of the in-process training tests."""
    return _synthetic_csv


@pytest.fixture(scope="session")
def tiny_csv() -> Callable[..., Path]:
    """``tiny_csv(folder, rows=240) -> folder/gold.csv``: 240 business days from 2019-01-01 (seed 3), the
    series of the command-line runs (resume after SIGKILL, DDP)."""
    return _tiny_csv


@pytest.fixture(scope="session", name="MemoryLogger")
def memory_logger_class() -> type:
    """The class ``MemoryLogger``: a Lightning logger that keeps every logged scalar as ``values[key][step]``
    and every write, in order, as ``writes[i] = (key, step)``."""
    from lightning.pytorch.loggers.logger import Logger

    class MemoryLogger(Logger):
        """Keep every logged scalar as {key: {step: value}}, and every write in ``writes``."""

        def __init__(self) -> None:
            super().__init__()
            self.values: dict[str, dict[int, float]] = {}
            self.writes: list[tuple[str, int]] = []

        @property
        def name(self) -> str:
            return "memory"

        @property
        def version(self) -> int:
            return 0

        def log_hyperparams(self, params, *args, **kwargs) -> None:
            pass

        def log_metrics(self, metrics, step=None) -> None:
            for key, value in metrics.items():
                self.values.setdefault(key, {})[step] = float(value)
                self.writes.append((key, step))

    return MemoryLogger


@pytest.fixture(scope="session", name="Snapshot")
def snapshot_class() -> type:
    """The class ``Snapshot(step)``: a callback that copies the module's weights at the start of the batch
    whose ``global_step`` is ``step`` (before that step changes them) into ``weights``."""
    import lightning.pytorch as pl

    class Snapshot(pl.Callback):
        def __init__(self, step: int) -> None:
            self.step, self.weights = step, None

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == self.step:
                self.weights = [p.detach().clone() for p in module.parameters()]

    return Snapshot


@pytest.fixture(scope="session")
def tiny_forecaster() -> Callable[..., tuple[Any, Any]]:
    """``tiny_forecaster(folder, *, window=8, hidden_sizes=(6, 4), model=None, model_class=None, **data)
    -> (data, model)``: ``pl.seed_everything(0)``, then a ``GoldDataModule`` on ``synthetic_csv(folder)``
    (all rows, batches of 16; ``data`` overrides or adds settings, e.g. ``split``), then, unless ``model``
    is given, a residual orthogonal ``LSTMForecaster`` (or ``model_class``) without dropout.

    The seed comes first and the model last, so two calls with the same arguments give the same weights.
    """
    import lightning.pytorch as pl

    from lstm_grad.data import GoldDataModule
    from lstm_grad.module import LSTMForecaster

    def tiny_forecaster(folder: str | Path, *, window: int = 8, hidden_sizes: tuple[int, ...] = (6, 4),
                        model: Any = None, model_class: type | None = None, **data_kwargs: Any) -> tuple[Any, Any]:
        pl.seed_everything(0)
        data = GoldDataModule(**{"source": str(_synthetic_csv(folder)), "last_n_days": None, "window": window,
                                 "target_mode": "level", "price_levels": True,  # the recipe's data, as these tests were written
                                 "batch_size": 16, **data_kwargs})
        if model is None:
            model = (model_class or LSTMForecaster)(n_features=data.n_features, hidden_sizes=hidden_sizes,
                                                    residual=True, init="orthogonal", dropout=0.0,
                                                    horizon=data.horizon)
        return data, model

    return tiny_forecaster


@pytest.fixture(scope="session")
def quiet_trainer() -> Callable[..., Any]:
    """``quiet_trainer(**trainer_kwargs) -> pl.Trainer`` with no progress bar, no model summary and no
    sanity validation (each may be overridden); everything else is the caller's."""
    import lightning.pytorch as pl

    def quiet_trainer(**kwargs: Any) -> pl.Trainer:
        return pl.Trainer(**{"enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
                             **kwargs})

    return quiet_trainer
