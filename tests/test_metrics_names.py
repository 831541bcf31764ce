"""Metric names as the field names them: ``mase`` (Hyndman & Koehler 2006) and ``rel_mae`` (MAE / persistence MAE)
by hand and against darts; drift's Diebold-Mariano p by hand; the up-share of an "always up" model; a shrink
weight of 0 is persistence exactly; fit's table lines up."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from lstm_grad.forecaster.baselines import drift_forecast, forecast_metrics
from lstm_grad.forecaster.evaluation import evaluate
from lstm_grad.forecaster.metrics import ForecastMetrics, mase, naive_scale, rel_mae
from lstm_grad.forecaster.shrinkage import apply_shrink, fit_shrink

# six days: the first four are the training span, the last two are the test targets (h = 1)
DAYS = np.array([10.0, 11.0, 10.5, 12.0, 11.5, 12.5])
TRAIN = DAYS[:4]
ANCHOR = np.array([12.0, 11.5])  # the last observed price before each test day
ACTUAL = np.array([[11.5], [12.5]])
PRED = np.array([[11.8], [12.0]])


def test_mase_and_rel_mae_by_hand_on_six_days():
    scale = (1.0 + 0.5 + 1.5) / 3  # |11-10|, |10.5-11|, |12-10.5|: the in-sample one-step naive MAE = 1.0
    mae = (0.3 + 0.5) / 2  # |11.8-11.5|, |12-12.5| = 0.4
    naive_mae = (0.5 + 1.0) / 2  # |12-11.5|, |11.5-12.5| = 0.75
    assert naive_scale(TRAIN) == pytest.approx(scale, abs=1e-15)
    assert rel_mae(PRED, ACTUAL, ANCHOR) == pytest.approx(mae / naive_mae, rel=1e-15)  # 0.5333...
    assert mase(PRED, ACTUAL, scale) == pytest.approx(mae / scale, rel=1e-15)  # 0.4
    m = forecast_metrics(PRED, ACTUAL, ANCHOR, naive_scale(TRAIN))
    assert (m["mae"], m["naive_mae"]) == pytest.approx((mae, naive_mae), rel=1e-15)
    assert (m["rel_mae"], m["mase"]) == pytest.approx((mae / naive_mae, mae / scale), rel=1e-15)
    assert math.isnan(forecast_metrics(PRED, ACTUAL, ANCHOR)["mase"])  # no training span, no MASE
    # the module's own accumulator, batch by batch, agrees
    metrics = ForecastMetrics()
    metrics.scale = scale
    for k in range(2):
        metrics.update(*(torch.tensor(a[k: k + 1]) for a in (PRED, ACTUAL, ANCHOR)))
    got = metrics.compute()
    assert float(got["rel_mae"]) == pytest.approx(mae / naive_mae, rel=1e-15)
    assert float(got["mase"]) == pytest.approx(mae / scale, rel=1e-15)


def test_mase_equals_darts():
    darts = pytest.importorskip("darts")
    from darts.metrics import mase as darts_mase

    dates = pd.bdate_range("2024-01-01", periods=len(DAYS))
    series = lambda values, index: darts.TimeSeries.from_times_and_values(index, values)  # noqa: E731
    expected = darts_mase(series(ACTUAL[:, 0], dates[4:]), series(PRED[:, 0], dates[4:]), series(TRAIN, dates[:4]), m=1)
    assert mase(PRED, ACTUAL, naive_scale(TRAIN)) == pytest.approx(float(expected), rel=1e-12)


def hln_dm_by_hand(e1: np.ndarray, e2: np.ndarray, h: int) -> tuple[float, float]:
    """Diebold-Mariano on squared loss, autocovariances up to h-1 (rectangular), HLN-corrected, Student t."""
    stats = pytest.importorskip("scipy.stats")
    d = (e1 ** 2).mean(axis=1) - (e2 ** 2).mean(axis=1)
    n, centred = len(d), d - d.mean()
    gammas = [float(np.sum(centred[k:] * centred[: n - k]) / n) for k in range(h)]
    stat = d.mean() / math.sqrt((gammas[0] + 2 * sum(gammas[1:])) / n)
    stat *= math.sqrt((n + 1 - 2 * h + h * (h - 1) / n) / n)
    return stat, float(2 * stats.t.sf(abs(stat), n - 1))


def trending(n: int = 400, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 100 * np.exp(np.cumsum(0.002 + 0.01 * rng.standard_normal(n)))


def test_drift_dm_p_recomputed_by_hand():
    prices, h = trending(), 3
    train, test = prices[:300], prices[300:]
    anchor = test[: -h]
    actual = np.stack([test[k + 1: len(test) - h + k + 1] for k in range(h)], axis=1)  # (N, H)
    drift = drift_forecast(anchor, train, h)
    rng = np.random.default_rng(1)
    pred = anchor[:, None] * (1 + 0.004 * rng.standard_normal(actual.shape))
    scores = evaluate(pred, actual, anchor, drift, naive_scale(train))
    naive = np.repeat(anchor[:, None], h, axis=1)
    stat, p = hln_dm_by_hand(drift - actual, naive - actual, h)
    assert (scores["drift_dm_stat"], scores["drift_dm_p"]) == pytest.approx((stat, p), rel=1e-9)
    stat, p = hln_dm_by_hand(pred - actual, drift - actual, h)
    assert (scores["dm_stat_drift"], scores["dm_p_drift"]) == pytest.approx((stat, p), rel=1e-9)
    assert scores["drift_up_pred"] == 1.0 and scores["rel_mae_drift"] == pytest.approx(
        np.abs(pred - actual).mean() / np.abs(drift - actual).mean(), rel=1e-12)


@pytest.fixture()
def trending_data(tmp_path):
    from lstm_grad.data import GoldDataModule

    path = tmp_path / "trend.csv"
    pd.DataFrame({"date": pd.bdate_range("2020-01-01", periods=300).strftime("%Y-%m-%d"),
                  "price": trending(300)}).to_csv(path, index=False)
    data = GoldDataModule(source=str(path), last_n_days=None, window=10, horizon=2, batch_size=16,
                          features=["price", "log_return:price"])
    data.setup("fit")
    return data


def constant_model(data, scaled_output: float, **kwargs):
    """A forecaster whose network outputs ``scaled_output`` for every window and step (head weights 0)."""
    from lstm_grad.module import LSTMForecaster

    model = LSTMForecaster(n_features=data.n_features, hidden_sizes=(4,), horizon=data.horizon, dropout=0.0, **kwargs)
    with torch.no_grad():
        model.model.head.weight.zero_()
        model.model.head.bias.fill_(scaled_output)
    return model


def test_an_always_up_model_shows_an_up_share_of_100_percent(trending_data, quiet_trainer):
    model = constant_model(trending_data, 3.0, shrink_prior=None)  # 3 std above the mean log return: always up
    quiet_trainer(logger=False).test(model, datamodule=trending_data, verbose=False)
    metrics = model.epoch_metrics["test"]
    assert metrics["test/up_pred"] == 1.0
    outputs = model.test_outputs
    assert metrics["test/up_actual"] == pytest.approx(np.mean(outputs["actual"] > outputs["anchor"][:, None]), abs=0)
    assert metrics["test/up_actual"] < 1.0  # the market did not always go up; the model always said so
    from lstm_grad.fit import results_table

    model_row = results_table(metrics).splitlines()[2]
    assert model_row.startswith("| model") and "100.0 %" in model_row


def test_a_shrink_weight_of_zero_is_exactly_persistence(trending_data, quiet_trainer):
    model = constant_model(trending_data, 3.0)
    model.calibration = {"shrink": [0.0, 0.0]}
    quiet_trainer(logger=False).test(model, datamodule=trending_data, verbose=False)
    outputs, metrics = model.test_outputs, model.epoch_metrics["test"]
    np.testing.assert_array_equal(outputs["pred"], np.repeat(outputs["anchor"][:, None], 2, axis=1))
    assert metrics["test/rel_mae"] == 1.0 and metrics["test/dm_p"] == 1.0 and metrics["test/up_pred"] == 0.0
    moved = np.array([[12.0, 8.0]])
    np.testing.assert_array_equal(apply_shrink(moved, np.array([10.0]), [0.0, 0.0]), [[10.0, 10.0]])
    assert fit_shrink(moved, moved, np.array([10.0]), prior=np.inf).tolist() == [0.0, 0.0]


def test_logged_names_are_rel_mae_and_mase(trending_data, quiet_trainer, MemoryLogger):
    model = constant_model(trending_data, 0.0)
    logger = MemoryLogger()
    trainer = quiet_trainer(max_epochs=1, logger=logger, limit_train_batches=2, enable_checkpointing=False)
    trainer.fit(model, datamodule=trending_data)
    trainer.test(model, datamodule=trending_data, verbose=False)
    for key in ("val/rel_mae", "val/mase", "test/rel_mae", "test/mase", "test/dm_p", "test/dm_p_drift",
                "test/up_pred", "test/up_actual", "test/coverage_80", "test/coverage_95", "test/winkler_95",
                "test/winkler_95_rw", "test/mae_last_step", "test/rel_mae_last_step"):
        assert key in logger.values, key
    metrics = model.epoch_metrics["test"]
    assert metrics["test/mase"] == pytest.approx(metrics["test/mae"] / metrics["test/mase_scale"], rel=1e-12)
    assert model.calibration["calib_n"] == len(trending_data.datasets["val"])


def test_fit_table_columns_line_up_when_values_reach_10():
    from lstm_grad.fit import last_step_table, results_table

    values = {"mae": 123.456, "rel_mae": 12.5, "mase": 10.25, "dm_p": 0.0001, "dm_p_drift": 0.5, "up_pred": 1.0,
              "dir_acc": 0.5, "mape": 12.0, "naive_mae": 9.876, "naive_mase": 0.82, "naive_mape": 1.0,
              "drift_mae": 10.5, "drift_rel_mae": 1.06, "drift_mase": 0.875, "drift_dm_p": 0.3, "drift_up_pred": 1.0,
              "drift_dir_acc": 0.52, "drift_mape": 1.1, "mae_last_step": 150.0, "rel_mae_last_step": 11.0,
              "mase_last_step": 12.5, "mase_scale": 12.0, "drift_mae_last_step": 14.0, "drift_rel_mae_last_step": 1.03}
    metrics = {f"test/{k}": v for k, v in values.items()}
    for table in (results_table(metrics), last_step_table(metrics, 30)):
        lines = table.splitlines()
        bars = {tuple(i for i, c in enumerate(line) if c == "|") for line in lines}
        assert len(bars) == 1, table  # every row's separators at the same columns
    assert "|   12.500 |" in results_table(metrics)
