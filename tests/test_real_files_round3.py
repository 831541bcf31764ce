"""Issue 22 on files shaped like the reported ones: A (future dates), B (dates and times people write),
C (rows dropped for columns the run never uses). Exact values are worked out from the generated file.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from lstm_grad.data import DataError, GoldDataModule, load_series
from lstm_grad.forecast import forecast_frame, last_window
from lstm_grad.module import LSTMForecaster


def walk(n: int, start: float = 1800.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return start * np.exp(np.cumsum(0.004 * rng.standard_normal(n)))


def set_up(path, **kwargs) -> GoldDataModule:
    data = GoldDataModule(source=str(path), **{"last_n_days": None, "window": 4, "features": ["Close"], **kwargs})
    data.setup("fit")
    return data


def forecast(data: GoldDataModule, end=None) -> pd.DataFrame:
    """The forecast of an untrained tiny model: its dates and origin are what these tests check."""
    return forecast_frame(LSTMForecaster(n_features=len(data.feature_names), hidden_sizes=(2,), horizon=data.horizon),
                          data, end=end)


# ---- A: future dates follow how the series trades ---------------------------------------------------

def test_fx_daily_with_a_bar_every_sunday_is_dated_sunday_and_monday_after_a_friday(tmp_path):
    days = pd.date_range("2004-01-01", "2024-01-19")
    holiday = ((days.month == 12) & (days.day == 25)) | ((days.month == 1) & (days.day == 1))
    days = days[(days.day_of_week != 5) & ~holiday][-5014:]
    assert len(days) == 5014 and (days.day_of_week == 6).sum() == 834  # the reported file's shape
    close = walk(len(days), 1.1)
    path = tmp_path / "EURUSD_D1.csv"
    path.write_text("Date,Open,High,Low,Close\n" + "".join(
        f"{d:%Y-%m-%d},{c:.5f},{c * 1.002:.5f},{c * 0.998:.5f},{c:.5f}\n" for d, c in zip(days, close)))
    frame = forecast(set_up(path, horizon=2))
    assert frame["last_date"].iloc[0] == "2024-01-19"
    assert frame["date"].tolist() == ["2024-01-21", "2024-01-22"]  # the file's real next bars: Sun 21, Mon 22


@pytest.fixture(scope="module")
def mt4_hourly(tmp_path_factory):
    """MT4 history export ``Date,Time,Open,High,Low,Close,Volume``: 65,175 hourly bars to 2021-02-24 06:00."""
    stamps = pd.date_range("2008-01-01", "2021-02-24 06:00", freq="h")
    stamps = stamps[stamps.day_of_week < 5][-65175:]
    close = walk(len(stamps), 1.2)
    path = tmp_path_factory.mktemp("mt4") / "EURUSD60.csv"
    dates, times = stamps.strftime("%Y.%m.%d"), stamps.strftime("%H:%M")
    path.write_text("Date,Time,Open,High,Low,Close,Volume\n" + "".join(
        f"{d},{t},{c:.5f},{c:.5f},{c:.5f},{c:.5f},{i % 97 + 1}\n" for i, (d, t, c) in enumerate(zip(dates, times, close))))
    return path, stamps


def test_mt4_hourly_file_forecasts_the_next_hours(mt4_hourly):
    path, stamps = mt4_hourly
    data = set_up(path, horizon=3)
    assert len(data.row_dates()) == 65175 and data.row_dates().equals(pd.DatetimeIndex(stamps, name="date"))
    frame = forecast(data)
    assert frame["last_date"].iloc[0] == "2021-02-24 06:00"
    assert frame["date"].tolist() == ["2021-02-24 07:00", "2021-02-24 08:00", "2021-02-24 09:00"]
    as_of = forecast(data, end="2021-02-19")  # a Friday, date only: its whole day, then Monday's first hours
    assert as_of["last_date"].iloc[0] == "2021-02-19 23:00"
    assert as_of["date"].tolist() == ["2021-02-22 00:00", "2021-02-22 01:00", "2021-02-22 02:00"]


# ---- B: dates and times people write --------------------------------------------------------------

def fifteen_minutes() -> pd.DatetimeIndex:
    """15-minute bars 09:00 .. 16:45 on five business days."""
    days = pd.bdate_range("2024-01-02", periods=5)
    return pd.DatetimeIndex([d + pd.Timedelta(minutes=540 + 15 * k) for d in days for k in range(32)])


def test_a_separate_12_hour_time_column_is_combined_with_the_date(tmp_path):
    stamps = fifteen_minutes()
    close = walk(len(stamps))
    path = tmp_path / "gold_15m.csv"
    path.write_text("Date,Time,Open,High,Low,Close,Volume\n" + "".join(
        f"{t:%m/%d/%Y},{t:%I:%M:%S %p},{c:.2f},{c:.2f},{c:.2f},{c:.2f},10\n" for t, c in zip(stamps, close)))
    assert "01:15:00 PM" in path.read_text()
    for duplicates in ("error", "last"):  # "last" no longer turns the 15-minute bars into one bar a day
        frame = load_series(path, duplicates=duplicates)
        assert frame.index.equals(pd.DatetimeIndex(stamps, name="date"))
        assert frame["Close"].tolist() == [round(c, 2) for c in close]
    assert forecast(set_up(path, horizon=2))["date"].tolist() == ["2024-01-09 09:00", "2024-01-09 09:15"]  # after Mon


@pytest.mark.parametrize("style", ["%m/%d/%Y %I:%M:%S %p", "%m/%d/%Y %I:%M %p", "%Y-%m-%d %I:%M %p"])
def test_a_date_time_column_with_am_pm_reads_as_24_hour_times(tmp_path, style):
    stamps = fifteen_minutes()
    path = tmp_path / "one_column.csv"
    path.write_text("Date Time,Price\n" + "".join(f"{t.strftime(style)},{100 + i}\n" for i, t in enumerate(stamps)))
    frame = load_series(path)
    assert frame.index.equals(pd.DatetimeIndex(stamps, name="date")) and frame["Price"].iloc[-1] == 259.0


def test_intraday_rows_under_a_date_only_column_are_called_that(tmp_path, caplog):
    stamps = fifteen_minutes()
    path = tmp_path / "hours_as_text.csv"
    path.write_text("Date,Hour,Close\n" + "".join(
        f"{t:%Y-%m-%d},{t:%Hh%M},{100 + i}\n" for i, t in enumerate(stamps)))  # "13h15": no time this reads
    with pytest.raises(DataError) as error:
        load_series(path)
    message = str(error.value)
    assert message.startswith(f"{path}: 5 of 5 dates hold several rows (up to 32; 2024-01-02: line 2, line 3, line 4, "
                              "...): intraday bars whose time of day is not in date column 'Date'; column(s) "
                              "['Hour'] hold text")
    assert "remove the extra row" not in message and "\n" not in message
    with caplog.at_level(logging.INFO, logger="lstm_grad.data"):
        frame = load_series(path, duplicates="last")
    assert len(frame) == 5 and "the series is now one bar a day" in caplog.text  # said, not silent


def thai_file(path) -> pd.DatetimeIndex:
    """``วันที่,ราคา`` with Buddhist-era dd/mm/yyyy dates (2563 = 2020), 29/02/2563 included."""
    days = pd.bdate_range("2020-01-02", "2020-12-04")
    path.write_text("วันที่,ราคา\n" + "".join(
        f"{d.day:02d}/{d.month:02d}/{d.year + 543},{1500 + i % 17 + i / 10:.2f}\n" for i, d in enumerate(days)),
        encoding="utf-8")
    return days


def test_buddhist_era_dates_are_an_error_naming_the_era_and_the_flag(tmp_path):
    path = tmp_path / "thai_gold.csv"
    days = thai_file(path)
    with pytest.raises(DataError, match=r"column 'วันที่', line 2: date '02/01/2563' is in the year 2563, more than 10 "
                                        r"years in the future; this looks like a Buddhist-era year \(Thai calendar: "
                                        r"2563 - 543 = 2020\): set data.era=buddhist"):
        load_series(path, dayfirst=True)
    with pytest.raises(DataError, match=r"set data.dayfirst=true; 2563 is a Buddhist-era year .*set data.era=buddhist"):
        load_series(path)  # both fixes in one line
    frame = load_series(path, dayfirst=True, era="buddhist")
    assert frame.index.equals(pd.DatetimeIndex(days, name="date")) and pd.Timestamp("2020-02-28") in frame.index
    data = set_up(path, dayfirst=True, era="buddhist", features=None, horizon=1)
    assert forecast(data)["last_date"].iloc[0] == "2020-12-04"  # not 2563-12-04


def test_two_digit_buddhist_years_and_the_flag_on_other_styles(tmp_path):
    path = tmp_path / "thai_short.csv"
    path.write_text("Date,Price\n28/02/63,1600.5\n02/03/63,1601.5\n")  # 63 = 2563 = 2020
    with pytest.raises(DataError, match=r"a two-digit year read as 2063; if it is a Buddhist-era year \(2563 - 543 = "
                                        r"2020\) set data.era=buddhist"):
        load_series(path, dayfirst=True)
    path.write_text("Date,Price\n29/02/63,1600.5\n02/03/63,1601.5\n")  # 29 February 2020 (no 2063-02-29)
    assert load_series(path, dayfirst=True, era="buddhist").index.tolist() == [pd.Timestamp("2020-02-29"),
                                                                             pd.Timestamp("2020-03-02")]
    iso = tmp_path / "iso.csv"
    iso.write_text("Date,Price\n2563-12-03 10:00,1\n2563-12-04 10:00,2\n")
    assert load_series(iso, era="buddhist").index[-1] == pd.Timestamp("2020-12-04 10:00")
    common = tmp_path / "common.csv"
    common.write_text("Date,Price\n2020-12-03,1\n2020-12-04,2\n")
    with pytest.raises(DataError, match=r"line 2: date '2020-12-03' has the year 2020, not a Buddhist-era year"):
        load_series(common, era="buddhist")


def test_intraday_exports_with_a_utc_offset_keep_their_time_of_day(tmp_path):
    stamps = fifteen_minutes()
    path = tmp_path / "yfinance_15m.csv"
    path.write_text("Datetime,Close,High,Low,Open,Volume\n" + "".join(
        f"{t:%Y-%m-%d %H:%M:%S}-05:00,{100 + i},{101 + i},{99 + i},{100 + i},5\n" for i, t in enumerate(stamps)))
    assert load_series(path).index.equals(pd.DatetimeIndex(stamps, name="date"))  # was: every bar at 00:00, duplicates


def test_crypto_and_dukascopy_intraday_layouts(tmp_path):
    hours = pd.date_range("2020-01-01 00:00", periods=60, freq="h")
    cdd = tmp_path / "Bitstamp_BTCUSD_1h.csv"  # URL line, newest first, "2020-01-01 11-PM"
    cdd.write_text("https://www.CryptoDataDownload.com\nunix,date,symbol,open,high,low,close,Volume BTC,Volume USD\n"
                   + "".join(f"{int(t.timestamp())},{t:%Y-%m-%d %I-%p},BTC/USD,{7000 + i},{7010 + i},{6990 + i},"
                             f"{7005 + i},1.5,10000\n" for i, t in reversed(list(enumerate(hours)))))
    frame = load_series(cdd)
    assert frame.index.equals(pd.DatetimeIndex(hours, name="date")) and frame["close"].iloc[-1] == 7064.0
    duka = tmp_path / "XAUUSD_Candlestick_1_Hour_BID.csv"
    duka.write_text("Gmt time,Open,High,Low,Close,Volume\n" + "".join(
        f"{t:%d.%m.%Y %H:%M:%S}.000,{1500 + i},{1501 + i},{1499 + i},{1500.5 + i},12.3\n" for i, t in enumerate(hours)))
    assert load_series(duka, dayfirst=True).index.equals(pd.DatetimeIndex(hours, name="date"))


# ---- C: rows dropped only for the columns the run uses --------------------------------------------

CURRENCIES = ["US dollar", "Euro", "Japanese yen", "Pound sterling", "Indian rupee"]


@pytest.fixture(scope="module")
def wgc(tmp_path_factory):
    """A World Gold Council export: ``;``-separated, ``43.164,9`` numbers, ``#N/A``; 10,666 US-dollar rows
    from 1978-12-29, the other currencies from 1993-01-11 (7,005 rows)."""
    days = pd.bdate_range("1978-12-29", periods=10666)
    usd = walk(len(days), 226.0, seed=4)
    rates = {"Euro": 0.9, "Japanese yen": 110.0, "Pound sterling": 0.7, "Indian rupee": 60.0}
    later = days >= pd.Timestamp("1993-01-11")

    def cell(value: float) -> str:  # 43164.9 -> "43.164,9"
        return f"{value:,.1f}".replace(",", " ").replace(".", ",").replace(" ", ".")

    lines = ["Date;" + ";".join(CURRENCIES)]
    for i, d in enumerate(days):
        others = [cell(usd[i] * r) if later[i] else "#N/A" for r in rates.values()]
        lines.append(f"{d:%d/%m/%Y};{cell(usd[i])};" + ";".join(others))
    path = tmp_path_factory.mktemp("wgc") / "Prices.csv"
    path.write_text("\n".join(lines) + "\n")
    return path, days, np.round(usd, 1)


def test_wgc_dollar_series_keeps_all_its_rows_from_1978(wgc, caplog):
    path, days, usd = wgc
    assert (~np.isin(days, days[days >= "1993-01-11"])).sum() == 10666 - 7005
    data = set_up(path, dayfirst=True, target="US dollar", features=["US dollar"])
    assert len(data.row_dates()) == 10666 and data.row_dates()[0] == pd.Timestamp("1978-12-29")
    assert data.datasets["train"].anchor[0].item() == usd[3]  # window 4: the first anchor is row 3
    with caplog.at_level(logging.INFO, logger="lstm_grad.data"):
        default = set_up(path, dayfirst=True, features=None)  # default target and features
    assert default.target_name == "US dollar"
    assert default.row_dates()[0] == days[20]  # only the 20-row warm-up of the default derived features
    assert ("default features leave out column(s) 'Euro' (first value on 1993-01-11), 'Japanese yen' (first value "
            "on 1993-01-11)") in caplog.text


def test_wgc_backtest_folds_are_placed_on_the_dollar_rows(wgc):
    from lstm_grad.backtest import plan_folds

    path, days, _ = wgc
    args = ["--data.source", str(path), "--data.dayfirst", "true", "--data.target", "US dollar", "--data.features",
            "['US dollar']", "--data.window", "4", "--data.last_n_days", "null"]
    jobs = plan_folds(args, folds=2, test_days=250, output="unused")
    assert jobs[0]["train_start"] == "1978-12-29" and jobs[-1]["test_end"] == f"{days[-1]:%Y-%m-%d}"


def investing_csv(path, rows: int = 120) -> pd.DatetimeIndex:
    """Investing.com gold, newest first; the newest row's ``Vol.`` is still empty."""
    days = pd.bdate_range("2023-08-01", periods=rows)
    price = walk(rows, 1950.0, seed=9)
    lines = ['"Date","Price","Open","High","Low","Vol.","Change %"']
    for i in reversed(range(rows)):
        vol = "" if i == rows - 1 else f"{150 + i % 40}.{i % 10}K"
        lines.append(f'"{days[i]:%m/%d/%Y}","{price[i]:,.2f}","{price[i] * 0.999:,.2f}","{price[i] * 1.004:,.2f}",'
                     f'"{price[i] * 0.995:,.2f}","{vol}","0.10%"')
    path.write_text("\n".join(lines) + "\n")
    return days


