"""Read the CSV files people really download for gold into one raw numeric table.

Sniffed, not special-cased per site: the delimiter (``,`` ``;`` tab), the header rows (one, or
the three of ``yf.download(...).to_csv()``: fields, ``Ticker``, ``Date``; MetaTrader's ``<CLOSE>``
brackets dropped), the date column and its style (``dates.py``: ISO, ``MM/DD/YYYY``, day-first with
``dayfirst=True``, ``2024-01-02 00:00:00-05:00``, 12-hour ``1/2/2024 1:15:00 PM``, MetaTrader's
``20240102`` / ``2024.01.02`` beside a ``<TIME>`` column, Buddhist-era years with ``era="buddhist"``)
and the number style (``2,063.70``, ``2063,70`` in semicolon files, ``12.5K`` / ``1.2M``, ``-0.35%``;
``null`` / ``.`` / ``-`` / ``#N/A`` / empty mean missing). Cleaning policy lives in ``series.py``.
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lstm_grad.data.columns import is_date_name, is_time_name, strip_brackets
from lstm_grad.data.dates import (
    COMPACT_DATE,
    DATE_LIKE,
    add_time_of_day,
    parse_dates,
    time_of_day_column,
)
from lstm_grad.data.errors import LOG, DataError

MISSING_MARKERS = frozenset({"", "null", "nan", "na", "n/a", "#n/a", ".", "-", "--", "none", "\u2014"})
_SUFFIX = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}


@dataclass
class RawTable:
    """A CSV's numeric columns in file order; ``lines`` keeps each row's 1-based file line for messages."""

    dates: pd.DatetimeIndex
    values: pd.DataFrame
    lines: np.ndarray
    date_column: str
    text_columns: list[str] = field(default_factory=list)  # left out: text, not numbers


def read_csv_table(path: str | os.PathLike, *, date_column: str | None = None,
                   dayfirst: bool = False, era: str = "common") -> RawTable:
    """Parse ``path`` into dates plus float columns (NaN where missing) without reordering rows.

    ``era="buddhist"``: the dates' years are Buddhist-era years (``dates.parse_dates``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; check data.source (a CSV path or 'embedded')")
    try:
        raw = path.read_bytes()
    except OSError as error:  # no permission, a file that vanished, an I/O error
        raise DataError(f"{path}: cannot read the file ({error.strerror or error}); check data.source") from None
    text = _decode(raw, path)
    numbered = [(i + 1, line) for i, line in enumerate(text.splitlines()) if line.strip()]
    if not numbered:
        raise DataError(f"{path}: file is empty; export the price history again")
    delimiter = _sniff_delimiter(numbered[0][1])
    rows = [_split_line(t, n, delimiter, path) for n, t in numbered]  # one row per line, even with a stray quote
    line_of = np.array([n for n, _ in numbered])
    n_header = _count_header_rows(rows)
    width = max(len(r) for r in rows[: max(n_header, 1)])
    names = _column_names(rows[:n_header], width, path)
    if not n_header:
        LOG.info("%s: no header row; columns named %s", path, names)
    body = [r + [""] * (width - len(r)) for r in rows[n_header:]]
    lines = line_of[n_header:]
    keep = np.array([any(r) for r in body], dtype=bool)  # rows of bare delimiters are blank lines
    body, lines = [r for r, k in zip(body, keep) if k], lines[keep]
    if not body:
        raise DataError(f"{path}: header only, no data rows; export a file with prices in it")
    for r, n in zip(body, lines):
        if any(r[width:]):
            raise DataError(f"{path}: line {n}: {len(r)} fields but the header has {width}; fix the row")
    table = pd.DataFrame([r[:width] for r in body], columns=range(width), dtype=object)
    date_idx = _find_date_column(table, names, date_column, path)
    body_end = _drop_footer(table[date_idx], lines, path)
    table, lines = table.iloc[:body_end], lines[:body_end]
    dates = parse_dates(table[date_idx], names[date_idx], dayfirst, lines, path, era)
    time_idx = time_of_day_column(table, names, date_idx)
    if time_idx is not None:
        dates = add_time_of_day(dates, table[time_idx].astype(str).str.strip(), names[time_idx],
                                names[date_idx], lines, path)
    values, text, comma = {}, [], []
    for j, name in enumerate(names):
        if j not in (date_idx, time_idx):
            parsed = _parse_numbers(table[j], name, delimiter, lines, path, comma)
            if parsed is not None:
                values[name] = parsed
            else:
                text.append(name)
    if text:
        LOG.info("%s: column(s) %s hold text, not numbers; left out", path, text)
    if comma:
        LOG.info("%s: column(s) %s read with ',' as the decimal mark (2.063,70 = 2063.70)", path, comma)
    frame = pd.DataFrame(values, index=pd.RangeIndex(len(table)), dtype="float64")
    return RawTable(dates=dates, values=frame, lines=lines, date_column=names[date_idx], text_columns=text)


