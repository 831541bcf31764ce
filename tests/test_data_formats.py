"""Real-world CSV layouts load to exact numbers; bad input raises DataError with a useful line."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from lstm_grad.data import DataError, GoldDataModule, load_series
from lstm_grad.data.features import choose_features, default_candidates


def default_features(frame, target):
    """The default features ``GoldDataModule`` would choose if every row were the train span."""
    return choose_features(frame, target, None, lambda feats: feats, "f")[0]


def write(tmp_path, text, name="prices.csv", newline="\n", bom=False):
    path = tmp_path / name
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.strip("\n").replace("\n", newline).encode() + b"\n")
    return path


def dates(*days):
    return pd.DatetimeIndex(pd.to_datetime(list(days)), name="date")


def test_yahoo_web_export_with_null_row_and_crlf(tmp_path, caplog):
    path = write(tmp_path, """
Date,Open,High,Low,Close,Adj Close,Volume
2024-01-02,2064.399902,2072.699951,2061.199951,2064.399902,2064.399902,19
2024-01-03,null,null,null,null,null,null
2024-01-04,2040.800049,2045.000000,2035.500000,2042.300049,2042.300049,243
""", newline="\r\n")
    with caplog.at_level(logging.INFO, logger="lstm_grad.data"):
        frame = load_series(path)
    assert list(frame.columns) == ["Open", "High", "Low", "Close", "Adj Close", "Volume"]
    assert frame.index.equals(dates("2024-01-02", "2024-01-03", "2024-01-04"))
    assert frame["Close"].tolist() == [2064.399902, 2064.399902, 2042.300049]
    assert frame["Volume"].tolist() == [19.0, 19.0, 243.0]
    assert "forward-filled 6 missing value(s) in 1 row(s)" in caplog.text
    assert default_features(frame, "Close") == ["Open", "High", "Low", "Close", "Volume"]


def test_yfinance_download_three_row_header(tmp_path):
    path = write(tmp_path, """
Price,Adj Close,Close,High,Low,Open,Volume
Ticker,GC=F,GC=F,GC=F,GC=F,GC=F,GC=F
Date,,,,,,
2024-01-02,2064.39990234375,2064.39990234375,2072.699951171875,2061.199951171875,2067.0,19
2024-01-03,2034.199951171875,2034.199951171875,2047.5,2030.0,2050.0,0
""")
    frame = load_series(path)
    assert list(frame.columns) == ["Adj Close", "Close", "High", "Low", "Open", "Volume"]
    assert frame.index.equals(dates("2024-01-02", "2024-01-03"))
    assert frame["Close"].tolist() == [2064.39990234375, 2034.199951171875]
    assert frame["Open"].tolist() == [2067.0, 2050.0]


def test_yfinance_history_tz_aware_dates_keep_local_calendar_date(tmp_path):
    path = write(tmp_path, """
