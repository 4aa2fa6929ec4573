"""Small posterior reference files from MCMC draws: per-coordinate mean, sd, split R-hat and effective sample size.

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

:func:`write_reference` stores the result as ``.npz``, read by ``flowvi study stability --reference FILE``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def split_chains(x: np.ndarray) -> np.ndarray:
    """(chains, n, d) -> (2 chains, n // 2, d): the first and second half of every chain."""
    half = x.shape[1] // 2
    return np.concatenate([x[:, :half], x[:, half : 2 * half]], axis=0)


def split_rhat(x: np.ndarray) -> np.ndarray:
    """Split R-hat per coordinate of draws ``x`` (chains, n, d)."""
    s = split_chains(np.asarray(x, dtype=np.float64))
    n = s.shape[1]
    w = s.var(1, ddof=1).mean(0)
    b_over_n = s.mean(1).var(0, ddof=1)
    var_plus = (n - 1) / n * w + b_over_n
    return np.sqrt(var_plus / np.maximum(w, 1e-300))


def autocovariance(x: np.ndarray) -> np.ndarray:
    """Biased autocovariance along axis 1 of (chains, n, d), by FFT; lag 0 is the variance (ddof 0)."""
    n = x.shape[1]
    centred = x - x.mean(1, keepdims=True)
    size = 1 << (2 * n - 1).bit_length()
    f = np.fft.rfft(centred, n=size, axis=1)
    return np.fft.irfft(f * np.conj(f), n=size, axis=1)[:, :n] / n


def effective_sample_size(x: np.ndarray) -> np.ndarray:
    """ESS per coordinate of draws ``x`` (chains, n, d), over the split chains (Geyer's initial monotone sequence)."""
    s = split_chains(np.asarray(x, dtype=np.float64))
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


def summarize_chains(target, chains: np.ndarray, n_plot: int = 4, thin_plot: int = 1) -> dict:
    """Reference summary of MCMC draws ``chains`` (chains, n, target.dim) of ``target``.

    Returns ``mean``, ``sd`` (over all draws), ``rhat``, ``ess`` of the compared coordinates (the target's
    ``coefficients(x)`` where defined, e.g. the horseshoe's beta, else x), ``rhat_theta``/``ess_theta`` of the
    raw coordinates, ``plot`` (the ``n_plot`` coordinates of largest |mean|/sd) and their ``draws``.
    """
    from .stability import coordinates

    chains = np.asarray(chains, dtype=np.float64)
    if chains.ndim != 3 or chains.shape[2] != target.dim:
        raise ValueError(f"chains must have shape (chains, n, {target.dim}); got {chains.shape}")
    if chains.shape[1] < 4:
        raise ValueError(f"need at least 4 draws per chain, got {chains.shape[1]}")
    c, n, d = chains.shape
    with torch.no_grad():
        flat = torch.as_tensor(chains.reshape(c * n, d), dtype=torch.float64)
        coords = coordinates(target.to(torch.float64), flat).numpy().reshape(c, n, -1)
    mean, sd = coords.reshape(c * n, -1).mean(0), coords.reshape(c * n, -1).std(0)
    plot = np.argsort(-np.abs(mean) / np.maximum(sd, 1e-12), kind="stable")[:n_plot]
    return {
        "mean": mean,
        "sd": sd,
        "rhat": split_rhat(coords),
        "ess": effective_sample_size(coords),
        "rhat_theta": split_rhat(chains),
        "ess_theta": effective_sample_size(chains),
        "plot": plot,
        "draws": coords.reshape(c * n, -1)[::thin_plot, plot],
    }


def write_reference(path, summary: dict, info: dict) -> None:
    """Write ``summary`` (from :func:`summarize_chains`) and ``info`` (JSON metadata: target, sampler settings,
    diagnostics) to ``path`` (.npz, float32 draws, float64 statistics)."""
    arrays = {k: np.asarray(v) for k, v in summary.items()}
    arrays["draws"] = arrays["draws"].astype(np.float32)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, info=np.array(json.dumps(info)), **arrays)
