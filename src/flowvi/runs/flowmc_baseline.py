"""``flowvi baseline flowmc``: the hybrid NF-MCMC sampler (:func:`flowvi.samplers.flowmc.flowmc`) on a target,
with the run directory of ``flowvi baseline hmc`` (config.json, summary.json, samples.npy) plus the trained flow,
``flowmc_flow.pt`` (atomic; read back with :func:`load_flowmc_flow`).

The flow models standardized coordinates (``y = (x - loc) / scale``), so the file holds the Real NVP options, its
dtype and state dict, and ``loc`` and ``scale``; it is not named ``flow.pt`` because ``flowvi sample`` and
``flowvi evaluate`` would read that as a flow over x.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from flowvi.diagnostics.mcmc import summarize_chains
from flowvi.runs import checkpoint as ckpt
from flowvi.runs.hmc_baseline import CUDA_GRAPH_NAMES, Output, draws_convergence, format_convergence
from flowvi.runs.run_files import write_config

FLOW_FILE = "flowmc_flow.pt"


def load_flowmc_flow(path, device="cpu"):
    """The :class:`flowvi.samplers.flowmc.StandardizedFlow` saved by ``flowvi baseline flowmc`` (a run directory
    or its ``flowmc_flow.pt``), on ``device``."""
    from flowvi.flows.realnvp import realnvp
    from flowvi.runs.run_dir import resolve_dtype
    from flowvi.samplers.flowmc import StandardizedFlow

    path = Path(path)
    if path.is_dir():
        path = path / FLOW_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file (a 'flowvi baseline flowmc' run writes {FLOW_FILE})")
    state = ckpt.load(path, map_location=device)
    flow = realnvp(state["dim"], **state["flow_options"]).to(device, resolve_dtype(state["flow_dtype"]))
    flow.load_state_dict(state["flow"])
    return StandardizedFlow(flow, state["loc"].to(device), state["scale"].to(device))


def run_flowmc_baseline(
    target, options: tuple, flow_options: dict, flow_dtype: str, output: Output, config: dict, out
) -> tuple[np.ndarray | None, dict]:
    """``flowvi baseline flowmc``: build the Real NVP (``flow_options`` of :func:`flowvi.flows.realnvp.realnvp`
    with its ``seed``, in ``flow_dtype``), run :func:`flowvi.samplers.flowmc.flowmc` with ``options`` = (Schedule,
    HMCKernel, FlowTraining), write ``config.json`` (``config`` plus a ``flowmc`` section) and ``flowmc_flow.pt``;
    return the draws to save as ``samples.npy`` ((chains * n, d), chain-major; None unless
    ``output.keep_samples``) and the run summary."""
    from dataclasses import asdict

    from flowvi.flows.realnvp import realnvp
    from flowvi.runs.run_dir import resolve_dtype
    from flowvi.samplers.adaptive_hmc import chain_device_dtype
    from flowvi.samplers.flowmc import flowmc

    schedule, kernel, training = options
    settings = {**asdict(schedule), **asdict(kernel), **asdict(training)}
    settings.update(store_dtype=output.store_dtype or output.dtype, cuda_graph=CUDA_GRAPH_NAMES[kernel.cuda_graph])
    for unrecorded in ("seed", "step_size", "clip", "standardize"):
        settings.pop(unrecorded)
    config["flowmc"] = settings
    config["flowmc_flow"] = {**flow_options, "dtype": flow_dtype}
    write_config(config, out)
    print(f"flowvi baseline flowmc: {config['target']['name']} (d={target.dim}, {schedule.chains} chains) -> {out}")
    device, _ = chain_device_dtype(target)
    torch.manual_seed(flow_options["seed"])  # the flow's initial parameters
    flow = realnvp(target.dim, **flow_options).to(device, resolve_dtype(flow_dtype))
    result = flowmc(
        target, flow, schedule, kernel, training, device=device, dtype=resolve_dtype(output.dtype),
        store_dtype=resolve_dtype(output.store_dtype) if output.store_dtype else None, progress=output.progress,
    )  # fmt: skip
    proposal = result["flow"]
    ckpt.save_atomic(
        {
            "dim": target.dim,
            "flow_options": flow_options,
            "flow_dtype": flow_dtype,
            "flow": proposal.flow.state_dict(),
            "loc": proposal.loc.cpu(),
            "scale": proposal.scale.cpu(),
        },
        Path(out) / FLOW_FILE,
    )
    draws = result["draws"]
    t0 = time.perf_counter()
    stats = summarize_chains(target, draws)
    summary = _summary(target, result, stats, time.perf_counter() - t0)
    print(
        f"  {summary['chains']} x {summary['num_samples']} draws after {summary['warmup']} warm-up iterations and "
        f"{summary['training_rounds']} training rounds in {summary['seconds']:.1f} s"
        f"{' (stopped at --max-seconds)' if summary['stopped_early'] else ''}\n"
        f"  local acceptance {summary['local_accept']:.3f} (step size {summary['step_size']:.4g}, divergences "
        f"{summary['divergences']}), global acceptance {summary['global_accept']:.3f}, flow NLL "
        f"{summary['nll_first']:.2f} -> {summary['nll_last']:.2f}\n"
        f"{format_convergence(summary)}; summary {summary['seconds_detail']['summary']:.1f} s"
    )
    samples = draws.cpu().numpy().reshape(-1, target.dim) if output.keep_samples else None
    return samples, summary


def _summary(target, result: dict, stats: dict, summary_seconds: float) -> dict:
    """The run's summary.json: sizes, times, acceptance, the flow's training and the draws' convergence."""
    draws = result["draws"]
    seconds = {
        "warmup": result["seconds_warmup"],
        "training": result["seconds_training"],
        "sampling": result["seconds_sampling"],
        "summary": summary_seconds,
    }
    nll = result["nll_trace"]
    return {
        "method": "flowmc",
        "sampler": "hybrid NF-MCMC (FlowMC-style): many-chain HMC + flow independence proposals",
        "chains": int(draws.shape[0]),
        "num_samples": int(draws.shape[1]),
        "warmup": int(result["warmup_iterations"]),
        "training_rounds": int(result["training_rounds"]),
        "iterations": int(result["iterations"]),
        "stopped_early": bool(result["stopped_early"]),
        "cuda_graph": bool(result["cuda_graph"]),
        "seconds": seconds["warmup"] + seconds["training"] + seconds["sampling"],
        "seconds_detail": seconds,
        "step_size": float(result["step_size"]),
        "local_accept": float(result["local_accept"].mean()),
        "global_accept": float(result["global_accept"].mean()),
        "global_accept_per_chain": result["global_accept"].tolist(),
        "global_jumps_per_chain": result["global_jumps"].tolist(),
        "local_accept_trace": result["local_accept_trace"],
        "global_accept_trace": result["global_accept_trace"],
        "nll_first": nll[0] if nll else None,
        "nll_last": nll[-1] if nll else None,
        "skipped_train_steps": int(result["skipped_train_steps"]),
        "divergences": int(result["divergences"].sum()),
        "warmup_divergences": int(result["warmup_divergences"].sum()),
        "gradient_evaluations_per_chain": int(result["gradient_evaluations"]),
        "log_prob_evaluations_per_chain": int(result["log_prob_evaluations"]),
        **draws_convergence(target, stats),
    }


__all__ = ["FLOW_FILE", "load_flowmc_flow", "run_flowmc_baseline"]
