"""Run folders: their names, which run is the newest, and files written whole.

**Names.** A run of ``fit`` / ``cli fit`` goes to ``<save_dir>/<config>-<source>/version_N``:
``<config>`` is the stem of the last ``--config`` file (``default`` without one), ``<source>`` the
stem of ``data.source`` (``embedded`` for the built-in series), so runs of two CSVs, or of two
configs, never share a folder. The logger's ``name`` is a template (:data:`NAME_TEMPLATE`, the
commands' default); a name without ``{config}`` / ``{source}`` is used as written.

**Newest.** A run is a folder holding ``checkpoints/last.ckpt`` (``EpochCheckpoint`` writes it every
epoch). The newest run is the one whose ``last.ckpt`` was written last; two written in the same
instant are told apart by their ``version_N`` number. ``fit --ckpt_path last`` resumes in that
folder (a new ``TensorBoardLogger`` run would get a new version, and Lightning would look for
``last.ckpt`` there: ``pytorch/callbacks/model_checkpoint.py``, ``__resolve_ckpt_dir``);
``forecast --ckpt_path last`` / ``best`` read the newest run that ``fit`` made: tuning trials and
backtest folds say in their checkpoints which command made them (``RunKind``, under
:data:`KIND_KEY`) and are passed over.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from lstm_grad.errors import CheckpointError
from lstm_grad.training.compat import read_checkpoint

log = logging.getLogger(__name__)
NAME_TEMPLATE = "{config}-{source}"
KIND_KEY = "RunKind"  # the checkpoint's callbacks[...] entry that names the command: fit, tune, backtest


def run_name(template: str, config_files: Iterable[str | os.PathLike] = (), source: str | None = None) -> str:
    """Fill ``{config}`` and ``{source}`` in a logger name from the ``--config`` files and ``data.source``.

    >>> run_name(NAME_TEMPLATE, ["configs/residual.yaml"], "data/Gold Futures.csv")
    'residual-Gold_Futures'
    >>> run_name(NAME_TEMPLATE, [], "embedded"), run_name("mine", [], "x.csv"), run_name("a{1}-{source}", [], "x.csv")
    ('default-embedded', 'mine', 'a{1}-x')
    """
    configs = [Path(str(c)).stem for c in config_files]
    stem = Path(str(source or "embedded").split("://")[-1]).stem  # a path or a URL: the file's name
    fill = {"config": configs[-1] if configs else "default", "source": stem}
    for key, value in fill.items():  # only these two: any other brace in a name is the user's
        template = template.replace(f"{{{key}}}", re.sub(r"[^\w.-]+", "_", value).strip("_") or key)
    return template


def write_atomic(path: Path, write: Callable[[Path], Any]) -> None:
    """Have ``write(tmp)`` write a temporary file beside ``path``, then rename it over ``path``: a reader
    (another process of the same study, TensorBoard) sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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


def run_kind(last: Path) -> str:
    """Return the command that made the run of ``last`` (``fit`` for checkpoints older than the mark).

    Read through a memory map: the weights are not loaded.
    """
    try:
        checkpoint = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # unreadable: not ours to judge here; --ckpt_path names it if it is picked
        return "fit"
    state = (checkpoint.get("callbacks") or {}).get(KIND_KEY) if isinstance(checkpoint, dict) else None
    return str(state.get("command", "fit")) if isinstance(state, dict) else "fit"


def newest_fit(save_dir: str | Path) -> tuple[Path | None, int]:
    """Return the newest run made by ``fit`` under ``save_dir`` (any depth) and how many newer runs of
    other commands (tuning trials, backtest folds) were passed over."""
    lasts = [p for p in Path(save_dir).rglob("last.ckpt") if p.parent.name == "checkpoints" and p.is_file()]
    lasts.sort(key=lambda p: (p.stat().st_mtime, _version(p.parent.parent)), reverse=True)
    for skipped, last in enumerate(lasts):
        if run_kind(last) == "fit":
            return last.parent.parent, skipped
    return None, len(lasts)


def resolve_checkpoint(path: str, save_dir: str | Path = "runs") -> Path:
    """Turn ``last`` / ``best`` into the newest ``fit`` run's ``last.ckpt`` / best checkpoint (said in one
    log line); keep a path as is.

    The newest run is searched under ``save_dir`` at any depth (any experiment name). Its best
    checkpoint is the one its ``last.ckpt`` names (``ModelCheckpoint.best_model_path``), else its
    newest ``*.ckpt`` other than ``last.ckpt``.

    Raises:
        CheckpointError: no run of ``fit`` under ``save_dir``.
    """
    if path not in ("last", "best"):
        return Path(path)
    run, skipped = newest_fit(save_dir)
    if run is None:
        others = f" ({skipped} tuning / backtest run(s) are not fits)" if skipped else ""
        raise CheckpointError(f"--ckpt_path {path}: no run of python -m lstm_grad.fit with checkpoints/last.ckpt "
                              f"under '{save_dir}'{others}; train one with python -m lstm_grad.fit, or pass a checkpoint path")
    last = run / "checkpoints" / "last.ckpt"
    chosen = last if path == "last" else _best_of(last)
    passed = f", {skipped} newer tuning / backtest run(s) passed over" if skipped else ""
    log.info("--ckpt_path %s: taking %s, from the newest fit run under %s%s (pass a file to take another)", path,
             chosen, save_dir, passed)
    return chosen


def _best_of(last: Path) -> Path:
    for state in (read_checkpoint(last).get("callbacks") or {}).values():
        named = Path(str(state.get("best_model_path") or "")) if isinstance(state, dict) else Path()
        if named.name and named.is_file():
            return named
    others = [p for p in last.parent.glob("*.ckpt") if p.name != "last.ckpt"]
    return max(others, key=lambda p: p.stat().st_mtime) if others else last
