"""Diebold–Mariano test of equal forecast accuracy, in numpy (Diebold & Mariano, 1995).

For two forecasts of the same targets with errors ``e1``, ``e2`` the loss differential is
``d_t = L(e1_t) - L(e2_t)`` with ``L`` squared or absolute error. Under equal accuracy
``E[d] = 0`` and ``DM = mean(d) / sqrt(V / n)`` is asymptotically standard normal, where ``V`` is
the long-run variance of ``d``. An h-step forecast's errors are autocorrelated up to lag ``h - 1``
(consecutive windows share ``h - 1`` target days), so ``V`` is the Newey–West / HAC sum of
autocovariances up to lag ``h - 1`` (rectangular weights, as in the original paper; Bartlett
weights if that sum is not positive). ``DM < 0`` means the first forecast has the smaller loss.

With ``small_sample=True`` (what the commands report) the statistic gets Harvey, Leybourne & Newbold's
correction (1997, "Testing the equality of prediction mean squared errors", IJF 13: eq. 9),
``DM * sqrt((n + 1 - 2h + h (h - 1) / n) / n)``, and its p-value comes from Student's t with n - 1
degrees of freedom: the plain test rejects too often for multi-step forecasts of a few hundred windows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LOSSES = {"squared": np.square, "absolute": np.abs}


def regularized_beta(x: float, a: float, b: float) -> float:
    """Return the regularized incomplete beta function I_x(a, b) by its continued fraction (modified Lentz;
    Press et al., *Numerical Recipes*, 3rd ed., 6.4), for the t distribution's tail.

    >>> round(regularized_beta(0.5, 2.0, 3.0), 10)  # 11/16
    0.6875
    """
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast below the mean; use the symmetry above it
        return 1.0 - regularized_beta(1.0 - x, b, a)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front * result


def student_t_two_sided(stat: float, df: float) -> float:
    """Return P(|T| >= |stat|) for Student's t with ``df`` degrees of freedom: I_{df/(df+t^2)}(df/2, 1/2).

    >>> round(student_t_two_sided(2.0, 10), 6)
    0.073388
    """
    if math.isinf(stat):
        return 0.0
    return regularized_beta(df / (df + stat * stat), df / 2.0, 0.5)


def hln_factor(n: int, horizon: int) -> float:
    """Return Harvey-Leybourne-Newbold's ``sqrt((n + 1 - 2h + h (h - 1) / n) / n)``; ValueError when too few
    windows for the horizon make it undefined.

    >>> round(hln_factor(220, 30), 4)
    0.8659
    """
    inner = (n + 1 - 2 * horizon + horizon * (horizon - 1) / n) / n
    if inner <= 0:
        raise ValueError(f"Diebold-Mariano: {n} forecasts are too few for the small-sample correction at horizon {horizon}")
    return math.sqrt(inner)


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
                    loss: str = "squared", small_sample: bool = False) -> DMResult:
    """Test whether forecast 1 and forecast 2 are equally accurate on the same targets.

    ``errors_*`` are (N,) or (N, H) forecast errors (pred - actual) of consecutive windows;
    ``horizon`` sets the HAC lag ``horizon - 1``. The p-value is two-sided under N(0, 1), or with
    ``small_sample`` the HLN-corrected statistic under Student's t with n - 1 degrees of freedom.
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
    if small_sample:
        stat *= hln_factor(n, horizon)
        return DMResult(stat=stat, p_value=student_t_two_sided(stat, n - 1), mean_diff=mean, n=n)
    return DMResult(stat=stat, p_value=math.erfc(abs(stat) / math.sqrt(2.0)), mean_diff=mean, n=n)