Date,Open,High,Low,Close,Volume,Dividends,Stock Splits
2024-03-08 00:00:00-05:00,2160.0,2195.0,2155.0,2185.5,120,0.0,0.0
2024-03-11 00:00:00-04:00,2180.0,2190.0,2170.0,2182.5,95,0.0,0.0
2024-03-12 00:00:00-04:00,2181.0,2185.0,2150.0,2158.0,101,0.0,0.0
""")
    frame = load_series(path)
    assert frame.index.equals(dates("2024-03-08", "2024-03-11", "2024-03-12"))
    assert frame.index.tz is None
    assert frame["Close"].tolist() == [2185.5, 2182.5, 2158.0]


def test_investing_export(tmp_path, caplog):
    path = write(tmp_path, '''
"Date","Price","Open","High","Low","Vol.","Change %"
"01/05/2024","2,049.80","2,045.10","2,078.00","2,030.10","","0.18%"
"01/04/2024","2,046.10","2,043.70","2,055.70","2,034.10","1.2M","0.18%"
"01/03/2024","2,042.20","2,072.50","2,075.10","2,033.90","-","-1.45%"
"01/02/2024","2,072.20","2,063.70","2,080.00","2,059.80","12.5K","0.65%"
''', bom=True)
    with caplog.at_level(logging.INFO, logger="lstm_grad.data"):
        frame = load_series(path)
    assert list(frame.columns) == ["Price", "Open", "High", "Low", "Vol.", "Change %"]
    # the newest row has no volume: never filled from the day before, the row is dropped (logged)
    assert frame.index.equals(dates("2024-01-02", "2024-01-03", "2024-01-04"))
    assert frame["Price"].tolist() == [2072.2, 2042.2, 2046.1]
    assert frame["Vol."].tolist() == [12500.0, 12500.0, 1_200_000.0]
    assert frame["Change %"].tolist() == [0.65, -1.45, 0.18]
    assert "dropped 1 trailing row(s) after the last observed value of column 'Vol.' (from line 2)" in caplog.text


def test_investing_constant_volume_is_replaced_by_a_derived_feature(tmp_path, caplog):
    frame = pd.DataFrame({"Price": [1.0, 2.0, 3.0], "Open": [1.0, 2.0, 2.5], "High": [2.0, 3.0, 4.0],
                          "Low": [0.5, 1.0, 2.0], "Vol.": [0.0, 0.0, 0.0]})
    with caplog.at_level(logging.INFO, logger="lstm_grad.data"):
        names = default_features(frame, "Price")
    assert names == ["Price", "Open", "High", "Low", "log_return:Price"]
    assert "default feature 'Vol.' is constant on the train span; using 'log_return:Price'" in caplog.text


def test_investing_all_dash_volume_is_left_out(tmp_path, caplog):
    path = write(tmp_path, '''
"Date","Price","Open","High","Low","Vol.","Change %"
"01/03/2024","2,042.20","2,072.50","2,075.10","2,033.90","-","-1.45%"
"01/02/2024","2,072.20","2,063.70","2,080.00","2,059.80","-","0.65%"
''', bom=True)
    with caplog.at_level(logging.INFO, logger="lstm_grad.data"):
        frame = load_series(path)
    assert "Vol." not in frame.columns and "column 'Vol.' is empty in 2 of 2 rows" in caplog.text


@pytest.mark.parametrize("header", ["DATE", "observation_date"])
def test_fred_with_dot_for_missing(tmp_path, header):
    path = write(tmp_path, f"""
{header},GOLDAMGBD228NLBM
2024-01-01,.
2024-01-02,2064.4
2024-01-03,.
2024-01-04,2042.3
""")
    frame = load_series(path)
    assert list(frame.columns) == ["GOLDAMGBD228NLBM"]
    assert frame.index.equals(dates("2024-01-02", "2024-01-03", "2024-01-04"))  # leading gap cannot be filled
    assert frame["GOLDAMGBD228NLBM"].tolist() == [2064.4, 2064.4, 2042.3]
    assert default_candidates(frame, "GOLDAMGBD228NLBM")[0][1:] == [
        "log_return:GOLDAMGBD228NLBM", "volatility:GOLDAMGBD228NLBM:5", "volatility:GOLDAMGBD228NLBM:20",
        "momentum:GOLDAMGBD228NLBM:5"]


def test_semicolon_decimal_comma_dayfirst(tmp_path):
    path = write(tmp_path, """
