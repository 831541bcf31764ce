"""Diebold–Mariano test of equal forecast accuracy, in numpy (Diebold & Mariano, 1995).

For two forecasts of the same targets with errors ``e1``, ``e2`` the loss differential is
``d_t = L(e1_t) - L(e2_t)`` with ``L`` squared or absolute error. Under equal accuracy
``E[d] = 0`` and ``DM = mean(d) / sqrt(V / n)`` is asymptotically standard normal, where ``V`` is
the long-run variance of ``d``. An h-step forecast's errors are autocorrelated up to lag ``h - 1``
(consecutive windows share ``h - 1`` target days), so ``V`` is the Newey–West / HAC sum of
autocovariances up to lag ``h - 1`` (rectangular weights, as in the original paper; Bartlett
weights if that sum is not positive). ``DM < 0`` means the first forecast has the smaller loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LOSSES = {"squared": np.square, "absolute": np.abs}


@dataclass(frozen=True)
class DMResult:
    """``stat`` (DM statistic), ``p_value`` (two-sided, normal), ``mean_diff`` (mean of d), ``n``."""

    stat: float
    p_value: float
    mean_diff: float
    n: int


def autocovariance(d: np.ndarray, lag: int) -> float:
    """Return ``(1/n) * sum_{t >= lag} (d_t - mean)(d_{t-lag} - mean)`` (divisor n, as in DM 1995).

    >>> autocovariance(np.array([1.0, 2.0, 3.0, 4.0]), 1)
    0.3125
    """
    centred = d - d.mean()
    return float(np.dot(centred[lag:], centred[: len(d) - lag]) / len(d))


def long_run_variance(d: np.ndarray, max_lag: int) -> float:
    """Return the HAC long-run variance ``gamma_0 + 2 * sum_{k=1..max_lag} w_k gamma_k``.

    ``w_k = 1`` (Diebold–Mariano's rectangular window, exact for an MA(h - 1) differential); when
    that is not positive, Bartlett weights ``w_k = 1 - k / (max_lag + 1)`` (Newey–West, always >= 0).
    """
    gammas = [autocovariance(d, k) for k in range(max_lag + 1)]
    rectangular = gammas[0] + 2.0 * sum(gammas[1:])
    if rectangular > 0 or max_lag == 0:
        return rectangular
    return gammas[0] + 2.0 * sum((1 - k / (max_lag + 1)) * g for k, g in enumerate(gammas[1:], start=1))


def loss_differential(errors_1: np.ndarray, errors_2: np.ndarray, loss: str = "squared") -> np.ndarray:
    """Return ``d_t`` (N,) from errors (N,) or (N, H); an (N, H) loss is averaged over the H steps."""
    if loss not in LOSSES:
        raise ValueError(f"loss={loss!r} is unknown; use one of {sorted(LOSSES)}")
    e1, e2 = np.asarray(errors_1, dtype=float), np.asarray(errors_2, dtype=float)
    if e1.shape != e2.shape:
        raise ValueError(f"Diebold-Mariano needs errors of one shape; got {e1.shape} and {e2.shape}")
    d = LOSSES[loss](e1) - LOSSES[loss](e2)
    return d.reshape(len(d), -1).mean(axis=1)  # (N,) or (N, H) -> (N,)


def diebold_mariano(errors_1: np.ndarray, errors_2: np.ndarray, horizon: int = 1,
                    loss: str = "squared") -> DMResult:
    """Test whether forecast 1 and forecast 2 are equally accurate on the same targets.

    ``errors_*`` are (N,) or (N, H) forecast errors (pred - actual) of consecutive windows;
    ``horizon`` sets the HAC lag ``horizon - 1``. The p-value is two-sided under N(0, 1).
    A constant differential (e.g. two identical forecasts) gives ``stat = 0, p = 1`` when it is 0
    and ``stat = +-inf, p = 0`` otherwise.

    >>> r = diebold_mariano(np.array([1.0, -1.0, 2.0, 0.5]), np.array([2.0, 2.0, -2.0, 1.0]))
    >>> round(r.stat, 4), round(r.p_value, 4), r.mean_diff, r.n
    (-2.5205, 0.0117, -1.6875, 4)
    """
    if horizon < 1:
        raise ValueError(f"horizon={horizon} must be >= 1")
    d = loss_differential(errors_1, errors_2, loss)
    n = len(d)
    if n < 2:
        raise ValueError(f"Diebold-Mariano needs at least 2 forecasts; got {n}")
    mean = float(d.mean())
    variance = long_run_variance(d, min(horizon - 1, n - 1))
    if variance <= 0:
        stat = 0.0 if mean == 0 else math.copysign(math.inf, mean)
    else:
        stat = mean / math.sqrt(variance / n)
    return DMResult(stat=stat, p_value=math.erfc(abs(stat) / math.sqrt(2.0)), mean_diff=mean, n=n)
