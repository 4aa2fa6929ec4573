"""Reference posteriors from many-chain adaptive HMC (:func:`flowvi.samplers.adaptive_hmc.adaptive_hmc`).

:func:`summarize_draws` is :func:`flowvi.diagnostics.mcmc.summarize_chains` for draws too large for one NumPy pass
(512 chains x 1000 draws x 4002 coordinates: about 4 minutes of single-threaded NumPy FFTs): the same
estimators (split R-hat, Geyer-truncated ESS over split chains; :func:`split_rhat_torch` and
:func:`effective_sample_size_torch` are line-by-line torch translations of those in :mod:`flowvi.diagnostics.mcmc`,
tested equal), with the rank-normalized R-hat, bulk- and tail-ESS of Vehtari et al. (2021)
(:func:`rank_rhat_torch`, :func:`bulk_ess_torch`, :func:`tail_ess_torch`; ranks by one sort, ties averaged as
``scipy.stats.rankdata`` does) and the pooled quantiles, on the GPU where the draws are, in blocks of
coordinates. :func:`reference_info` is the JSON metadata of the reference file written with
:func:`flowvi.diagnostics.mcmc.write_reference` (the format of ``refs/horseshoe_nci60_p2000_nuts.npz``).
"""

from __future__ import annotations

import copy

import numpy as np
import torch

SAMPLER_NAME = "many-chain HMC"


def _split_torch(x: torch.Tensor) -> torch.Tensor:
    """:func:`flowvi.diagnostics.mcmc.split_chains` in torch: (chains, n, d) -> (2 chains, n // 2, d)."""
    half = x.shape[1] // 2
    return torch.cat([x[:, :half], x[:, half : 2 * half]], 0)


def _rhat_torch(s: torch.Tensor) -> torch.Tensor:
    """R-hat per coordinate of sequences ``s`` (m, n, d) that are already split."""
    n = s.shape[1]
    w = s.var(1, correction=1).mean(0)
    var_plus = (n - 1) / n * w + s.mean(1).var(0, correction=1)
    return torch.sqrt(var_plus / w.clamp(min=1e-300))


def split_rhat_torch(x: torch.Tensor) -> torch.Tensor:
    """:func:`flowvi.diagnostics.mcmc.split_rhat` in torch (any device), per coordinate of (chains, n, d)."""
    return _rhat_torch(_split_torch(x))


def _ess_torch(s: torch.Tensor) -> torch.Tensor:
    """ESS per coordinate of sequences ``s`` (m, n, d) that are already split."""
    m, n, _ = s.shape
    centred = s - s.mean(1, keepdim=True)
    size = 1 << (2 * n - 1).bit_length()
    f = torch.fft.rfft(centred, n=size, dim=1)
    acov = torch.fft.irfft(f.real**2 + f.imag**2, n=size, dim=1)[:, :n] / n
    w = s.var(1, correction=1).mean(0)
    var_plus = (n - 1) / n * w + s.mean(1).var(0, correction=1)
    rho = 1.0 - (w - acov.mean(0)) / var_plus.clamp(min=1e-300)
    rho[0] = 1.0
    pairs = rho[0 : n - 1 : 2] + rho[1:n:2]
    positive = torch.cumprod((pairs > 0).to(torch.int8), 0).bool()
    monotone = torch.cummin(torch.where(positive, pairs, torch.full_like(pairs, float("inf"))), 0).values
    tau = -1.0 + 2.0 * torch.where(positive, monotone, torch.zeros_like(monotone)).sum(0)
    return m * n / tau.clamp(min=1.0 / np.log10(max(m * n, 10)))


def effective_sample_size_torch(x: torch.Tensor) -> torch.Tensor:
    """:func:`flowvi.diagnostics.mcmc.effective_sample_size` in torch (any device): ESS per coordinate of (chains, n, d)
    over the split chains, Geyer's initial positive and monotone sequence of autocorrelation pair sums."""
    return _ess_torch(_split_torch(x))


def quantiles_sorted_torch(v: torch.Tensor, q: float) -> torch.Tensor:
    """:func:`flowvi.diagnostics.mcmc.quantiles_sorted` in torch: quantile ``q`` (linear interpolation, NumPy's default)
    along dim 0 of ``v`` sorted along dim 0; the same arithmetic, so the same numbers."""
    h = (v.shape[0] - 1) * q
    lo = int(np.floor(h))
    hi = min(lo + 1, v.shape[0] - 1)
    return v[lo] + (h - lo) * (v[hi] - v[lo])


