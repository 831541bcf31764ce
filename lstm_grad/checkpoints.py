"""Checkpoints that survive a kill: atomic writes, exact resume, and one clear error on a mismatch.

Why each piece exists (read in the installed lightning 2.6.6):

- ``lightning/fabric/plugins/io/torch_io.py`` ``TorchCheckpointIO.save_checkpoint`` calls
  ``lightning/fabric/utilities/cloud_io.py`` ``_atomic_save``: ``torch.save`` into a ``BytesIO``, then
  ``fs.open(path, "wb")`` inside ``fs.transaction``. For a local path fsspec's ``LocalFileOpener``
  (``fsspec/implementations/local.py``) writes the bytes to ``tempfile.mkstemp()`` (the *system*
  temp dir) and commits with ``shutil.move``. When ``$TMPDIR`` is another file system (a tmpfs
  ``/tmp``, very common) the move is copy-then-delete: a kill during the copy leaves a truncated
  ``last.ckpt``, and there is no ``fsync`` before the rename either, so a power cut can leave an
  empty one. :class:`AtomicCheckpointIO` writes to a temp file *in the checkpoint's folder*, fsyncs
  it, ``os.replace``\\ s it over the target and fsyncs the folder.
- Lightning saves no RNG state (``pytorch/trainer/connectors/checkpoint_connector.py``,
  ``dump_checkpoint``), and restoring one would not be enough: a resumed run makes other global
  draws before its first step (see :class:`EpochShuffle`). So the training order is a function of
  ``(seed, epoch)`` (:class:`EpochShuffle`) and :class:`RngState` reseeds dropout's generators per epoch.
- ``--ckpt_path last`` looks for ``last.ckpt`` in the checkpoint folder of the *current* logger
  version (``pytorch/callbacks/model_checkpoint.py``, ``__resolve_ckpt_dir``), and a new
  ``TensorBoardLogger`` run gets a new version, so Lightning would warn "no last checkpoint" and
  start from scratch. :func:`resume_version` finds the newest run folder holding a ``last.ckpt``.
- Lightning restores the model before the DataModule (``_restore_modules_and_callbacks``), so a
  checkpoint made for other data fails first with a ``load_state_dict`` size-mismatch traceback;
  :func:`check_compatible` runs in ``LSTMForecaster.on_load_checkpoint`` and names the setting.
"""
from __future__ import annotations

import contextlib
import os
import random
import tempfile
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import Sampler

DATA_STATE_KEY = "GoldDataModule"  # Lightning stores a DataModule's state under its class name
MODEL_KEYS = ("n_features", "horizon", "hidden_sizes", "cell", "residual")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for this run: unreadable, or made for other settings."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints so that a kill at any moment leaves either the old file or the new one.

    Temp file beside the target (same file system, so ``os.replace`` is an atomic rename), fsync of
    the data and of the folder; a temp file left by an earlier kill is removed on the next save.
    Remote paths (``s3://`` ...) keep Lightning's own writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        atomic_torch_save(checkpoint, Path(path))


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save(obj, path)`` through a same-folder temp file, fsync and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}."
    for stale in path.parent.glob(f"{prefix}*.tmp"):  # left by a process killed mid-write
        with contextlib.suppress(OSError):
            stale.unlink()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; match a plain open()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


class EpochCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` really is written every epoch when ``save_last=True``.

    Lightning 2.6.6 (``pytorch/callbacks/model_checkpoint.py``, ``on_validation_end`` and
    ``on_train_epoch_end``) writes ``last.ckpt`` only in a step where a top-k checkpoint was written,
    i.e. only when ``val/loss`` improved: a run killed after three epochs without improvement would
    resume three epochs back. After Lightning's own save this writes ``last.ckpt`` if it did not.
    """

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._write_last(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._write_last(trainer)

    def _write_last(self, trainer: pl.Trainer) -> None:
        # skipped when a checkpoint (and so last.ckpt) was already written at this global step
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class EpochShuffle(Sampler[int]):
    """Shuffle the training windows anew each epoch, as a function of ``(seed, epoch)`` only.

    ``RandomSampler`` draws its seed from the global generator when the epoch's first batch is
    fetched, after draws that differ between a resumed and an uninterrupted run (every DataLoader
    iterator draws a base seed, ``torch/utils/data/dataloader.py`` ``_BaseDataLoaderIter.__init__``,
    and Lightning creates the train iterator before ``on_train_epoch_start`` in the first epoch of a
    ``fit`` call but after it later, ``loops/training_epoch_loop.py`` ``on_run_start``). Lightning calls
    ``set_epoch`` before every training epoch (``loops/fit_loop.py`` ``on_advance_start``), as for
    ``DistributedSampler``.

    >>> sampler = EpochShuffle(5, seed=0); sampler.set_epoch(1); sorted(sampler) == [0, 1, 2, 3, 4]
    True
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % 2**63)
        return iter(torch.randperm(self.n, generator=generator).tolist())


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


def install(trainer: pl.Trainer) -> pl.Trainer:
    """Give ``trainer`` atomic checkpoint writes and RNG state in checkpoints (idempotent)."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # a user's own plugin wins
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    if not any(isinstance(c, RngState) for c in trainer.callbacks):
        trainer.callbacks.append(RngState())
    return trainer


def resume_version(save_dir: str | os.PathLike, name: str) -> int | None:
    """Return the newest ``version_N`` under ``save_dir/name`` that holds ``checkpoints/last.ckpt``.

    >>> resume_version("/nonexistent", "run") is None
    True
    """
    best: tuple[float, int] | None = None
    for folder in Path(save_dir, name).glob("version_*"):
        last = folder / "checkpoints" / "last.ckpt"
        suffix = folder.name.removeprefix("version_")
        if suffix.isdigit() and last.is_file():
            candidate = (last.stat().st_mtime, int(suffix))
            best = candidate if best is None or candidate > best else best
    return None if best is None else best[1]


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

    Data settings (window, horizon, target mode, features) are compared with the trainer's DataModule,
    then the model's shape-defining hyperparameters, then every weight's shape.
    """
    trainer = module._trainer  # None outside a Trainer (e.g. load_from_checkpoint)
    data = getattr(trainer, "datamodule", None) if trainer is not None else None
    saved_data = checkpoint.get(DATA_STATE_KEY) or {}
    if data is not None and saved_data:
        for key in ("window", "horizon", "target_mode"):
            if key in saved_data and saved_data[key] != getattr(data, key, saved_data[key]):
                raise CheckpointError(f"checkpoint was made with data.{key}={saved_data[key]!r} but this run has "
                                      f"data.{key}={getattr(data, key)!r}; use the checkpoint's data settings "
                                      "or train from scratch (no --ckpt_path)")
        names = getattr(data, "feature_names", None)
        if names and saved_data.get("feature_names") and list(names) != list(saved_data["feature_names"]):
            raise CheckpointError(f"checkpoint was made with features {saved_data['feature_names']} but this run "
                                  f"has {list(names)}; set data.features to the checkpoint's or train from scratch")
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
