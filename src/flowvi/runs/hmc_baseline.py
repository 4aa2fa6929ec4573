"""Reference posteriors from many-chain adaptive HMC (:func:`flowvi.samplers.adaptive_hmc.adaptive_hmc`): the
``flowvi baseline hmc`` run, its convergence summary (:func:`flowvi.diagnostics.mcmc.summarize_chains`, on the
GPU where the draws are) and :func:`reference_info`, the JSON metadata of the reference file written with
:func:`flowvi.diagnostics.mcmc.write_reference` (the format of ``refs/horseshoe_nci60_p2000_nuts.npz``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLER_NAME = "many-chain HMC"
#: how config.json records ``HMCKernel.cuda_graph`` (the CLI's ``--cuda-graph`` values)
CUDA_GRAPH_NAMES = {None: "auto", True: "true", False: "false"}


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
    """The run summary's convergence entries from :func:`flowvi.diagnostics.mcmc.summarize_chains`'s ``stats``: split ESS and R-hat of the
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


@dataclass(frozen=True)
class Output:
    """What a chain baseline does besides sampling: the chains' ``dtype`` and the stored draws' (``store_dtype``,
    default the chains'), a progress bar, keeping the draws for samples.npy, and (HMC) a reference file."""

    dtype: str = "float64"
    store_dtype: str | None = None
    progress: bool = True
    keep_samples: bool = True
    reference_out: str | None = None


def run_hmc_baseline(target, schedule, kernel, output: Output, config: dict, out) -> tuple[np.ndarray | None, dict]:
    """``flowvi baseline hmc``: run :func:`flowvi.samplers.adaptive_hmc.adaptive_hmc` with ``schedule``
    (:class:`~flowvi.samplers.adaptive_hmc.ChainSchedule`) and ``kernel`` (:class:`~flowvi.samplers.adaptive_hmc.HMCKernel`),
    write ``config.json`` (``config`` plus an ``hmc`` section) and, with ``output.reference_out``, the reference
    ``.npz`` + ``.json``; return the draws to save as ``samples.npy`` ((chains * n, d), chain-major; None unless
    ``output.keep_samples``) and the run summary."""
    import json
    import time
    from pathlib import Path

    from flowvi.diagnostics.mcmc import summarize_chains, write_reference
    from flowvi.runs.run_dir import resolve_dtype
    from flowvi.runs.run_files import write_config
    from flowvi.samplers.adaptive_hmc import adaptive_hmc

    ref_out = Path(output.reference_out) if output.reference_out else None
    if ref_out is not None and ref_out.suffix != ".npz":
        raise ValueError(f"--reference-out must end in .npz, got {ref_out}")
    settings = _settings(schedule, kernel, output)
    config["hmc"] = settings
    write_config(config, out)
    print(f"flowvi baseline hmc: {config['target']['name']} (d={target.dim}, {schedule.chains} chains) -> {out}")
    anchor = next(iter(target.buffers()), None)
    result = adaptive_hmc(
        target, schedule, kernel, device=anchor.device if anchor is not None else None,
        dtype=resolve_dtype(output.dtype), progress=output.progress,
        store_dtype=resolve_dtype(output.store_dtype) if output.store_dtype else None,
    )  # fmt: skip
    t0 = time.perf_counter()
    draws = result["draws"]  # on the device: the summary runs there
    stats = summarize_chains(target, draws)
    seconds = {
        "warmup": result["seconds_warmup"],
        "sampling": result["seconds_sampling"],
        "summary": time.perf_counter() - t0,
    }
    summary = _run_summary(target, result, stats, seconds)
    _print_summary(summary, seconds)
    if ref_out is not None:
        info = reference_info(config["target"], target.dim, {**settings, "seed": schedule.seed}, result, stats, seconds)
        write_reference(ref_out, stats, info)
        ref_out.with_suffix(".json").write_text(json.dumps(info, indent=2))
        print(f"wrote reference {ref_out} ({ref_out.stat().st_size / 1e6:.2f} MB) and {ref_out.with_suffix('.json')}")
    samples = draws.cpu().numpy().reshape(-1, target.dim) if output.keep_samples else None
    return samples, summary


def _settings(schedule, kernel, output: Output) -> dict:
    """config.json's ``hmc`` section."""
    return {
        "chains": schedule.chains,
        "warmup": schedule.warmup,
        "draws": schedule.draws,
        "max_leapfrog": kernel.max_leapfrog,
        "target_accept": kernel.target_accept,
        "thin": schedule.thin,
        "init_radius": kernel.init_radius,
        "max_seconds": schedule.max_seconds,
        "store_dtype": output.store_dtype or output.dtype,
        "cuda_graph": CUDA_GRAPH_NAMES[kernel.cuda_graph],
    }


def _run_summary(target, result: dict, stats: dict, seconds: dict) -> dict:
    """summary.json of the run: sizes, timings, adaptation, divergences and :func:`draws_convergence`."""
    draws = result["draws"]
    return {
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


def _print_summary(summary: dict, seconds: dict) -> None:
    print(
        f"  {summary['chains']} x {summary['num_samples']} draws after {summary['warmup']} warm-up iterations "
        f"in {summary['seconds']:.1f} s{' (stopped at --max-seconds)' if summary['stopped_early'] else ''}\n"
        f"  acceptance {summary['accept_prob']:.3f}, step size {summary['step_size']:.4g}, "
        f"divergences {summary['divergences']} (warm-up {summary['warmup_divergences']})\n"
        f"{format_convergence(summary)}; summary {seconds['summary']:.1f} s"
    )
