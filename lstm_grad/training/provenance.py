"""Provenance: which code made a number (the package version, the git commit and whether it was clean).

Results files and bug reports record it. Outside a git checkout (an installed wheel) the commit is
"unknown (not a git checkout)"; nothing here assumes a checkout.
"""
from __future__ import annotations

import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

CODE_PATHS = ("lstm_grad", "configs", "pyproject.toml")  # what the package's numbers depend on
CHECKOUT = Path(__file__).resolve().parents[2]  # the repository root when installed from a checkout


def code_state(folder: str | Path | None = None, paths: Sequence[str] = CODE_PATHS) -> tuple[str, list[str]]:
    """Return ``git rev-parse HEAD`` of the repository at ``folder`` (default: the package's checkout)
    and those of ``paths`` with uncommitted or untracked changes (``git status --porcelain``).

    Raises:
        OSError, subprocess.SubprocessError: outside a git checkout, or no git.
    """
    folder = Path(folder or CHECKOUT)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True,
                          check=True, timeout=30).stdout.strip()
    status = subprocess.run(["git", "status", "--porcelain", "--", *paths], cwd=folder, capture_output=True,
                            text=True, check=True, timeout=30).stdout
    return head, [line[3:] for line in status.splitlines() if line.strip()]  # "XY path"


def git_commit(folder: str | Path | None = None, paths: Sequence[str] = CODE_PATHS) -> str:
    """Return :func:`code_state`'s commit, plus "with uncommitted changes" when ``paths`` have any;
    "unknown (not a git checkout)" outside one."""
    try:
        head, changed = code_state(folder, paths)
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return f"{head} with uncommitted changes" if changed else head


def version() -> str:
    """Return the installed lstm-grad version ("unknown" when the package is not installed)."""
    try:
        return metadata.version("lstm-grad")
    except metadata.PackageNotFoundError:
        return "unknown"
