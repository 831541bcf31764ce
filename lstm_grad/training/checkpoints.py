"""Checkpoints that survive a kill: atomic writes, and ``last.ckpt`` really written every epoch.

Why (read in the installed lightning 2.6.6): ``lightning/fabric/plugins/io/torch_io.py``
``TorchCheckpointIO.save_checkpoint`` calls ``lightning/fabric/utilities/cloud_io.py`` ``_atomic_save``:
``torch.save`` into a ``BytesIO``, then ``fs.open(path, "wb")`` inside ``fs.transaction``. For a local
path fsspec's ``LocalFileOpener`` (``fsspec/implementations/local.py``) writes the bytes to
``tempfile.mkstemp()`` (the *system* temp dir) and commits with ``shutil.move``. When ``$TMPDIR`` is
another file system (a tmpfs ``/tmp``, very common) the move is copy-then-delete: a kill during the
copy leaves a truncated ``last.ckpt``, and there is no ``fsync`` before the rename either, so a power
cut can leave an empty one. :class:`AtomicCheckpointIO` writes to a temp file *in the checkpoint's
folder*, fsyncs it, ``os.replace``\\ s it over the target and fsyncs the folder. Exact resume is
:mod:`lstm_grad.training.resume`; refusing a mismatched checkpoint is :mod:`lstm_grad.training.compat`.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import AsyncCheckpointIO

from lstm_grad.training.resume import RngState


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


def install(trainer: pl.Trainer) -> pl.Trainer:
    """Give ``trainer`` atomic checkpoint writes off the training thread and RNG state in checkpoints
    (idempotent).

    The writes go through Lightning's ``AsyncCheckpointIO`` (``lightning/pytorch/plugins/io/async_plugin.py``):
    it clones the checkpoint's tensors, then one worker thread runs :class:`AtomicCheckpointIO` (temp file,
    fsync, rename) while training goes on; the strategy's teardown at the end of ``fit`` waits for the last
    write, and a failed write raises at the next save or at that teardown. Writing two checkpoints per
    epoch inline was 1.1 % of a fit (``benchmarks.fit_profile``).
    """
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # a user's own plugin wins
        trainer.strategy.checkpoint_io = AsyncCheckpointIO(AtomicCheckpointIO())
    if not any(isinstance(c, RngState) for c in trainer.callbacks):
        trainer.callbacks.append(RngState())
    return trainer


