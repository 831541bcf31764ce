"""``python -m lstm_grad.forecast`` and fit's forecast line: dates, values by hand, origin, errors."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lstm_grad.cli import run_guarded
from lstm_grad.fit import fit_main
from lstm_grad.forecast import forecast_main
from lstm_grad.training.run_dirs import resolve_checkpoint
from lstm_grad.module import LSTMForecaster
from lstm_grad.data.calendar import infer_calendar, next_trading_days

WINDOW, HORIZON = 5, 3


def prices(n: int = 80, seed: int = 0) -> pd.DataFrame:
    """Business days from Mon 2024-01-01; 80 of them end on Fri 2024-04-19."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(0.01 * rng.standard_normal(n)))
    frame = pd.DataFrame({"Close": close, "Open": close * (1 + 0.003 * rng.standard_normal(n))},
                         index=pd.bdate_range("2024-01-01", periods=n, name="Date"))
    return frame


def write(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, date_format="%Y-%m-%d", float_format="%.6f")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny 1-epoch fit (log-return target, horizon 3); its stdout and the checkpoint folder."""
    root = tmp_path_factory.mktemp("forecast")
    source = write(prices(), root / "gold.csv")
    args = ["--data.source", str(source), "--data.window", str(WINDOW), "--data.horizon", str(HORIZON),
            "--data.last_n_days", "null", "--data.features", "[Close, Open, 'log_return:Close']",
            "--data.target_mode", "log_return", "--data.batch_size", "8", "--model.hidden_sizes", "[4]",
            "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.logger.init_args.save_dir", str(root / "runs"),
            "--predictions.output_dir", str(root / "pred")]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        fit_main(args)
    return {"root": root, "source": source, "stdout": out.getvalue(),
            "best": resolve_checkpoint("best", root / "runs")}


def by_hand(checkpoint: Path, frame: pd.DataFrame) -> np.ndarray:
    """Scale the last window of ``frame`` with the checkpoint's statistics, apply the model, rebuild prices and
    shrink the move toward the last price by the checkpoint's per-step weights (issue 23)."""
    state = torch.load(checkpoint, weights_only=True)
    stats = state["GoldDataModule"]
    assert stats["feature_names"] == ["Close", "Open", "log_return:Close"]
    features = pd.DataFrame({"Close": frame["Close"], "Open": frame["Open"],
                             "lr": np.log(frame["Close"]).diff()}).iloc[-WINDOW:].to_numpy()
    x = (features - np.array(stats["feature_mean"])) / np.array(stats["feature_std"])
    hp = {k: v for k, v in state["hyper_parameters"].items() if not k.startswith("_")}
    model = LSTMForecaster(**hp)
    model.load_state_dict(state["state_dict"])
    with torch.no_grad():
        y = model.eval()(torch.tensor(x, dtype=torch.float32)[None]).double().numpy()[0]  # (H,) scaled
    log_return = y * stats["target_std"] + stats["target_mean"]  # cumulative log return from the last price
    last = frame["Close"].iloc[-1]
    weights = np.array(state["forecaster_calibration"]["shrink"])  # fitted on validation, saved with the weights
    return last + weights * (last * np.exp(log_return) - last)


@pytest.mark.slow  # shares one tiny fit
def test_dates_are_the_next_business_days_and_values_equal_the_model_by_hand(trained, tmp_path):
    out = tmp_path / "f.csv"
    forecast_main(["--ckpt_path", str(trained["best"]), "--output", str(out)])
    frame = pd.read_csv(out)
    assert frame["date"].tolist() == ["2024-04-22", "2024-04-23", "2024-04-24"]  # after Fri 2024-04-19: Mon..Wed
    assert frame["step"].tolist() == [1, 2, 3]
    raw = prices()
    assert (frame["last_date"] == "2024-04-19").all()
    assert frame["last_price"].to_numpy() == pytest.approx(raw["Close"].iloc[-1], abs=1e-6)
    assert frame["persistence"].to_numpy() == pytest.approx(raw["Close"].iloc[-1], abs=1e-6)
    assert frame["forecast"].to_numpy() == pytest.approx(by_hand(trained["best"], raw), abs=1e-5)
    assert out.with_suffix(".png").stat().st_size > 10_000


@pytest.mark.slow  # shares one tiny fit
def test_forecast_csv_has_drift_and_conformal_bounds_from_the_checkpoint_in_full_precision(trained, tmp_path):
    out = tmp_path / "f.csv"
    frame = forecast_main(["--ckpt_path", str(trained["best"]), "--output", str(out)])
    written = pd.read_csv(out)
    assert list(written.columns) == ["date", "step", "forecast", "lower_80", "upper_80", "lower_95", "upper_95",
                                     "persistence", "drift", "last_date", "last_price"]
    for column in ("forecast", "lower_95", "upper_95", "drift"):  # the numbers, not a 6-decimal text
        np.testing.assert_array_equal(written[column].to_numpy(), frame[column].to_numpy())
    raw = prices().round(6)["Close"]  # exactly what the CSV holds
    state = torch.load(trained["best"], weights_only=True)
    calibration = state["forecaster_calibration"]
    train = raw.iloc[1:][: calibration_train_rows(len(raw) - 1)]  # after the one warm-up row of log_return:Close
    slope = (train.iloc[-1] - train.iloc[0]) / (len(train) - 1)
    assert calibration["drift_slope"] == pytest.approx(slope, rel=1e-12)
    assert written["drift"].to_numpy() == pytest.approx(raw.iloc[-1] + slope * np.arange(1, HORIZON + 1), rel=1e-12)
    sigma_t = raw.diff().iloc[-20:].std(ddof=1)  # the last 20 daily price changes
    for level in ("80", "95"):
        half = sigma_t * np.array(calibration[f"q_{level}"])
        assert written[f"upper_{level}"].to_numpy() == pytest.approx(written["forecast"] + half, rel=1e-12)
        assert written[f"lower_{level}"].to_numpy() == pytest.approx(written["forecast"] - half, rel=1e-12)
    assert (written["lower_95"] <= written["lower_80"]).all() and (written["upper_80"] <= written["upper_95"]).all()
    assert calibration["calib_n"] > 0 and "conformal" in calibration["method"]


