"""What the diagnostics read from a Lightning trainer, for ``lightning.pytorch`` and ``pytorch_lightning``
alike (darts and neuralforecast build on the latter: the two are copies of one code base with separate
class hierarchies, so nothing here checks ``isinstance`` against one of them or calls their helpers such
as ``is_overridden``, which raise "Expected a parent" on the other's modules)."""

from __future__ import annotations

from typing import Any, Optional

import torch
from lightning.pytorch import Callback

__all__ = ["Callback", "active_scaler", "log_step", "logger_writes", "overrides", "raw_optimizer", "unscale_factor"]


def log_step(trainer: Any) -> int:
    """The step ``self.log`` writes at: the batches that stepped so far (once per batch whatever the
    number of optimizers; ``trainer/connectors/logger_connector/logger_connector.py`` ``log_metrics``),
    else ``global_step``."""
    epoch_loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    return int(getattr(epoch_loop, "_batches_that_stepped", trainer.global_step))


def logger_writes(trainer: Any) -> bool:
    """Mirror Lightning's ``should_update_logs`` during a training batch: the step about to finish is
    ``log_step + 1``."""
    every = trainer.log_every_n_steps
    return bool(trainer.loggers) and every > 0 and (log_step(trainer) + 1) % every == 0


def overrides(obj: Any, hook: str) -> bool:
    """True when ``obj``'s class (a LightningModule or DataModule of either namespace) defines ``hook``
    in user code rather than inheriting Lightning's own."""
    for cls in type(obj).__mro__:
        if cls.__module__.split(".")[0] in ("lightning", "pytorch_lightning"):
            return False
        if hook in vars(cls):
            return True
    return False


def raw_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside a ``LightningOptimizer`` (``core/optimizer.py``), or itself."""
    return getattr(optimizer, "_optimizer", optimizer)


def active_scaler(trainer: Any) -> Any:
    scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
    return scaler if scaler is not None and scaler.is_enabled() else None


def unscale_factor(trainer: Any, optimizer: torch.optim.Optimizer) -> Optional[float]:
    """The scale to divide by when the gradients are still scaled here: ``plugins/precision/amp.py``
    skips ``scaler.unscale_`` for optimizers that unscale inside ``step`` (``_step_supports_amp_scaling``)."""
    scaler = active_scaler(trainer)
    if scaler is not None and getattr(optimizer, "_step_supports_amp_scaling", False):
        return scaler.get_scale()
    return None
