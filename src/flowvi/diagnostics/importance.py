"""Importance-sampling diagnostics computed from log weights ``log w = log p(x) - log q(x)``.

* log Z estimate ``log mean(w)`` with the delta-method standard error
  ``SE = sqrt(var(w) / n) / mean(w)``, all in log space;
* normalized effective sample size ``ESS / n = (sum w)^2 / (n sum w^2)`` (Kish);
* Pareto k-hat of the upper tail of the weights (Vehtari et al. 2024, "Pareto smoothed importance
  sampling", JMLR), fitted with the profile-likelihood method of Zhang & Stephens (2009) and the
  weakly informative prior of the PSIS paper. k-hat < 0.7 means the IS estimate is reliable;
* the k-hat of ``h w`` for the first and second moments of each coordinate (:func:`moment_pareto_k`): whether
  the posterior means and sds in particular are reliable.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def _as_numpy(log_w) -> np.ndarray:
    if isinstance(log_w, torch.Tensor):
        log_w = log_w.detach().to("cpu", torch.float64).numpy()
    return np.asarray(log_w, dtype=np.float64).ravel()


def _logsumexp(a: np.ndarray) -> float:
    m = np.max(a)
    if not np.isfinite(m):
        return float(m)
    return float(m + np.log(np.sum(np.exp(a - m))))


def log_mean_exp(log_w) -> float:
    """``log((1/n) sum_i exp(log_w_i))``, computed stably: the IS estimate of log Z from log weights."""
    a = _as_numpy(log_w)
    return _logsumexp(a) - math.log(len(a))


def log_evidence(log_w) -> tuple[float, float]:
    """``(log Z_hat, standard error)`` from importance log weights."""
    a = _as_numpy(log_w)
    n = len(a)
    s1, s2 = _logsumexp(a), _logsumexp(2 * a)
    if not np.isfinite(s1):
        return float(s1), float("nan")
    # var(w)/mean(w)^2 = n * sum(w^2) / sum(w)^2 - 1, with the (n-1) correction of the sample variance
    rel_var = max(n * math.exp(s2 - 2 * s1) - 1.0, 0.0) * n / max(n - 1, 1)
    return s1 - math.log(n), math.sqrt(rel_var / n)


def normalized_ess(log_w) -> float:
    """Kish's normalized effective sample size ``(sum w)^2 / (n sum w^2)`` in (0, 1], from log weights."""
    a = _as_numpy(log_w)
    s1, s2 = _logsumexp(a), _logsumexp(2 * a)
    if not np.isfinite(s1):
        return 0.0
    return math.exp(2 * s1 - s2) / len(a)


def gpd_fit(x: np.ndarray) -> tuple[float, float]:
    """Shape ``k`` and scale ``sigma`` of a generalized Pareto fitted to positive exceedances ``x``
    (Zhang & Stephens 2009), with the PSIS prior shrinking k towards 0.5 by 10 pseudo-observations."""
    x = np.sort(np.asarray(x, dtype=np.float64))
    n = len(x)
    m = 30 + int(math.sqrt(n))
    b = 1 - np.sqrt(m / (np.arange(1, m + 1) - 0.5))
    b = b / (3 * x[int(n / 4 + 0.5) - 1]) + 1 / x[-1]
    k = np.log1p(-b[:, None] * x).mean(axis=1)
    L = n * (np.log(-b / k) - k - 1)
    with np.errstate(over="ignore"):  # exp overflows to inf for negligible grid points: weight 0
        w = 1 / np.exp(L - L[:, None]).sum(axis=1)
    b_hat = np.sum(b * w)
    k_hat = np.log1p(-b_hat * x).mean()
    sigma = -k_hat / b_hat
    k_hat = (n * k_hat + 10 * 0.5) / (n + 10)
    return float(k_hat), float(sigma)


def _tail_size(n: int) -> int:
    """PSIS tail length ``M = ceil(min(n/5, 3 sqrt(n)))`` (Vehtari et al. 2024, Sec. 3; rounded up as in ArviZ)."""
    return math.ceil(min(n / 5, 3 * math.sqrt(n)))


def _tail_fit(a: np.ndarray):
    """The PSIS tail of finite log weights ``a``: (indices of the :func:`_tail_size` largest,
    log threshold, log of the largest weight, k, sigma) or None when the tail cannot be fitted. The
    exceedances are taken relative to the largest weight (``exp(a - max)``) so nothing overflows."""
    m = _tail_size(len(a))
    if m < 5:
        return None
    top_idx = np.argpartition(a, len(a) - m - 1)[-(m + 1) :] if len(a) > m + 1 else np.arange(len(a))
    order = top_idx[np.argsort(a[top_idx], kind="stable")]  # the m + 1 largest, increasing
    tail = a[order[-(m + 1) :]]
    top = tail[-1]
    exceed = np.exp(tail[1:] - top) - np.exp(tail[0] - top)
    if np.count_nonzero(exceed > 0) < 5:
        if np.count_nonzero(tail[1:] > tail[0]) < 5:
            return None
        # the tail's weights underflow next to the largest (more than ~745 nats below it): that one weight is
        # all of them, the tail is infinitely heavy (ArviZ's psislw says k = inf too)
        return order[-m:], tail[0], top, float("inf"), float("nan")
    k, sigma = gpd_fit(exceed[exceed > 0])
    return order[-m:], tail[0], top, k, sigma


