"""Importance resampling of a flow's draws with Pareto-smoothed weights: the exactness correction after a fit.

Draw a pool of N draws x_i ~ q with log weights ``log p(x_i) - log q(x_i)``, smooth the weights' upper tail by
PSIS (:func:`flowvi.diagnostics.importance.psis_log_weights`; Vehtari et al. 2024), and when k-hat < 0.7 pick n of
the pool by systematic resampling (Kitagawa 1996: one uniform u, the draws at the quantiles (j + u)/n of the
normalized weights' CDF), so that averages over the n draws estimate posterior expectations with the
self-normalized importance-sampling bias and variance of the pool. When k-hat >= 0.7 no importance-sampling
estimate is reliable; the flow's own draws are kept and the result says so. The result also holds the largest
k-hat of ``h w`` over the first and second moments of the reported parameters (:func:`moment_k_hat`): the
verdict's check that the means and sds in particular are reliable.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from flowvi.diagnostics.importance import moment_pareto_k, psis_log_weights
from flowvi.diagnostics.verdict import KHAT

MAX_POOL_NUMBERS = 50_000_000  # pool size x d: 200 MB of float32


def systematic_resample(log_w: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n`` draws picked by systematic resampling with probabilities ``softmax(log_w)``."""
    w = np.exp(log_w - np.max(log_w))
    cdf = np.cumsum(w / w.sum())
    cdf[-1] = 1.0
    return np.searchsorted(cdf, (np.arange(n) + rng.uniform()) / n)


@torch.no_grad()
def psis_resample(flow, target, n: int, pool: int | None = None, seed: int = 0, batch_size: int = 10_000):
    """``(draws (n, d) as a NumPy array, info)``: PSIS-resampled from a pool of ``pool`` (default 4n, at most
    ``MAX_POOL_NUMBERS / d``, at least n) flow draws when k-hat < 0.7, else the pool's first n draws."""
    d = flow.dim
    pool = pool or max(n, min(4 * n, MAX_POOL_NUMBERS // max(d, 1)))
    xs, lws, ys, names = [], [], [], getattr(target, "param_names", None)
    vector = len(flow.event_shape) == 1  # a posterior's parameters, not a lattice field
    for start in range(0, pool, batch_size):
        x, log_q = flow.sample_and_log_prob(min(batch_size, pool - start))
        xs.append(x.cpu().numpy())
        lws.append((target.log_prob(x) - log_q).double().cpu().numpy())
        if vector and hasattr(target, "constrain"):
            y, sites = reported(target.constrain(x))
            ys.append(y)
            names = sites or names
    x, log_w = np.concatenate(xs), np.nan_to_num(np.concatenate(lws), nan=-np.inf)
    smoothed, k = psis_log_weights(log_w)
    info = {"pool": int(pool), "k_hat": float(k)}
    if vector:
        names = names() if callable(names) else names
        info |= moment_k_hat(np.concatenate(ys) if ys else x, log_w, names)
    if math.isfinite(k) and k < KHAT and np.isfinite(smoothed).any():
        idx = systematic_resample(smoothed, n, np.random.default_rng(seed))
        info |= {"resampled": True, "method": "PSIS importance resampling", "distinct": int(len(np.unique(idx)))}
        return x[idx], info
    info |= {"resampled": False, "why": f"k-hat {k:.2f} >= {KHAT}: the flow's own draws, uncorrected"}
    return x[:n], info


def reported(constrained) -> tuple[np.ndarray, list[str] | None]:
    """The reported parameters as columns ``(n, k)`` with their names: ``target.constrain(x)`` is a tensor
    (n, p) (the reference posteriors: names from ``param_names``, None here) or, for a Pyro model, a dict of sites
    (n, *shape), flattened site by site (``name`` or ``name[j]``)."""
    if not isinstance(constrained, dict):
        return constrained.cpu().numpy(), None
    columns, names = [], []
    for site, v in constrained.items():
        v = v.reshape(len(v), -1).double().cpu().numpy()
        columns.append(v)
        names += [site] if v.shape[1] == 1 else [f"{site}[{j}]" for j in range(v.shape[1])]
    return np.concatenate(columns, axis=1), names


def moment_k_hat(values: np.ndarray, log_w: np.ndarray, names=None, max_columns: int = 1000) -> dict:
    """``{"moment_k_hat", "moment_k_hat_param"}``: the largest k-hat of :func:`~flowvi.diagnostics.importance.
    moment_pareto_k` over the first and second moments of ``values`` (n, k) (the parameters the draws report:
    ``target.constrain(x)``, or x; the first ``max_columns``), and that parameter's name from ``names``."""
    ks = moment_pareto_k(log_w, values[:, :max_columns]).max(axis=0)
    if np.isnan(ks).all():
        return {"moment_k_hat": float("nan"), "moment_k_hat_param": None}
    j = int(np.argmax(np.where(np.isnan(ks), -np.inf, ks)))
    name = names[j] if names is not None and j < len(names) else f"x[{j}]"
    return {"moment_k_hat": float(ks[j]), "moment_k_hat_param": name}


__all__ = ["moment_k_hat", "psis_resample", "reported", "systematic_resample"]
