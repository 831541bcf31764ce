"""Read a checkpoint, and refuse one made for other settings with one line instead of a traceback.

Lightning restores the model before the DataModule (``_restore_modules_and_callbacks`` in
``pytorch/trainer/connectors/checkpoint_connector.py``), so a checkpoint made for other data fails first
with a ``load_state_dict`` size-mismatch traceback; :func:`check_compatible` runs in
``LSTMForecaster.on_load_checkpoint`` and names the setting.
"""
from __future__ import annotations

import os
from typing import Any

import lightning.pytorch as pl
import torch

from lstm_grad.errors import CheckpointError

DATA_STATE_KEY = "GoldDataModule"  # Lightning stores a DataModule's state under its class name
MODEL_KEYS = ("n_features", "horizon", "hidden_sizes", "cell", "residual")


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; a truncated or foreign file raises CheckpointError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found; check --ckpt_path") from None
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError ... on bad bytes
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path}: cannot read the checkpoint ({first}); it is truncated, corrupt or not a "
                              "Lightning checkpoint: use another one, e.g. the best-*.ckpt beside it") from None


def check_compatible(checkpoint: dict[str, Any], module: pl.LightningModule) -> None:
    """Raise one CheckpointError naming the first setting where ``checkpoint`` differs from this run.

    Data settings (window, horizon, target mode, features) are compared by the trainer's DataModule,
    then the model's shape-defining hyperparameters, then every weight's shape.
    """
    trainer = module._trainer  # None outside a Trainer (e.g. load_from_checkpoint)
    data = getattr(trainer, "datamodule", None) if trainer is not None else None
    saved_data = checkpoint.get(DATA_STATE_KEY) or {}
    if data is not None and saved_data and hasattr(data, "check_state"):
        data.check_state(saved_data)
    saved = checkpoint.get("hyper_parameters") or {}
    for key in MODEL_KEYS:
        if key in saved and key in module.hparams:
            old, new = saved[key], module.hparams[key]
            if (list(old) if isinstance(old, (list, tuple)) else old) != (list(new) if isinstance(new, (list, tuple)) else new):
                raise CheckpointError(f"checkpoint was made with model.{key}={old!r} but this run has "
                                      f"model.{key}={new!r}; use the checkpoint's settings or train from scratch")
    own = module.state_dict()
    for name, tensor in (checkpoint.get("state_dict") or {}).items():
        if name in own and tuple(own[name].shape) != tuple(tensor.shape):
            raise CheckpointError(f"checkpoint weight '{name}' has shape {tuple(tensor.shape)} but this model's has "
                                  f"{tuple(own[name].shape)}; the checkpoint was made with other model or data settings")