def pareto_k(log_w) -> float:
    """Pareto k-hat of the largest ``ceil(min(n/5, 3 sqrt(n)))`` importance weights; equal to ``arviz.psislw``'s
    (tests/diagnostics/test_arviz_agreement.py), without converting to xarray, on NumPy or torch log weights."""
    a = _as_numpy(log_w)
    a = a[np.isfinite(a)]
    fit = _tail_fit(a)
    if fit is None:
        m = _tail_size(len(a))
        return float("-inf") if m >= 5 and np.ptp(np.sort(a)[-(m + 1) :]) == 0 else float("nan")
    return fit[3]


def moment_pareto_k(log_w, values) -> np.ndarray:
    """Pareto k-hat of ``h(x) w(x)`` for the moments that posterior means and sds are computed from:
    ``h = |y_j - m_j|`` and ``h = (y_j - m_j)^2`` for each column j of ``values`` (n, k) (the draws, or the
    parameters they report), ``m_j`` the column's mean; returns (2, k): first-moment row, second-moment row.

    The self-normalized estimate of ``E_p[h]`` is a ratio of IS estimates whose numerator has the tail of
    ``h w``, not of ``w``: a flow whose tails are too light in one coordinate (a funnel's scale parameter) gives
    weights with k-hat < 0.7 while ``h w`` for that coordinate's second moment is heavier-tailed, and its sd is
    biased low. The function-specific diagnostic of Vehtari, Simpson, Gelman, Yao & Gabry (2024), *Pareto
    smoothed importance sampling*, JMLR 25:72: the k-hat of ``h(x) r(x)``, r the importance ratio."""
    a = _as_numpy(log_w)
    y = np.asarray(values, dtype=np.float64).reshape(len(a), -1)
    keep = np.isfinite(a) & np.isfinite(y).all(axis=1)
    a, y = a[keep], y[keep]
    h = np.abs(y - y.mean(axis=0))
    with np.errstate(divide="ignore"):
        log_h = np.log(h)  # h = 0: weight 0 (-inf), dropped by pareto_k
    return np.array([[pareto_k(a + p * log_h[:, j]) for j in range(y.shape[1])] for p in (1, 2)])


def psis_log_weights(log_w) -> tuple[np.ndarray, float]:
    """Pareto-smoothed importance log weights and their k-hat (Vehtari, Simpson, Gelman, Yao & Gabry 2024,
    *Pareto smoothed importance sampling*, JMLR 25:72, Alg. 1).

    The ``m = ceil(min(n/5, 3 sqrt(n)))`` largest weights are replaced by the expected order statistics of the
    generalized Pareto fitted to them, ``u + sigma/k ((1 - p_z)^(-k) - 1)`` with ``p_z = (z - 1/2)/m``,
    truncated at the largest raw weight; the other weights are unchanged. Self-normalized estimates
    ``sum_i w_i f(x_i) / sum_i w_i`` with these weights have finite variance and a bias that vanishes with n
    when k < 0.7; above that, no importance-sampling estimate from these draws is reliable. Non-finite log
    weights stay as they are (-inf: weight 0). Returns (smoothed log weights, k-hat)."""
    a = _as_numpy(log_w).copy()
    finite = np.flatnonzero(np.isfinite(a))
    fit = _tail_fit(a[finite])
    if fit is None:
        return a, float("nan")
    idx, log_u, top, k, sigma = fit
    if not math.isfinite(k):
        return a, float(k)
    m = len(idx)
    p = (np.arange(1, m + 1) - 0.5) / m
    q = sigma * np.expm1(-k * np.log1p(-p)) / k if abs(k) > 1e-12 else -sigma * np.log1p(-p)
    u = math.exp(log_u - top)
    smoothed = np.log(np.minimum(u + q, 1.0)) + top  # in increasing order, like idx
    a[finite[idx]] = smoothed
    return a, float(k)


def summarize(log_w) -> dict:
    """ELBO, log Z (both with standard errors), normalized ESS and Pareto k-hat."""
    a = _as_numpy(log_w)
    finite = a[np.isfinite(a)]
    log_z, log_z_se = log_evidence(a)
    return {
        "n": int(len(a)),
        "elbo": float(np.mean(a)) if len(finite) == len(a) else float("-inf"),
        "elbo_se": float(np.std(finite, ddof=1) / math.sqrt(len(finite))) if len(finite) > 1 else float("nan"),
        "log_z": log_z,
        "log_z_se": log_z_se,
        "ess": normalized_ess(a),
        "pareto_k": pareto_k(a),
    }
