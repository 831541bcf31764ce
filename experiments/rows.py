"""Result rows on disk (``runs.csv``, ``depth.csv``, ``default_selection.csv``): read them, rewrite
them atomically, so that a sweep stopped at any point leaves complete rows only."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


RENAMED = ("", "val_", "test_")  # prefixes of the columns that were called "mase" before issue 23


def upgrade_row(row: dict[str, str]) -> dict[str, str]:
    """Read a row written before issue 23 in today's names: its ``mase`` (and ``val_mase``, ``test_mase``) was
    MAE / persistence MAE on the same targets, which is now ``rel_mae``; Hyndman's ``mase`` is unknown there.

    >>> upgrade_row({"mae": "6.5", "mase": "1.01", "val_mase": "0.99"})
    {'mae': '6.5', 'rel_mae': '1.01', 'val_rel_mae': '0.99', 'mase': '', 'val_mase': ''}
    """
    out = dict(row)
    for prefix in RENAMED:
        old, new = f"{prefix}mase", f"{prefix}rel_mae"
        if old in out and new not in out:
            out[new] = out.pop(old)
    for prefix in RENAMED:
        if f"{prefix}rel_mae" in out and f"{prefix}mase" not in out:
            out[f"{prefix}mase"] = ""
    return out


def read_rows(path: Path) -> list[dict[str, str]]:
    """Return the CSV's rows as dicts of strings, in today's column names (:func:`upgrade_row`); no file
    means no rows."""
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return [upgrade_row(row) for row in csv.DictReader(handle)]


def write_rows(path: Path, rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> None:
    """Rewrite the whole CSV through a temporary file and ``os.replace`` (atomic on POSIX).

    Floats are written with 6 significant digits; keys outside ``columns`` are left out.
    """
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    os.replace(tmp, path)
