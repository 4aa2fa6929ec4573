"""Where the horseshoe posterior's mass is, and where the flows put theirs (issue 4, docs/high_dimensional.md).

    PYTHONPATH=src python benchmarks/horseshoe_regimes.py --p 200 --steps 1500 --out regimes.json   # CPU, ~15 min
    PYTHONPATH=src python benchmarks/horseshoe_regimes.py --quick --out /tmp/regimes.json          # CPU, ~1 min

Runs many-chain HMC (``flowvi.samplers.adaptive_hmc``) on ``horseshoe_nci60`` with p genes, and trains flows by
reverse KL (8 coupling layers of width 256, asymmetric clamp and LOFT; ``--variants``: ``realnvp``, ``spline``,
``anneal`` = the likelihood tempered in as t^2 over the first 60 % of the steps, ``anneal-t`` = the same with a
Student-t base). For each it prints the 5/50/95 % quantiles of log tau and of the intercept beta0, the median
|beta_j| and the median over j of sd(beta_j): the separation regime (large tau, very negative beta0) against the
small-scale regime that the flows find.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from flowvi.diagnostics.evaluate import evaluate
from flowvi.runs.run_dir import build
from flowvi.samplers.adaptive_hmc import adaptive_hmc
from flowvi.targets import make_target
from flowvi.training.loop import TrainConfig, fit


class TemperedLikelihood(torch.nn.Module):
    """``log prior + t * log likelihood`` of a horseshoe target, with ``t`` in a buffer set between steps."""

    def __init__(self, target):
        super().__init__()
        self.target, self.event_shape, self.dim = target, target.event_shape, target.dim
        self.register_buffer("t", torch.zeros(()))

    def log_prob(self, x):
        return self.target.prior_log_prob(x) + self.t.to(x.dtype) * self.target.log_likelihood(x)


def describe(target, theta) -> dict:
    p = target.p
    theta = theta.double()
    beta = target.coefficients(theta)

    def q(v):
        return np.quantile(v.cpu().numpy(), [0.05, 0.5, 0.95]).tolist()

    return {
        "log_tau_q05_q50_q95": q(theta[:, 2 * p]),
        "beta0_q05_q50_q95": q(theta[:, 2 * p + 1]),
        "median_abs_beta": float(beta.abs().median()),
        "median_sd_beta": float(beta.std(0).median()),
    }


def train_flow(p: int, variant: str, steps: int, seed: int) -> tuple[dict, dict]:
    cfg = {
        "target": {"name": "horseshoe_nci60", "params": {"p": p}},
        "seed": seed,
        "dtype": "float32",
        "flow": {
            "layers": 8,
            "hidden": 256,
            "clamp": "asymmetric",
            "loft": True,
            "spline": variant == "spline",
            "base": "student_t" if variant == "anneal-t" else "gaussian",
        },
    }
    flow, target = build(cfg)
    anneal = variant.startswith("anneal")
    train_target = TemperedLikelihood(target) if anneal else target

    def schedule(state, metrics):
        if anneal:
            train_target.t.fill_(min(1.0, state.step / (0.6 * steps)) ** 2)

    cfg_train = TrainConfig(steps=steps, batch_size=256, checkpoint_every=10**9, log_every=10)
    fit(flow, train_target, cfg_train, progress=False, callback=schedule)
    with torch.no_grad():
        x = flow.sample(4000)
    stats = evaluate(flow, target, n=20_000)
    return describe(target.double(), x), {k: float(stats[k]) for k in ("elbo", "log_z", "pareto_k")}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--p", type=int, default=200)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--chains", type=int, default=64)
    ap.add_argument("--hmc-iterations", type=int, default=1000, help="warm-up and draws each")
    ap.add_argument("--variants", default="realnvp,spline,anneal,anneal-t")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="p = 20, 300 steps, 200 HMC iterations")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.quick:
        args.p, args.steps, args.hmc_iterations = 20, 300, 200
    target = make_target("horseshoe_nci60", p=args.p).double()
    rows = []
    t0 = time.perf_counter()
    r = adaptive_hmc(
        target,
        chains=args.chains,
        warmup=args.hmc_iterations,
        draws=args.hmc_iterations,
        max_leapfrog=64,
        target_accept=0.9,
        seed=args.seed,
    )
    hmc = {"sampler": "HMC", **describe(target, r["draws"].reshape(-1, target.dim))}
    hmc |= {"seconds": time.perf_counter() - t0, "divergences": int(r["divergences"].sum())}
    rows.append(hmc)
    for variant in [v for v in args.variants.split(",") if v]:
        t0 = time.perf_counter()
        shape, stats = train_flow(args.p, variant, args.steps, args.seed)
        rows.append({"sampler": f"flow {variant}", **shape, **stats, "seconds": time.perf_counter() - t0})

    def fmt(v):
        return ", ".join(f"{x:.3g}" for x in v)

    print(f"horseshoe_nci60 p={args.p} (d={target.dim})")
    print("| sampler | log tau (5, 50, 95 %) | beta0 (5, 50, 95 %) | median abs beta | median sd(beta) | ELBO | s |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['sampler']} | {fmt(row['log_tau_q05_q50_q95'])} | {fmt(row['beta0_q05_q50_q95'])} | "
            f"{row['median_abs_beta']:.3g} | {row['median_sd_beta']:.3g} | {row.get('elbo', float('nan')):.2f} | "
            f"{row['seconds']:.0f} |"
        )
    Path(args.out).write_text(json.dumps({"p": args.p, "steps": args.steps, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
