"""Run folders: which run is the newest, for ``--ckpt_path last`` / ``best`` in every command.

A run is a folder holding ``checkpoints/last.ckpt`` (``EpochCheckpoint`` writes it every epoch). The
newest run is the one whose ``last.ckpt`` was written last; two written in the same instant are told
apart by their ``version_N`` number. ``fit --ckpt_path last`` resumes in that folder (a new
``TensorBoardLogger`` run would get a new version, and Lightning would look for ``last.ckpt`` there:
``pytorch/callbacks/model_checkpoint.py``, ``__resolve_ckpt_dir``); ``forecast --ckpt_path last``
reads it.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from lstm_grad.errors import CheckpointError
from lstm_grad.training.compat import read_checkpoint


def _version(run: Path) -> int:
    suffix = run.name.removeprefix("version_")
    return int(suffix) if suffix.isdigit() else -1


def newest_run(lasts: Iterable[Path]) -> Path | None:
    """Return the run folder of the newest of the given ``.../<run>/checkpoints/last.ckpt`` files.

    >>> newest_run([]) is None
    True
    """
    runs = [last.parent.parent for last in lasts if last.is_file()]
    return max(runs, key=lambda run: ((run / "checkpoints" / "last.ckpt").stat().st_mtime, _version(run)), default=None)


def resume_version(save_dir: str | os.PathLike, name: str) -> int | None:
    """Return N of the newest ``save_dir/name/version_N`` that holds ``checkpoints/last.ckpt``.

    >>> resume_version("/nonexistent", "run") is None
    True
    """
    run = newest_run(Path(save_dir, name).glob("version_*/checkpoints/last.ckpt"))
    return None if run is None or _version(run) < 0 else _version(run)


def resolve_checkpoint(path: str, save_dir: str | Path = "runs") -> Path:
    """Turn ``last`` / ``best`` into the newest run's ``last.ckpt`` / best checkpoint; keep a path as is.

    The newest run is searched under ``save_dir`` at any depth (any experiment name). Its best
    checkpoint is the one its ``last.ckpt`` names (``ModelCheckpoint.best_model_path``), else its
    newest ``*.ckpt`` other than ``last.ckpt``.

    Raises:
        CheckpointError: no run under ``save_dir``.
    """
    if path not in ("last", "best"):
        return Path(path)
    run = newest_run(p for p in Path(save_dir).rglob("last.ckpt") if p.parent.name == "checkpoints")
    if run is None:
        raise CheckpointError(f"--ckpt_path {path}: no run with checkpoints/last.ckpt under '{save_dir}'; "
                              "train one with python -m lstm_grad.fit, or pass a checkpoint path")
    last = run / "checkpoints" / "last.ckpt"
    if path == "last":
        return last
    for state in (read_checkpoint(last).get("callbacks") or {}).values():
        named = Path(str(state.get("best_model_path") or "")) if isinstance(state, dict) else Path()
        if named.name and named.is_file():
            return named
    others = [p for p in last.parent.glob("*.ckpt") if p.name != "last.ckpt"]
    return max(others, key=lambda p: p.stat().st_mtime) if others else last
