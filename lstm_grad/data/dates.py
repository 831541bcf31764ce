"""Read the dates of a price table: date styles, MetaTrader's compact dates and separate time-of-day columns.

``DATE_LIKE`` recognises ISO, ``MM/DD/YYYY`` / ``DD.MM.YYYY``, ``Jan 02, 2024``, ``02-Jan-24`` and
timestamps with a UTC offset; ``COMPACT_DATE`` MetaTrader 4's ``20240102``. A separate time of day
(``<TIME>`` ``000000``, ``Time`` ``09:30``) is combined with the date, or ignored when it never changes.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from lstm_grad.data.columns import is_time_name
from lstm_grad.data.errors import LOG, DataError

DATE_LIKE = re.compile(
    r"^\s*(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}(?:[ T]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?\s*(?:Z|[+-]\d{2}:?\d{2})?"
    r"|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}(?:\s+\d{1,2}:\d{2}(?::\d{2})?)?"
    r"|[A-Za-z]{3,9}\.? \d{1,2},? \d{4}|\d{1,2}[ -][A-Za-z]{3,9}\.?[ -]\d{2,4})\s*$"
)
COMPACT_DATE = re.compile(r"^\s*(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\s*$")  # 20240102
_TIME_OF_DAY = re.compile(r"^\s*(\d{1,2}):(\d{2})(?::(\d{2}))?\s*$")  # 09:30, 00:00:00
_COMPACT_TIME = re.compile(r"^\s*(\d{2})(\d{2})(\d{2})?\s*$")  # MT4's <TIME> 000000, only where named time
_TZ_AFTER_TIME = r"(?<=\d:\d\d)(?::\d\d(?:\.\d+)?)?\s*(?:Z|[+-]\d\d:?\d\d)$"


def time_of_day_column(table: pd.DataFrame, names: list[str], date_idx: int) -> int | None:
    """Return a separate time-of-day column (``<TIME>`` 000000, ``Time`` 09:30), or None.

    Cells all ``HH:MM[:SS]``; or all ``HHMM[SS]`` in a column whose name says time (MT4's ``<TIME>``).
    """
    for j, name in enumerate(names):
        cells = [c for c in table[j] if c]
        if j == date_idx or not cells:
            continue
        if all(_TIME_OF_DAY.match(c) or (is_time_name(name) and _COMPACT_TIME.match(c)) for c in cells):
            return j
    return None


def add_time_of_day(dates: pd.DatetimeIndex, cells: pd.Series, name: str, date_name: str, lines: np.ndarray,
                     path: Path) -> pd.DatetimeIndex:
    """Combine the dates with a time-of-day column, or ignore it (logged) when it never changes."""
    seconds = np.zeros(len(cells), dtype="int64")
    for i, cell in enumerate(cells):
        hit = _TIME_OF_DAY.match(cell) or _COMPACT_TIME.match(cell)
        h, m, s = (int(g or 0) for g in hit.groups()) if hit else (99, 0, 0)
        if h > 23 or m > 59 or s > 59:
            raise DataError(f"{path}: column '{name}', line {lines[i]}: cannot read '{cell}' as a time of day; "
                            "fix the cell or delete the row")
        seconds[i] = 3600 * h + 60 * m + s
    if len(np.unique(seconds)) == 1 or (dates != dates.normalize()).any():
        LOG.info("%s: column '%s' is a time of day that %s; ignored", path, name,
                 f"is {cells.iloc[0]} in every row" if len(np.unique(seconds)) == 1
                 else f"repeats what column '{date_name}' holds")
        return dates
    LOG.info("%s: combined date column '%s' with time column '%s' (%d distinct times of day)", path,
             date_name, name, len(np.unique(seconds)))
    return dates + pd.to_timedelta(seconds, unit="s")


def parse_dates(cells: pd.Series, name: str, dayfirst: bool, lines: np.ndarray, path: Path) -> pd.DatetimeIndex:
    """Parse one date style strictly; a UTC offset is dropped to keep the local calendar date."""
    s = cells.astype(str).str.strip()
    has_tz = bool(s.str.contains(_TZ_AFTER_TIME, regex=True).any())
    if has_tz:
        s = s.str.replace(_TZ_AFTER_TIME, "", regex=True)
    first = s[s != ""].iloc[0] if (s != "").any() else ""
    numeric = re.match(r"^(\d{1,2})([-/.])(\d{1,2})\2(\d{2,4})(\s+\d{1,2}:\d{2}(:\d{2})?)?$", first)
    if COMPACT_DATE.match(first):  # MetaTrader 4's <DTYYYYMMDD>: 20240102
        parsed = pd.to_datetime(s, format="%Y%m%d", errors="coerce")
    elif re.match(r"^\d{4}[-/.]", first):
        iso = s.str.replace(r"^(\d{4})[/.](\d{1,2})[/.](\d{1,2})", r"\1-\2-\3", regex=True)
        parsed = pd.to_datetime(iso, format="ISO8601", errors="coerce")
    elif numeric:
        sep = numeric.group(2)
        fmt = sep.join(["%d", "%m"] if dayfirst else ["%m", "%d"]) + sep + ("%Y" if len(numeric.group(4)) == 4 else "%y")
        fmt += "" if not numeric.group(5) else " %H:%M:%S" if numeric.group(6) else " %H:%M"
        parsed = pd.to_datetime(s, format=fmt, errors="coerce")
        _report_ambiguous(s, dayfirst, path, name)
    else:
        parsed = pd.to_datetime(s, format="mixed", dayfirst=dayfirst, errors="coerce")
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if len(bad):
        value = cells.iloc[bad[0]]
        hint = "fix the cell, set data.dayfirst, or name the date column with data.date_column"
        if numeric and not dayfirst and re.match(r"^(1[3-9]|[23]\d)[-/.]", value):
            hint = "the dates look day-first: set data.dayfirst=true"
        raise DataError(f"{path}: column '{name}', line {lines[bad[0]]}: cannot parse date '{value}'; {hint}")
    index = pd.DatetimeIndex(parsed)
    return index.normalize() if has_tz else index


def _report_ambiguous(cells: pd.Series, dayfirst: bool, path: Path, name: str) -> None:
    """Log the reading chosen for numeric dates that are valid both ways (no part above 12)."""
    parts = cells.str.extract(r"^(\d{1,2})[-/.](\d{1,2})[-/.]").dropna().astype(int)
    if len(parts) and (parts <= 12).all().all() and (parts[0] != parts[1]).any():
        LOG.info("%s: dates in column '%s' such as '%s' read as %s (no day above 12 tells); set data.dayfirst=%s "
                 "if that is wrong", path, name, cells.iloc[0], "day/month/year" if dayfirst else "month/day/year",
                 str(not dayfirst).lower())