def _split_line(text: str, number: int, delimiter: str, path: Path) -> list[str]:
    """Split one line into stripped cells; an unclosed quote ends at the line's end, not the file's."""
    try:
        return [cell.strip() for cell in next(csv.reader([text], delimiter=delimiter), [])]
    except csv.Error as error:  # e.g. a NUL byte
        raise DataError(f"{path}: line {number}: cannot split into cells ({error}); fix or delete the line") from None


def _decode(raw: bytes, path: Path) -> str:
    """Strip a UTF-8 BOM (Investing.com writes one); fall back to latin-1 for old exports."""
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as error:
            raise DataError(f"{path}: starts like a UTF-16 file but byte {error.start} cannot be decoded "
                            f"({error.reason}); save it again as UTF-8 CSV") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _sniff_delimiter(header: str) -> str:
    """Pick ``;`` or tab when the first line uses it outside quotes, else ``,``."""
    unquoted = re.sub(r'"[^"]*"', "", header)
    return ";" if ";" in unquoted else "\t" if "\t" in unquoted else ","


def _count_header_rows(rows: list[list[str]]) -> int:
    """Count rows before the first one holding a date: 0 (headerless: a date, or no letter at all, in
    the first row), 1, or yfinance's 3."""
    if any(DATE_LIKE.match(c) for c in rows[0]) or not any(ch.isalpha() for c in rows[0] for ch in c):
        return 0
    for k in range(1, min(len(rows), 6)):
        if any(DATE_LIKE.match(c) for c in rows[k]):
            return k
    return 1


def _column_names(header_rows: list[list[str]], width: int, path: Path) -> list[str]:
    """Name columns from one header row, or merge yfinance's field / ticker / ``Date`` rows.

    MetaTrader's bracketed names lose their brackets (``<CLOSE>`` -> ``CLOSE``); a repeated name
    gets a suffix (``Close``, ``Close.1``); both are logged.
    """
    if not header_rows:
        return ["date", "price"] if width == 2 else ["date"] + [f"column_{j + 1}" for j in range(1, width)]
    raw = [[r[j].lstrip("\ufeff").strip() for r in header_rows if j < len(r) and r[j].strip()] for j in range(width)]
    pieces = [[strip_brackets(p) for p in column] for column in raw]
    if pieces != raw:
        LOG.info("%s: MetaTrader header: column names read without their <> brackets", path)
    names = [p[0] if p else f"column_{j + 1}" for j, p in enumerate(pieces)]
    if len(header_rows) > 1 and pieces[0]:
        names[0] = pieces[0][-1]  # yfinance: "Price" / "Ticker" / "Date" -> "Date"
        repeated = {n for n in names[1:] if names[1:].count(n) > 1}
        for j in range(1, width):
            if names[j] in repeated and len(pieces[j]) > 1:
                names[j] = f"{pieces[j][0]} {pieces[j][1]}"  # several tickers: "Close GC=F"
    seen: dict[str, int] = {}
    for j, name in enumerate(names):
        seen[name] = seen.get(name, 0) + 1
        names[j] = name if seen[name] == 1 else f"{name}.{seen[name] - 1}"
        if seen[name] > 1:
            LOG.info("%s: column %d repeats the name '%s'; called '%s'", path, j + 1, name, names[j])
    return names


