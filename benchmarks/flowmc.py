"""Hybrid NF-MCMC (FlowMC-style) against plain many-chain HMC on the regularized horseshoe (NCI-60).

    PYTHONPATH=src python benchmarks/flowmc.py --p 30 --out FILE.json                       # CPU, 2-3 minutes
    PYTHONPATH=src python benchmarks/flowmc.py --p 200 --out FILE.json                      # CPU, ~10 minutes
    PYTHONPATH=src python benchmarks/flowmc.py --p 2000 --device cuda --chains 256 --max-leapfrog 128 --thin 3 \\
        --max-seconds 120 --ref-max-seconds 150 --out FILE.json                             # GPU, under 8 minutes

On ``regularized_horseshoe_nci60`` with p genes (d = 2p + 3) this runs, with the same number of chains,

* the hybrid (:func:`flowvi.samplers.flowmc.flowmc`: adaptive-HMC warm-up, training rounds of local HMC moves,
  maximum-likelihood fits of a Real NVP to the chains' states and global independence moves from it, then
  production with the flow frozen);
* plain adaptive HMC (:func:`flowvi.samplers.adaptive_hmc.adaptive_hmc`) with the same warm-up and, by default
  (``--match evals``), as many draws as make its gradient evaluations per chain equal to the hybrid's gradient
  plus ``log_prob`` evaluations (each global proposal's target evaluation counted as a gradient, which favours
  HMC; the flow's training is not counted: see the seconds), or with ``--match time`` the hybrid's wall time;
* an independent HMC reference (``benchmarks/regularized_horseshoe.py``'s ``hmc_reference``: another seed,
  ``--ref-iterations`` warm-up and draws), which scores both: the share of the p coefficients whose posterior mean
  is within 0.1 reference sd of the reference's (:func:`flowvi.studies.stability.share_within`), beside the zero guess's
  share (:func:`flowvi.studies.stability.zero_guess_scores`).

Per sampler: seconds, gradient evaluations per chain, local and global acceptance, the rank-normalized R-hat
(max over beta and over all coordinates), bulk-ESS of beta (min, median) and per second, and the regimes of
``regularized_horseshoe.regimes`` (log tau, beta0, log c quantiles; median sd of beta).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

torch.set_flush_denormal(True)  # before the CPU thread pool starts, so that its threads inherit it (adaptive_hmc.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from regularized_horseshoe import TARGET, finish, hmc_reference, regimes, scores  # noqa: E402

from flowvi.diagnostics.mcmc import summarize_chains
from flowvi.flows.realnvp import realnvp
from flowvi.samplers.adaptive_hmc import adaptive_hmc
from flowvi.samplers.flowmc import flowmc
from flowvi.studies.stability import zero_guess_scores
from flowvi.targets import make_target


def sampler_row(name: str, target, draws: torch.Tensor, ref: dict, seconds: float, device) -> dict:
    """Convergence, efficiency and scores of ``draws`` (chains, n, d) against the reference summary ``ref``."""
    s = summarize_chains(target, draws, device=device)
    theta = draws.reshape(-1, target.dim).cpu().double()
    with torch.no_grad():
        coef = target.coefficients(theta).numpy()
    bulk = s["bulk_ess"]
    return {
        "sampler": name,
        "seconds": seconds,
        "chains": int(draws.shape[0]),
        "draws_per_chain": int(draws.shape[1]),
        "beta_rank_rhat_max": float(s["rank_rhat"].max()),
        "theta_rank_rhat_max": float(s["rank_rhat_theta"].max()),
        "beta_bulk_ess_min": float(bulk.min()),
        "beta_bulk_ess_median": float(np.median(bulk)),
        "theta_bulk_ess_min": float(s["bulk_ess_theta"].min()),
        "beta_bulk_ess_min_per_s": float(bulk.min()) / seconds,
        "beta_bulk_ess_median_per_s": float(np.median(bulk)) / seconds,
        "scores": scores(coef.mean(0), np.median(coef, 0), ref),
        **regimes(target, theta),
    }


def run(
    p: int = 200,
    chains: int = 64,
    warmup: int = 1000,
    rounds: int = 10,
    local_steps: int = 20,
    global_steps: int = 20,
    train_steps: int = 100,
    draws: int = 1000,
    thin: int = 1,
    max_leapfrog: int = 64,
    target_accept: float = 0.9,
    layers: int = 4,
    hidden: int = 64,
    spline: bool = False,
    hierarchical: bool = False,
    batch_size: int = 256,
    lr: float = 1e-3,
    buffer_size: int = 20_000,
    match: str = "evals",
    ref_chains: int | None = None,
    ref_iterations: int = 1000,
    max_seconds: float | None = None,
    ref_max_seconds: float | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> dict:
    settings = {
        "chains": chains,
        "warmup": warmup,
        "rounds": rounds,
        "local_steps": local_steps,
        "global_steps": global_steps,
        "train_steps": train_steps,
        "draws": draws,
        "thin": thin,
        "max_leapfrog": max_leapfrog,
        "target_accept": target_accept,
        "flow": {
            "layers": layers,
            "hidden": hidden,
            "spline": spline,
            "hierarchical": hierarchical,
            "dtype": "float32",
        },
        "batch_size": batch_size,
        "lr": lr,
        "buffer_size": buffer_size,
        "match": match,
        "max_seconds": max_seconds,
        "seed": seed,
    }
    target = make_target(TARGET, p=p).double()  # on the CPU: summaries and regimes
    target_dev = copy.deepcopy(target).to(device)
    t0 = time.perf_counter()
    ref_row, ref, _ = hmc_reference(
        target, ref_chains or chains, ref_iterations, max_leapfrog, seed + 100, device, thin, ref_max_seconds
    )
    ref_row["seconds_with_summary"] = time.perf_counter() - t0
    print(f"reference HMC: {ref_row['seconds']:.0f} s", flush=True)

    hybrid, r = _run_hybrid(target, target_dev, ref, settings, device)
    # plain HMC: the same chains and warm-up; draws from the hybrid's evaluations (or its wall time)
    if match == "evals":
        hmc_draws = max(
            4 * thin, round((hybrid["evaluations"] - r["warmup_gradient_evaluations"]) / ((max_leapfrog + 1) / 2))
        )
        hmc_seconds_cap = max_seconds
    else:
        hmc_draws, hmc_seconds_cap = 10**9, hybrid["seconds"]
    hmc = _run_hmc(target, target_dev, ref, settings, device, hmc_draws, hmc_seconds_cap)
    return {
        "target": TARGET,
        "params": {"p": p},
        "dim": target.dim,
        "settings": settings,
        "reference": ref_row,
        "zero_guess": zero_guess_scores(ref),
        "rows": [hmc, hybrid],
    }


def _run_hybrid(target, target_dev, ref: dict, s: dict, device) -> tuple[dict, dict]:
    """The hybrid with the settings ``s``: (its row, :func:`flowmc`'s result)."""
    torch.manual_seed(s["seed"])  # the flow's initial parameters
    hierarchy = target.hierarchy() if s["flow"]["hierarchical"] else None
    flow = realnvp(
        target.dim,
        layers=s["flow"]["layers"],
        hidden=s["flow"]["hidden"],
        spline=s["flow"]["spline"],
        hierarchy=hierarchy,
    ).to(device)  # float32
    r = flowmc(
        target_dev,
        flow,
        chains=s["chains"],
        warmup=s["warmup"],
        rounds=s["rounds"],
        local_steps=s["local_steps"],
        global_steps=s["global_steps"],
        train_steps=s["train_steps"],
        draws=s["draws"],
        thin=s["thin"],
        max_leapfrog=s["max_leapfrog"],
        target_accept=s["target_accept"],
        batch_size=s["batch_size"],
        lr=s["lr"],
        buffer_size=s["buffer_size"],
        max_seconds=s["max_seconds"],
        seed=s["seed"],
    )
    hybrid_seconds = r["seconds_warmup"] + r["seconds_training"] + r["seconds_sampling"]
    hybrid = sampler_row("hybrid NF-MCMC", target, r["draws"], ref, hybrid_seconds, device)
    hybrid |= {
        "gradient_evaluations": r["gradient_evaluations"],
        "log_prob_evaluations": r["log_prob_evaluations"],
        "evaluations": r["gradient_evaluations"] + r["log_prob_evaluations"],
        "seconds_detail": {k: r[f"seconds_{k}"] for k in ("warmup", "training", "sampling")},
        "local_accept": float(r["local_accept"].mean()),
        "global_accept": float(r["global_accept"].mean()),
        "global_accept_chain_min_max": [float(r["global_accept"].min()), float(r["global_accept"].max())],
        "global_jumps_per_chain_median": float(r["global_jumps"].double().median()),
        "global_accept_trace": r["global_accept_trace"],
        "local_accept_trace": r["local_accept_trace"],
        "nll_first_last": [r["nll_trace"][0], r["nll_trace"][-1]],
        "nll_trace_every_10": r["nll_trace"][::10],
        "training_rounds": r["training_rounds"],
        "step_size": r["step_size"],
        "divergences": int(r["divergences"].sum()),
        "warmup_iterations": int(r["warmup_iterations"]),
        "iterations": int(r["iterations"]),
        "stopped_early": bool(r["stopped_early"]),
    }
    print(
        f"hybrid: {hybrid_seconds:.0f} s, global acceptance {hybrid['global_accept']:.3g}, "
        f"within 0.1 sd {hybrid['scores']['within_0.1_sd']:.3f}",
        flush=True,
    )
    return hybrid, r


def _run_hmc(target, target_dev, ref: dict, s: dict, device, draws: int, max_seconds: float | None) -> dict:
    """Plain adaptive HMC with the settings ``s`` and the budget (``draws``, ``max_seconds``): its row."""
    h = adaptive_hmc(
        target_dev,
        chains=s["chains"],
        warmup=s["warmup"],
        draws=draws,
        max_leapfrog=s["max_leapfrog"],
        target_accept=s["target_accept"],
        seed=s["seed"],
        thin=s["thin"],
        max_seconds=max_seconds,
    )
    hmc_seconds = h["seconds_warmup"] + h["seconds_sampling"]
    hmc = sampler_row("HMC", target, h["draws"], ref, hmc_seconds, device)
    hmc |= {
        "gradient_evaluations": int(h["leapfrogs"]),
        "evaluations": int(h["leapfrogs"]),
        "local_accept": float(h["accept_prob"].mean()),
        "step_size": float(h["step_size"]),
        "divergences": int(h["divergences"].sum()),
        "warmup_iterations": int(h["warmup_iterations"]),
        "iterations": int(h["iterations"]),
        "stopped_early": bool(h["stopped_early"]),
    }
    print(f"HMC: {hmc_seconds:.0f} s, within 0.1 sd {hmc['scores']['within_0.1_sd']:.3f}", flush=True)
    return hmc


def table(result: dict) -> str:
    ref = result["reference"]
    lines = [
        f"{result['target']} p={result['params']['p']} (d={result['dim']}), {result['settings']['chains']} chains; "
        f"reference: HMC {ref['chains']} chains x ({ref['warmup']} + {ref['draws']}), seed + 100, beta rank R-hat max "
        f"{ref['convergence']['beta_rank_rhat_max']:.3f}, bulk-ESS min {ref['convergence']['beta_bulk_ess_min']:.0f}",
        "| sampler | s | grad (+ log p) evals / chain | local acc | global acc | rank R-hat max beta (all) "
        "| bulk-ESS beta min / median | min / median per s | beta mean within 0.1 ref sd | log tau (5, 50, 95 %) "
        "| median sd(beta) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        evals = f"{row['gradient_evaluations']}" + (
            f" + {row['log_prob_evaluations']}" if "log_prob_evaluations" in row else ""
        )
        glob = f"{row['global_accept']:.3g}" if "global_accept" in row else "–"
        lines.append(
            f"| {row['sampler']} | {row['seconds']:.0f} | {evals} | {row['local_accept']:.3f} | {glob} | "
            f"{row['beta_rank_rhat_max']:.3f} ({row['theta_rank_rhat_max']:.3f}) | "
            f"{row['beta_bulk_ess_min']:.0f} / {row['beta_bulk_ess_median']:.0f} | "
            f"{row['beta_bulk_ess_min_per_s']:.1f} / {row['beta_bulk_ess_median_per_s']:.1f} | "
            f"{row['scores']['within_0.1_sd']:.3f} | {', '.join(f'{v:.2f}' for v in row['log_tau_q05_q50_q95'])} | "
            f"{row['median_sd_beta']:.3g} |"
        )
    half = ref["half_chains_vs_other_half"]["within_0.1_sd"]
    lines.append(f"| reference: half its chains vs the other half | | | | | | | | {half:.3f} | | |")
    lines.append(
        f"| every coefficient 0 (zero guess) | | | | | | | | {result['zero_guess']['within_0.1_sd']:.3f} | | |"
    )
    hy = result["rows"][1]
    lines.append(
        f"hybrid: {hy['training_rounds']} training rounds, flow NLL {hy['nll_first_last'][0]:.1f} -> "
        f"{hy['nll_first_last'][1]:.1f} nats; global acceptance per round "
        f"{', '.join(f'{a:.2g}' for a in hy['global_accept_trace'][: hy['training_rounds']])} (training), "
        f"{hy['global_accept']:.3g} (production; per chain {hy['global_accept_chain_min_max'][0]:.3g} to "
        f"{hy['global_accept_chain_min_max'][1]:.3g}, median {hy['global_jumps_per_chain_median']:.0f} jumps per chain); "
        f"seconds {json.dumps({k: round(v, 1) for k, v in hy['seconds_detail'].items()})}"
    )
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--p", type=int, default=200)
    ap.add_argument("--chains", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=1000, help="adaptive-HMC warm-up of both samplers")
    ap.add_argument("--rounds", type=int, default=10, help="the hybrid's training rounds")
    ap.add_argument("--local-steps", type=int, default=20)
    ap.add_argument("--global-steps", type=int, default=20)
    ap.add_argument("--train-steps", type=int, default=100, help="Adam steps per training round")
    ap.add_argument("--draws", type=int, default=1000, help="the hybrid's production iterations (local + global)")
    ap.add_argument("--thin", type=int, default=1)
    ap.add_argument("--max-leapfrog", type=int, default=64)
    ap.add_argument("--target-accept", type=float, default=0.9)
    ap.add_argument("--layers", type=int, default=4, help="Real NVP coupling layers (8 x 256 overfits the buffer)")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--spline", action="store_true", help="elementwise spline after the couplings")
    ap.add_argument("--hierarchical", action="store_true", help="the target's hierarchical couplings in the flow")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--buffer-size", type=int, default=20_000)
    ap.add_argument("--match", default="evals", choices=["evals", "time"], help="HMC's budget: the hybrid's")
    ap.add_argument("--ref-chains", type=int, help="reference HMC chains (default --chains)")
    ap.add_argument("--ref-iterations", type=int, default=1000, help="reference HMC warm-up and draws, each")
    ap.add_argument("--max-seconds", type=float, help="wall-time bound of the hybrid, and of HMC")
    ap.add_argument("--ref-max-seconds", type=float, help="wall-time bound of the reference HMC")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    result = run(
        p=args.p,
        chains=args.chains,
        warmup=args.warmup,
        rounds=args.rounds,
        local_steps=args.local_steps,
        global_steps=args.global_steps,
        train_steps=args.train_steps,
        draws=args.draws,
        thin=args.thin,
        max_leapfrog=args.max_leapfrog,
        target_accept=args.target_accept,
        layers=args.layers,
        hidden=args.hidden,
        spline=args.spline,
        hierarchical=args.hierarchical,
        batch_size=args.batch_size,
        lr=args.lr,
        buffer_size=args.buffer_size,
        match=args.match,
        ref_chains=args.ref_chains,
        ref_iterations=args.ref_iterations,
        max_seconds=args.max_seconds,
        ref_max_seconds=args.ref_max_seconds,
        seed=args.seed,
        device=args.device,
    )
    return finish(result, args, argv, t0, table)


if __name__ == "__main__":
    raise SystemExit(main())
