"""Reference posteriors from many-chain adaptive HMC (:func:`flowvi.samplers.adaptive_hmc.adaptive_hmc`).

:func:`summarize_draws` is :func:`flowvi.reference.summarize_chains` for draws too large for one NumPy pass
(512 chains x 1000 draws x 4002 coordinates): the same estimators (split R-hat, Geyer-truncated ESS over
split chains), applied to blocks of coordinates, and the compared coordinates (the horseshoe's beta) computed
in blocks of draws. :func:`reference_info` is the JSON metadata of the reference file written with
:func:`flowvi.reference.write_reference` (the format of ``refs/horseshoe_nci60_p2000_nuts.npz``).
"""

from __future__ import annotations

import numpy as np
import torch

from ..reference import effective_sample_size, split_rhat

SAMPLER_NAME = "many-chain HMC"


def _blockwise(fn, x: np.ndarray, max_bytes: float) -> np.ndarray:
    """``fn`` (per coordinate of (chains, n, d)) applied to blocks of coordinates of at most ``max_bytes`` each
    (in float64; the FFT of the autocovariance takes about 4 times that)."""
    c, n, d = x.shape
    step = max(1, int(max_bytes // (c * n * 8)))
    return np.concatenate([fn(np.asarray(x[:, :, j : j + step], dtype=np.float64)) for j in range(0, d, step)])


def summarize_draws(target, draws, n_plot: int = 4, thin_plot: int = 1, max_bytes: float = 2e8) -> dict:
    """Reference summary of ``draws`` (chains, n, target.dim), NumPy or torch, any float dtype; the same keys
    and values as :func:`flowvi.reference.summarize_chains` (``mean``, ``sd``, ``rhat``, ``ess`` of the compared
    coordinates; ``rhat_theta``, ``ess_theta`` of the raw ones; ``plot`` and its ``draws``)."""
    from ..stability import coordinates

    if isinstance(draws, torch.Tensor):
        draws = draws.detach().cpu().numpy()
    if draws.ndim != 3 or draws.shape[2] != target.dim:
        raise ValueError(f"draws must have shape (chains, n, {target.dim}); got {draws.shape}")
    c, n, d = draws.shape
    if c < 2 or n < 4:
        raise ValueError(f"need at least 2 chains of at least 4 draws, got {c} x {n}")
    flat = draws.reshape(c * n, d)
    rows = max(1, int(max_bytes // (d * 8)))
    target64 = target.to(torch.float64)
    with torch.no_grad():
        coords = np.concatenate(
            [
                coordinates(target64, torch.as_tensor(flat[i : i + rows], dtype=torch.float64)).numpy()
                for i in range(0, c * n, rows)
            ]
        ).reshape(c, n, -1)
    pooled = coords.reshape(c * n, -1)
    mean = pooled.mean(0)
    sd = pooled.std(0)
    plot = np.argsort(-np.abs(mean) / np.maximum(sd, 1e-12), kind="stable")[:n_plot]
    return {
        "mean": mean,
        "sd": sd,
        "rhat": _blockwise(split_rhat, coords, max_bytes),
        "ess": _blockwise(effective_sample_size, coords, max_bytes),
        "rhat_theta": _blockwise(split_rhat, draws, max_bytes),
        "ess_theta": _blockwise(effective_sample_size, draws, max_bytes),
        "plot": plot,
        "draws": pooled[::thin_plot, plot],
    }


def reference_info(target_spec: dict, dim: int, settings: dict, result: dict, summary: dict, seconds: dict) -> dict:
    """JSON metadata of an HMC reference: settings, timings, adaptation, divergences and the convergence summary."""
    ess, rhat = summary["ess"], summary["rhat"]
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


def run_hmc_baseline(target, args, config: dict, out) -> tuple[np.ndarray | None, dict]:
    """``flowvi baseline hmc``: run the sampler with the CLI's ``args``, write ``config.json`` (``config`` plus an
    ``hmc`` section) and, with ``--reference-out``, the reference ``.npz`` + ``.json``; return the draws to save
    as ``samples.npy`` ((chains * n, d), chain-major; None with ``--no-samples``) and the run summary."""
    import json
    import time
    from pathlib import Path

    from .. import checkpoint as ckpt
    from ..reference import write_reference
    from ..runs import resolve_dtype
    from ..samplers.adaptive_hmc import adaptive_hmc

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
    }
    config["hmc"] = settings
    ckpt.write_json_atomic(config, Path(out) / "config.json")
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
    )
    t0 = time.perf_counter()
    draws = result["draws"].cpu().numpy()
    stats = summarize_draws(target, draws)
    seconds = {
        "warmup": result["seconds_warmup"],
        "sampling": result["seconds_sampling"],
        "summary": time.perf_counter() - t0,
    }
    compared = "beta" if getattr(target, "coefficients", None) is not None else "x"
    summary = {
        "method": "hmc",
        "sampler": SAMPLER_NAME,
        "chains": int(draws.shape[0]),
        "num_samples": int(draws.shape[1]),
        "warmup": int(result["warmup_iterations"]),
        "stopped_early": bool(result["stopped_early"]),
        "seconds": seconds["warmup"] + seconds["sampling"],
        "seconds_detail": seconds,
        "step_size": float(result["step_size"]),
        "accept_prob": float(result["accept_prob"].mean()),
        "divergences": int(result["divergences"].sum()),
        "divergences_per_chain": result["divergences"].tolist(),
        "warmup_divergences": int(result["warmup_divergences"].sum()),
        "leapfrogs_per_chain": int(result["leapfrogs"]),
        "compared": compared,
        "ess_min": float(stats["ess"].min()),
        "ess_median": float(np.median(stats["ess"])),
        "rhat_max": float(stats["rhat"].max()),
        "ess_theta_min": float(stats["ess_theta"].min()),
        "rhat_theta_max": float(stats["rhat_theta"].max()),
    }
    print(
        f"  {summary['chains']} x {summary['num_samples']} draws after {summary['warmup']} warm-up iterations "
        f"in {summary['seconds']:.1f} s{' (stopped at --max-seconds)' if summary['stopped_early'] else ''}\n"
        f"  acceptance {summary['accept_prob']:.3f}, step size {summary['step_size']:.4g}, "
        f"divergences {summary['divergences']} (warm-up {summary['warmup_divergences']})\n"
        f"  {compared}: ESS min {summary['ess_min']:.0f}, median {summary['ess_median']:.0f}; "
        f"R-hat max {summary['rhat_max']:.4f}  (all coordinates: ESS min {summary['ess_theta_min']:.0f}, "
        f"R-hat max {summary['rhat_theta_max']:.4f}); summary {seconds['summary']:.1f} s"
    )
    if ref_out is not None:
        info = reference_info(config["target"], target.dim, {**settings, "seed": args.seed}, result, stats, seconds)
        write_reference(ref_out, stats, info)
        ref_out.with_suffix(".json").write_text(json.dumps(info, indent=2))
        print(f"wrote reference {ref_out} ({ref_out.stat().st_size / 1e6:.2f} MB) and {ref_out.with_suffix('.json')}")
    samples = None if args.no_samples else draws.reshape(-1, target.dim)
    return samples, summary