def _find_date_column(table: pd.DataFrame, names: list[str], wanted: str | None, path: Path) -> int:
    """Return the date column: named by the user; else one whose name has a date token (``Date``,
    ``observation_date``, ``<DTYYYYMMDD>``); else one named ``time`` holding dates (MT5's ``time``);
    else the first column whose cells are all dates. Names match by whole tokens, not substrings."""
    if wanted is not None:
        keys = {wanted, wanted.strip().casefold(), strip_brackets(wanted.strip()).casefold()}
        for match in (lambda n: n == wanted, lambda n: n.casefold() in keys):
            hits = [j for j, n in enumerate(names) if match(n)]
            if hits:
                return hits[0]
        raise DataError(f"{path}: date column '{wanted}' not found; available columns: {names}; "
                        "fix data.date_column")
    dated = [j for j, name in enumerate(names) if is_date_name(name)]
    if dated:
        return dated[0]
    head = table.head(5)

    def holds_dates(j: int) -> bool:
        cells = [c for c in head[j] if c]
        return bool(cells) and all(DATE_LIKE.match(c) for c in cells)

    timed = [j for j, name in enumerate(names) if is_time_name(name) and holds_dates(j)]
    if timed:
        return timed[0]
    for j in table.columns:
        if holds_dates(int(j)):
            return int(j)
    raise DataError(f"{path}: no date column found among {names}; name it with data.date_column")


def _drop_footer(cells: pd.Series, lines: np.ndarray, path: Path) -> int:
    """Drop trailing summary rows (old Investing.com exports end with 'Highest: ...'); return the body end."""
    end = len(cells)

    def dated(cell: str) -> bool:
        return bool(DATE_LIKE.match(cell) or COMPACT_DATE.match(cell))

    while end > 1 and cells.iloc[end - 1] and not dated(cells.iloc[end - 1]):
        end -= 1
    if end < len(cells) and dated(cells.iloc[end - 1]):
        LOG.info("%s: dropped %d trailing non-data row(s) from line %d (a footer)",
                 path, len(cells) - end, lines[end])
        return end
    return len(cells)


def _parse_numbers(cells: pd.Series, name: str, delimiter: str, lines: np.ndarray,
                   path: Path, comma: list[str]) -> pd.Series | None:
    """Parse one column to float64 (NaN = missing); None for a text column such as a ticker name.
    ``name`` is appended to ``comma`` when the column is read with a decimal comma."""
    s = cells.astype(str).str.strip()
    missing = s.str.lower().isin(MISSING_MARKERS)
    s = s.str.replace(r"^([-+]?)[$\u20ac\u00a3]\s*", r"\1", regex=True)
    s = s.str.replace(r"(?<=\d)[\s\u00a0\u202f'](?=\d)", "", regex=True).str.rstrip("%")
    suffix = s.str.extract(r"(?<=\d)([KkMmBbTt])$", expand=False).str.upper()
    scale = suffix.map(_SUFFIX).fillna(1.0).astype("float64")
    s = s.str.replace(r"(?<=\d)[KkMmBbTt]$", "", regex=True)
    has_comma, has_dot = s.str.contains(",", regex=False), s.str.contains(".", regex=False)
    comma_last = has_comma & has_dot & (s.str.rfind(",") > s.str.rfind("."))
    comma_only = has_comma & ~has_dot
    thousands_only = s[comma_only].str.fullmatch(r"[-+]?\d{1,3}(,\d{3})+").all()
    decimal_comma = bool(comma_last.any() or (comma_only.any() and (delimiter != "," or not thousands_only)))
    if decimal_comma:
        s = s.str.replace(".", "", regex=False).str.replace(",", ".", regex=False)  # 2.063,70 -> 2063.70
    else:
        s = s.str.replace(",", "", regex=False)  # 2,063.70 -> 2063.70
    values = pd.to_numeric(s.where(~missing, None), errors="coerce").astype("float64") * scale
    bad = values.isna().to_numpy() & ~missing.to_numpy()
    if bad.all() and bad.any():
        return None  # a text column (a ticker name): the caller logs it
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: column '{name}', line {lines[i]}: cannot parse '{cells.iloc[i]}' as a number; "
                        "fix the cell or choose other columns with data.target / data.features")
    infinite = np.flatnonzero(np.isinf(values.to_numpy()))
    if len(infinite):
        i = int(infinite[0])
        raise DataError(f"{path}: column '{name}', line {lines[i]}: value '{cells.iloc[i]}' is infinite (inf); "
                        "fix the cell or delete the row")
    if decimal_comma:
        comma.append(name)
    return values.reset_index(drop=True)