def test_investing_newest_row_with_an_empty_volume_is_the_forecast_origin(tmp_path, caplog):
    path = tmp_path / "Gold Futures Historical Data.csv"
    days = investing_csv(path)
    data = set_up(path, features=["Price", "log_return:Price"])  # a model that does not use volume
    assert data.row_dates()[-1] == days[-1]
    assert last_window(data).last_date == days[-1]  # forecasting from the updated file
    with caplog.at_level(logging.INFO, logger="lstm_grad.data"):
        default = set_up(path, features=None)
    assert default.row_dates()[-1] == days[-1] and "Vol." not in default.feature_names
    assert f"'Vol.' (last value on {days[-2]:%Y-%m-%d})" in caplog.text
    with_volume = set_up(path, features=["Price", "Vol."])  # a model that reads volume needs the row's volume
    assert with_volume.row_dates()[-1] == days[-2]


def test_gaps_in_unused_columns_stop_nothing(tmp_path):
    days = pd.bdate_range("2024-01-01", periods=60)
    volume = ["" if 20 <= i < 32 else str(100 + i) for i in range(60)]  # 12 missing in a row
    path = tmp_path / "gappy.csv"
    path.write_text("Date,Close,Volume\n" + "".join(f"{d:%Y-%m-%d},{100 + i % 7},{v}\n"
                                                    for i, (d, v) in enumerate(zip(days, volume))))
    with pytest.raises(DataError, match="12 missing values in a row, more than ffill_limit=5"):
        set_up(path, features=["Close", "Volume"])
    for missing in ("ffill", "error", "drop"):
        assert set_up(path, missing=missing).row_dates().equals(pd.DatetimeIndex(days, name="date"))
    assert load_series(path, columns=["Close"], missing="error").shape == (60, 1)
