"""Shrink the network's predicted move toward persistence, by a weight per step fitted on validation data.

On a series close to a random walk the network's predicted move ``yhat - p_t`` (``p_t`` the last observed
price) is mostly noise, and at long horizons that noise makes it worse than "no change". The delivered
forecast is

    yhat_h(w) = p_t + w_h * (yhat_h - p_t),        w_h in [0, 1], h = 1..H,

``w_h = 0`` being persistence exactly and ``w_h = 1`` the network as trained: a combination of the network
with the random walk (Bates & Granger 1969), one weight per step. ``w_h`` is the ridge estimate of the
regression of the actual move ``a = y_h - p_t`` on the predicted move ``m = yhat_h - p_t`` over the
validation windows, with a prior centred on persistence (w = 0) worth ``k`` independent windows
(Diebold & Pauly 1990, "The use of prior information in forecast combination"; Hoerl & Kennard 1970):

    w_h = clip(sum(m a) / sum(m^2), 0, 1) * n_h / (n_h + k),     n_h = n / h,

``n_h`` being the number of independent h-step validation forecasts (consecutive windows share h - 1 target
days). The default ``k`` (``PRIOR_WINDOWS``, infinite: persistence at every step) was chosen out of sample,
before any reported span: ``python -m experiments.shrink_choice`` refitted each rule on the validation span
of 5 walk-forward folds testing 2003-03..2007-12 (h = 1 and h = 30) and scored it on their test spans. Every
finite prior, the plain and the significance-tested (Newey-West t) least-squares weights lost to
persistence there, the loss shrinking as ``k`` grew (pooled rel. MAE at h = 1: k = 0 1.0047, 30 1.0037, 300
1.0007, 1000 1.00003; at h = 30: 1.0116, 1.0016, 1.0001, 1.00003; ``results/shrink_choice/``). A series
with a predictable move can set ``model.shrink_prior`` (0: the validation weight alone). The test span is
never used; the weights travel in the checkpoint and apply in test, predict, forecast and backtest.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lstm_grad.forecaster.intervals import calibrate

PRIOR_WINDOWS = math.inf  # the random-walk prior's weight, in independent validation forecasts (module docstring)


def method(prior: float | None) -> str:
    """Say in words how the delivered forecast was made from the network's, for a prior ``prior``."""
    if prior is None:
        return "none (model.shrink_prior null): the network as trained"
    if math.isinf(prior):
        return ("persistence at every step (model.shrink_prior inf: no validation-fitted weight on the network's "
                "move beat persistence out of sample, experiments.shrink_choice)")
    return (f"predicted move x w_h per step: least-squares weight of the actual move on the predicted move over the "
            f"validation windows, clipped to [0, 1], times n_h / (n_h + {prior:g}) with n_h = windows / h "
            "(a prior on persistence worth that many independent forecasts)")


def apply_shrink(pred: Any, anchor: Any, weights: Any) -> np.ndarray:
    """Return ``anchor + w_h * (pred - anchor)``: pred (N, H), anchor (N,), weights (H,) -> (N, H) float64.

    >>> apply_shrink(np.array([[12.0, 8.0]]), np.array([10.0]), np.array([0.5, 0.0])).tolist()
    [[11.0, 10.0]]
    """
    anchor = np.asarray(anchor, dtype=np.float64)[:, None]
    return anchor + np.asarray(weights, dtype=np.float64)[None, :] * (np.asarray(pred, dtype=np.float64) - anchor)


def fit_shrink(pred: Any, actual: Any, anchor: Any, prior: float = PRIOR_WINDOWS) -> np.ndarray:
    """Fit one weight per step on validation windows: pred, actual (N, H) prices, anchor (N,) -> (H,) in [0, 1].

    ``w_h = clip(sum(m a) / sum(m^2), 0, 1) * n_h / (n_h + prior)`` with ``m``, ``a`` the predicted and actual
    moves from the anchor and ``n_h = N / h``; ``prior = 0`` is the plain least-squares weight. A step whose
    predicted move is always 0, or no window at all, gives 0 (persistence).

    >>> anchor = np.zeros(40); move = np.tile([1.0, -1.0], 20)
    >>> fit_shrink(move[:, None], move[:, None], anchor, prior=0).tolist()   # the network is exactly right
    [1.0]
    >>> fit_shrink(move[:, None], move[:, None], anchor, prior=40).tolist()  # 40 windows vs a prior of 40
    [0.5]
    >>> fit_shrink(move[:, None], -move[:, None], anchor).tolist()            # always the wrong way
    [0.0]
    """
    pred, actual = np.asarray(pred, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    anchor = np.asarray(anchor, dtype=np.float64)[:, None]
    n, horizon = actual.shape
    if n == 0:
        return np.zeros(horizon)
    move, target = pred - anchor, actual - anchor  # (N, H) predicted and actual moves from the last price
    power = (move * move).sum(axis=0)
    least_squares = np.divide((move * target).sum(axis=0), power, out=np.zeros(horizon), where=power > 0)
    independent = n / np.arange(1, horizon + 1)  # n_h: independent h-step forecasts among n windows
    return np.clip(least_squares, 0.0, 1.0) * independent / (independent + prior)


def fit_calibration(pred: Any, actual: Any, anchor: Any, scale: Any, prior: float | None = PRIOR_WINDOWS) -> dict[str, Any]:
    """Fit what a forecaster learns from its validation span, in this order: the shrink weights
    (:func:`fit_shrink`; all 1 when ``prior`` is None: the network as trained) on the network's prices, then
    the conformal quantiles (:func:`~lstm_grad.forecaster.intervals.calibrate`) on the shrunk forecast's residuals.

    pred, actual (N, H) prices, anchor (N,), scale (N,) sigma_t. Returns plain Python values
    (``shrink``, ``shrink_least_squares`` (the validation weight with no prior, for the record),
    ``shrink_method``, ``q_80``, ``q_95``, ``calib_n``, ``method``) for the checkpoint.
    """
    horizon = np.shape(actual)[1]
    weights = np.ones(horizon) if prior is None else fit_shrink(pred, actual, anchor, prior)
    shrunk = apply_shrink(pred, anchor, weights)
    return {"shrink": weights.tolist(), "shrink_least_squares": fit_shrink(pred, actual, anchor, 0.0).tolist(),
            "shrink_method": method(prior), **calibrate(shrunk, actual, scale)}