def _sort_and_rank(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted values and ranks (1..S, float64) along dim 0 of ``flat`` (S, d); tied values get the average of
    their ranks, as ``scipy.stats.rankdata`` does (repeated draws are common in MCMC: a rejected proposal repeats
    the previous draw, and float32 draws tie more often). One sort; the first and last position of each run of
    equal values by cumulative maxima. The work runs along the last dim of a (d, S) copy: on an H100, cummax
    along dim 0 of a (512000, 48) block took 0.2 s, along the contiguous last dim 3 ms."""
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


def _normal_scores(ranks: torch.Tensor) -> torch.Tensor:
    """``Phi^{-1}((r - 3/8) / (S + 1/4))`` of ranks (S, d) (Vehtari et al. 2021, Sec. 4.1)."""
    return torch.special.ndtri((ranks - 0.375) / (ranks.shape[0] + 0.25))


def rank_normalize_torch(x: torch.Tensor) -> torch.Tensor:
    """:func:`flowvi.diagnostics.mcmc.rank_normalize` in torch: normal scores of the ranks of the draws of (chains, n, ...)
    pooled over chains and draws (ties: average ranks)."""
    return _normal_scores(_sort_and_rank(x.reshape(x.shape[0] * x.shape[1], -1))[1]).reshape(x.shape)


def rank_diagnostics_torch(x: torch.Tensor, tail: bool = True) -> dict:
    """Rank-normalized diagnostics per coordinate of draws (chains, n, d) (Vehtari et al. 2021; formulas in
    :mod:`flowvi.diagnostics.mcmc`), computed from one sort of the split draws and one of the folded ones:
    ``bulk_rhat``, ``tail_rhat``, ``rank_rhat`` (their maximum), ``bulk_ess`` and, with ``tail``, ``tail_ess``."""
    s = _split_torch(x.to(torch.float64))
    m, n, d = s.shape
    flat = s.reshape(m * n, d)
    v, ranks = _sort_and_rank(flat)
    z = _normal_scores(ranks).reshape(m, n, d)
    folded = (flat - quantiles_sorted_torch(v, 0.5)).abs()
    z_fold = _normal_scores(_sort_and_rank(folded)[1]).reshape(m, n, d)
    out = {"bulk_rhat": _rhat_torch(z), "tail_rhat": _rhat_torch(z_fold), "bulk_ess": _ess_torch(z)}
    out["rank_rhat"] = torch.maximum(out["bulk_rhat"], out["tail_rhat"])
    if tail:
        lo = (s <= quantiles_sorted_torch(v, 0.05)).to(torch.float64)
        hi = (s <= quantiles_sorted_torch(v, 0.95)).to(torch.float64)
        out["tail_ess"] = torch.minimum(_ess_torch(lo), _ess_torch(hi))
    return out


def rank_rhat_torch(x: torch.Tensor) -> torch.Tensor:
    """:func:`flowvi.diagnostics.mcmc.rank_rhat` in torch: max of bulk and tail R-hat per coordinate of (chains, n, d)."""
    return rank_diagnostics_torch(x, tail=False)["rank_rhat"]


def bulk_rhat_torch(x: torch.Tensor) -> torch.Tensor:
    """:func:`flowvi.diagnostics.mcmc.bulk_rhat` in torch."""
    return _rhat_torch(rank_normalize_torch(_split_torch(x.to(torch.float64))))


def tail_rhat_torch(x: torch.Tensor) -> torch.Tensor:
    """:func:`flowvi.diagnostics.mcmc.tail_rhat` in torch."""
    return rank_diagnostics_torch(x, tail=False)["tail_rhat"]


def bulk_ess_torch(x: torch.Tensor) -> torch.Tensor:
    """:func:`flowvi.diagnostics.mcmc.bulk_ess` in torch: ESS of the rank-normalized split chains of (chains, n, d)."""
    return _ess_torch(rank_normalize_torch(_split_torch(x.to(torch.float64))))


def tail_ess_torch(x: torch.Tensor) -> torch.Tensor:
    """:func:`flowvi.diagnostics.mcmc.tail_ess` in torch: min of the ESS of I(x <= q05) and I(x <= q95), split chains."""
    return rank_diagnostics_torch(x)["tail_ess"]


def pooled_quantiles_torch(x: torch.Tensor) -> dict:
    """:func:`flowvi.diagnostics.mcmc.pooled_quantiles` in torch: q05, q25, median, q75, q95 per coordinate of
    (chains, n, d) over all draws."""
    from flowvi.diagnostics.mcmc import QUANTILES

    v = torch.sort(x.reshape(x.shape[0] * x.shape[1], -1), dim=0).values
    return {key: quantiles_sorted_torch(v, q) for key, q in QUANTILES}


def _coordinate_stats(x: torch.Tensor) -> dict:
    """Per compared coordinate: pooled quantiles, rank R-hat, bulk- and tail-ESS."""
    r = rank_diagnostics_torch(x)
    return {
        **pooled_quantiles_torch(x),
        "rank_rhat": r["rank_rhat"],
        "bulk_ess": r["bulk_ess"],
        "tail_ess": r["tail_ess"],
    }


def _theta_stats(x: torch.Tensor) -> dict:
    """Per raw coordinate: rank R-hat and bulk-ESS."""
    r = rank_diagnostics_torch(x, tail=False)
    return {"rank_rhat_theta": r["rank_rhat"], "bulk_ess_theta": r["bulk_ess"]}


def _blockwise(fn, x: torch.Tensor, max_bytes: float, device):
    """``fn`` (per coordinate of (chains, n, d)) on blocks of coordinates of at most ``max_bytes`` in float64
    (the FFT takes about 4 times that), moved to ``device``; concatenated as a NumPy array, or a dict of them
    where ``fn`` returns a dict of tensors."""
    c, n, d = x.shape
    step = max(1, int(max_bytes // (c * n * 8)))
    parts = [fn(x[:, :, j : j + step].to(device, torch.float64)) for j in range(0, d, step)]
    if isinstance(parts[0], dict):
        return {key: np.concatenate([p[key].cpu().numpy() for p in parts]) for key in parts[0]}
    return np.concatenate([p.cpu().numpy() for p in parts])


def summarize_draws(target, draws, n_plot: int = 4, thin_plot: int = 1, max_bytes: float = 2e8, device=None) -> dict:
    """Reference summary of ``draws`` (chains, n, target.dim), NumPy or torch, any float dtype; the same keys
    and values as :func:`flowvi.diagnostics.mcmc.summarize_chains` (``mean``, ``sd``, ``q05``, ``q25``, ``median``,
    ``q75``, ``q95``, ``rhat``, ``ess``, ``rank_rhat``, ``bulk_ess``, ``tail_ess`` of the compared coordinates;
    ``rhat_theta``, ``ess_theta``, ``rank_rhat_theta``, ``bulk_ess_theta`` of the raw ones; ``plot`` and its
    ``draws``), computed in float64 on ``device`` (default: that of torch ``draws``, else CPU) in blocks of
    ``max_bytes``."""
    from flowvi.diagnostics.mcmc import QUANTILES
    from flowvi.targets.base import coordinates

    draws = torch.as_tensor(draws)
    device = torch.device(device) if device is not None else draws.device
    if draws.ndim != 3 or draws.shape[2] != target.dim:
        raise ValueError(f"draws must have shape (chains, n, {target.dim}); got {tuple(draws.shape)}")
    c, n, d = draws.shape
    if c < 2 or n < 4:
        raise ValueError(f"need at least 2 chains of at least 4 draws, got {c} x {n}")
    flat = draws.reshape(c * n, d)
    rows = max(1, int(max_bytes // (d * 8)))
    target64 = copy.deepcopy(target).to(device, torch.float64)  # Module.to would convert the caller's target
    with torch.no_grad():
        coords = torch.cat(
            [coordinates(target64, flat[i : i + rows].to(device, torch.float64)) for i in range(0, c * n, rows)]
        )
        mean = coords.mean(0)
        sd = coords.var(0, correction=0).sqrt()
        coords = coords.reshape(c, n, -1)
        mean_np, sd_np = mean.cpu().numpy(), sd.cpu().numpy()
        plot = np.argsort(-np.abs(mean_np) / np.maximum(sd_np, 1e-12), kind="stable")[:n_plot]
        ranked = _blockwise(_coordinate_stats, coords, max_bytes, device)
        return {
            "mean": mean_np,
            "sd": sd_np,
            **{key: ranked[key] for key, _ in QUANTILES},
            "rhat": _blockwise(split_rhat_torch, coords, max_bytes, device),
            "ess": _blockwise(effective_sample_size_torch, coords, max_bytes, device),
            "rank_rhat": ranked["rank_rhat"],
            "bulk_ess": ranked["bulk_ess"],
            "tail_ess": ranked["tail_ess"],
            "rhat_theta": _blockwise(split_rhat_torch, draws, max_bytes, device),
            "ess_theta": _blockwise(effective_sample_size_torch, draws, max_bytes, device),
            **_blockwise(_theta_stats, draws, max_bytes, device),
            "plot": plot,
            "draws": coords.reshape(c * n, -1)[::thin_plot, torch.as_tensor(plot, device=device)].cpu().numpy(),
        }


def reference_info(target_spec: dict, dim: int, settings: dict, result: dict, summary: dict, seconds: dict) -> dict:
    """JSON metadata of an HMC reference: settings, timings, adaptation, divergences and the convergence summary."""
    from flowvi.diagnostics.mcmc import convergence_info

    return {
        "target": target_spec,
        "dim": dim,
        "sampler": SAMPLER_NAME,
        "sampler_detail": "lock-step HMC, uniform jittered number of leapfrog steps, dual-averaging step size, "
        "diagonal mass matrix from Stan-style windows pooled over chains; chains started uniform(-r, r)",
        "chains": int(result["draws"].shape[0]),
        "draws_per_chain": int(result["draws"].shape[1]),
        **settings,
        "warmup_iterations": int(result["warmup_iterations"]),
        "sampling_iterations": int(result["iterations"]),
        "stopped_early": bool(result["stopped_early"]),
        "seconds": seconds,
        "leapfrogs_per_chain": int(result["leapfrogs"]),
        "step_size": float(result["step_size"]),
        "accept_prob_mean": float(result["accept_prob"].mean()),
        "divergences": int(result["divergences"].sum()),
        "chains_with_divergences": int((result["divergences"] > 0).sum()),
        "warmup_divergences": int(result["warmup_divergences"].sum()),
        "inverse_metric_min": float(result["inverse_metric"].min()),
        "inverse_metric_max": float(result["inverse_metric"].max()),
        **convergence_info(summary),
    }


def draws_convergence(target, stats: dict) -> dict:
    """The run summary's convergence entries from :func:`summarize_draws`'s ``stats``: split ESS and R-hat of the
    compared coordinates (``beta`` where the target has coefficients, else ``x``) and of all coordinates
    (``*_theta_*``), and the rank-normalized R-hat, bulk- and tail-ESS."""
    return {
        "compared": "beta" if getattr(target, "coefficients", None) is not None else "x",
        "ess_min": float(stats["ess"].min()),
        "ess_median": float(np.median(stats["ess"])),
        "rhat_max": float(stats["rhat"].max()),
        "ess_theta_min": float(stats["ess_theta"].min()),
        "rhat_theta_max": float(stats["rhat_theta"].max()),
        # rank-normalized (Vehtari et al. 2021): valid for heavy tails such as the horseshoe's beta
        "rank_rhat_max": float(stats["rank_rhat"].max()),
        "bulk_ess_min": float(stats["bulk_ess"].min()),
        "bulk_ess_median": float(np.median(stats["bulk_ess"])),
        "tail_ess_min": float(stats["tail_ess"].min()),
        "rank_rhat_theta_max": float(stats["rank_rhat_theta"].max()),
    }


def format_convergence(summary: dict) -> str:
    """Two printed lines of :func:`draws_convergence`'s entries (no trailing newline)."""
    compared = summary["compared"]
    return (
        f"  {compared}: ESS min {summary['ess_min']:.0f}, median {summary['ess_median']:.0f}; "
        f"R-hat max {summary['rhat_max']:.4f}  (all coordinates: ESS min {summary['ess_theta_min']:.0f}, "
        f"R-hat max {summary['rhat_theta_max']:.4f})\n"
        f"  {compared} rank-normalized: R-hat max {summary['rank_rhat_max']:.4f}, bulk-ESS min "
        f"{summary['bulk_ess_min']:.0f}, median {summary['bulk_ess_median']:.0f}, tail-ESS min "
        f"{summary['tail_ess_min']:.0f} (all coordinates: R-hat max {summary['rank_rhat_theta_max']:.4f})"
    )


def run_hmc_baseline(target, args, config: dict, out) -> tuple[np.ndarray | None, dict]:
    """``flowvi baseline hmc``: run the sampler with the CLI's ``args``, write ``config.json`` (``config`` plus an
    ``hmc`` section) and, with ``--reference-out``, the reference ``.npz`` + ``.json``; return the draws to save
    as ``samples.npy`` ((chains * n, d), chain-major; None with ``--no-samples``) and the run summary."""
    import json
    import time
    from pathlib import Path

    from flowvi.diagnostics.mcmc import write_reference
    from flowvi.runs.run_dir import resolve_dtype
    from flowvi.runs.run_files import write_config
    from flowvi.samplers.adaptive_hmc import adaptive_hmc

    ref_out = Path(args.reference_out) if args.reference_out else None
    if ref_out is not None and ref_out.suffix != ".npz":
        raise ValueError(f"--reference-out must end in .npz, got {ref_out}")
    settings = {
        "chains": args.chains,
        "warmup": args.warmup,
        "draws": args.samples,
        "max_leapfrog": args.max_leapfrog,
        "target_accept": args.target_accept,
        "thin": args.thin,
        "init_radius": args.init_radius,
        "max_seconds": args.max_seconds,
        "store_dtype": args.store_dtype or args.dtype,
        "cuda_graph": args.cuda_graph,
    }
    config["hmc"] = settings
    write_config(config, out)
    print(f"flowvi baseline hmc: {config['target']['name']} (d={target.dim}, {args.chains} chains) -> {out}")
    anchor = next(iter(target.buffers()), None)
    result = adaptive_hmc(
        target,
        chains=args.chains,
        warmup=args.warmup,
        draws=args.samples,
        max_leapfrog=args.max_leapfrog,
        target_accept=args.target_accept,
        init_radius=args.init_radius,
        seed=args.seed,
        thin=args.thin,
        max_seconds=args.max_seconds,
        store_dtype=resolve_dtype(args.store_dtype) if args.store_dtype else None,
        device=anchor.device if anchor is not None else None,
        dtype=resolve_dtype(args.dtype),
        progress=not args.quiet,
        cuda_graph={"auto": None, "true": True, "false": False}[args.cuda_graph],
    )
    t0 = time.perf_counter()
    draws = result["draws"]  # on the device: the summary runs there
    stats = summarize_draws(target, draws)
    seconds = {
        "warmup": result["seconds_warmup"],
        "sampling": result["seconds_sampling"],
        "summary": time.perf_counter() - t0,
    }
    summary = {
        "method": "hmc",
        "sampler": SAMPLER_NAME,
        "chains": int(draws.shape[0]),
        "num_samples": int(draws.shape[1]),
        "warmup": int(result["warmup_iterations"]),
        "stopped_early": bool(result["stopped_early"]),
        "cuda_graph": bool(result["cuda_graph"]),
        "seconds": seconds["warmup"] + seconds["sampling"],
        "seconds_detail": seconds,
        "step_size": float(result["step_size"]),
        "accept_prob": float(result["accept_prob"].mean()),
        "divergences": int(result["divergences"].sum()),
        "divergences_per_chain": result["divergences"].tolist(),
        "warmup_divergences": int(result["warmup_divergences"].sum()),
        "leapfrogs_per_chain": int(result["leapfrogs"]),
        **draws_convergence(target, stats),
    }
    print(
        f"  {summary['chains']} x {summary['num_samples']} draws after {summary['warmup']} warm-up iterations "
        f"in {summary['seconds']:.1f} s{' (stopped at --max-seconds)' if summary['stopped_early'] else ''}\n"
        f"  acceptance {summary['accept_prob']:.3f}, step size {summary['step_size']:.4g}, "
        f"divergences {summary['divergences']} (warm-up {summary['warmup_divergences']})\n"
        f"{format_convergence(summary)}; summary {seconds['summary']:.1f} s"
    )
    if ref_out is not None:
        info = reference_info(config["target"], target.dim, {**settings, "seed": args.seed}, result, stats, seconds)
        write_reference(ref_out, stats, info)
        ref_out.with_suffix(".json").write_text(json.dumps(info, indent=2))
        print(f"wrote reference {ref_out} ({ref_out.stat().st_size / 1e6:.2f} MB) and {ref_out.with_suffix('.json')}")
    samples = None if args.no_samples else draws.cpu().numpy().reshape(-1, target.dim)
    return samples, summary
