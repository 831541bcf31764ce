"""The out-of-sample rule chooser's significance-tested weight (experiments.shrink_choice), by hand."""

import numpy as np

from experiments.shrink_choice import significant_shrink


def test_significant_shrink_keeps_a_weight_whose_white_t_passes_and_drops_one_that_does_not():
    rng = np.random.default_rng(0)
    move = rng.normal(size=200)  # the predicted move of 200 one-step windows, anchor 0
    actual = 0.3 * move + rng.normal(size=200)
    beta = move @ actual / (move @ move)
    score = move * (actual - beta * move)
    t = beta / np.sqrt(score @ score / (move @ move) ** 2)  # White's (h = 1: no autocovariance) t, by hand
    assert t > 1.645  # this sample's move does predict the actual one
    weight = significant_shrink(move[:, None], actual[:, None], np.zeros(200), level=0.05)
    assert weight.tolist() == [min(beta, 1.0)]
    noise = rng.normal(size=200)
    weak = 0.01 * move + noise
    beta_weak = move @ weak / (move @ move)
    score_weak = move * (weak - beta_weak * move)
    assert beta_weak / np.sqrt(score_weak @ score_weak / (move @ move) ** 2) < 1.645
    assert significant_shrink(move[:, None], weak[:, None], np.zeros(200), level=0.05).tolist() == [0.0]
