"""Property: on any bytes or small table, ``load_series`` returns a clean frame or raises DataError.

Nothing else may escape (no ``KeyError``, ``IndexError``, pandas ``ParserError``, ``OverflowError`` ...):
the CLI turns DataError into one line, anything else would be a traceback for the user.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from lstm_grad.data import DataError, GoldDataModule, load_series

FOLDER = Path(tempfile.mkdtemp(prefix="property_csv_"))
EXAMPLES = int(os.environ.get("LSTM_GRAD_EXAMPLES", "250"))  # a deeper search: LSTM_GRAD_EXAMPLES=5000
# derandomize: CI explores the same examples on every run (set LSTM_GRAD_EXAMPLES higher to search more)
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
POLICIES = st.fixed_dictionaries({
    "missing": st.sampled_from(["ffill", "drop", "error"]),
    "duplicates": st.sampled_from(["error", "last"]),
    "dayfirst": st.booleans(),
    "date_column": st.sampled_from([None, None, None, "Date", "nope", "<DTYYYYMMDD>", "time"]),
    "target": st.sampled_from([None, None, None, "Close", "Price", "price", "GLD", "CLOSE"]),
    "last_n_days": st.sampled_from([None, None, 1, 3]),
    "era": st.sampled_from(["common", "common", "buddhist"]),
})

HEADERS = [
    ["Date", "Open", "High", "Low", "Close", "Adj Close", "Volume"],  # Yahoo
    ['"Date"', '"Price"', '"Open"', '"High"', '"Low"', '"Vol."', '"Change %"'],  # Investing.com
    ["date", "price"],  # plain
    ["observation_date", "GOLDAMGBD228NLBM"],  # FRED
    [],  # headerless
    ["Price", "Close"],  # yfinance's first of three header rows, width chosen below
    ["Date", "SPX", "GLD", "USO", "SLV", "EUR/USD"],  # multi-asset "gold price data"
    ["Date", "USD (AM)", "USD (PM)", "GBP (AM)", "GBP (PM)"],  # LBMA fixes
    ["<DTYYYYMMDD>", "<TIME>", "<OPEN>", "<HIGH>", "<LOW>", "<CLOSE>", "<VOL>"],  # MetaTrader 4
    ["<DATE>", "<TIME>", "<OPEN>", "<HIGH>", "<LOW>", "<CLOSE>", "<TICKVOL>", "<VOL>", "<SPREAD>"],  # MetaTrader 5
    ["time", "open", "high", "low", "close", "tick_volume", "spread", "real_volume"],  # MetaTrader 5 (Python)
    ["Date", "Time", "Open", "High", "Low", "Close", "Volume"],  # MT4 history / intraday exports, 24 or 12-hour
    ["Date Time", "Price"],  # one date-and-time column (1/2/2024 1:15:00 PM)
    ["Gmt time", "Open", "High", "Low", "Close", "Volume"],  # Dukascopy
]
TIME_HEADERS = ("<TIME>", "Time")  # the second column holds a time of day
DATES = st.one_of(
    st.dates(min_value=pd.Timestamp("1900-01-01").date(), max_value=pd.Timestamp("2100-12-31").date()).flatmap(
        lambda d: st.sampled_from([d.isoformat(), d.strftime("%m/%d/%Y"), d.strftime("%d/%m/%Y"),
                                   d.strftime("%Y/%m/%d"), d.strftime("%b %d, %Y"), d.strftime("%d-%b-%y"),
                                   f"{d.isoformat()} 00:00:00-05:00", d.strftime("%m/%d/%y"), d.strftime("%d.%m.%Y"),
                                   d.strftime("%Y%m%d"), d.strftime("%Y.%m.%d"), d.strftime("%Y.%m.%d %H:%M"),
                                   f"{d.month}/{d.day}/{d.year}", d.strftime("%m/%d/%Y %I:%M:%S %p"),
                                   d.strftime("%Y-%m-%d %I-%p"), d.strftime("%d.%m.%Y %H:%M:%S.000"),
                                   f"{d:%d/%m/}{d.year + 543}", f"{d:%d/%m/}{(d.year + 43) % 100:02d}",
                                   d.strftime("%d.%m.%Y %H:%M:%S.000 GMT+0200")])),
    st.sampled_from(["2024-02-30", "13/13/2024", "0000-00-00", "", "Date", "Highest: 2,100.00", "29/02/2023",
                     "99999-01-01", "2024-01-01T25:00", "1/1/1", "2024-1-1", "\ufeff2024-01-02", "1/2/2024 13:15 PM",
                     "1/2/2024 0:15 AM", "2563-12-04", "04/12/63", "2019-08-01 13-PM", "29/02/2567"]),
    st.text(max_size=12),
)
NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(min_value=-1e6, max_value=1e6).map(lambda v: f"{v:,.2f}"),
    st.integers(-10**30, 10**30).map(str),
    st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", "1e400", "-1e400", "", "null", ".", "-", "--", "N/A",
                     "12.5K", "1.2M", "3B", "-0.35%", "2.063,70", "$1,234.5", "€12", "1 234,5", "0", "-0",
                     "1e-400", "0x10", "1_000", "١٢٣", "12.5KK", "%", "K", ",", "1,2,3", "'", '"', "1e", "e5"]),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=8),
)
TIMES = st.one_of(st.sampled_from(["000000", "00:00", "00:00:00", "093000", "23:59", "0930", "25:00", "99:99:99",
                                   "", "-", "12:3", "1:00", "000060", "01:15:00 PM", "12:00 AM", "12:30 pm",
                                   "13:00 PM", "0:15 AM", "1:15 p. m.", "11:59:59.999 PM"]),
                  st.times().map(lambda t: t.strftime("%I:%M:%S %p")),
                  st.times().map(lambda t: t.strftime("%H%M%S")), st.text(max_size=6))
CELL = st.one_of(NUMBERS, DATES, TIMES)
DELIMITERS = st.sampled_from([",", ";", "\t"])


@st.composite
def tables(draw) -> bytes:
    """A small CSV shaped like a real export, with random (often broken) cells."""
    header = draw(st.sampled_from(HEADERS))
    width = len(header) or draw(st.integers(1, 4))
    if header[:1] == ["Price"]:
        width = draw(st.integers(2, 4))
    delimiter = draw(DELIMITERS)
    n_rows = draw(st.integers(0, 14))
    dates = draw(st.lists(DATES, min_size=n_rows, max_size=n_rows))
    if dates and draw(st.booleans()):  # shuffled and duplicated dates
        dates = draw(st.permutations(dates + dates[: draw(st.integers(0, 3))]))
    rows = [[d] + draw(st.lists(NUMBERS, min_size=width - 1, max_size=width - 1)) for d in dates]
    if len(header) > 1 and header[1] in TIME_HEADERS:  # MetaTrader: a time of day beside the date
        constant = draw(st.booleans())
        first = draw(TIMES)
        for r in rows:
            r[1] = first if constant else draw(TIMES)
    if rows and draw(st.booleans()):  # ragged rows
        i = draw(st.integers(0, len(rows) - 1))
        rows[i] = rows[i][: draw(st.integers(0, width + 2))] + draw(st.lists(CELL, max_size=2))
    lines = []
    if header[:1] == ["Price"]:  # yfinance: fields, Ticker, Date rows
        lines += [delimiter.join(["Price"] + ["Close"] * (width - 1)), delimiter.join(["Ticker"] + ["GC=F"] * (width - 1)),
                  delimiter.join(["Date"] + [""] * (width - 1))]
    elif header:
        lines.append(delimiter.join(header))
    lines += [delimiter.join(r) for r in rows]
    if draw(st.booleans()):
        lines.reverse()  # newest first, header last: also a broken file
        lines.insert(0, lines.pop()) if header else None
    text = draw(st.sampled_from(["\n", "\r\n"])).join(lines) + draw(st.sampled_from(["", "\n", "\n\n"]))
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16"]))
    return text.encode(encoding, errors="replace")


def problems(content: bytes, policies: dict) -> list[str]:
    """Load ``content``; list what is wrong with the outcome (empty: a clean frame or a one-line DataError)."""
    path = FOLDER / "input.csv"
    path.write_bytes(content)
    try:
        frame = load_series(path, **policies)
    except DataError as error:
        return ["the error message has several lines"] if "\n" in str(error).strip() else []
    values = frame.to_numpy()
    checks = {
        "index is not a DatetimeIndex named 'date'": isinstance(frame.index, pd.DatetimeIndex)
        and frame.index.name == "date",
        "frame is empty": len(frame) >= 1 and frame.shape[1] >= 1,
        "dates are not ascending and unique": frame.index.is_monotonic_increasing and frame.index.is_unique,
        "values are not finite float64": values.dtype == np.float64 and bool(np.isfinite(values).all()),
    }
    return [what for what, ok in checks.items() if not ok]


@SETTINGS
@given(content=st.binary(max_size=300), policies=POLICIES)
@example(content=b"", policies={})
@example(content=b"\xff\xfe", policies={})
@example(content=b"\x00\x00\x00", policies={})
@example(content=b"date,price\n", policies={})
@example(content=b"date,price\n2024-01-01,nan\n", policies={})
@example(content=b"date,price\n2024-01-01,inf\n", policies={})
@example(content=b"2024-01-01\n", policies={})
@example(content=b'"', policies={})
def test_arbitrary_bytes_give_a_frame_or_data_error(content, policies):
    assert problems(content, policies) == []


@SETTINGS
@given(content=tables(), policies=POLICIES)
def test_arbitrary_small_tables_give_a_frame_or_data_error(content, policies):
    assert problems(content, policies) == []


@settings(max_examples=EXAMPLES // 6, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(content=tables(), window=st.integers(1, 4), horizon=st.integers(1, 3),
       target_mode=st.sampled_from(["level", "log_return"]))
def test_data_module_setup_gives_windows_or_data_error(content, window, horizon, target_mode):
    path = FOLDER / "setup.csv"
    path.write_bytes(content)
    data = GoldDataModule(source=str(path), last_n_days=None, window=window, horizon=horizon,
                          target_mode=target_mode, batch_size=4)
    try:
        data.setup("fit")
    except DataError:
        return
    assert all(len(ds) > 0 for ds in data.datasets.values())


@pytest.mark.parametrize("content", [b"date,price\n2024-01-01,1\n2024-01-01,2\n", b"a\n" * 3])
def test_known_bad_files_raise_data_error(content):
    with pytest.raises(DataError):
        load_series(_write(content))


def _write(content: bytes) -> Path:
    path = FOLDER / "known.csv"
    path.write_bytes(content)
    return path


def test_found_by_hypothesis_an_all_empty_target_column_is_a_data_error(tmp_path):
    path = tmp_path / "input.csv"
    path.write_bytes(b"Date,Open,High,Low,Close,Adj Close,Volume\n,0.0,0.0,0.0,0.0,0.0,0.0\n2000-01-01")
    with pytest.raises(DataError, match="column 'Close' has no values"):
        load_series(path, target="Close")


def test_found_by_hypothesis_a_truncated_utf16_file_is_a_data_error(tmp_path):
    path = tmp_path / "input.csv"
    path.write_bytes(b"\xfe\xff" + b"\x00" * 23)  # BOM, then an odd number of bytes
    with pytest.raises(DataError, match="UTF-16 file but byte 24 cannot be decoded"):
        load_series(path)


OTHER_ASSETS = ["SPX", "USO", "SLV", "EUR/USD", "USD/JPY", "BTC-USD", "Oil", "Silver", "TLT", "DXY", "Copper Close",
                "Platinum (PM)", "Volume", "Change %", "Session"]
GOLD_NAMES = ["GLD", "Gold", "XAU", "XAUUSD", "XAU/USD", "Gold_Price", "GoldPrice", "Close GC=F", "IAU", "gold",
              "GOLDPMGBD228NLBM"]


@SETTINGS
@given(others=st.lists(st.sampled_from(OTHER_ASSETS), unique=True, max_size=7), gold=st.sampled_from(GOLD_NAMES),
       position=st.integers(0, 7))
def test_one_plainly_gold_column_among_other_assets_is_the_target(others, gold, position):
    from lstm_grad.data.columns import default_target

    assert default_target(others[:position] + [gold] + others[position:], "f.csv") == gold


@SETTINGS
@given(others=st.lists(st.sampled_from(OTHER_ASSETS[:12]), unique=True, min_size=2, max_size=7))
def test_several_assets_none_gold_stop_with_every_candidate_listed(others):
    from lstm_grad.data.columns import default_target, is_price_like

    with pytest.raises(DataError) as error:
        default_target(others, "f.csv")
    candidates = [c for c in others if is_price_like(c)]
    assert f"{candidates}; choose one with --data.target" in str(error.value)


@st.composite
def metatrader_files(draw) -> tuple[str, list[float], list[pd.Timestamp]]:
    """A valid MetaTrader 4/5 export: its text, the CLOSE column and the dates it must load as: date and
    time of day combined, or the date alone where a separate time column holds one value throughout."""
    layout = draw(st.sampled_from(["mt4", "mt5", "mt5_python"]))
    days = sorted(draw(st.lists(st.dates(min_value=pd.Timestamp("1990-01-01").date(),
                                         max_value=pd.Timestamp("2030-12-31").date()), min_size=1, max_size=8,
                                unique=True)))
    hours = draw(st.lists(st.integers(0, 23), min_size=len(days), max_size=len(days)))
    if draw(st.booleans()):
        hours = [0] * len(days)  # a daily export: the time column never changes
    closes = draw(st.lists(st.floats(1, 1e5).map(lambda v: round(v, 2)), min_size=len(days), max_size=len(days)))
    stamps = [pd.Timestamp(d) + pd.Timedelta(hours=h) for d, h in zip(days, hours)]
    if layout == "mt4":
        head, cells = "<DTYYYYMMDD>,<TIME>,<OPEN>,<HIGH>,<LOW>,<CLOSE>,<VOL>", [
            f"{t:%Y%m%d},{t:%H%M%S},{c},{c},{c},{c},10" for t, c in zip(stamps, closes)]
    elif layout == "mt5":
        head, cells = "<DATE>\t<TIME>\t<OPEN>\t<HIGH>\t<LOW>\t<CLOSE>\t<TICKVOL>\t<VOL>\t<SPREAD>", [
            f"{t:%Y.%m.%d}\t{t:%H:%M:%S}\t{c}\t{c}\t{c}\t{c}\t10\t0\t25" for t, c in zip(stamps, closes)]
    else:
        head, cells = "time,open,high,low,close,tick_volume,spread,real_volume", [
            f"{t:%Y.%m.%d %H:%M},{c},{c},{c},{c},10,25,0" for t, c in zip(stamps, closes)]
    separate_time = layout != "mt5_python"
    if separate_time and len(set(hours)) == 1:
        stamps = [t.normalize() for t in stamps]  # a constant time-of-day column is ignored
    return "\n".join([head, *cells]) + "\n", closes, stamps


@settings(SETTINGS, max_examples=max(EXAMPLES // 5, 10))  # each example writes and parses a file
@given(file=metatrader_files())
def test_metatrader_exports_load_exactly(file):
    text, closes, stamps = file
    path = FOLDER / "metatrader.csv"
    path.write_text(text)
    frame = load_series(path)
    close = next(c for c in frame.columns if c.casefold() == "close")
    assert frame[close].tolist() == closes
    assert frame.index.tolist() == stamps


WEEKDAY_SETS = [(0, 1, 2, 3, 4), (6, 0, 1, 2, 3, 4), tuple(range(7)), (6, 0, 1, 2, 3)]  # Mon-Fri, FX, crypto, Gulf
BAR_LAYOUTS = {  # how the date (and time) of a bar is written: header, cells of one stamp, day-first
    "iso": ("Date,Close", lambda t: f"{t:%Y-%m-%d %H:%M}" if t != t.normalize() else f"{t:%Y-%m-%d}", False),
    "us": ("Date,Close", lambda t: f"{t:%m/%d/%Y}" + (f" {t:%H:%M}" if t != t.normalize() else ""), False),
    "dot": ("Date,Close", lambda t: f"{t:%d.%m.%Y}" + (f" {t:%H:%M:%S}" if t != t.normalize() else ""), True),
    "time24": ("Date,Time,Close", lambda t: f"{t:%Y-%m-%d},{t:%H:%M}", False),
    "time12": ("Date,Time,Close", lambda t: f"{t:%m/%d/%Y},{t:%I:%M:%S %p}", False),  # 01:15:00 PM
    "ampm": ("Date Time,Close", lambda t: f"{t:%m/%d/%Y %I:%M %p}", False),  # one column, 12-hour
    "mt4": ("<DTYYYYMMDD>,<TIME>,<CLOSE>", lambda t: f"{t:%Y%m%d},{t:%H%M%S}", False),
    "tz": ("Datetime,Close", lambda t: f"{t:%Y-%m-%d %H:%M:%S}-05:00", False),  # yfinance
}


@st.composite
def calendar_files(draw) -> tuple[str, pd.DatetimeIndex, int, bool]:
    """A regular series of one calendar kind (FX daily with Sunday bars, crypto, Mon-Fri, Sun-Thu; FX,
    exchange or 7-day intraday sessions of 15 / 30 / 60 / 240 minutes; weekly; monthly / quarterly /
    yearly) written in one layout, without its last ``holdout`` bars. Returns the text, every bar
    (as loading must read them), ``holdout`` and ``dayfirst``."""
    kind = draw(st.sampled_from(["daily", "intraday", "weekly", "monthly"]))
    monday = pd.Timestamp(draw(st.dates(min_value=pd.Timestamp("2000-01-03").date(),
                                        max_value=pd.Timestamp("2024-06-30").date())))
    monday -= pd.Timedelta(days=monday.day_of_week)
    if kind == "daily":
        days = pd.date_range(monday, periods=7 * draw(st.integers(3, 20)))
        stamps = days[days.day_of_week.isin(draw(st.sampled_from(WEEKDAY_SETS)))]
    elif kind == "intraday":
        minutes, session = draw(st.sampled_from([15, 30, 60, 240])), draw(st.sampled_from(["fx", "exchange", "7-day"]))
        grid = pd.date_range(monday, periods=draw(st.integers(3, 4)) * 7 * 1440 // minutes, freq=f"{minutes}min")
        dow, clock = grid.day_of_week, grid.hour * 60 + grid.minute
        keep = {"fx": ~(((dow == 4) & (grid.hour >= 22)) | (dow == 5) | ((dow == 6) & (grid.hour < 22))),
                "exchange": (dow < 5) & (clock >= 570) & (clock <= 930), "7-day": np.ones(len(grid), bool)}[session]
        stamps = grid[keep]
    elif kind == "weekly":
        stamps = pd.date_range(monday + pd.Timedelta(days=draw(st.integers(0, 6))), periods=draw(st.integers(10, 60)),
                               freq="7D")
    else:
        freq = draw(st.sampled_from(["MS", "ME", "BME", "QE", "YS"]))
        stamps = pd.date_range(monday, periods=draw(st.integers(12, 30)), freq=freq)
        if freq == "BME":  # only a month ending on a weekend tells the last business day from the last day
            assume(any(d != d + pd.offsets.MonthEnd(0) for d in stamps[:-4]))
        assume(stamps[-1] < pd.Timestamp.now())  # a price history has no future bars (those are refused)
    layouts = list(BAR_LAYOUTS) if kind == "intraday" else ["iso", "us", "dot", "mt4", "tz"]
    header, cells, dayfirst = BAR_LAYOUTS[draw(st.sampled_from(layouts))]
    holdout = draw(st.integers(1, 4))
    written = stamps[:-holdout]
    text = header + "\n" + "".join(f"{cells(t)},{100 + 0.25 * i}\n" for i, t in enumerate(written))
    constant_time = len(set(written.time)) == 1 and header.count(",") == 2  # a separate time column that never changes
    spacing = (written[1:] - written[:-1]).median()
    if constant_time or (header.startswith("Datetime") and spacing >= pd.Timedelta(hours=20)):
        stamps = stamps.normalize()  # read as dates: the time of day says nothing
    return text, pd.DatetimeIndex(stamps, name="date"), holdout, dayfirst


@settings(SETTINGS, max_examples=max(EXAMPLES // 5, 10))  # each example writes and parses a file
@given(file=calendar_files())
def test_bars_load_exactly_and_the_calendar_continues_them(file):
    """The loaded timestamps are the written ones, whatever the layout (12-hour times, Sunday bars,
    intraday sessions); the calendar read from them dates the held-out bars exactly."""
    from lstm_grad.data.calendar import infer_trading_calendar, next_trading_days

    text, stamps, holdout, dayfirst = file
    path = FOLDER / "calendar.csv"
    path.write_text(text)
    seen = stamps[:-holdout]
    for duplicates in ("error", "last"):  # "last" has nothing to collapse: every bar has its own time
        assert load_series(path, dayfirst=dayfirst, duplicates=duplicates).index.equals(seen)
    calendar = infer_trading_calendar(seen)
    assert next_trading_days(seen[-1], holdout, calendar).tolist() == stamps[-holdout:].tolist()
