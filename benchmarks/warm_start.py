"""Warm start on the NCI-60 horseshoe (issue 4): pre-train a flow on sampler draws, then fine-tune by reverse KL.

    PYTHONPATH=src python benchmarks/warm_start.py --p 200 --out warm_start_p200.json
    PYTHONPATH=src python benchmarks/warm_start.py --quick --out /tmp/warm_quick.json     # CPU, ~1 min

Reverse-KL flows on ``horseshoe_nci60`` settle in a small-scale regime (log tau ~ -4.6, intercept ~ -2) while the
posterior mass sits in a separation regime (HMC: log tau median -1.2, intercept -37; docs/high_dimensional.md).
This script asks whether starting the flow *in* the separation regime helps: it

1. runs many-chain HMC (``flowvi.samplers.adaptive_hmc``, seed ``--seed``): the reference;
2. draws the warm-start samples: tempered SMC particles (``flowvi.samplers.smc.run_smc``, seed + 1) and the draws of
   an independent HMC run (seed + 1);
3. for each variant (``plain``: reverse KL from the identity; ``warm-smc``, ``warm-hmc``: first
   ``flowvi.pretrain_on_draws`` on those draws) trains the same Real NVP as benchmarks/horseshoe_regimes.py
   (8 coupling layers of width 256, asymmetric clamp, LOFT) by reverse KL, and at fractions ``--at`` of the
   fine-tuning (0 = right after pre-training) reports the regime (``describe``: log tau and beta0 quantiles),
   ELBO, IS log Z and Pareto k (``flowvi.diagnostics.evaluate``), and the share of the p coefficients whose flow mean lies
   within 0.1 HMC sd of the HMC mean (``flowvi.studies.stability.share_within``; the median version
   ``share_within_robust`` too), beside the zero guess's share (``zero_guess_scores``) and the warm-start
   draws' own share (how well a second sampler run agrees with the reference at all).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from horseshoe_regimes import describe  # noqa: E402

from flowvi.diagnostics.evaluate import evaluate
from flowvi.runs.run_dir import build
from flowvi.samplers import run_smc
from flowvi.samplers.adaptive_hmc import adaptive_hmc
from flowvi.studies.stability import ROBUST, share_within, share_within_robust, zero_guess_scores
from flowvi.targets import make_target
from flowvi.training.loop import TrainConfig, fit
from flowvi.training.pretrain import pretrain_on_draws


def coefficient_stats(target, theta: torch.Tensor) -> dict:
    """Mean, sd, median and quartiles of the coefficients beta of draws ``theta`` (N, d): a reference dict for
    ``share_within`` / ``share_within_robust``."""
    with torch.no_grad():
        beta = target.coefficients(theta.double()).cpu().numpy()
    q25, median, q75 = np.quantile(beta, [0.25, 0.5, 0.75], axis=0)
    return {"mean": beta.mean(0), "sd": beta.std(0), "median": median, "q25": q25, "q75": q75}


def scores(target, theta: torch.Tensor, ref: dict) -> dict:
    s = coefficient_stats(target, theta)
    return {"within_0.1_sd": share_within(s["mean"], ref), ROBUST: share_within_robust(s["median"], ref)}


def hmc_draws(target, chains: int, iterations: int, seed: int) -> tuple[torch.Tensor, dict]:
    t0 = time.perf_counter()
    r = adaptive_hmc(
        target, chains=chains, warmup=iterations, draws=iterations, max_leapfrog=64, target_accept=0.9, seed=seed
    )
    info = {"seconds": time.perf_counter() - t0, "divergences": int(r["divergences"].sum())}
    return r["draws"].reshape(-1, target.dim), info


def flow_row(flow, target, ref: dict, n_eval: int, n_draws: int) -> dict:
    with torch.no_grad():
        x = flow.sample(n_draws).double()
    stats = evaluate(flow, target, n=n_eval)
    return {
        **describe(target, x),
        **scores(target, x, ref),
        **{k: float(stats[k]) for k in ("elbo", "log_z", "log_z_se", "ess", "pareto_k")},
    }


def train_variant(p, variant, draws, args, target64, ref) -> list[dict]:
    """Rows of one variant at the fractions ``args.at`` of the reverse-KL steps (the pre-training first)."""
    cfg = {
        "target": {"name": "horseshoe_nci60", "params": {"p": p}},
        "seed": args.seed,
        "dtype": "float32",
        "flow": {"layers": args.layers, "hidden": args.hidden, "clamp": "asymmetric", "loft": True, "tau": args.tau},
    }
    flow, target = build(cfg)
    rows, t0 = [], time.perf_counter()
    pre = None
    if draws is not None:
        # LOFT (threshold tau) gives the flow log tails: a draw far beyond tau has log q = -inf in float32
        keep = draws.abs().amax(1) <= args.tau
        pre = pretrain_on_draws(
            flow, draws[keep].float(), steps=args.init_steps, batch_size=256, lr=args.init_lr, seed=args.seed
        )
        pre["dropped_beyond_tau"] = int((~keep).sum())
    at = sorted({round(f * args.steps) for f in args.at})

    def record(step):
        row = {"variant": variant, "step": step, "fraction": step / args.steps}
        row |= flow_row(flow, target, ref, args.eval_samples, args.flow_draws)
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        print(
            f"  {variant:9s} step {step:5d}: log tau q50 {row['log_tau_q05_q50_q95'][1]:7.2f}, beta0 q50 "
            f"{row['beta0_q05_q50_q95'][1]:8.2f}, ELBO {row['elbo']:9.2f}, IS log Z {row['log_z']:8.2f}, "
            f"k {row['pareto_k']:.2f}, within 0.1 sd {row['within_0.1_sd']:.3f}, median within "
            f"{row[ROBUST]:.3f} ({row['seconds']:.0f} s)",
            flush=True,
        )

    if 0 in at:
        record(0)
        if pre is not None:
            rows[-1]["pretrain"] = pre

    def callback(state, metrics):
        if state.step in at and state.step > 0:
            record(state.step)

    log_every = math.gcd(args.steps, *at)  # the callback runs at logged steps only: every step in ``at`` is one
    train = TrainConfig(steps=args.steps, batch_size=256, lr=args.lr, checkpoint_every=10**9, log_every=log_every)
    fit(flow, target, train, progress=False, callback=callback)
    return rows


def _add_options(ap):
    """The command line's options."""
    ap.add_argument("--p", type=int, default=200)
    ap.add_argument("--steps", type=int, default=1500, help="reverse-KL steps")
    ap.add_argument("--lr", type=float, default=1e-3, help="reverse-KL learning rate (cosine schedule)")
    ap.add_argument("--init-steps", type=int, default=1000, help="pre-training steps")
    ap.add_argument("--init-lr", type=float, default=1e-3)
    ap.add_argument("--layers", type=int, default=8, help="coupling layers of the Real NVP")
    ap.add_argument("--hidden", type=int, default=256, help="conditioner width")
    ap.add_argument("--tau", type=float, default=100.0, help="LOFT threshold (draws beyond it are not pre-trained on)")
    ap.add_argument("--chains", type=int, default=64)
    ap.add_argument("--hmc-iterations", type=int, default=1000, help="warm-up and draws each")
    ap.add_argument("--smc-particles", type=int, default=1000)
    ap.add_argument("--smc-moves", type=int, default=100, help="MALA moves per temperature")
    ap.add_argument("--smc-ess", type=float, default=0.8, help="ESS fraction that sets the next temperature")
    ap.add_argument("--variants", default="plain,warm-smc,warm-hmc")
    ap.add_argument("--at", default="0,0.25,0.5,1", help="fractions of the reverse-KL steps to report at")
    ap.add_argument(
        "--eval-samples", type=int, default=20_000, help="importance samples of flowvi.diagnostics.evaluate"
    )
    ap.add_argument("--flow-draws", type=int, default=10_000, help="flow draws for the regime and the shares")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, help="torch CPU threads (1 avoids oversubscription on a shared CPU)")
    ap.add_argument("--quick", action="store_true", help="p = 20, 200 + 200 steps, 200 HMC iterations, 20 SMC moves")
    ap.add_argument("--out", required=True)


