"""Hierarchical couplings on Neal's funnel: Real NVP with and without ``--hierarchical``.

    PYTHONPATH=src python benchmarks/hierarchical.py --dims 10,100 --out FILE.json            # CPU, ~10 min
    PYTHONPATH=src python benchmarks/hierarchical.py --device cuda --dims 10,100,1000 --out FILE.json

The funnel (``v ~ N(0, sigma^2)``, ``x_i | v ~ N(0, e^v)``, :mod:`flowvi.targets.funnel`) is normalized, so the
ELBO is minus KL(q || p) and the importance-sampling log Z should be 0. For every dimension and both flows
(the stabilised Real NVP of ``flowvi fit``'s defaults, and the same with one
:class:`flowvi.transforms.HierarchicalAffine` giving every ``x_i`` a log-scale and shift from ``v``) this trains
by reverse KL and prints the ELBO, IS log Z with its standard error, Pareto k-hat, and the sd of ``v`` under q
against the exact ``sigma`` (reverse KL narrows it: the neck and the mouth of the funnel are hard to reach).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from regularized_horseshoe import finish  # noqa: E402

from flowvi.diagnostics.importance import summarize
from flowvi.runs.run_dir import build
from flowvi.training.loop import TrainConfig, fit


def train(dim: int, hierarchical: bool, args) -> dict:
    config = {
        "target": {"name": "funnel", "params": {"dim": dim, "sigma": args.sigma}},
        "seed": args.seed,
        "device": args.device,
        "flow": {"layers": args.layers, "hidden": args.hidden, "hierarchical": hierarchical},
    }
    flow, target = build(config)
    t0 = time.perf_counter()
    fit(
        flow,
        target,
        TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, checkpoint_every=10**9),
        progress=False,
    )
    seconds = time.perf_counter() - t0
    log_w, v = [], []
    with torch.no_grad():
        for start in range(0, args.eval_samples, 10_000):
            x, log_q = flow.sample_and_log_prob(min(10_000, args.eval_samples - start))
            log_w.append((target.log_prob(x) - log_q).double().cpu())
            v.append(x[:, 0].double().cpu())
    stats = summarize(torch.cat(log_w))
    return {
        "dim": dim,
        "flow": "Real NVP + hierarchical" if hierarchical else "Real NVP",
        **{k: float(stats[k]) for k in ("elbo", "elbo_se", "log_z", "log_z_se", "ess", "pareto_k")},
        "sd_v": float(torch.cat(v).std()),
        "seconds": seconds,
    }


def table(result: dict) -> str:
    lines = [
        f"Neal's funnel, sigma = {result['sigma']}: exact log Z = 0, sd(v) = {result['sigma']}",
        "| d | flow | ELBO (= -KL) | IS log Z ± SE | ESS/n | Pareto k | sd(v) | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['dim']} | {r['flow']} | {r['elbo']:.3f} | {r['log_z']:.3f} ± {r['log_z_se']:.3f} | {r['ess']:.3f} "
            f"| {r['pareto_k']:.2f} | {r['sd_v']:.2f} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", default="10,100")
    ap.add_argument("--sigma", type=float, default=3.0)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--eval-samples", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="d = 10, 200 steps (seconds)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.quick:
        args.dims, args.steps, args.eval_samples = "10", 200, 10_000
    t0 = time.perf_counter()
    rows = []
    for dim in (int(d) for d in args.dims.split(",")):
        for hierarchical in (False, True):
            rows.append(train(dim, hierarchical, args))
            r = rows[-1]
            print(
                f"d={dim} {r['flow']}: ELBO {r['elbo']:.3f}, log Z {r['log_z']:.3f}, k {r['pareto_k']:.2f}", flush=True
            )
    result = {"target": "funnel", "sigma": args.sigma, "rows": rows, **{k: getattr(args, k) for k in ("steps", "lr")}}
    return finish(result, args, argv, t0, table)


if __name__ == "__main__":
    raise SystemExit(main())
