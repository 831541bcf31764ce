"""``python -m lstm_grad.backtest`` on a tiny CSV: fold placement, per-fold scalers, persistence and pooling by hand."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pandas as pd
import pytest
import torch

from lstm_grad.backtest import backtest
from lstm_grad.cli import run_guarded

pytestmark = pytest.mark.slow  # one 2-fold backtest of a tiny network (about 20 s)
FOLDS, TEST_DAYS, WINDOW = 2, 10, 5


def prices(n: int = 90) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    close = 50 * np.exp(np.cumsum(0.01 * rng.standard_normal(n)))
    frame = pd.DataFrame({"Close": close, "Open": close * (1 + 0.003 * rng.standard_normal(n))},
                         index=pd.bdate_range("2023-03-01", periods=n, name="Date"))
    return frame.round(6)  # exactly what the CSV holds


def fit_flags(source) -> list[str]:
    return ["--data.source", str(source), "--data.window", str(WINDOW), "--data.last_n_days", "null",
            "--data.features", "[Close, Open, 'log_return:Close']", "--data.batch_size", "8",
            "--data.target_mode", "level", "--model.hidden_sizes", "[4]", "--trainer.max_epochs", "1"]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    root = tmp_path_factory.mktemp("backtest")
    source = root / "gold.csv"
    prices().to_csv(source, date_format="%Y-%m-%d", float_format="%.6f")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        table = backtest([*fit_flags(source), "--folds", str(FOLDS), "--test_days", str(TEST_DAYS),
                          "--output", str(root / "bt")])
    return {"root": root, "source": source, "table": table, "stdout": out.getvalue(),
            "csv": pd.read_csv(root / "bt" / "backtest.csv", dtype={"fold": str}),
            "predictions": pd.read_csv(root / "bt" / "backtest_predictions.csv"),
            "steps": pd.read_csv(root / "bt" / "backtest_steps.csv", dtype={"fold": str})}


def test_folds_are_consecutive_test_spans_ending_at_the_last_day_with_training_strictly_before(result):
    raw, csv = prices(), result["csv"]
    dates = raw.index.strftime("%Y-%m-%d")
    folds = csv[csv["fold"] != "all"].reset_index(drop=True)
    assert folds["fold"].tolist() == ["1", "2"]
    for k, row in folds.iterrows():
        test_rows = slice(len(raw) - (FOLDS - k) * TEST_DAYS, len(raw) - (FOLDS - k - 1) * TEST_DAYS)
        assert (row["test_start"], row["test_end"]) == (dates[test_rows][0], dates[test_rows][-1])
        val = dates[test_rows.start - TEST_DAYS: test_rows.start]  # validation: the N days before the test span
        assert (row["val_start"], row["val_end"]) == (val[0], val[-1])
        assert row["train_end"] == dates[test_rows.start - TEST_DAYS - 1] < row["val_start"] < row["test_start"]
        assert row["train_start"] == dates[1]  # after the one warm-up row of log_return:Close (expanding window)
        assert row["windows"] == TEST_DAYS
    assert folds["test_end"].iloc[-1] == dates[-1] and folds["test_end"].iloc[0] < folds["test_start"].iloc[1]
    progress = [line for line in result["stdout"].splitlines() if line.startswith(f"fold ") and f"/{FOLDS}: train" in line]
    assert [line.split(":")[0] for line in progress] == ["fold 1/2", "fold 2/2"]  # one line per fold


def test_each_fold_scaler_is_fitted_on_its_own_train_span(result):
    raw = prices()
    features = pd.DataFrame({"Close": raw["Close"], "Open": raw["Open"], "lr": np.log(raw["Close"]).diff()})
    for k in range(1, FOLDS + 1):
        checkpoint = next((result["root"] / "bt" / f"fold_{k}").glob("version_*/checkpoints/best-*.ckpt"))
        stats = torch.load(checkpoint, weights_only=True)["GoldDataModule"]
        val_start = len(raw) - (FOLDS - k + 2) * TEST_DAYS
        train = features.iloc[1:val_start]  # warm-up row dropped; everything before the validation span
        assert stats["feature_mean"] == pytest.approx(train.mean().to_numpy(), rel=1e-9)
        assert stats["feature_std"] == pytest.approx(train.std(ddof=0).to_numpy(), rel=1e-9)
        assert stats["target_mean"] == pytest.approx(raw["Close"].iloc[1:val_start].mean(), rel=1e-9)  # level target


def test_naive_mae_is_persistence_by_hand_and_the_pooled_row_is_the_mean_over_all_test_days(result):
    raw, predictions = prices()["Close"], result["predictions"]
    csv = result["table"].astype({"fold": str})  # the values written to backtest.csv, before rounding
    numbers = ["mae", "naive_mae", "rel_mae", "mase", "dm_p", "dir_acc"]
    assert result["csv"][numbers].to_numpy() == pytest.approx(csv[numbers].to_numpy(dtype=float), rel=1e-5, nan_ok=True)
    change = raw.diff().abs()  # |p_t - p_{t-1}|: persistence's error on day t
    test_days = []
    for k in range(1, FOLDS + 1):
        row = csv[csv["fold"] == str(k)].iloc[0]
        days = change.loc[row["test_start"]: row["test_end"]]
        assert len(days) == TEST_DAYS
        assert row["naive_mae"] == pytest.approx(days.mean(), rel=1e-9)  # float64 from the raw prices
        mine = predictions[predictions["fold"] == k]
        assert row["mae"] == pytest.approx((mine["forecast"] - mine["actual"]).abs().mean(), rel=1e-5)
        test_days.append(days)
    pooled = csv[csv["fold"] == "all"].iloc[0]
    assert pooled["windows"] == FOLDS * TEST_DAYS
    assert pooled["naive_mae"] == pytest.approx(pd.concat(test_days).mean(), rel=1e-9)
    assert pooled["mae"] == pytest.approx((predictions["forecast"] - predictions["actual"]).abs().mean(), rel=1e-5)
    folds = csv[csv["fold"] != "all"]
    assert pooled["mae"] == pytest.approx((folds["mae"] * folds["windows"]).sum() / folds["windows"].sum(), rel=1e-5)
    assert pooled["rel_mae"] == pytest.approx(pooled["mae"] / pooled["naive_mae"], rel=1e-5)  # "mase" before issue 23
    assert predictions["actual"].to_numpy() == pytest.approx(raw.loc[predictions["date"]].to_numpy(), abs=1e-9)
    assert 0 <= pooled["dm_p"] <= 1
    report = (result["root"] / "bt" / "backtest.md").read_text()
    assert "--folds 2" in report and "Commit: `" in report and "| all |" in report
    assert (result["root"] / "bt" / "backtest.png").stat().st_size > 10_000


def test_too_many_folds_for_the_data_is_one_error_line(result, capsys):
    code = run_guarded(backtest, [*fit_flags(result["source"]), "--folds", "5", "--test_days", "20",
                                  "--output", str(result["root"] / "none")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("error:") and "\n" not in err
    assert "fold 1 of 5 has 0 train rows" in err


def test_drift_mase_intervals_and_steps_by_hand(result):
    """Issue 23: drift beside persistence with DM p against each, Hyndman's MASE on each fold's train span, the
    intervals' coverage and scores, per-step rows, and predictions in full float64 precision."""
    raw, predictions, csv = prices()["Close"], result["predictions"], result["table"].astype({"fold": str})
    for k in range(1, FOLDS + 1):
        row = csv[csv["fold"] == str(k)].iloc[0]
        train = raw.loc[row["train_start"]: row["train_end"]]
        scale = train.diff().abs().iloc[1:].mean()  # the in-sample one-step naive MAE of the fold's train span
        slope = (train.iloc[-1] - train.iloc[0]) / (len(train) - 1)
        mine = predictions[predictions["fold"] == k]
        assert row["mase"] == pytest.approx((mine["forecast"] - mine["actual"]).abs().mean() / scale, rel=1e-9)
        assert mine["drift"].to_numpy() == pytest.approx(mine["persistence"] + slope * mine["step"], rel=1e-12)
        assert row["drift_mae"] == pytest.approx((mine["drift"] - mine["actual"]).abs().mean(), rel=1e-9)
        inside = (mine["lower_80"] <= mine["actual"]) & (mine["actual"] <= mine["upper_80"])
        assert row["coverage_80"] == pytest.approx(inside.mean(), abs=1e-12)
        assert row["up_pred"] == pytest.approx((mine["forecast"] > mine["persistence"]).mean(), abs=1e-12)
        assert 0 <= row["dm_p_drift"] <= 1 and 0 <= row["drift_dm_p"] <= 1 and row["winkler_95_rw"] > 0
        assert 0 <= row["shrink_step_1"] <= 1 and row["calib_n"] == TEST_DAYS
    steps = result["steps"]
    assert sorted(steps["fold"].unique()) == ["1", "2", "all"] and steps["step"].unique().tolist() == [1]
    pooled = steps[steps["fold"] == "all"].iloc[0]
    assert pooled["rel_mae"] == pytest.approx(csv[csv["fold"] == "all"]["rel_mae_last_step"].iloc[0], rel=1e-5)
    text = (result["root"] / "bt" / "backtest_predictions.csv").read_text().splitlines()[1]
    assert max(len(cell.split(".")[-1]) for cell in text.split(",")[3:]) > 6  # not rounded to 6 decimals
    assert "DM p vs drift" in (result["root"] / "bt" / "backtest.md").read_text()
