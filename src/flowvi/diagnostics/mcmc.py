"""Small posterior reference files from MCMC draws: per-coordinate mean, sd, quantiles, R-hat and effective sample size.

A NUTS run at d = 4002 produces hundreds of MB of draws; what the stability study needs from it is the
posterior mean and standard deviation of each compared coordinate (the horseshoe's beta) and the draws of a
few coordinates for plots. :func:`summarize_chains` computes these with the convergence diagnostics of
Gelman et al. (2013, *Bayesian Data Analysis*, 3rd ed., Sec. 11.4-11.5):

* split R-hat: each chain is cut in two halves (m sequences of length n); with W the mean within-sequence
  variance and B/n the variance of the sequence means, ``var+ = (n - 1)/n W + B/n`` and
  ``R-hat = sqrt(var+ / W)`` (near 1 when the chains agree);
* effective sample size ``ESS = m n / (1 + 2 sum_t rho_t)``, with the combined autocorrelation
  ``rho_t = 1 - (W - mean_j acov_j(t)) / var+`` summed over Geyer's initial positive, monotone sequence of
  pair sums ``rho_{2k} + rho_{2k+1}``.

Both assume finite variances and measure the convergence of means. For heavy tails (the horseshoe's beta,
whose marginal prior has Cauchy-like tails) they are unreliable, and the rank-normalized versions of Vehtari,
Gelman, Simpson, Carpenter & Buerkner (2021, "Rank-normalization, folding, and localization: an improved R-hat
for assessing convergence of MCMC", *Bayesian Analysis* 16(2), Sec. 4) are computed besides:

* rank normalization (:func:`rank_normalize`): the S draws of a coordinate, pooled over the (split) chains,
  are ranked (average ranks for ties) and mapped to ``z = Phi^{-1}((r - 3/8) / (S + 1/4))``;
* bulk R-hat (:func:`bulk_rhat`): split R-hat of the rank-normalized draws; tail R-hat (:func:`tail_rhat`):
  split R-hat of the rank-normalized folded draws ``|x - median(x)|``; :func:`rank_rhat` = max(bulk, tail);
* bulk-ESS (:func:`bulk_ess`): ESS of the rank-normalized split chains; tail-ESS (:func:`tail_ess`): the smaller
  of the ESS of the indicators ``I(x <= q05)`` and ``I(x <= q95)`` (split chains, pooled quantiles).

As in the paper, the chains are split first and the ranks, medians and quantiles of the diagnostics are those of
the split draws (for an odd number of draws per chain the middle draw of every chain is left out).

:func:`write_reference` stores the result as ``.npz``, read by ``flowvi study stability --reference FILE``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
from scipy.special import ndtri
from scipy.stats import rankdata

#: the pooled quantiles a reference stores per compared coordinate (key, probability)
QUANTILES = (("q05", 0.05), ("q25", 0.25), ("median", 0.5), ("q75", 0.75), ("q95", 0.95))


def split_chains(x: np.ndarray) -> np.ndarray:
    """(chains, n, d) -> (2 chains, n // 2, d): the first and second half of every chain."""
    half = x.shape[1] // 2
    return np.concatenate([x[:, :half], x[:, half : 2 * half]], axis=0)


def _rhat(s: np.ndarray) -> np.ndarray:
    """R-hat per coordinate of sequences ``s`` (m, n, d) that are already split."""
    n = s.shape[1]
    w = s.var(1, ddof=1).mean(0)
    b_over_n = s.mean(1).var(0, ddof=1)
    var_plus = (n - 1) / n * w + b_over_n
    return np.sqrt(var_plus / np.maximum(w, 1e-300))


def split_rhat(x: np.ndarray) -> np.ndarray:
    """Split R-hat per coordinate of draws ``x`` (chains, n, d)."""
    return _rhat(split_chains(np.asarray(x, dtype=np.float64)))


def autocovariance(x: np.ndarray) -> np.ndarray:
    """Biased autocovariance along axis 1 of (chains, n, d), by FFT; lag 0 is the variance (ddof 0)."""
    n = x.shape[1]
    centred = x - x.mean(1, keepdims=True)
    size = 1 << (2 * n - 1).bit_length()
    f = np.fft.rfft(centred, n=size, axis=1)
    return np.fft.irfft(f * np.conj(f), n=size, axis=1)[:, :n] / n


def _ess(s: np.ndarray) -> np.ndarray:
    """ESS per coordinate of sequences ``s`` (m, n, d) that are already split (Geyer's initial monotone sequence)."""
    m, n, _ = s.shape
    acov = autocovariance(s)  # (m, n, d)
    w = s.var(1, ddof=1).mean(0)
    var_plus = (n - 1) / n * w + s.mean(1).var(0, ddof=1)
    rho = 1.0 - (w - acov.mean(0)) / np.maximum(var_plus, 1e-300)  # (n, d); rho[0] = 1 up to the ddof factor
    rho[0] = 1.0
    pairs = rho[0 : n - 1 : 2] + rho[1:n:2]  # (n // 2, d): P_k = rho_2k + rho_2k+1
    positive = np.cumprod(pairs > 0, axis=0).astype(bool)  # initial positive sequence
    monotone = np.minimum.accumulate(np.where(positive, pairs, np.inf), axis=0)  # initial monotone sequence
    tau = -1.0 + 2.0 * np.where(positive, monotone, 0.0).sum(0)
    return m * n / np.maximum(tau, 1.0 / np.log10(max(m * n, 10)))


def effective_sample_size(x: np.ndarray) -> np.ndarray:
    """ESS per coordinate of draws ``x`` (chains, n, d), over the split chains (Geyer's initial monotone sequence)."""
    return _ess(split_chains(np.asarray(x, dtype=np.float64)))


def quantiles_sorted(v: np.ndarray, q: float) -> np.ndarray:
    """Quantile ``q`` along axis 0 of ``v`` sorted along axis 0: linear interpolation between order statistics at
    position ``(S - 1) q`` (NumPy's default ``method="linear"``, R's type 7), written out so that the torch
    version (:func:`flowvi.runs.hmc_baseline.quantiles_sorted_torch`) computes the same numbers."""
    h = (v.shape[0] - 1) * q
    lo = int(np.floor(h))
    hi = min(lo + 1, v.shape[0] - 1)
    return v[lo] + (h - lo) * (v[hi] - v[lo])


def pooled_quantiles(x: np.ndarray) -> dict:
    """:data:`QUANTILES` (``q05``, ``q25``, ``median``, ``q75``, ``q95``) per coordinate of draws ``x``
    (chains, n, d), pooled over chains and draws."""
    x = np.asarray(x, dtype=np.float64)
    v = np.sort(x.reshape(x.shape[0] * x.shape[1], -1), axis=0)
    return {key: quantiles_sorted(v, q) for key, q in QUANTILES}


def rank_normalize(x: np.ndarray) -> np.ndarray:
    """Rank-normalized draws (Vehtari et al. 2021, Sec. 4.1) of ``x`` (chains, n, ...): per coordinate, the
    ``S = chains * n`` pooled draws get ranks r (1..S, ties the average of their ranks) and become
    ``z = Phi^{-1}((r - 3/8) / (S + 1/4))`` (Blom's normal scores); same shape as ``x``."""
    x = np.asarray(x, dtype=np.float64)
    s = x.shape[0] * x.shape[1]
    r = rankdata(x.reshape(s, -1), method="average", axis=0)
    return ndtri((r - 0.375) / (s + 0.25)).reshape(x.shape)


def fold(s: np.ndarray) -> np.ndarray:
    """Folded draws ``|x - median(x)|`` of (chains, n, d), the median pooled over chains and draws."""
    v = np.sort(s.reshape(s.shape[0] * s.shape[1], -1), axis=0)
    return np.abs(s - quantiles_sorted(v, 0.5))


def bulk_rhat(x: np.ndarray) -> np.ndarray:
    """Bulk R-hat per coordinate of ``x`` (chains, n, d): split R-hat of the rank-normalized split chains
    (Vehtari et al. 2021, Sec. 4.1); sensitive to chains that differ in location."""
    return _rhat(rank_normalize(split_chains(np.asarray(x, dtype=np.float64))))


def tail_rhat(x: np.ndarray) -> np.ndarray:
    """Tail (folded) R-hat per coordinate of ``x`` (chains, n, d): split R-hat of the rank-normalized folded
    split chains ``|x - median(x)|`` (Vehtari et al. 2021, Sec. 4.2); sensitive to chains that differ in scale."""
    return _rhat(rank_normalize(fold(split_chains(np.asarray(x, dtype=np.float64)))))


def rank_rhat(x: np.ndarray) -> np.ndarray:
    """Rank-normalized split R-hat per coordinate of ``x`` (chains, n, d): ``max(bulk_rhat, tail_rhat)``
    (Vehtari et al. 2021, Sec. 4.2: recommended to be below 1.01). Defined for any distribution, finite
    variance or not; the bulk part is invariant to monotone transformations of the draws."""
    return np.maximum(bulk_rhat(x), tail_rhat(x))


def bulk_ess(x: np.ndarray) -> np.ndarray:
    """Bulk-ESS per coordinate of ``x`` (chains, n, d): :func:`effective_sample_size` of the rank-normalized
    split chains (Vehtari et al. 2021, Sec. 4.3); the efficiency of location summaries (median; the mean where
    the variance is finite)."""
    return _ess(rank_normalize(split_chains(np.asarray(x, dtype=np.float64))))


def tail_ess(x: np.ndarray) -> np.ndarray:
    """Tail-ESS per coordinate of ``x`` (chains, n, d): the smaller of the ESS of ``I(x <= q05)`` and
    ``I(x <= q95)`` over the split chains, q05 and q95 the pooled 5 % and 95 % quantiles (Vehtari et al. 2021,
    Sec. 4.3); the efficiency of the 5 % and 95 % quantiles (90 % intervals)."""
    s = split_chains(np.asarray(x, dtype=np.float64))
    v = np.sort(s.reshape(s.shape[0] * s.shape[1], -1), axis=0)
    return np.minimum(
        _ess((s <= quantiles_sorted(v, 0.05)).astype(np.float64)),
        _ess((s <= quantiles_sorted(v, 0.95)).astype(np.float64)),
    )


def summarize_chains(target, chains: np.ndarray, n_plot: int = 4, thin_plot: int = 1) -> dict:
    """Reference summary of MCMC draws ``chains`` (chains, n, target.dim) of ``target``.

    Returns ``mean``, ``sd``, the quantiles ``q05``, ``q25``, ``median``, ``q75``, ``q95`` (over all draws),
    ``rhat``, ``ess`` (split R-hat and ESS), ``rank_rhat``, ``bulk_ess``, ``tail_ess`` (rank-normalized) of the
    compared coordinates (the target's ``coefficients(x)`` where defined, e.g. the horseshoe's beta, else x),
    ``rhat_theta``/``ess_theta`` and ``rank_rhat_theta``/``bulk_ess_theta`` of the raw coordinates, ``plot``
    (the ``n_plot`` coordinates of largest |mean|/sd) and their ``draws``.
    """
    from flowvi.targets.base import coordinates

    chains = np.asarray(chains, dtype=np.float64)
    if chains.ndim != 3 or chains.shape[2] != target.dim:
        raise ValueError(f"chains must have shape (chains, n, {target.dim}); got {chains.shape}")
    if chains.shape[1] < 4:
        raise ValueError(f"need at least 4 draws per chain, got {chains.shape[1]}")
    c, n, d = chains.shape
    with torch.no_grad():
        flat = torch.as_tensor(chains.reshape(c * n, d), dtype=torch.float64)
        # a float64 copy: Module.to converts in place, and the caller's target must keep its dtype
        coords = coordinates(copy.deepcopy(target).to(torch.float64), flat).numpy().reshape(c, n, -1)
    mean, sd = coords.reshape(c * n, -1).mean(0), coords.reshape(c * n, -1).std(0)
    plot = np.argsort(-np.abs(mean) / np.maximum(sd, 1e-12), kind="stable")[:n_plot]
    return {
        "mean": mean,
        "sd": sd,
        **pooled_quantiles(coords),
        "rhat": split_rhat(coords),
        "ess": effective_sample_size(coords),
        "rank_rhat": rank_rhat(coords),
        "bulk_ess": bulk_ess(coords),
        "tail_ess": tail_ess(coords),
        "rhat_theta": split_rhat(chains),
        "ess_theta": effective_sample_size(chains),
        "rank_rhat_theta": rank_rhat(chains),
        "bulk_ess_theta": bulk_ess(chains),
        "plot": plot,
        "draws": coords.reshape(c * n, -1)[::thin_plot, plot],
    }


def convergence_info(summary: dict) -> dict:
    """The diagnostics of a reference's JSON metadata from ``summary`` (:func:`summarize_chains` or
    :func:`flowvi.runs.hmc_baseline.summarize_draws`): split R-hat and ESS (``beta_*`` of the compared coordinates,
    ``theta_*`` of the raw ones) and, where the summary has them, the rank-normalized R-hat, bulk- and tail-ESS."""
    ess, rhat = summary["ess"], summary["rhat"]
    info = {
        "beta_rhat_max": float(rhat.max()),
        "beta_rhat_share_below_1.01": float((rhat < 1.01).mean()),
        "beta_rhat_share_below_1.1": float((rhat < 1.1).mean()),
        "beta_ess_min": float(ess.min()),
        "beta_ess_median": float(np.median(ess)),
        "theta_rhat_max": float(summary["rhat_theta"].max()),
        "theta_ess_min": float(summary["ess_theta"].min()),
        "theta_ess_median": float(np.median(summary["ess_theta"])),
        # the Monte Carlo error of a reference mean, in posterior sds, is 1 / sqrt(ESS)
        "beta_mean_mcse_over_sd_median": float(np.median(1 / np.sqrt(ess))),
        "beta_mean_mcse_over_sd_max": float((1 / np.sqrt(ess)).max()),
    }
    if "rank_rhat" in summary:
        rank = summary["rank_rhat"]
        info |= {
            "beta_rank_rhat_max": float(rank.max()),
            "beta_rank_rhat_share_below_1.01": float((rank < 1.01).mean()),
            "beta_rank_rhat_share_below_1.05": float((rank < 1.05).mean()),
            "beta_bulk_ess_min": float(summary["bulk_ess"].min()),
            "beta_bulk_ess_median": float(np.median(summary["bulk_ess"])),
            "beta_tail_ess_min": float(summary["tail_ess"].min()),
            "beta_tail_ess_median": float(np.median(summary["tail_ess"])),
            "theta_rank_rhat_max": float(summary["rank_rhat_theta"].max()),
            "theta_bulk_ess_min": float(summary["bulk_ess_theta"].min()),
        }
    return info


def write_reference(path, summary: dict, info: dict) -> None:
    """Write ``summary`` (from :func:`summarize_chains`) and ``info`` (JSON metadata: target, sampler settings,
    diagnostics) to ``path`` (.npz, float32 draws, float64 statistics): one array per key of ``summary`` (``mean``,
    ``sd``, ``plot``, ``draws``, which every reader needs; the quantiles and diagnostics where present) and
    ``info``."""
    arrays = {k: np.asarray(v) for k, v in summary.items()}
    arrays["draws"] = arrays["draws"].astype(np.float32)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, info=np.array(json.dumps(info)), **arrays)
