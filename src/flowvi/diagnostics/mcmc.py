"""MCMC convergence diagnostics (R-hat, bulk/tail ESS) and small posterior reference files from many chains.

One implementation per statistic, in torch (CPU or GPU, vectorized over coordinates; ArviZ loops over them in
Python), equal to ArviZ's (``arviz.rhat``, ``arviz.ess``; tests/diagnostics/test_arviz_agreement.py). Every
function takes draws (chains, n, ...) as a NumPy array or a torch tensor and returns the same kind. Formulas
(Vehtari, Gelman, Simpson, Carpenter & Buerkner 2021, "Rank-normalization, folding, and localization: an
improved R-hat for assessing convergence of MCMC", *Bayesian Analysis* 16(2); Gelman et al. 2013, *BDA3*
Sec. 11.4-11.5):

* split chains: every chain's first and last ``n // 2`` draws (the middle draw of an odd chain is left out);
* R-hat of m sequences of length n: with W the mean within-sequence variance and B/n the variance of the
  sequence means, ``var+ = (n - 1)/n W + B/n`` and ``R-hat = sqrt(var+ / W)``; :func:`split_rhat` on the split
  chains; :func:`bulk_rhat` on their rank-normalized draws ``z = Phi^{-1}((r - 3/8) / (S + 1/4))`` (ranks r
  pooled over all S split draws, ties averaged); :func:`tail_rhat` on the rank-normalized folded draws
  ``|x - median|``; :func:`rank_rhat` = max(bulk, tail) (recommended below 1.01);
* ESS ``= m n / tau`` with ``tau = -1 + 2 sum_k P_k + rho_{2K}``, ``P_k = rho_{2k} + rho_{2k+1}`` the pair sums
  of the combined autocorrelation ``rho_t = 1 - (W - mean_j acov_j(t)) / var+`` over Geyer's initial positive
  sequence (k < K, the first non-positive pair), made monotone, plus the next even lag where positive (Stan's
  and ArviZ's improvement), and ``tau >= 1 / log10(m n)``; :func:`effective_sample_size` of the split chains,
  :func:`bulk_ess` of their rank-normalized draws, :func:`tail_ess` the smaller ESS of ``I(x <= q05)`` and
  ``I(x <= q95)`` (pooled quantiles of all draws).

:func:`summarize_chains` computes these per coordinate with pooled quantiles, in blocks of coordinates for draws
too large for one pass (512 chains x 1000 draws x 4002 coordinates), on the draws' device;
:func:`write_reference` stores the result as ``.npz``, read by ``flowvi study stability --reference FILE``.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

#: the pooled quantiles a reference stores per compared coordinate (key, probability)
QUANTILES = (("q05", 0.05), ("q25", 0.25), ("median", 0.5), ("q75", 0.75), ("q95", 0.95))


def _tensor(x) -> Tensor:
    return torch.as_tensor(x).to(torch.float64)


def _like(t: Tensor, x):
    """``t`` as the kind of ``x``: a tensor for a tensor, else a NumPy array."""
    return t if isinstance(x, Tensor) else t.cpu().numpy()


def split_chains(x):
    """(chains, n, ...) -> (2 chains, n // 2, ...): every chain's first and last ``n // 2`` draws."""
    half = x.shape[1] // 2
    if isinstance(x, Tensor):
        return torch.cat([x[:, :half], x[:, x.shape[1] - half :]], 0)
    return np.concatenate([x[:, :half], x[:, x.shape[1] - half :]], axis=0)


def _rhat(s: Tensor) -> Tensor:
    """R-hat per coordinate of sequences ``s`` (m, n, d) that are already split (NaN where every sequence is
    constant, inf where they are constant at different values, as in ArviZ)."""
    n = s.shape[1]
    w = s.var(1, correction=1).mean(0)
    var_plus = (n - 1) / n * w + s.mean(1).var(0, correction=1)
    return torch.sqrt(var_plus / w)


def autocovariance(s: Tensor) -> Tensor:
    """Biased autocovariance along dim 1 of (m, n, d), by FFT; lag 0 is the variance (ddof 0)."""
    n = s.shape[1]
    centred = s - s.mean(1, keepdim=True)
    size = 1 << (2 * n - 1).bit_length()
    f = torch.fft.rfft(centred, n=size, dim=1)
    return torch.fft.irfft(f.real**2 + f.imag**2, n=size, dim=1)[:, :n] / n


def _ess(s: Tensor) -> Tensor:
    """ESS per coordinate of sequences ``s`` (m, n, d) that are already split (module docstring; ArviZ's
    ``_ess`` vectorized: its loops end at the first non-positive pair sum, or at lag n - 2)."""
    m, n, _ = s.shape
    w = s.var(1, correction=1).mean(0)
    var_plus = (n - 1) / n * w + (s.mean(1).var(0, correction=1) if m > 1 else 0.0)
    rho = 1.0 - (w - autocovariance(s).mean(0)) / var_plus.clamp(min=1e-300)  # (n, d)
    rho[0] = 1.0
    k_max = max((n - 3) // 2, 0)  # the last pair sum ArviZ's loop computes
    pairs = rho[0 : 2 * k_max + 1 : 2] + rho[1 : 2 * k_max + 2 : 2]  # P_0 .. P_kmax
    j = torch.cumprod((pairs > 0).to(torch.int8), 0).sum(0)  # leading positive pair sums
    last = j.clamp(max=k_max)
    monotone = torch.cummin(pairs, 0).values
    kept = torch.arange(len(pairs), device=s.device)[:, None] < last
    rho_last = rho[2 * last, torch.arange(s.shape[2], device=s.device)]
    pair_last = pairs[last, torch.arange(s.shape[2], device=s.device)]
    extra = torch.where((rho_last > 0) | (pair_last == 0) | (j > k_max), rho_last, 0.0)
    tau = -1.0 + 2.0 * torch.where(kept, monotone, 0.0).sum(0) + extra
    ess = m * n / tau.clamp(min=1.0 / math.log10(m * n))
    constant = (s.amax((0, 1)) - s.amin((0, 1))) < np.finfo(np.float64).resolution
    return torch.where(constant, torch.full_like(ess, m * n), ess)


def quantiles_sorted(v, q: float):
    """Quantile ``q`` along dim 0 of ``v`` sorted along dim 0: linear interpolation between order statistics at
    position ``(S - 1) q`` (NumPy's default, R's type 7, ArviZ's)."""
    h = (v.shape[0] - 1) * q
    lo = int(np.floor(h))
    hi = min(lo + 1, v.shape[0] - 1)
    return v[lo] + (h - lo) * (v[hi] - v[lo])


def _sort_and_rank(flat: Tensor) -> tuple[Tensor, Tensor]:
    """Sorted values and ranks (1..S, float64) along dim 0 of ``flat`` (S, d); tied values get the average of
    their ranks, as ``scipy.stats.rankdata`` does (a rejected proposal repeats the previous draw). One sort;
    the first and last position of each run of equal values by cumulative maxima, along the last dim of a
    (d, S) copy (contiguous: much faster on a GPU)."""
    v, order = torch.sort(flat.T.contiguous(), dim=1)
    n_draws = v.shape[1]
    pos = torch.arange(n_draws, device=v.device).expand_as(v)
    first = torch.ones_like(v, dtype=torch.bool)
    first[:, 1:] = v[:, 1:] != v[:, :-1]
    last = torch.ones_like(first)
    last[:, :-1] = first[:, 1:]
    zero = torch.zeros((), dtype=pos.dtype, device=v.device)
    start = torch.cummax(torch.where(first, pos, zero), 1).values  # first position of each value's run
    end = (n_draws - 1) - torch.cummax(torch.where(last.flip(1), pos, zero), 1).values.flip(1)  # its last
    average = (start + end).to(torch.float64) / 2 + 1
    return v.T, torch.empty_like(average).scatter_(1, order, average).T


def _normal_scores(ranks: Tensor) -> Tensor:
    """``Phi^{-1}((r - 3/8) / (S + 1/4))`` of ranks (S, d)."""
    return torch.special.ndtri((ranks - 0.375) / (ranks.shape[0] + 0.25))


def rank_normalize(x):
    """Normal scores of the ranks of draws (chains, n, ...) pooled over chains and draws (ties: average ranks)."""
    t = _tensor(x)
    z = _normal_scores(_sort_and_rank(t.reshape(t.shape[0] * t.shape[1], -1))[1]).reshape(t.shape)
    return _like(z, x)


def rank_diagnostics(x, tail: bool = True) -> dict:
    """``bulk_rhat``, ``tail_rhat``, ``rank_rhat`` (their maximum), ``bulk_ess`` and, with ``tail``,
    ``tail_ess`` per coordinate of draws (chains, n, d), from one sort of the split draws and one of the folded
    ones; tensors on the draws' device."""
    t = _tensor(x)
    s = split_chains(t)
    m, n, d = s.shape
    flat = s.reshape(m * n, d)
    v, ranks = _sort_and_rank(flat)
    folded = (flat - quantiles_sorted(v, 0.5)).abs()
    z_fold = _normal_scores(_sort_and_rank(folded)[1]).reshape(m, n, d)
    z = _normal_scores(ranks).reshape(m, n, d)
    out = {"bulk_rhat": _rhat(z), "tail_rhat": _rhat(z_fold), "bulk_ess": _ess(z)}
    out["rank_rhat"] = torch.maximum(out["bulk_rhat"], out["tail_rhat"])
    if tail:
        if t.shape[1] % 2:  # the quantiles are those of all draws, the middle ones of odd chains included
            v = torch.sort(t.reshape(-1, d), dim=0).values
        lo = (s <= quantiles_sorted(v, 0.05)).to(torch.float64)
        hi = (s <= quantiles_sorted(v, 0.95)).to(torch.float64)
        out["tail_ess"] = torch.minimum(_ess(lo), _ess(hi))
    return out


def split_rhat(x):
    """Split R-hat per coordinate of draws (chains, n, d) (``arviz.rhat(method="split")``)."""
    return _like(_rhat(split_chains(_tensor(x))), x)


def effective_sample_size(x):
    """ESS per coordinate of draws (chains, n, d) over the split chains (``arviz.ess(method="mean")``)."""
    return _like(_ess(split_chains(_tensor(x))), x)


def bulk_rhat(x):
    """Bulk R-hat (``arviz.rhat(method="z_scale")``): R-hat of the rank-normalized split chains."""
    return _like(rank_diagnostics(x, tail=False)["bulk_rhat"], x)


def tail_rhat(x):
    """Tail R-hat (``arviz.rhat(method="folded")``): of the rank-normalized folded split chains."""
    return _like(rank_diagnostics(x, tail=False)["tail_rhat"], x)


def rank_rhat(x):
    """Rank-normalized split R-hat, max(bulk, tail) (``arviz.rhat``'s default ``method="rank"``)."""
    return _like(rank_diagnostics(x, tail=False)["rank_rhat"], x)


def bulk_ess(x):
    """Bulk-ESS (``arviz.ess``'s default ``method="bulk"``): ESS of the rank-normalized split chains."""
    return _like(rank_diagnostics(x, tail=False)["bulk_ess"], x)


def tail_ess(x):
    """Tail-ESS (``arviz.ess(method="tail")``): the smaller ESS of I(x <= q05) and I(x <= q95)."""
    return _like(rank_diagnostics(x)["tail_ess"], x)


def pooled_quantiles(x) -> dict:
    """:data:`QUANTILES` (``q05``, ``q25``, ``median``, ``q75``, ``q95``) per coordinate of draws (chains, n, d),
    pooled over chains and draws."""
    t = torch.as_tensor(x)
    v = torch.sort(t.reshape(t.shape[0] * t.shape[1], -1), dim=0).values
    return {key: _like(quantiles_sorted(v, q), x) for key, q in QUANTILES}


def _coordinate_stats(x: Tensor) -> dict:
    """Per compared coordinate: pooled quantiles, split R-hat and ESS, rank R-hat, bulk- and tail-ESS."""
    r = rank_diagnostics(x)
    s = split_chains(x)
    return {
        **pooled_quantiles(x),
        "rhat": _rhat(s),
        "ess": _ess(s),
        "rank_rhat": r["rank_rhat"],
        "bulk_ess": r["bulk_ess"],
        "tail_ess": r["tail_ess"],
    }


def _theta_stats(x: Tensor) -> dict:
    """Per raw coordinate: split R-hat and ESS, rank R-hat and bulk-ESS."""
    r = rank_diagnostics(x, tail=False)
    s = split_chains(x)
    return {
        "rhat_theta": _rhat(s),
        "ess_theta": _ess(s),
        "rank_rhat_theta": r["rank_rhat"],
        "bulk_ess_theta": r["bulk_ess"],
    }


def _blockwise(fn, x: Tensor, max_bytes: float, device) -> dict:
    """``fn`` (a dict of per-coordinate tensors of (chains, n, d)) on blocks of coordinates of at most
    ``max_bytes`` in float64 (the FFT takes about 4 times that) on ``device``; concatenated NumPy arrays."""
    c, n, d = x.shape
    step = max(1, int(max_bytes // (c * n * 8)))
    parts = [fn(x[:, :, j : j + step].to(device, torch.float64)) for j in range(0, d, step)]
    return {key: np.concatenate([p[key].cpu().numpy() for p in parts]) for key in parts[0]}


def summarize_chains(target, chains, n_plot: int = 4, thin_plot: int = 1, max_bytes: float = 2e8, device=None) -> dict:
    """Reference summary of MCMC draws ``chains`` (chains, n, target.dim), NumPy or torch, any float dtype.

    Returns ``mean``, ``sd``, the quantiles ``q05``, ``q25``, ``median``, ``q75``, ``q95`` (over all draws),
    ``rhat``, ``ess`` (split R-hat and ESS), ``rank_rhat``, ``bulk_ess``, ``tail_ess`` of the compared
    coordinates (the target's ``coefficients(x)`` where defined, e.g. the horseshoe's beta, else x),
    ``rhat_theta``/``ess_theta`` and ``rank_rhat_theta``/``bulk_ess_theta`` of the raw coordinates, ``plot``
    (the ``n_plot`` coordinates of largest |mean|/sd) and their ``draws``; computed in float64 on ``device``
    (default: that of torch ``chains``, else CPU) in blocks of ``max_bytes``.
    """
    from flowvi.targets.base import coordinates

    draws = torch.as_tensor(chains)
    device = torch.device(device) if device is not None else draws.device
    if draws.ndim != 3 or draws.shape[2] != target.dim:
        raise ValueError(f"chains must have shape (chains, n, {target.dim}); got {tuple(draws.shape)}")
    c, n, d = draws.shape
    if n < 4:
        raise ValueError(f"need at least 4 draws per chain, got {n}")
    flat = draws.reshape(c * n, d)
    rows = max(1, int(max_bytes // (d * 8)))
    target64 = copy.deepcopy(target).to(device, torch.float64)  # Module.to would convert the caller's target
    with torch.no_grad():
        coords = torch.cat(
            [coordinates(target64, flat[i : i + rows].to(device, torch.float64)) for i in range(0, c * n, rows)]
        )
        mean, sd = coords.mean(0).cpu().numpy(), coords.var(0, correction=0).sqrt().cpu().numpy()
        coords = coords.reshape(c, n, -1)
        plot = np.argsort(-np.abs(mean) / np.maximum(sd, 1e-12), kind="stable")[:n_plot]
        return {
            "mean": mean,
            "sd": sd,
            **_blockwise(_coordinate_stats, coords, max_bytes, device),
            **_blockwise(_theta_stats, draws, max_bytes, device),
            "plot": plot,
            "draws": coords.reshape(c * n, -1)[::thin_plot, torch.as_tensor(plot, device=device)].cpu().numpy(),
        }


def convergence_info(summary: dict) -> dict:
    """The diagnostics of a reference's JSON metadata from ``summary`` (:func:`summarize_chains`): split R-hat and ESS (``beta_*`` of the compared coordinates,
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