def calibration_train_rows(rows: int) -> int:
    """Rows of the train span of a 70/10/20 split of ``rows`` rows (``GoldDataModule``'s rounding)."""
    return round(0.7 * rows)


@pytest.mark.slow  # shares one tiny fit
def test_a_csv_cut_by_k_rows_moves_the_origin_by_k_rows(trained, tmp_path):
    k = 3
    cut = write(prices().iloc[:-k], tmp_path / "cut.csv")
    out = tmp_path / "cut_forecast.csv"
    forecast_main(["--ckpt_path", str(trained["best"]), "--data.source", str(cut), "--output", str(out)])
    frame, raw = pd.read_csv(out), prices().iloc[:-k]
    assert (frame["last_date"] == "2024-04-16").all()  # three business days before Fri 2024-04-19
    assert frame["date"].tolist() == ["2024-04-17", "2024-04-18", "2024-04-19"]
    assert frame["forecast"].to_numpy() == pytest.approx(by_hand(trained["best"], raw), abs=1e-5)


@pytest.mark.slow  # shares one tiny fit
def test_last_and_best_resolve_to_the_newest_run_and_the_default_output_is_its_folder(trained):
    best, last = trained["best"], resolve_checkpoint("last", trained["root"] / "runs")
    assert last.name == "last.ckpt" and best.parent == last.parent and best.name.startswith("best-")
    forecast_main(["--save_dir", str(trained["root"] / "runs")])  # --ckpt_path last by default
    assert (last.parent.parent / "forecast.csv").is_file()


@pytest.mark.slow  # shares one tiny fit
def test_fit_prints_the_forecast_past_the_data_as_the_last_line(trained, tmp_path):
    last_line = trained["stdout"].strip().splitlines()[-1]
    expected = by_hand(trained["best"], prices())
    assert last_line.startswith("forecast after 2024-04-19: 2024-04-22 model ")
    assert f"2024-04-24 (step 3) model {expected[-1]:.2f}" in last_line
    assert last_line.endswith(f"vs persistence {prices()['Close'].iloc[-1]:.2f}")


@pytest.mark.slow  # shares one tiny fit
def test_a_csv_without_the_checkpoint_features_is_one_error_line(trained, tmp_path, capsys):
    only_close = write(prices()[["Close"]], tmp_path / "close_only.csv")
    code = run_guarded(forecast_main, ["--ckpt_path", str(trained["best"]), "--data.source", str(only_close)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("error:") and "\n" not in err
    assert "missing column(s) ['Open']" in err


@pytest.mark.slow  # shares one tiny fit
def test_too_few_rows_says_how_many_are_needed(trained, tmp_path, capsys):
    short = write(prices().iloc[:WINDOW], tmp_path / "short.csv")  # log_return:Close needs one warm-up row
    code = run_guarded(forecast_main, ["--ckpt_path", str(trained["best"]), "--data.source", str(short)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err
    assert f"{WINDOW} row(s); a forecast needs at least {WINDOW + 1}" in err


def test_calendar_is_inferred_from_the_data():
    friday = pd.Timestamp("2024-04-19")
    assert next_trading_days(friday, 2).strftime("%Y-%m-%d").tolist() == ["2024-04-22", "2024-04-23"]
    assert infer_calendar(pd.bdate_range("2024-01-01", periods=30)) == "business"
    seven_days = pd.date_range("2024-01-01", periods=30)  # a series that trades on weekends
    assert infer_calendar(seven_days) == "calendar"
    assert next_trading_days(friday, 2, "calendar").strftime("%Y-%m-%d").tolist() == ["2024-04-20", "2024-04-21"]
    one_stray_sunday = pd.bdate_range("2024-01-01", periods=30).append(pd.DatetimeIndex(["2024-02-11"]))
    assert infer_calendar(one_stray_sunday) == "business"


def test_the_default_inputs_without_price_levels_and_data_end(tmp_path):
    from lstm_grad.data import GoldDataModule

    raw = prices().round(6)  # exactly what the CSV holds
    source = write(raw, tmp_path / "p.csv")
    data = GoldDataModule(source=str(source), last_n_days=None, window=WINDOW, target_mode="log_return",
                          price_levels=False, end="2024-03-29")  # a Friday, 15 business days before the last row
    data.setup("fit")
    assert data.feature_names == ["momentum:Close:20", "momentum:Open:20", "log_return:Close", "log_return:Open",
                                  "volatility:Close:20"]
    kept = raw.loc[:"2024-03-29"]
    assert data.row_dates()[0] == kept.index[20] and data.row_dates()[-1] == pd.Timestamp("2024-03-29")
    momentum = np.log(kept["Close"] / kept["Close"].shift(20)).iloc[20:]  # log(p_t / p_{t-20})
    train = momentum.iloc[: round(0.7 * len(momentum))]
    assert data.state_dict()["feature_mean"][0] == pytest.approx(train.mean(), rel=1e-9)