def _run_samplers(target, variants, args):
    """The HMC reference and the warm starts' samplers: (their rows with the zero guess's, the reference's
    coefficient statistics, {variant: its warm-start draws})."""
    ref_draws, ref_info = hmc_draws(target, args.chains, args.hmc_iterations, args.seed)
    ref = coefficient_stats(target, ref_draws)
    samplers = [
        {"sampler": "HMC reference", "seed": args.seed, **ref_info, **describe(target, ref_draws)},
        {"sampler": "zero guess", **zero_guess_scores(ref)},
    ]
    warm_draws = {}
    if "warm-smc" in variants:
        r = run_smc(
            target, particles=args.smc_particles, ess_target=args.smc_ess, moves=args.smc_moves, seed=args.seed + 1
        )
        warm_draws["warm-smc"] = r["samples"]
        samplers.append(
            {
                "sampler": "SMC particles",
                "seed": args.seed + 1,
                "log_z": r["log_z"],
                "stages": len(r["temperatures"]) - 1,
                "seconds": r["seconds"],
                **describe(target, r["samples"]),
                **scores(target, r["samples"], ref),
            }
        )
    if "warm-hmc" in variants:
        x, info = hmc_draws(target, args.chains, args.hmc_iterations, args.seed + 1)
        warm_draws["warm-hmc"] = x
        samplers.append(
            {"sampler": "HMC, independent run", "seed": args.seed + 1, **info, **describe(target, x)}
            | scores(target, x, ref)
        )
    return samplers, ref, warm_draws


def _print_table(rows):
    """The flows' rows as a Markdown table."""

    def fmt(v):
        return ", ".join(f"{x:.3g}" for x in v)

    print(
        "| flow | step | log tau (5, 50, 95 %) | beta0 (5, 50, 95 %) | ELBO | IS log Z | Pareto k | mean within "
        "0.1 sd | median within 0.1 IQR/1.349 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['step']} | {fmt(r['log_tau_q05_q50_q95'])} | {fmt(r['beta0_q05_q50_q95'])} | "
            f"{r['elbo']:.2f} | {r['log_z']:.2f} | {r['pareto_k']:.2f} | {r['within_0.1_sd']:.3f} | {r[ROBUST]:.3f} |"
        )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _add_options(ap)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.p, args.steps, args.init_steps, args.hmc_iterations, args.smc_moves = 20, 200, 200, 200, 20
        args.eval_samples = 5000
    args.at = [float(f) for f in args.at.split(",")]
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - {"plain", "warm-smc", "warm-hmc"}
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from plain, warm-smc, warm-hmc")
    torch.manual_seed(args.seed)
    target = make_target("horseshoe_nci60", p=args.p).double()
    print(f"horseshoe_nci60 p={args.p} (d={target.dim}), {torch.get_num_threads()} threads", flush=True)

    samplers, ref, warm_draws = _run_samplers(target, variants, args)
    for row in samplers:
        print("  " + json.dumps({k: v for k, v in row.items() if not isinstance(v, list)}), flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    rows = []
    for variant in variants:
        rows += train_variant(args.p, variant, warm_draws.get(variant), args, target, ref)
        out.write_text(json.dumps({"settings": settings, "samplers": samplers, "flows": rows}, indent=1))

    _print_table(rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
