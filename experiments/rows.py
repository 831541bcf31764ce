"""Result rows on disk (``runs.csv``, ``depth.csv``, ``default_selection.csv``): read them, rewrite
them atomically, so that a sweep stopped at any point leaves complete rows only."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def read_rows(path: Path) -> list[dict[str, str]]:
    """Return the CSV's rows as dicts of strings; no file means no rows."""
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


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
