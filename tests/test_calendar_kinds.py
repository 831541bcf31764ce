"""Issue 22 A: a forecast's dates follow how the series trades: its weekdays, its bar spacing (intraday,
daily, weekly, monthly), its session; a date-only data.end on intraday bars keeps that whole day.

Each kind is a small file written here; the expected dates are worked out by hand in the test.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from lstm_grad.data import GoldDataModule
from lstm_grad.forecast import forecast_frame
from lstm_grad.module import LSTMForecaster


def write_bars(path, stamps, time_column: bool = False):
    """``Date[,Time],Close,Open`` for ``stamps``: a random walk near 1800, 5 decimals."""
    rng = np.random.default_rng(len(stamps))
    close = 1800 * np.exp(np.cumsum(0.002 * rng.standard_normal(len(stamps))))
    stamps = pd.DatetimeIndex(stamps)
    when = ([f"{t:%Y-%m-%d},{t:%H:%M}" for t in stamps] if time_column
            else [f"{t:%Y-%m-%d %H:%M}" if t != t.normalize() else f"{t:%Y-%m-%d}" for t in stamps])
    head = "Date,Time,Close,Open\n" if time_column else "Date,Close,Open\n"
    path.write_text(head + "".join(f"{w},{c:.5f},{c * 1.0003:.5f}\n" for w, c in zip(when, close)))
    return path


def forecast_dates(path, horizon: int = 3, end=None, **data_kwargs) -> tuple[list[str], str]:
    """The dates an (untrained) forecaster's forecast carries after ``path``'s last bar, and that bar."""
    data = GoldDataModule(source=str(path), last_n_days=None, window=4, horizon=horizon, features=["Close"],
                          **data_kwargs)
    data.setup("fit")
    model = LSTMForecaster(n_features=1, hidden_sizes=(2,), horizon=horizon)
    frame = forecast_frame(model, data, end=end)
    return frame["date"].tolist(), frame["last_date"].iloc[0]


def intraday(first: str, last: str, minutes: int, keep) -> pd.DatetimeIndex:
    """Every ``minutes`` from ``first`` to ``last`` where ``keep(stamps)`` is true."""
    stamps = pd.date_range(first, last, freq=f"{minutes}min")
    return stamps[keep(stamps)]


def test_sunday_bar_fx_daily_continues_on_sunday_not_saturday(tmp_path):
    days = pd.date_range("2022-01-02", "2024-01-19")  # Sun .. Fri
    path = write_bars(tmp_path / "eurusd_d1.csv", days[days.day_of_week != 5])  # a bar every Sunday, none on Saturday
    dates, last = forecast_dates(path)
    assert last == "2024-01-19"  # a Friday
    assert dates == ["2024-01-21", "2024-01-22", "2024-01-23"]  # Sun, Mon, Tue: the file's own next bars


def test_crypto_seven_day_daily_continues_every_day(tmp_path):
    path = write_bars(tmp_path / "btc.csv", pd.date_range("2023-06-01", "2024-01-19"))
    assert forecast_dates(path)[0] == ["2024-01-20", "2024-01-21", "2024-01-22"]


def test_hourly_fx_bars_continue_hourly_and_skip_the_weekend(tmp_path):
    stamps = intraday("2021-01-04 00:00", "2021-02-26 22:00", 60, lambda s: s.day_of_week < 5)  # Mon 00:00 .. Fri 23:00
    path = write_bars(tmp_path / "eurusd_h1.csv", stamps, time_column=True)
    assert forecast_dates(path, end="2021-02-24 06:00") == (
        ["2021-02-24 07:00", "2021-02-24 08:00", "2021-02-24 09:00"], "2021-02-24 06:00")
    assert forecast_dates(path)[0] == ["2021-02-26 23:00", "2021-03-01 00:00", "2021-03-01 01:00"]  # Fri 22:00 last


def test_exchange_30_minute_bars_skip_the_night_and_the_weekend(tmp_path):
    stamps = intraday("2024-01-01 09:30", "2024-02-02 15:30", 30,
                      lambda s: (s.day_of_week < 5) & (s.hour * 60 + s.minute >= 570) & (s.hour * 60 + s.minute <= 930))
    path = write_bars(tmp_path / "gld_30m.csv", stamps)  # 09:30 .. 15:30, 13 bars a day, Mon-Fri
    assert forecast_dates(path) == (["2024-02-05 09:30", "2024-02-05 10:00", "2024-02-05 10:30"], "2024-02-02 15:30")
    assert forecast_dates(path, end="2024-02-01 15:00")[0] == ["2024-02-01 15:30", "2024-02-02 09:30",
                                                              "2024-02-02 10:00"]


def test_fifteen_minute_fx_session_opens_on_sunday_evening(tmp_path):
    def fx_week(s: pd.DatetimeIndex) -> np.ndarray:  # Sun 22:00 .. Fri 21:45
        return ~(((s.day_of_week == 4) & (s.hour >= 22)) | (s.day_of_week == 5) | ((s.day_of_week == 6) & (s.hour < 22)))

    path = write_bars(tmp_path / "xauusd_m15.csv", intraday("2024-01-07 22:00", "2024-02-02 21:45", 15, fx_week))
    assert forecast_dates(path) == (["2024-02-04 22:00", "2024-02-04 22:15", "2024-02-04 22:30"], "2024-02-02 21:45")


def test_weekly_bars_step_a_week(tmp_path):
    path = write_bars(tmp_path / "gold_weekly.csv", pd.date_range("2022-01-02", "2024-01-14", freq="7D"))  # Sundays
    assert forecast_dates(path) == (["2024-01-21", "2024-01-28", "2024-02-04"], "2024-01-14")


@pytest.mark.parametrize("freq,expected", [
    ("MS", ["2024-02-01", "2024-03-01", "2024-04-01"]),  # the first of the month
    ("ME", ["2024-02-29", "2024-03-31", "2024-04-30"]),  # the month's last day
    ("BME", ["2024-02-29", "2024-03-29", "2024-04-30"]),  # its last business day (2024-03-31 is a Sunday)
])
def test_monthly_bars_step_a_month_on_the_same_day_of_the_month(tmp_path, freq, expected):
    stamps = pd.date_range("2019-01-01", "2024-01-31", freq=freq)
    assert forecast_dates(write_bars(tmp_path / "monthly.csv", stamps))[0] == expected


def test_quarterly_bars_step_a_quarter(tmp_path):
    stamps = pd.date_range("2010-03-31", "2023-12-31", freq="QE")
    assert forecast_dates(write_bars(tmp_path / "quarterly.csv", stamps))[0] == ["2024-03-31", "2024-06-30",
                                                                                 "2024-09-30"]


def test_a_date_only_end_on_intraday_bars_keeps_that_whole_day(tmp_path):
    stamps = intraday("2021-01-04 00:00", "2021-02-26 23:00", 60, lambda s: s.day_of_week < 5)
    path = write_bars(tmp_path / "h1.csv", stamps, time_column=True)
    data = GoldDataModule(source=str(path), last_n_days=None, window=4, features=["Close"], end="2021-02-19")
    data.setup("fit")
    assert data.row_dates()[-1] == pd.Timestamp("2021-02-19 23:00")  # Friday's last bar, not Thursday's
    assert forecast_dates(path, end="2021-02-19") == (["2021-02-22 00:00", "2021-02-22 01:00", "2021-02-22 02:00"],
                                                      "2021-02-19 23:00")


def test_intraday_backtest_folds_end_at_their_last_bar(tmp_path):
    from lstm_grad.backtest import plan_folds

    stamps = intraday("2021-01-04 00:00", "2021-02-05 23:00", 60, lambda s: s.day_of_week < 5)
    path = write_bars(tmp_path / "h1.csv", stamps, time_column=True)
    args = ["--data.source", str(path), "--data.window", "4", "--data.last_n_days", "null", "--data.features",
            "[Close]"]
    jobs = plan_folds(args, folds=2, test_days=30, output=tmp_path / "out")
    assert [job["test_end"] for job in jobs] == [f"{stamps[-31]:%Y-%m-%d %H:%M}", "2021-02-05 23:00"]
    for job in jobs:
        end = job["args"][job["args"].index("--data.end") + 1]
        fold = GoldDataModule(source=str(path), last_n_days=None, window=4, features=["Close"], end=end)
        fold.setup("fit")
        assert f"{fold.row_dates()[-1]:%Y-%m-%d %H:%M}" == job["test_end"]  # the fold's data end at its test span


def test_the_inferred_calendar_is_said_in_one_log_line(tmp_path, caplog):
    days = pd.date_range("2022-01-02", "2024-01-19")
    path = write_bars(tmp_path / "fx.csv", days[days.day_of_week != 5])
    with caplog.at_level(logging.INFO, logger="lstm_grad"):
        forecast_dates(path)
    lines = [r.getMessage() for r in caplog.records if r.name == "lstm_grad.data.calendar"]
    assert len(lines) == 1
    assert "forecast dates follow the series' own calendar: daily bars on Sun-Fri; read from bars per weekday " \
           "from 2023-01-20: Mon 52, " in lines[0]
    assert "Fri 53, Sat 0, Sun 52" in lines[0]


def test_calendar_objects_by_hand():
    from lstm_grad.data.calendar import infer_trading_calendar, next_trading_days

    one_stray_sunday = pd.bdate_range("2023-01-02", periods=250).append(pd.DatetimeIndex(["2023-06-11"])).sort_values()
    assert infer_trading_calendar(one_stray_sunday).name == "business"
    short = pd.bdate_range("2024-01-01", periods=3)  # Mon-Wed only: too short to tell Thu and Fri are missing
    assert next_trading_days(short[-1], 3, infer_trading_calendar(short)).strftime("%a").tolist() == [
        "Thu", "Fri", "Mon"]
    fixed = pd.date_range("2023-01-01", periods=30, freq="14D")  # every other week: a constant spacing
    assert next_trading_days(fixed[-1], 1, infer_trading_calendar(fixed))[0] == fixed[-1] + pd.Timedelta(days=14)
    with pytest.raises(ValueError, match="not one of"):
        next_trading_days(pd.Timestamp("2024-01-05"), 1, "weekly")
