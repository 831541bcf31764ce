"""Prediction intervals: split-conformal coverage on a Gaussian random walk with known sigma, persistence's
random-walk interval by hand, the conformal rank, the interval score and sigma_t against pandas."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

from lstm_grad.forecaster.intervals import (VOL_DAYS, calibrate, conformal_interval, conformal_quantile, coverage,
                                            interval_score, random_walk_interval, trailing_scale)

SIGMA, HORIZON = 2.0, 5


def random_walk_paths(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``n`` independent Gaussian random walks (steps N(0, SIGMA^2)) of VOL_DAYS + 1 observed days and HORIZON
    future days; return persistence's forecast (n, H), the actual prices (n, H), the anchor (n,) and sigma_t (n,)."""
    rng = np.random.default_rng(seed)
    paths = 100 + np.cumsum(SIGMA * rng.standard_normal((n, VOL_DAYS + 1 + HORIZON)), axis=1)
    last = VOL_DAYS  # the anchor's column
    anchor, actual = paths[:, last], paths[:, last + 1:]
    scale = np.array([trailing_scale(path, [last])[0] for path in paths])
    return np.repeat(anchor[:, None], HORIZON, axis=1), actual, anchor, scale


def test_conformal_coverage_is_nominal_within_sampling_error_on_a_gaussian_random_walk():
    n = 4000
    pred_cal, actual_cal, _, scale_cal = random_walk_paths(n, seed=0)
    pred, actual, _, scale = random_walk_paths(n, seed=1)
    calibration = calibrate(pred_cal, actual_cal, scale_cal)
    assert calibration["calib_n"] == n
    for level in (0.8, 0.95):
        lower, upper = conformal_interval(pred, scale, calibration[f"q_{round(100 * level)}"])
        inside = (lower <= actual) & (actual <= upper)  # (n, H): independent paths, so n independent draws a step
        error = 4 * math.sqrt(level * (1 - level) / n) + 1 / (n + 1)  # 4 standard errors of two samples, and the rank's
        for h in range(HORIZON):
            assert abs(inside[:, h].mean() - level) < error, (level, h + 1, inside[:, h].mean())
    # the scores are |N(0, h sigma^2)| / sigma_t: q_h grows like sqrt(h)
    q95 = np.array(calibration["q_95"])
    assert q95[-1] / q95[0] == pytest.approx(math.sqrt(HORIZON), rel=0.1)


def test_random_walk_interval_is_sigma_sqrt_h_by_hand():
    rng = np.random.default_rng(2)
    log_sigma = 0.01
    train = 100 * np.exp(np.cumsum(log_sigma * rng.standard_normal(2000)))
    returns = np.diff(np.log(train))
    sigma = math.sqrt(np.sum((returns - returns.mean()) ** 2) / (len(returns) - 1))  # sample std by hand
    assert sigma == pytest.approx(log_sigma, rel=0.05)  # the known sigma, within sampling error
    anchor = np.array([50.0, 200.0])
    for level in (0.8, 0.95):
        z = NormalDist().inv_cdf(0.5 + level / 2)  # 1.2816 and 1.9600
        lower, upper = random_walk_interval(anchor, train, 30, level)
        for h in (1, 4, 30):
            half = z * sigma * math.sqrt(h) * anchor
            np.testing.assert_allclose(upper[:, h - 1] - anchor, half, rtol=1e-12)
            np.testing.assert_allclose(anchor - lower[:, h - 1], half, rtol=1e-12)


def test_conformal_rank_is_ceil_n_plus_1_times_level():
    scores = np.arange(1.0, 20.0)[:, None]  # 19 scores 1..19
    assert conformal_quantile(scores, 0.8).tolist() == [16.0]  # ceil(20 * 0.8) = 16th smallest
    assert conformal_quantile(scores, 0.95).tolist() == [19.0]  # ceil(20 * 0.95) = 19th
    assert conformal_quantile(scores[:10], 0.95).tolist() == [math.inf]  # ceil(11 * 0.95) = 11 > 10 scores


def test_interval_score_and_coverage_by_hand():
    lower, upper = np.array([[9.0], [9.0], [9.0]]), np.array([[11.0], [11.0], [11.0]])
    actual = np.array([[10.0], [8.0], [12.5]])
    # width 2 each; below by 1 and above by 1.5, each times 2 / alpha = 40 at 95 %
    assert interval_score(lower, upper, actual, 0.95) == pytest.approx((2 + (2 + 40 * 1) + (2 + 40 * 1.5)) / 3)
    assert coverage(lower, upper, actual) == pytest.approx(1 / 3)


def test_sigma_t_is_the_rolling_std_of_price_changes():
    rng = np.random.default_rng(3)
    prices = 100 + np.cumsum(rng.standard_normal(60))
    rows = np.array([25, 40, 59])
    expected = pd.Series(prices).diff().rolling(VOL_DAYS).std(ddof=1).to_numpy()[rows]
    np.testing.assert_allclose(trailing_scale(prices, rows), expected, rtol=1e-12)
