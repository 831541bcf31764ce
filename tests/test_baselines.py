"""Baselines and the Diebold–Mariano test against hand computations and numpy.linalg.lstsq."""

import math

import numpy as np
import pytest
import torch

from lstm_grad.forecaster.baselines import (ar_design, baseline_forecasts, fit_linear_ar, forecast_metrics,
                                 persistence_forecast, predict_linear_ar)
from lstm_grad.data import GoldDataModule
from lstm_grad.forecaster.significance import autocovariance, diebold_mariano, long_run_variance


def test_dm_squared_loss_horizon_1_by_hand():
    e1 = np.array([1.0, -1.0, 2.0, 0.5])
    e2 = np.array([2.0, 2.0, -2.0, 1.0])
    # d = e1^2 - e2^2 = [-3, -3, 0, -0.75]; mean -1.6875; centred [-1.3125, -1.3125, 1.6875, 0.9375]
    # gamma_0 = (1.72265625 * 2 + 2.84765625 + 0.87890625) / 4 = 1.79296875
    stat = -1.6875 / math.sqrt(1.79296875 / 4)
    result = diebold_mariano(e1, e2, horizon=1, loss="squared")
    assert math.isclose(result.stat, stat, rel_tol=1e-12)
    assert math.isclose(result.p_value, math.erfc(abs(stat) / math.sqrt(2)), rel_tol=1e-12)
    assert result.mean_diff == -1.6875 and result.n == 4


def test_dm_absolute_loss_horizon_2_adds_lag_1_autocovariance():
    e1 = np.array([1.0, -1.0, 2.0, 0.5, -3.0])
    e2 = np.array([2.0, 2.0, -2.0, 1.0, 1.0])
    # d = |e1| - |e2| = [-1, -1, 0, -0.5, 2]; mean -0.1; centred [-0.9, -0.9, 0.1, -0.4, 2.1]
    gamma0 = (0.81 + 0.81 + 0.01 + 0.16 + 4.41) / 5  # 1.24
    gamma1 = (-0.9 * -0.9 + 0.1 * -0.9 + -0.4 * 0.1 + 2.1 * -0.4) / 5  # -0.032
    variance = gamma0 + 2 * gamma1  # 1.176 > 0: rectangular weights
    result = diebold_mariano(e1, e2, horizon=2, loss="absolute")
    assert math.isclose(autocovariance(np.array([-1, -1, 0, -0.5, 2.0]), 1), gamma1, rel_tol=1e-12)
    assert math.isclose(result.stat, -0.1 / math.sqrt(variance / 5), rel_tol=1e-12)


def test_long_run_variance_falls_back_to_bartlett_when_not_positive():
    d = np.array([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])  # strongly negative lag-1 autocovariance
    gammas = [autocovariance(d, k) for k in range(2)]
    assert gammas[0] + 2 * gammas[1] <= 0
    assert math.isclose(long_run_variance(d, 1), gammas[0] + 2 * 0.5 * gammas[1], rel_tol=1e-12)


def test_dm_of_identical_forecasts_is_zero_with_p_one():
    e = np.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.0]])
    result = diebold_mariano(e, e.copy(), horizon=2)
    assert result.stat == 0.0 and result.p_value == 1.0


def test_dm_rejects_bad_input():
    with pytest.raises(ValueError, match="one shape"):
        diebold_mariano(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="loss"):
        diebold_mariano(np.zeros(3), np.zeros(3), loss="hinge")


def test_linear_ar_equals_numpy_lstsq_on_a_tiny_series():
    rng = np.random.default_rng(0)
    series = rng.normal(size=(12, 2))  # 12 days, 2 features
    window, lags = 4, 2
    windows = np.stack([series[i:i + window] for i in range(12 - window)])  # (8, 4, 2)
    targets = np.stack([series[i + window: i + window + 1, 0] for i in range(12 - window)])  # (8, 1)
    # design by hand: [x_{t-1,0}, x_{t-1,1}, x_{t,0}, x_{t,1}, 1] for the last two days of each window
    design = np.array([[*w[-2], *w[-1], 1.0] for w in windows])
    expected, *_ = np.linalg.lstsq(design, targets, rcond=None)
    np.testing.assert_array_equal(ar_design(windows, lags), design)
    coef = fit_linear_ar(windows, targets, lags)
    np.testing.assert_allclose(coef, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(predict_linear_ar(coef, windows, lags), design @ expected, rtol=1e-12)
    with pytest.raises(ValueError, match="lags=5"):
        ar_design(windows, 5)


def test_persistence_metrics_are_exact():
    anchor = np.array([10.0, 12.0, 11.0])
    actual = np.array([[12.0], [11.0], [11.0]])
    naive = persistence_forecast(anchor, 1)
    m = forecast_metrics(naive, actual, anchor)
    assert m["mae"] == m["naive_mae"] == 1.0  # |12-10|, |11-12|, |11-11| -> 3 / 3
    assert m["rel_mae"] == 1.0  # renamed: this was "mase" before issue 23 (MAE / persistence MAE)
    assert math.isclose(m["mse"], 5 / 3)
    assert math.isclose(m["mape"], 100 * (2 / 12 + 1 / 11) / 3)
    assert math.isnan(m["dir_acc"])  # "no change" has no direction: every pair is left out, none is scored


def test_baselines_on_real_windows_match_hand_persistence():
    data = GoldDataModule(last_n_days=200, window=10, horizon=1)
    data.setup("fit")
    test = data.datasets["test"]
    prices = data._raw["prices"]
    rows = test.start.numpy() + 10  # target row of each test window
    hand = np.mean(np.abs(prices[rows] - prices[rows - 1]))
    result = baseline_forecasts(data, lags_grid=(1, 2))
    assert math.isclose(result["persistence"]["metrics"]["mae"], hand, rel_tol=1e-5)
    ar = result["linear_ar"]
    assert ar["lags"] in (1, 2) and ar["pred"].shape == (len(test), 1)
    assert torch.isfinite(torch.from_numpy(ar["pred"])).all()


def test_drift_slope_comes_from_the_raw_train_span_by_pandas():
    from lstm_grad.data import load_series

    data = GoldDataModule(last_n_days=200, window=10, horizon=3)
    data.setup("fit")
    gold = load_series("embedded")[data.target_name].iloc[-200:]  # the same span, read again by pandas
    train = gold.iloc[: data._raw["train_rows"]]
    slope = (train.iloc[-1] - train.iloc[0]) / (len(train) - 1)
    result = baseline_forecasts(data, lags_grid=(1,))["drift"]
    expected = result["anchor"][:, None] + slope * np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(result["pred"], expected, rtol=0, atol=1e-9)
    assert abs(slope) > 0  # a real slope, not persistence in disguise
