"""Exact resume: per-epoch reseeding, so a resumed run draws what an uninterrupted one would.

Lightning saves no RNG state (``pytorch/trainer/connectors/checkpoint_connector.py``,
``dump_checkpoint``), and restoring one would not be enough: a resumed run makes other global draws
before its first step (see :class:`lstm_grad.data.sampler.EpochShuffle`). So the training order is a
function of ``(seed, epoch)`` and :class:`RngState` reseeds dropout's generators per epoch.
"""
from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch


class RngState(pl.Callback):
    """Reseed Python, NumPy and torch from ``(base seed, epoch)`` just before each epoch's first step.

    Dropout then draws the same numbers in a resumed run as in an uninterrupted one, whatever other
    hooks (sanity check, validation iterators, probes) drew before. The base seed is the one
    ``seed_everything`` set (``torch.initial_seed()`` at fit start) and travels in the checkpoint.
    """

    def __init__(self) -> None:
        self.base_seed: int | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"base_seed": self.base_seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_seed = state_dict.get("base_seed", self.base_seed)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.base_seed is None:  # a resumed run got it from the checkpoint (restored before this hook)
            self.base_seed = torch.initial_seed()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if batch_idx != 0 or self.base_seed is None:
            return
        seed = (self.base_seed * 1_000_003 + trainer.current_epoch + 1) % 2**63
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