date;price
02.01.2024;2063,70
03.01.2024;1.999,50
13.01.2024;2041
""")
    frame = load_series(path, dayfirst=True)
    assert frame.index.equals(dates("2024-01-02", "2024-01-03", "2024-01-13"))
    assert frame["price"].tolist() == [2063.7, 1999.5, 2041.0]


def test_plain_comma_iso_unsorted_and_headerless(tmp_path):
    frame = load_series(write(tmp_path, "date,price\n2024-01-03,2041.5\n2024-01-02,2063.7\n"))
    assert frame.index.equals(dates("2024-01-02", "2024-01-03")) and frame["price"].tolist() == [2063.7, 2041.5]
    bare = load_series(write(tmp_path, "2024-01-02,2063.7\n2024-01-03,2041.5\n", name="bare.csv"))
    assert list(bare.columns) == ["price"] and bare["price"].tolist() == [2063.7, 2041.5]


def test_day_first_slashes_and_named_date_column(tmp_path):
    path = write(tmp_path, "when,gold\n31/01/2024,2050\n01/02/2024,2060\n")
    frame = load_series(path, dayfirst=True, date_column="when")
    assert frame.index.equals(dates("2024-01-31", "2024-02-01")) and frame["gold"].tolist() == [2050.0, 2060.0]


def test_duplicates_last_keeps_last_row(tmp_path, caplog):
    path = write(tmp_path, "date,price\n2024-01-02,1\n2024-01-02,2\n2024-01-03,3\n")
    with caplog.at_level(logging.INFO, logger="lstm_grad.data"):
        frame = load_series(path, duplicates="last")
    assert frame["price"].tolist() == [2.0, 3.0] and "dropped 1 row(s) with duplicate dates" in caplog.text


def test_missing_drop_policy_logs_count(tmp_path, caplog):
    path = write(tmp_path, "date,price\n2024-01-02,1\n2024-01-03,null\n2024-01-04,3\n")
    with caplog.at_level(logging.INFO, logger="lstm_grad.data"):
        frame = load_series(path, missing="drop")
    assert frame["price"].tolist() == [1.0, 3.0] and "dropped 1 row(s) with missing values" in caplog.text


BAD_FILES = [
    ("", {}, "empty"),
    ("date,price\n", {}, "no data rows"),
    ("date,price\n2024-01-02,2063.70\n2024-01-03,\"2,06x.70\"\n", {}, r"column 'price', line 3: cannot parse '2,06x.70'"),
    ("date,price\n2024-01-02,inf\n", {}, r"line 2: .*inf"),
    ("date,price\n2024-01-02,1\nyesterday,2\n2024-01-04,3\n", {}, r"line 3: cannot parse date 'yesterday'"),
    ("date,price\n13/01/2024,1\n14/01/2024,2\n", {}, "dayfirst=true"),
    ("date,price\n2024-01-02,1\n2024-01-03,2\n2024-01-02,3\n", {}, r"duplicate date 2024-01-02 \(line 2, line 4\)"),
    ("date,price\n2024-01-02,1\n2024-01-03,2\n", {"target": "Close"}, r"'Close' not found; available: \['price'\]"),
    ("date,price\n2024-01-02,1\n2024-01-03,\n", {"missing": "error"}, "column 'price', line 3: missing value"),
    ("date,price\n2024-01-02,1\n" + "".join(f"2024-01-{d:02d},null\n" for d in range(3, 10))
     + "".join(f"2024-01-{d:02d},2\n" for d in range(10, 20)),
     {}, r"line 3: 7 missing values in a row.*missing=drop"),
    ("date,price\n2024-01-02,1\n", {"date_column": "Day"}, r"date column 'Day' not found"),
    ("price,volume\n1,2\n3,4\n", {}, "no date column"),
    ("date,price\n2024-01-02,1\n", {"missing": "fill"}, "not one of"),
]


@pytest.mark.parametrize("text,kwargs,words", BAD_FILES)
def test_bad_input_raises_data_error(tmp_path, text, kwargs, words):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=words):
        load_series(path, **kwargs)


def test_missing_file_not_found(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_series(tmp_path / "nope.csv")


def plain(tmp_path, prices):
    lines = [f"{d:%Y-%m-%d},{p}" for d, p in zip(pd.bdate_range("2024-01-01", periods=len(prices)), prices)]
    return str(write(tmp_path, "date,price\n" + "\n".join(lines)))


RISING = list(np.linspace(100.0, 140.0, 40))


@pytest.mark.parametrize("kwargs,words", [
    ({"features": ["price", "gold"]}, r"feature 'gold' names an unknown column; available columns: \['price'\]"),
    ({"features": ["log_return:silver"]}, r"available columns: \['price'\]"),
    ({"window": 30}, r"the train split has 28 rows and no complete window; it needs >= 31"),
    ({"target": "Close"}, r"available: \['price'\]"),
])
def test_datamodule_bad_settings_raise_in_setup(tmp_path, kwargs, words):
    dm = GoldDataModule(source=plain(tmp_path, RISING), last_n_days=None, **{"features": ["price"], **kwargs})
    with pytest.raises(DataError, match=words):
        dm.setup("fit")


def test_non_positive_prices_with_log_returns(tmp_path):
    source = plain(tmp_path, RISING[:5] + [0.0] + RISING[6:])
    for kwargs in ({"target_mode": "log_return", "features": ["price"]}, {"features": ["log_return:price"]}):
        with pytest.raises(DataError, match=r"column 'price', row 2024-01-08: value 0.0 is not positive"):
            GoldDataModule(source=source, last_n_days=None, window=3, **kwargs).setup("fit")
    GoldDataModule(source=source, last_n_days=None, window=3, features=["price"], target_mode="level").setup("fit")  # level is fine


def test_explicit_constant_feature_is_refused(tmp_path):
    source = str(write(tmp_path, "date,price,vol\n" + "".join(
        f"{d:%Y-%m-%d},{100 + i},0\n" for i, d in enumerate(pd.bdate_range("2024-01-01", periods=40)))))
    with pytest.raises(DataError, match="feature 'vol' is constant on the train span; drop it from data.features"):
        GoldDataModule(source=source, last_n_days=None, window=3, features=["price", "vol"]).setup("fit")


@pytest.mark.parametrize("kwargs,words", [
    ({"target_mode": "diff"}, "not one of"), ({"split": (0.8, 0.0, 0.2)}, "three fractions"),
    ({"window": 0}, "window"), ({"features": ["volatility:gold"]}, "volatility:<column>:<days>"),
])
def test_datamodule_rejects_bad_arguments_at_construction(kwargs, words):
    with pytest.raises(ValueError, match=words):
        GoldDataModule(**kwargs)


def test_yfinance_several_tickers_and_old_investing_footer(tmp_path):
    multi = load_series(write(tmp_path, """
Price,Close,Close
Ticker,GC=F,SI=F
Date,,
2024-01-02,2064.4,23.7
""", name="multi.csv"))
    assert multi.to_dict("list") == {"Close GC=F": [2064.4], "Close SI=F": [23.7]}
    old = load_series(write(tmp_path, '''
"Date","Price","Vol."
"Jan 03, 2024","2,042.20","150.2K"
"Jan 02, 2024","2,072.20","170.1K"
"Highest: 2,080.00","Lowest: 2,033.90","Difference: 46.10"
''', name="old.csv"))
    assert old.index.equals(dates("2024-01-02", "2024-01-03"))
    assert old.to_dict("list") == {"Price": [2072.2, 2042.2], "Vol.": [170100.0, 150200.0]}
