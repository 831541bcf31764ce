"""Issue 10 A and B: which column is the target, the date, a feature; multi-asset and MetaTrader files.

Each test writes a small file shaped like the real one into tmp_path and checks exact values.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from lstm_grad.data import DataError, GoldDataModule, load_series


def multi_asset_csv(path, columns=("SPX", "GLD", "USO", "SLV", "EUR/USD"), rows=90):
    """``Date,SPX,GLD,USO,SLV,EUR/USD`` with M/D/YYYY dates, like the public "gold price data" set."""
    rng = np.random.default_rng(5)
    start = {"SPX": 1447.16, "GLD": 84.86, "USO": 78.47, "SLV": 15.18, "EUR/USD": 1.4717}
    prices = {c: np.round(start.get(c, 50.0) * np.exp(np.cumsum(rng.normal(0, 0.01, rows))), 4) for c in columns}
    days = pd.bdate_range("2008-01-02", periods=rows)
    lines = ["Date," + ",".join(columns)]
    lines += [f"{d.month}/{d.day}/{d.year}," + ",".join(f"{prices[c][i]}" for c in columns) for i, d in enumerate(days)]
    path.write_text("\n".join(lines) + "\n")
    return path, prices


def set_up(path, caplog, words: str) -> tuple[GoldDataModule, list[str]]:
    """Set up the default data module on ``path``; return it and the log lines containing ``words``."""
    data = GoldDataModule(source=str(path), last_n_days=None, window=5, price_levels=True, target_mode="level", split=(0.6, 0.2, 0.2))
    with caplog.at_level(logging.INFO, logger="lstm_grad.data"):
        data.setup("fit")
    return data, [r.getMessage() for r in caplog.records if words in r.getMessage()]


def test_multi_asset_file_trains_on_gld_not_on_a_currency_pair(tmp_path, caplog):
    path, prices = multi_asset_csv(tmp_path / "gold_price_data.csv")
    data, start_lines = set_up(path, caplog, "target '")
    assert data.target_name == "GLD"
    # the other series is the silver one (SLV), as with the embedded gold/silver data
    assert data.feature_names == ["GLD", "SLV", "log_return:GLD", "log_return:SLV", "volatility:GLD:20"]
    train = data.datasets["train"]
    # window 0 closes on file row 20 + 4 (20 warm-up rows for the 20-day volatility)
    assert train.anchor[:3].tolist() == prices["GLD"][24:27].tolist()
    assert start_lines == [f"{path}: target 'GLD' (level), features ['GLD', 'SLV', 'log_return:GLD', "
                           "'log_return:SLV', 'volatility:GLD:20'], date column 'Date'"]
    # the resolved choices, not null, where a checkpoint and TensorBoard read them
    assert (data.hparams["target"], data.hparams["date_column"]) == ("GLD", "Date")
    assert data.hparams["features"] == data.feature_names
    assert data.hparams_initial["target"] == "GLD"  # what Lightning writes to hparams.yaml


def test_no_plainly_gold_column_among_several_stops_with_the_candidates(tmp_path):
    path, _ = multi_asset_csv(tmp_path / "assets.csv", columns=("SPX", "USO", "EUR/USD"))
    with pytest.raises(DataError) as error:
        GoldDataModule(source=str(path), last_n_days=None, window=5).setup("fit")
    assert str(error.value) == (
        f"{path}: cannot tell which column is the gold price: 3 candidate columns, none of them plainly gold "
        "(GLD, Gold, XAU, XAUUSD, GC=F), ['SPX', 'USO', 'EUR/USD']; choose one with --data.target "
        "(e.g. --data.target 'SPX')")
    data = GoldDataModule(source=str(path), last_n_days=None, window=5, target="USO")
    data.setup("fit")  # the flag the message names resolves it
    assert data.target_name == "USO"


@pytest.mark.parametrize("columns,target", [
    (["EUR/USD", "XAU/USD"], "XAU/USD"),
    (["EURUSD", "XAUUSD"], "XAUUSD"),
    (["Gold_Price", "Silver_Price", "Oil_Price"], "Gold_Price"),
    (["Close SI=F", "Close GC=F", "Volume GC=F"], "Close GC=F"),
    (["USD (AM)", "USD (PM)", "GBP (AM)", "GBP (PM)", "EURO (AM)", "EURO (PM)"], "USD (PM)"),
    (["Close/Last", "Volume", "Open", "High", "Low"], "Close/Last"),
    (["Open", "High", "Low", "Close", "Adj Close", "Volume"], "Close"),
    (["Price", "Open", "High", "Low", "Vol.", "Change %"], "Price"),
    (["Value", "Volume"], "Value"),
])
def test_target_is_found_by_whole_tokens(tmp_path, columns, target):
    days = pd.bdate_range("2024-01-01", periods=30)
    rows = [",".join(f"{100 + (i * (j + 3)) % 17}" for j in range(len(columns))) for i in range(len(days))]
    path = tmp_path / "f.csv"
    path.write_text("Date," + ",".join(f'"{c}"' for c in columns) + "\n"
                    + "".join(f"{d:%Y-%m-%d},{r}\n" for d, r in zip(days, rows)))
    data = GoldDataModule(source=str(path), last_n_days=None, window=3, features=[columns[0]])
    data.setup("fit")
    assert data.target_name == target


def test_date_column_is_a_whole_token_not_a_substring(tmp_path):
    path = tmp_path / "f.csv"
    path.write_text("Updated,Date,Price\n3,2024-01-02,2063.7\n4,2024-01-03,2041.5\n")
    frame = load_series(path)
    assert frame.index.equals(pd.DatetimeIndex(["2024-01-02", "2024-01-03"], name="date"))
    assert frame.to_dict("list") == {"Updated": [3.0, 4.0], "Price": [2063.7, 2041.5]}
    assert frame.attrs["date_column"] == "Date"


def session_csv(path, rows=80):
    closes = np.round(1800 + np.cumsum(np.sin(np.arange(rows)) * 3 + 0.5), 2)
    days = pd.bdate_range("2024-01-01", periods=rows)
    path.write_text("Date,Close,Session\n" + "".join(f"{d:%Y-%m-%d},{c},1\n" for d, c in zip(days, closes)))
    return path, closes


def test_rejected_default_column_takes_its_derived_feature_with_it(tmp_path, caplog):
    path, closes = session_csv(tmp_path / "session.csv")
    data, replaced = set_up(path, caplog, "default feature")
    assert data.feature_names == ["Close", "volatility:Close:5", "log_return:Close", "momentum:Close:5",
                                  "volatility:Close:20"]
    assert replaced == [f"{path}: default feature 'Session' is constant on the train span; using "
                        "'volatility:Close:5'; default feature 'log_return:Session' is constant on the train span; "
                        "using 'momentum:Close:5'"]
    # the scaler's statistics are those of the train rows (rows 20..20+0.6*60), computed here with pandas
    logp = np.log(pd.Series(closes))
    train = slice(20, 20 + 36)
    expected = [logp.diff().rolling(5).std()[train].mean(), logp.diff()[train].mean(), logp.diff(5)[train].mean()]
    assert data.state_dict()["feature_mean"][1:4] == pytest.approx(expected, rel=1e-12)


def test_default_derived_feature_of_a_non_positive_column_is_replaced(tmp_path, caplog):
    days = pd.bdate_range("2024-01-01", periods=60)
    path = tmp_path / "spread.csv"
    path.write_text("Date,Close,Basis\n" + "".join(
        f"{d:%Y-%m-%d},{1800 + i % 7},{(i % 5) - 2}\n" for i, d in enumerate(days)))
    data = GoldDataModule(source=str(path), last_n_days=None, window=5, price_levels=True)
    with caplog.at_level(logging.INFO, logger="lstm_grad.data"):
        data.setup("fit")
    assert data.feature_names == ["Close", "Basis", "log_return:Close", "volatility:Close:5", "volatility:Close:20"]
    assert "default feature 'log_return:Basis' takes the log of a non-positive value; using 'volatility:Close:5'" \
        in caplog.text


def test_named_features_still_stop_the_run(tmp_path):
    path, _ = session_csv(tmp_path / "session.csv")
    data = GoldDataModule(source=str(path), last_n_days=None, window=5, features=["Close", "log_return:Session"])
    with pytest.raises(DataError, match="feature 'log_return:Session' is constant on the train span; drop it"):
        data.setup("fit")


MT4 = """<DTYYYYMMDD>,<TIME>,<OPEN>,<HIGH>,<LOW>,<CLOSE>,<VOL>
20240102,000000,2063.10,2070.50,2055.00,2064.40,1200
20240103,000000,2064.40,2066.00,2030.00,2034.20,1500
20240104,000000,2034.20,2049.90,2033.10,2043.00,1320
"""
MT5_TABS = ("<DATE>\t<TIME>\t<OPEN>\t<HIGH>\t<LOW>\t<CLOSE>\t<TICKVOL>\t<VOL>\t<SPREAD>\n"
            "2024.01.02\t00:00:00\t2063.10\t2070.50\t2055.00\t2064.40\t1200\t0\t25\n"
            "2024.01.03\t00:00:00\t2064.40\t2066.00\t2030.00\t2034.20\t1500\t0\t25\n"
            "2024.01.04\t00:00:00\t2034.20\t2049.90\t2033.10\t2043.00\t1320\t0\t25\n")
MT5_PYTHON = """time,open,high,low,close,tick_volume,spread,real_volume
2024.01.02 00:00,2063.10,2070.50,2055.00,2064.40,1200,25,0
2024.01.03 00:00,2064.40,2066.00,2030.00,2034.20,1500,25,0
2024.01.04 00:00,2034.20,2049.90,2033.10,2043.00,1320,25,0
"""
CLOSES = [2064.4, 2034.2, 2043.0]
DAYS = pd.DatetimeIndex(["2024-01-02", "2024-01-03", "2024-01-04"], name="date")


@pytest.mark.parametrize("text,columns,logged", [
    (MT4, ["OPEN", "HIGH", "LOW", "CLOSE", "VOL"],
     "column 'TIME' is a time of day that is 000000 in every row; ignored"),
    (MT5_TABS, ["OPEN", "HIGH", "LOW", "CLOSE", "TICKVOL", "VOL", "SPREAD"],
     "column 'TIME' is a time of day that is 00:00:00 in every row; ignored"),
    (MT5_PYTHON, ["open", "high", "low", "close", "tick_volume", "spread", "real_volume"], ""),
])
def test_metatrader_exports(tmp_path, caplog, text, columns, logged):
    path = tmp_path / "XAUUSD_D1.csv"
    path.write_text(text)
    with caplog.at_level(logging.INFO, logger="lstm_grad.data"):
        frame = load_series(path)
    assert list(frame.columns) == columns and frame.index.equals(DAYS)
    close = next(c for c in columns if c.casefold() == "close")
    assert frame[close].tolist() == CLOSES
    assert logged in caplog.text
    from lstm_grad.data.columns import default_target
    from lstm_grad.data.features import default_candidates

    target = default_target(list(frame.columns), str(path))
    assert target == close
    assert default_candidates(frame, target)[0] == columns[:4] + [columns[4]]  # OHLC + tick volume


def test_metatrader4_named_date_column_and_intraday_times(tmp_path, caplog):
    path = tmp_path / "XAUUSD_H1.csv"
    path.write_text(MT4.replace("20240103,000000", "20240102,010000").replace("20240104,000000", "20240102,020000"))
    with caplog.at_level(logging.INFO, logger="lstm_grad.data"):
        frame = load_series(path, date_column="<DTYYYYMMDD>")
    assert frame.index.equals(pd.DatetimeIndex(["2024-01-02 00:00", "2024-01-02 01:00", "2024-01-02 02:00"],
                                               name="date"))
    assert frame["CLOSE"].tolist() == CLOSES
    assert "combined date column 'DTYYYYMMDD' with time column 'TIME' (3 distinct times of day)" in caplog.text


def test_metatrader4_defaults_train(tmp_path):
    rows = 70
    closes = np.round(2000 + np.cumsum(np.cos(np.arange(rows)) * 4), 2)
    days = pd.bdate_range("2023-01-02", periods=rows)
    path = tmp_path / "mt4.csv"
    path.write_text("<DTYYYYMMDD>,<TIME>,<OPEN>,<HIGH>,<LOW>,<CLOSE>,<VOL>\n" + "".join(
        f"{d:%Y%m%d},000000,{c - 1},{c + 3},{c - 4},{c},{100 + i % 9}\n" for i, (d, c) in enumerate(zip(days, closes))))
    data = GoldDataModule(source=str(path), last_n_days=None, window=5, price_levels=True)
    data.setup("fit")
    assert (data.target_name, data.date_column_name) == ("CLOSE", "DTYYYYMMDD")
    assert data.feature_names == ["OPEN", "HIGH", "LOW", "CLOSE", "VOL"]
    assert data.datasets["test"].actual[-1].tolist() == [closes[-1]]
