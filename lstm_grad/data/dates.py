"""Read the dates of a price table as people write them: date styles, times of day, eras.

``DATE_LIKE`` recognises ISO, ``MM/DD/YYYY`` / ``DD.MM.YYYY``, ``Jan 02, 2024``, ``02-Jan-24``, a time of
day in 24-hour or 12-hour form (``1/2/2024 1:15:00 PM``, ``2019-08-01 11-PM``), fractional seconds
(``01.01.2020 00:00:00.000``) and a UTC offset (``-05:00``, ``GMT+0200``); ``COMPACT_DATE`` MetaTrader 4's
``20240102``. A separate time of day (``<TIME>`` ``000000``, ``Time`` ``09:30`` or ``01:15:00 PM``) is combined
with the date, or ignored when it never changes. A date far in the future is refused: a Thai file's
Buddhist-era years (2563 = 2020) are read with ``era="buddhist"``.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from lstm_grad.data.columns import is_time_name
from lstm_grad.data.errors import LOG, DataError

ERAS = ("common", "buddhist")
BUDDHIST_OFFSET = 543  # Buddhist-era year - 543 = common-era year (Thailand: 2563 = 2020)
FUTURE_YEARS = 10  # a date more than this far past today cannot be a price history's
_TIME = r"\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:\s*[AaPp]\.?\s?[Mm]\.?)?"
_HOUR_HALF = r"\d{1,2}-[AaPp][Mm]"  # CryptoDataDownload's hourly "2019-08-01 11-PM"
_ZONE = r"(?:\s*(?:Z|UTC|GMT)?\s*[+-]\d{2}:?\d{2}|\s*(?:Z|UTC|GMT))?"
DATE_LIKE = re.compile(
    rf"^\s*(?:\d{{4}}[-/.]\d{{1,2}}[-/.]\d{{1,2}}(?:[ T](?:{_TIME}|{_HOUR_HALF}))?{_ZONE}"
    rf"|\d{{1,2}}[-/.]\d{{1,2}}[-/.]\d{{2,4}}(?:,?\s+(?:{_TIME}|{_HOUR_HALF}))?{_ZONE}"
    r"|[A-Za-z]{3,9}\.? \d{1,2},? \d{4}|\d{1,2}[ -][A-Za-z]{3,9}\.?[ -]\d{2,4})\s*$"
)
COMPACT_DATE = re.compile(r"^\s*(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\s*$")  # 20240102
_TIME_OF_DAY = re.compile(r"^\s*(\d{1,2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?\s*(?:([AaPp])\.?\s?[Mm]\.?)?\s*$")
_COMPACT_TIME = re.compile(r"^\s*(\d{2})(\d{2})(\d{2})?\s*$")  # MT4's <TIME> 000000, only where named time
_HALF_IN_STAMP = re.compile(r"(?<=[\sT])(\d{1,2})(?::(\d{2})(?::(\d{2})(\.\d+)?)?|-(?=[AaPp]))\s*([AaPp])\.?\s?[Mm]\.?(?=\s|$)")
_TZ_AFTER_TIME = r"(?<=\d:\d\d)(:\d\d(?:\.\d+)?)?\s*(?:(?:Z|UTC|GMT)\s*(?:[+-]\d\d:?\d\d)?|[+-]\d\d:?\d\d)$"
_YEAR4 = re.compile(r"^(\d{4})(?=\d{4}$)|(?<!\d)(\d{4})(?!\d)")
_YEAR2 = re.compile(r"^(\d{1,2}[-/.]\d{1,2}[-/.]|\d{1,2}[ -][^\d\s]+[ -])(\d{2})(?!\d)")


def time_of_day_column(table: pd.DataFrame, names: list[str], date_idx: int) -> int | None:
    """Return a separate time-of-day column (``<TIME>`` 000000, ``Time`` 09:30 / 01:15:00 PM), or None.

    Cells all ``HH:MM[:SS]`` with an optional AM/PM; or all ``HHMM[SS]`` in a column whose name says
    time (MT4's ``<TIME>``).
    """
    for j, name in enumerate(names):
        cells = [c for c in table[j] if c]
        if j == date_idx or not cells:
            continue
        if all(_TIME_OF_DAY.match(c) or (is_time_name(name) and _COMPACT_TIME.match(c)) for c in cells):
            return j
    return None


def _seconds(cell: str) -> int | None:
    """Seconds after midnight of ``09:30``, ``13:15:00``, ``01:15:00 PM``, ``093000``; None if it is none."""
    hit = _TIME_OF_DAY.match(cell) or _COMPACT_TIME.match(cell)
    if not hit:
        return None
    h, m, s = (int(g or 0) for g in hit.groups()[:3])
    half = hit.groups()[3] if hit.re is _TIME_OF_DAY else None
    if half:  # 12-hour clock: 12:xx AM is 00:xx, 12:xx PM is 12:xx
        if not 1 <= h <= 12:
            return None
        h = h % 12 + (12 if half in "Pp" else 0)
    return None if h > 23 or m > 59 or s > 59 else 3600 * h + 60 * m + s


def add_time_of_day(dates: pd.DatetimeIndex, cells: pd.Series, name: str, date_name: str, lines: np.ndarray,
                     path: Path) -> pd.DatetimeIndex:
    """Combine the dates with a time-of-day column, or ignore it (logged) when it never changes."""
    seconds = np.zeros(len(cells), dtype="int64")
    for i, cell in enumerate(cells):
        value = _seconds(cell)
        if value is None:
            raise DataError(f"{path}: column '{name}', line {lines[i]}: cannot read '{cell}' as a time of day; "
                            "fix the cell or delete the row")
        seconds[i] = value
    if len(np.unique(seconds)) == 1 or (dates != dates.normalize()).any():
        LOG.info("%s: column '%s' is a time of day that %s; ignored", path, name,
                 f"is {cells.iloc[0]} in every row" if len(np.unique(seconds)) == 1
                 else f"repeats what column '{date_name}' holds")
        return dates
    LOG.info("%s: combined date column '%s' with time column '%s' (%d distinct times of day)", path,
             date_name, name, len(np.unique(seconds)))
    return dates + pd.to_timedelta(seconds, unit="s")


def _to_24h(hit: re.Match) -> str:
    """Rewrite one 12-hour time (``1:15:00 PM``, ``11-PM``) as 24-hour; an impossible one is left to fail."""
    h = int(hit.group(1))
    if not 1 <= h <= 12:
        return hit.group(0)
    h = h % 12 + (12 if hit.group(5) in "Pp" else 0)
    seconds = f":{hit.group(3)}{hit.group(4) or ''}" if hit.group(3) else ""
    return f"{h:02d}:{hit.group(2) or '00'}{seconds}"


def parse_dates(cells: pd.Series, name: str, dayfirst: bool, lines: np.ndarray, path: Path,
                era: str = "common") -> pd.DatetimeIndex:
    """Parse one date style strictly into (N,) timestamps; 12-hour times become 24-hour ones.

    A UTC offset is dropped to keep the local wall-clock time (daily bars keep their local date). With
    ``era="buddhist"`` years are Buddhist-era years (2563 -> 2020, a two-digit 63 -> 2020 too). A date
    more than ``FUTURE_YEARS`` years in the future is a DataError that names the likely cause.
    """
    s = cells.astype(str).str.strip()
    if s.str.contains(r"\d(?:\s*|-)[AaPp]\.?\s?[Mm]\.?$", regex=True).any():
        s = s.str.replace(_HALF_IN_STAMP, _to_24h, regex=True)
    has_tz = bool(s.str.contains(_TZ_AFTER_TIME.replace("(:", "(?::"), regex=True).any())
    if has_tz:
        s = s.str.replace(_TZ_AFTER_TIME, r"\1", regex=True)
    if era == "buddhist":
        s = _from_buddhist(s, name, lines, path)
    s = s.str.replace(r"^(\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}),\s*", r"\1 ", regex=True)  # "1/2/2024, 13:15"
    first = s[s != ""].iloc[0] if (s != "").any() else ""
    numeric = re.match(r"^(\d{1,2})([-/.])(\d{1,2})\2(\d{2,4})(\s+\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?)?$", first)
    if COMPACT_DATE.match(first):  # MetaTrader 4's <DTYYYYMMDD>: 20240102
        parsed = pd.to_datetime(s, format="%Y%m%d", errors="coerce")
    elif re.match(r"^\d{4}[-/.]", first):
        iso = s.str.replace(r"^(\d{4})[/.](\d{1,2})[/.](\d{1,2})", r"\1-\2-\3", regex=True)
        parsed = pd.to_datetime(iso, format="ISO8601", errors="coerce")
    elif numeric:  # 01/02/2024, 02.01.2024 13:15, 1/2/24 1:15:00 PM: rewritten as ISO, then read strictly
        parsed = pd.to_datetime(_numeric_to_iso(s, numeric.group(2), dayfirst), format="ISO8601", errors="coerce")
        _report_ambiguous(s, dayfirst, path, name)
    else:
        parsed = pd.to_datetime(s, format="mixed", dayfirst=dayfirst, errors="coerce")
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if len(bad):
        value = cells.iloc[bad[0]]
        hint = "fix the cell, set data.dayfirst, or name the date column with data.date_column"
        if numeric and not dayfirst and re.match(r"^(1[3-9]|[23]\d)[-/.]", value):
            hint = "the dates look day-first: set data.dayfirst=true"
        year = _YEAR4.search(value)
        if era == "common" and year and 2400 <= int(year.group(1) or year.group(2)) < 2800:
            y = int(year.group(1) or year.group(2))
            hint += f"; {y} is a Buddhist-era year ({y} - {BUDDHIST_OFFSET} = {y - BUDDHIST_OFFSET}): set data.era=buddhist"
        raise DataError(f"{path}: column '{name}', line {lines[bad[0]]}: cannot parse date '{value}'; {hint}")
    index = pd.DatetimeIndex(parsed)
    stamps = index.unique().sort_values()
    if has_tz and (len(stamps) < 2 or (stamps[1:] - stamps[:-1]).median() >= pd.Timedelta(hours=20)):
        index = index.normalize()  # daily bars stamped at a session's UTC hour: the date is the bar
    _refuse_future(index, cells, name, lines, path, era)
    return index


def _numeric_to_iso(s: pd.Series, sep: str, dayfirst: bool) -> pd.Series:
    """Rewrite ``D/M/Y`` or ``M/D/Y`` (``sep`` as in the first cell) as ``Y-M-D``; a two-digit year is
    19yy from 69 up, else 20yy (as ``%y``). A cell of another shape becomes '' and fails to parse."""
    parts = s.str.extract(rf"^(\d{{1,2}}){re.escape(sep)}(\d{{1,2}}){re.escape(sep)}(\d{{4}}|\d{{2}})"
                          r"(\s+\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?$")
    day, month = (parts[0], parts[1]) if dayfirst else (parts[1], parts[0])
    year = parts[2].fillna("")
    yy = pd.to_numeric(year.where(year.str.len() == 2), errors="coerce")  # two-digit years, else NaN
    year = year.where(yy.isna(), (yy + np.where(yy >= 69, 1900, 2000)).astype("Int64").astype(str))
    iso = year + "-" + month.str.zfill(2) + "-" + day.str.zfill(2) + parts[3].fillna("")
    return iso.where(parts[0].notna(), "")


def _from_buddhist(s: pd.Series, name: str, lines: np.ndarray, path: Path) -> pd.Series:
    """Subtract 543 from each date's Buddhist-era year (a two-digit ``63`` is 2563); refuse a common-era year."""
    out = []
    for i, cell in enumerate(s):
        hit = _YEAR4.search(cell)
        if hit:
            year = int(hit.group(1) or hit.group(2))
            if year < 2400:
                raise DataError(f"{path}: column '{name}', line {lines[i]}: date '{cell}' has the year {year}, not a "
                                "Buddhist-era year (2400 or later) as data.era=buddhist says; fix the cell or set "
                                "data.era=common")
            cell = cell[:hit.start()] + str(year - BUDDHIST_OFFSET) + cell[hit.end():]
        elif (short := _YEAR2.match(cell)) is not None:
            cell = f"{short.group(1)}{2500 + int(short.group(2)) - BUDDHIST_OFFSET}{cell[short.end():]}"
        out.append(cell)
    return pd.Series(out, index=s.index, dtype=object)


def _refuse_future(index: pd.DatetimeIndex, cells: pd.Series, name: str, lines: np.ndarray, path: Path,
                   era: str) -> None:
    """Raise on the first date more than FUTURE_YEARS years ahead, naming the likely cause and the flag."""
    limit = pd.Timestamp.now().normalize() + pd.DateOffset(years=FUTURE_YEARS)
    late = np.flatnonzero(index > limit)
    if not len(late):
        return
    i = int(late[0])
    cell, year = str(cells.iloc[i]).strip(), index[i].year
    two_digit = not _YEAR4.search(cell) and not COMPACT_DATE.match(cell)
    if era == "common" and 2400 <= year < 2800:
        hint = (f"this looks like a Buddhist-era year (Thai calendar: {year} - {BUDDHIST_OFFSET} = "
                f"{year - BUDDHIST_OFFSET}): set data.era=buddhist")
    elif era == "common" and two_digit:
        yy = year % 100
        hint = (f"a two-digit year read as {year}; if it is a Buddhist-era year (25{yy:02d} - {BUDDHIST_OFFSET} = "
                f"{2500 + yy - BUDDHIST_OFFSET}) set data.era=buddhist, else write four-digit years")
    else:
        hint = "a price history cannot hold future dates: fix the cell or the date column (data.date_column)"
    raise DataError(f"{path}: column '{name}', line {lines[i]}: date '{cell}' is in the year {year}, more than "
                    f"{FUTURE_YEARS} years in the future; {hint}")


def _report_ambiguous(cells: pd.Series, dayfirst: bool, path: Path, name: str) -> None:
    """Log the reading chosen for numeric dates that are valid both ways (no part above 12)."""
    parts = cells.str.extract(r"^(\d{1,2})[-/.](\d{1,2})[-/.]").dropna().astype(int)
    if len(parts) and (parts <= 12).all().all() and (parts[0] != parts[1]).any():
        LOG.info("%s: dates in column '%s' such as '%s' read as %s (no day above 12 tells); set data.dayfirst=%s "
                 "if that is wrong", path, name, cells.iloc[0], "day/month/year" if dayfirst else "month/day/year",
                 str(not dayfirst).lower())


def parse_end(end: object) -> pd.Timestamp | None:
    """Return ``data.end`` as the last instant kept: a date without a time of day keeps that whole day
    (an intraday file's bars up to 23:59:59), a timestamp keeps the bars up to it; None stays None.

    >>> parse_end("2024-03-29"), parse_end("2021-02-24 06:00")
    (Timestamp('2024-03-29 23:59:59.999999999'), Timestamp('2021-02-24 06:00:00'))
    """
    if end is None or isinstance(end, pd.Timestamp):
        return end
    text = str(end).strip()
    try:
        stamp = pd.Timestamp(text)
    except (ValueError, TypeError):
        stamp = pd.NaT
    if pd.isna(stamp) or stamp.tz is not None:
        raise DataError(f"data.end={end!r} is not a date; write it as YYYY-MM-DD (or YYYY-MM-DD HH:MM for intraday "
                        "bars) or leave it null")
    if ":" not in text and stamp == stamp.normalize():
        stamp = stamp.as_unit("ns") + pd.Timedelta(days=1) - pd.Timedelta(1, "ns")
    return stamp


def end_text(end: pd.Timestamp) -> str:
    """Write ``data.end`` as the user would: the date alone when it keeps a whole day."""
    whole_day = end + pd.Timedelta(1, "ns") == (end + pd.Timedelta(1, "ns")).normalize()
    return f"{end:%Y-%m-%d}" if whole_day else f"{end:%Y-%m-%d %H:%M}"
