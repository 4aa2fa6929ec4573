"""Stability benchmark on the real-data horseshoe logistic regression (issue 4; Andrade 2024, arXiv 2402.16408).

Full mode (GPU, about 6-8 minutes on one H100; see docs/high_dimensional.md for the estimate):

    PYTHONPATH=src python benchmarks/stability.py --device cuda --out stability.json

  * target horseshoe_nci60 with p = 2000 genes, d = 4002;
  * Real NVP (8 coupling layers, width 256), 2000 steps of 256 draws, Adam 1e-3, cosine schedule;
  * stabilized (asymmetric clamp + LOFT) against unstabilized (no clamp, no LOFT), Gaussian base, 10 seeds each:
    fraction diverged, ELBO, IS log Z +- SE and its spread over seeds, Pareto k, median wall time per run;
  * tempered SMC (4000 particles, 20 MALA moves per stage) over 10 seeds: log Z spread and wall time per run
    (roughly the wall time of one flow run, for the equal-time comparison);
  * a short NUTS reference (Pyro, on the CPU cores by default: one chain of 200 + 200 iterations, tree depth <= 8),
    used for the share of coefficients whose flow posterior mean lies within 0.1 NUTS posterior standard
    deviations (rough: the chain is short).

Estimated time on one H100 (not measured: written on a CPU-only machine): NUTS ~ 75 s (measured here on 2 CPU
cores: 0.45 ms per gradient, ~180 ms per iteration), 20 flow runs x ~11 s
(~5 ms per step, launch-bound) ~ 220 s, 10 SMC runs ~ 80 s, start-up ~ 20 s: about 6.5 minutes. If it runs
long, pass ``--seeds 5`` or ``--steps 1000``. ``--base student_t --clip 0`` makes the unstabilized flow more likely
to diverge (on the CPU, 3 of 4 such runs at d = 202 did; docs/high_dimensional.md).

Pyro is needed for NUTS; without it the NUTS part is skipped (say so in the output). Instead, NUTS draws made
elsewhere can be passed with ``--reference RUN_DIR`` (a ``flowvi baseline nuts horseshoe_nci60`` run directory).

Quick mode (CPU, about 15 s on 2 cores): ``--quick`` shrinks everything (p = 50, 2 seeds, 300 steps, small flow).
Writes the JSON summary to ``--out`` and the study's table.md / table.csv / runs.csv / plots to ``--study-dir``.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from flowvi.baselines.smc import run_smc  # noqa: E402
from flowvi.runs import build, resolve_device  # noqa: E402
from flowvi.stability import grid, markdown_table, run_study  # noqa: E402
from flowvi.targets import make_target  # noqa: E402
from flowvi.train import TrainConfig, fit  # noqa: E402

FULL = {
    "p": 2000,
    "seeds": 10,
    "steps": 2000,
    "batch_size": 256,
    "layers": 8,
    "hidden": 256,
    "eval_samples": 20_000,
    "smc_particles": 4000,
    "smc_moves": 20,
    "smc_repeats": 10,
    "nuts_warmup": 200,
    "nuts_samples": 200,
    "nuts_depth": 8,
}
QUICK = {
    "p": 50,
    "seeds": 2,
    "steps": 300,
    "batch_size": 64,
    "layers": 4,
    "hidden": 64,
    "eval_samples": 2000,
    "smc_particles": 300,
    "smc_moves": 5,
    "smc_repeats": 3,
    "nuts_warmup": 100,
    "nuts_samples": 100,
    "nuts_depth": 6,
}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="stability.json")
    ap.add_argument(
        "--study-dir", default=None, help="where the study tables and plots go (default: OUT without .json)"
    )
    ap.add_argument("--quick", action="store_true", help="small CPU check (about a minute)")
    ap.add_argument("--no-nuts", action="store_true", help="skip the NUTS reference (needs pyro-ppl)")
    ap.add_argument("--reference", help="use the NUTS draws of this run directory instead of running NUTS")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument(
        "--nuts-device", default="cpu", help="device for NUTS (Pyro's tree building is launch-bound on a GPU)"
    )
    ap.add_argument("--seeds", type=int, help="override the number of seeds per configuration")
    ap.add_argument("--steps", type=int, help="override the training steps")
    ap.add_argument("--p", type=int, help="override the number of genes (d = 2p + 2)")
    ap.add_argument("--base", default="gaussian", choices=["gaussian", "student_t"], help="base of both flows")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--clip", type=float, default=10.0, help="gradient-norm clip (0: none)")
    args = ap.parse_args(argv)
    s = dict(QUICK if args.quick else FULL)
    for key in ("seeds", "steps", "p"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    device = resolve_device(args.device)
    out = Path(args.out)
    study_dir = Path(args.study_dir or out.with_suffix(""))
    study_dir.mkdir(parents=True, exist_ok=True)
    spec = {"name": "horseshoe_nci60", "params": {"p": s["p"]}}
    result = {
        "settings": {**s, "base": args.base, "lr": args.lr, "clip": args.clip},
        "device": str(device),
        "torch": torch.__version__,
        "dtype": args.dtype,
    }
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    print(f"stability benchmark: horseshoe_nci60 p={s['p']} (d={2 * s['p'] + 2}) on {device}", flush=True)

    # NUTS reference first (float64), so the study can score posterior means against it.
    reference_dir = Path(args.reference) if args.reference else None
    if reference_dir is None and not args.no_nuts:
        try:
            from flowvi.baselines.nuts import run_nuts

            target = make_target(spec["name"], **spec["params"]).to(resolve_device(args.nuts_device), torch.float64)
            t0 = time.perf_counter()
            nuts = run_nuts(
                target, num_samples=s["nuts_samples"], warmup=s["nuts_warmup"], max_tree_depth=s["nuts_depth"]
            )
            reference_dir = study_dir / "nuts"
            reference_dir.mkdir(exist_ok=True)
            np.save(reference_dir / "samples.npy", nuts["samples"].reshape(-1, target.dim))
            result["nuts"] = {**nuts["summary"], "wall_seconds": time.perf_counter() - t0}
            print(
                f"  NUTS: {result['nuts']['wall_seconds']:.1f} s, ESS min {nuts['summary']['ess_min']:.1f}", flush=True
            )
        except ImportError as e:
            print(f"  NUTS skipped: {e}", flush=True)

    # warm-up (kernels, allocator) before timing
    flow, target = build(
        {
            "target": spec,
            "flow": {"layers": s["layers"], "hidden": s["hidden"]},
            "device": str(device),
            "dtype": args.dtype,
        }
    )
    fit(flow, target, steps=10, batch_size=s["batch_size"], progress=False)
    sync(device)

    settings = grid(["asymmetric", "none"], [True, False], [args.base], ["reparam"])
    settings = [c for c in settings if (c["clamp"] == "asymmetric") == c["loft"]]  # stabilized vs unstabilized
    train = TrainConfig(
        steps=s["steps"], batch_size=s["batch_size"], lr=args.lr, clip=args.clip or None, checkpoint_every=10**9
    )
    summary = run_study(
        spec,
        study_dir,
        settings,
        list(range(s["seeds"])),
        {"layers": s["layers"], "hidden": s["hidden"], "depth": 2, "alpha_pos": 0.1, "alpha_neg": 2.0, "tau": 100.0},
        train,
        device=str(device),
        dtype=args.dtype,
        eval_samples=s["eval_samples"],
        reference_dir=reference_dir,
        progress=True,
    )
    sync(device)
    rows = list(csv.DictReader(open(study_dir / "runs.csv")))
    for sm in summary:
        times = [float(r["seconds"]) for r in rows if r["config"] == sm["config"]]
        sm["median_seconds"] = statistics.median(times)
    result["flows"] = summary

    # SMC log Z spread over seeds (float64)
    target64 = make_target(spec["name"], **spec["params"]).to(device, torch.float64)
    smc = [
        run_smc(target64, particles=s["smc_particles"], moves=s["smc_moves"], seed=k) for k in range(s["smc_repeats"])
    ]
    log_z = [r["log_z"] for r in smc]
    result["smc"] = {
        "log_z": float(np.mean(log_z)),
        "log_z_sd": float(np.std(log_z, ddof=1)),
        "log_z_runs": log_z,
        "median_seconds": statistics.median(r["seconds"] for r in smc),
        "stages": [len(r["temperatures"]) - 1 for r in smc],
    }

    print()
    print(markdown_table(summary, f"horseshoe_nci60, d = {2 * s['p'] + 2}, {s['seeds']} seeds, {s['steps']} steps"))
    print("| method | log Z | sd over seeds | median wall s per run |")
    print("|---|---|---|---|")
    for sm in summary:
        print(
            f"| flow {sm['config']} | {sm['log_z']:.2f} ± {sm['log_z_se']:.2f} | {sm['log_z_sd']:.2f} | {sm['median_seconds']:.1f} |"
        )
    sm = result["smc"]
    print(
        f"| SMC ({s['smc_particles']} particles) | {sm['log_z']:.2f} | {sm['log_z_sd']:.2f} | {sm['median_seconds']:.1f} |"
    )
    out.write_text(json.dumps(result, indent=2, default=float))
    print(f"\nwrote {out} and {study_dir}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
