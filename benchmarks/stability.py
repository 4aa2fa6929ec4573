"""Stability benchmark on the real-data horseshoe logistic regression (issue 4; Andrade 2024, arXiv 2402.16408).

Full mode (GPU), in three short invocations plus a merge (or ``--part all`` in one):

    PYTHONPATH=src python benchmarks/stability.py --device cuda --part stabilized   --out stab.json
    PYTHONPATH=src python benchmarks/stability.py --device cuda --part unstabilized --out unstab.json
    PYTHONPATH=src python benchmarks/stability.py --device cuda --part smc          --out smc.json
    PYTHONPATH=src python benchmarks/stability.py --merge stab.json unstab.json smc.json --out stability.json

  * target horseshoe_nci60 with p = 2000 genes, d = 4002 (or ``--target horseshoe_colon --data FILE``, the
    paper's colon data, which flowvi does not ship);
  * Real NVP (8 coupling layers, width 256), 2000 steps of 256 draws, Adam 1e-3, cosine schedule, clip 10;
  * stabilized (asymmetric clamp + LOFT) and unstabilized (no clamp, no LOFT), Gaussian base, 10 seeds each:
    runs diverged, ELBO, IS log Z +- SE and its spread over seeds, Pareto k, median wall time per run, and the
    share of coefficients whose flow posterior mean lies within 0.1 NUTS posterior standard deviations;
  * tempered SMC (4000 particles, 20 MALA moves per stage) over 10 seeds: log Z spread and wall time per run;
    its spread is also scaled to the flow's wall time (sd * sqrt(t_smc / t_flow): averaging runs);
  * the issue's goals as computed booleans (printed, and under "goals" in the JSON).

NUTS reference: for the default target the committed ``refs/horseshoe_nci60_p2000_nuts.npz`` (made on a CPU with
``benchmarks/nuts_reference.py``) is used, so the GPU machine needs no Pyro; ``--reference`` takes another
(a ``flowvi baseline nuts`` run directory or such a .npz); otherwise a short NUTS run here if Pyro is installed.

Estimated time on one H100 (not measured: written on a CPU-only machine): a flow part ~ 10 runs x ~12 s
(~5 ms per step, launch-bound, plus evaluation) ~ 2-3 minutes; the SMC part ~ 1-2 minutes; each part well under
9 minutes. ``--seeds``/``--steps`` shorten it; ``--base student_t --clip 0 --lr 3e-3`` makes the unstabilized
flow more likely to diverge.

Quick mode (CPU, about 10 s per part on 2 cores): ``--quick`` shrinks everything (p = 50, 2 seeds, 300 steps).
Writes the JSON summary to ``--out`` and the study's table.md / table.csv / runs.csv / plots to ``--study-dir``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from flowvi.runs.run_dir import build, resolve_device
from flowvi.samplers.smc import run_smc
from flowvi.studies.stability import (
    aggregate,
    grid,
    markdown_table,
    read_csv,
    reference_stats,
    run_study,
    score_against_reference,
    zero_guess_scores,
)
from flowvi.targets import make_target
from flowvi.training.loop import TrainConfig, fit

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


PARTS = ("all", "stabilized", "unstabilized", "smc")
DEFAULT_REFERENCE = Path(__file__).resolve().parents[1] / "refs" / "horseshoe_nci60_p2000_nuts.npz"


def target_spec(args, s) -> dict:
    if args.target == "horseshoe_colon":
        if not args.data:
            raise SystemExit("--target horseshoe_colon needs --data FILE (the colon data are not shipped)")
        return {"name": "horseshoe_colon", "params": {"path": str(Path(args.data).resolve())}}
    return {"name": "horseshoe_nci60", "params": {"p": s["p"]}}


def find_reference(args, spec, study_dir, s, result):
    """The NUTS reference: --reference (run directory or .npz), else the committed file for the default
    target, else a short NUTS run here (needs Pyro), else none."""
    if args.reference:
        return Path(args.reference)
    if spec == {"name": "horseshoe_nci60", "params": {"p": 2000}} and DEFAULT_REFERENCE.exists() and not args.quick:
        print(f"  NUTS reference: {DEFAULT_REFERENCE.relative_to(DEFAULT_REFERENCE.parents[1])}", flush=True)
        return DEFAULT_REFERENCE
    if args.no_nuts:
        return None
    try:
        from flowvi.samplers.nuts import run_nuts

        target = make_target(spec["name"], **spec["params"]).to(resolve_device(args.nuts_device), torch.float64)
        t0 = time.perf_counter()
        nuts = run_nuts(target, num_samples=s["nuts_samples"], warmup=s["nuts_warmup"], max_tree_depth=s["nuts_depth"])
    except ImportError as e:
        print(f"  NUTS skipped: {e}", flush=True)
        return None
    reference_dir = study_dir / "nuts"
    reference_dir.mkdir(exist_ok=True)
    np.save(reference_dir / "samples.npy", nuts["samples"].reshape(-1, target.dim))
    result["nuts"] = {**nuts["summary"], "wall_seconds": time.perf_counter() - t0}
    print(f"  NUTS: {result['nuts']['wall_seconds']:.1f} s, ESS min {nuts['summary']['ess_min']:.1f}", flush=True)
    return reference_dir


def run_flows(args, s, spec, device, study_dir, reference, part):
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
    settings = grid(["asymmetric", "none"], [True, False], [args.base], ["reparam"], [args.spline], [args.hierarchical])
    settings = [c for c in settings if (c["clamp"] == "asymmetric") == c["loft"]]  # stabilized vs unstabilized
    if part != "all":
        settings = [c for c in settings if (c["clamp"] == "asymmetric") == (part == "stabilized")]
    compile = {"auto": "auto", "true": True, "false": False}[args.compile]
    train = TrainConfig(
        steps=s["steps"],
        batch_size=s["batch_size"],
        lr=args.lr,
        clip=args.clip or None,
        checkpoint_every=10**9,
        compile=compile,
    )
    summary = run_study(
        spec,
        study_dir,
        settings,
        list(range(args.first_seed, args.first_seed + s["seeds"])),
        {
            "layers": s["layers"],
            "hidden": s["hidden"],
            "depth": 2,
            "alpha_pos": 0.1,
            "alpha_neg": 2.0,
            "tau": 100.0,
            "permute": args.permute,
        },
        train,
        device=str(device),
        dtype=args.dtype,
        eval_samples=s["eval_samples"],
        reference_dir=reference,
        progress=True,
    )
    sync(device)
    rows = list(csv.DictReader(open(study_dir / "runs.csv")))
    for sm in summary:
        sm["median_seconds"] = statistics.median(float(r["seconds"]) for r in rows if r["config"] == sm["config"])
        sm["seeds"] = s["seeds"]
    return summary


def run_smc_part(s, spec, device, first_seed: int = 0):
    target64 = make_target(spec["name"], **spec["params"]).to(device, torch.float64)
    smc = []
    for k in range(first_seed, first_seed + s["smc_repeats"]):
        sync(device)
        smc.append(run_smc(target64, particles=s["smc_particles"], moves=s["smc_moves"], seed=k))
        print(f"  SMC seed {k}: log Z {smc[-1]['log_z']:.3f}  [{smc[-1]['seconds']:.1f} s]", flush=True)
    log_z = [r["log_z"] for r in smc]
    return {
        "particles": s["smc_particles"],
        "moves": s["smc_moves"],
        "log_z": float(np.mean(log_z)),
        "log_z_sd": float(np.std(log_z, ddof=1)),
        "log_z_runs": log_z,
        "median_seconds": statistics.median(r["seconds"] for r in smc),
        "seconds_runs": [r["seconds"] for r in smc],
        "stages": [len(r["temperatures"]) - 1 for r in smc],
    }


def ceiling_share(reference: Path, n_flow: int) -> float:
    """The share of coefficients an *exact* sampler would place within 0.1 reference sd: the reference mean has
    Monte Carlo error sd / sqrt(ESS) and the flow's mean of n_flow independent draws sd / sqrt(n_flow), so the
    standardised difference is N(0, 1/ESS + 1/n_flow) and P(|.| < 0.1) = erf(0.1 / sqrt(2 (1/ESS + 1/n_flow)))."""
    with np.load(reference) as f:
        ess = f["ess"]
    scale = np.sqrt(2.0 * (1.0 / np.maximum(ess, 1.0) + 1.0 / n_flow))
    return float(np.mean([math.erf(0.1 / v) for v in scale]))


def zero_guess(spec: dict, reference) -> dict:
    """Scores of "every coefficient is 0" against the reference (see flowvi.studies.stability.zero_guess_scores)."""
    target = make_target(spec["name"], **spec.get("params", {})).double()
    return zero_guess_scores(reference_stats(target, reference))


def merge_parts(files: list[str], reference: str | None = None) -> dict:
    """Combine the JSON files (and study folders beside them) of earlier ``--part`` runs, also runs of the
    same part over different seeds (``--first-seed``): the flows are re-aggregated per configuration from the
    parts' runs.csv, the SMC runs pooled; with ``reference`` the flows are scored against it first."""
    parts = [json.loads(Path(f).read_text()) for f in files]
    result = {k: v for k, v in parts[0].items() if k not in ("flows", "smc", "goals", "part", "wall_seconds")}
    for key in ("reference", "reference_ceiling_within_0.1_sd"):
        found = [p[key] for p in parts if p.get(key) is not None]
        if found:
            result[key] = found[0]
    result["parts"] = [p.get("part") for p in parts]
    rows = []
    for f, part in zip(files, parts, strict=True):
        if part.get("flows"):
            study = Path(f).with_suffix("")
            if reference:  # score the part's flows against a reference made after they ran
                score_against_reference(study, reference, result["target"])
            rows += read_csv(study / "runs.csv")
    if reference:
        result["reference"] = reference
        result["zero_guess"] = zero_guess(result["target"], reference)
        if Path(reference).suffix == ".npz":
            n_flow = min(result.get("settings", {}).get("eval_samples", 10_000), 10_000)
            result["reference_ceiling_within_0.1_sd"] = ceiling_share(Path(reference), n_flow)
    result["flows"] = aggregate(rows)
    for sm in result["flows"]:
        mine = [r for r in rows if r["config"] == sm["config"]]
        sm["median_seconds"] = statistics.median(float(r["seconds"]) for r in mine)
        sm["seeds"] = len({r["seed"] for r in mine})
    smcs = [p["smc"] for p in parts if p.get("smc")]
    if smcs:
        log_z = [z for m in smcs for z in m["log_z_runs"]]
        seconds = [t for m in smcs for t in m.get("seconds_runs", [m["median_seconds"]] * len(m["log_z_runs"]))]
        result["smc"] = {
            **smcs[0],
            "log_z": float(np.mean(log_z)),
            "log_z_sd": float(np.std(log_z, ddof=1)) if len(log_z) > 1 else float("nan"),
            "log_z_runs": log_z,
            "seconds_runs": seconds,
            "median_seconds": statistics.median(seconds),
            "stages": [st for m in smcs for st in m["stages"]],
        }
    return result


def smc_sd_at(smc: dict, seconds: float) -> float:
    """The SMC log Z sd at a wall time of ``seconds`` per estimate: averaging k independent runs divides the
    sd by sqrt(k), so sd(t) = sd(t_smc) sqrt(t_smc / t)."""
    return smc["log_z_sd"] * math.sqrt(smc["median_seconds"] / seconds)


def goal_prefix(summary: dict, kind: str) -> str:
    parts = summary["config"].split("/")
    return kind + ("_spline" if "spline" in parts else "") + ("_hierarchical" if "hierarchical" in parts else "")


def report(result) -> None:
    """Print the flow table, the log Z comparison with SMC at equal wall time and the issue's goals."""
    flows, smc = result.get("flows", []), result.get("smc")
    if flows:
        print()
        print(markdown_table(flows, f"{result['target']['name']}, d = {result['dim']}", result.get("zero_guess")))
    print("| method | log Z | mean SE | sd over seeds | median wall s per run | sd at the flow's wall time |")
    print("|---|---|---|---|---|---|")
    for sm in flows:
        print(
            f"| flow {sm['config']} | {sm['log_z']:.2f} | {sm['log_z_se']:.2f} | {sm['log_z_sd']:.2f} "
            f"| {sm['median_seconds']:.1f} | {sm['log_z_sd']:.2f} |"
        )
    stabilized = [f for f in flows if f["config"].startswith("asymmetric/loft")]
    stab = stabilized[0] if stabilized else None
    if smc is not None:
        # averaging k independent SMC runs divides the sd by sqrt(k): the SMC sd scaled to the flow's time
        t_ref = stab["median_seconds"] if stab else smc["median_seconds"]
        smc["log_z_sd_at_flow_time"] = smc_sd_at(smc, t_ref)
        print(
            f"| SMC ({smc['particles']} particles x {smc['moves']} moves) | {smc['log_z']:.2f} | – | {smc['log_z_sd']:.2f} "
            f"| {smc['median_seconds']:.1f} | {smc['log_z_sd_at_flow_time']:.2f} |"
        )
    goals = {}
    for key, value in result.get("zero_guess", {}).items():  # the line a share must clear to mean anything
        goals[f"zero_guess_{key}"] = value
    for sm in flows:
        kind = "stabilized" if sm["config"].startswith("asymmetric/loft") else "unstabilized"
        goals[f"{goal_prefix(sm, kind)}_diverged"] = f"{sm['diverged']}/{sm['runs']}"
    for stab in stabilized:
        key = goal_prefix(stab, "stabilized")
        goals[f"{key}_all_finished"] = stab["diverged"] == 0
        goals[f"{key}_is_log_z_se_below_1"] = bool(stab["log_z_se"] < 1.0)
        # the IS standard error is only trustworthy with Pareto k-hat < 0.7 (Vehtari et al.)
        goals[f"{key}_pareto_k"] = stab["pareto_k"]
        goals[f"{key}_is_reliable_k_below_0.7"] = bool(stab["pareto_k"] < 0.7)
        if "within_0.1_sd" in stab:
            goals[f"{key}_share_within_0.1_nuts_sd"] = stab["within_0.1_sd"]
            goals[f"{key}_share_within_0.1_nuts_sd_at_least_0.95"] = bool(stab["within_0.1_sd"] >= 0.95)
            if "zero_guess" in result:  # met only if the flow also beats "every coefficient is 0"
                above = stab["within_0.1_sd"] > result["zero_guess"]["within_0.1_sd"] + 0.005
                goals[f"{key}_share_above_zero_guess"] = bool(above)
                goals[f"{key}_posterior_means_goal_met"] = bool(stab["within_0.1_sd"] >= 0.95 and above)
            if "reference_ceiling_within_0.1_sd" in result:
                # what an exact sampler would score against this (finite) reference
                goals["exact_sampler_share_within_0.1_sd"] = result["reference_ceiling_within_0.1_sd"]
        if "median_within_0.1_iqr" in stab:  # the robust version (medians, IQR/1.349): exists for heavy tails
            goals[f"{key}_share_median_within_0.1_iqr_sd"] = stab["median_within_0.1_iqr"]
        if smc is not None:
            sd_smc = smc_sd_at(smc, stab["median_seconds"])
            goals[f"{key}_log_z_sd_below_smc_at_equal_time"] = bool(stab["log_z_sd"] < sd_smc)
            goals[f"{key}_smc_log_z_sd_at_its_time"] = sd_smc
            goals[f"{key}_log_z_minus_smc_log_z"] = stab["log_z"] - smc["log_z"]
    result["goals"] = goals
    print()
    for key, value in goals.items():
        print(f"  goal {key}: {value}")


def _add_run_options(ap):
    """Options of the run: device, output, target, part, reference, seeds and the settings' overrides."""
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="stability.json")
    ap.add_argument(
        "--study-dir", default=None, help="where the study tables and plots go (default: OUT without .json)"
    )
    ap.add_argument("--quick", action="store_true", help="small CPU check (about a minute)")
    ap.add_argument("--target", default="horseshoe_nci60", choices=["horseshoe_nci60", "horseshoe_colon"])
    ap.add_argument("--data", help="the colon data file for --target horseshoe_colon (see docs/high_dimensional.md)")
    ap.add_argument(
        "--part",
        default="all",
        choices=PARTS,
        help="run only the stabilized flows, the unstabilized flows or SMC (to keep each call short); "
        "combine the parts' JSON files with --merge",
    )
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="combine the JSON files of earlier --part runs")
    ap.add_argument("--no-nuts", action="store_true", help="skip the NUTS reference (needs pyro-ppl)")
    ap.add_argument("--reference", help="NUTS reference: a flowvi baseline nuts run directory or a summary .npz")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument(
        "--nuts-device", default="cpu", help="device for NUTS (Pyro's tree building is launch-bound on a GPU)"
    )
    ap.add_argument("--seeds", type=int, help="override the number of seeds per configuration")
    ap.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="seeds first-seed ... first-seed + seeds - 1 (split a study over calls)",
    )
    ap.add_argument("--steps", type=int, help="override the training steps")
    ap.add_argument("--p", type=int, help="override the number of genes of horseshoe_nci60 (d = 2p + 2)")
    ap.add_argument("--smc-particles", type=int, help="override the SMC particles")


def _add_flow_options(ap):
    """Options of both flows and their training (base, spline, couplings, lr, clip, compile)."""
    ap.add_argument("--base", default="gaussian", choices=["gaussian", "student_t"], help="base of both flows")
    ap.add_argument("--spline", action="store_true", help="an elementwise spline after the couplings, in both flows")
    ap.add_argument(
        "--hierarchical", action="store_true", help="the target's hierarchical couplings (flowvi fit --hierarchical)"
    )
    ap.add_argument(
        "--permute",
        default="alternate",
        choices=["alternate", "random"],
        help="coupling split: alternate halves (the paper's) or a random permutation before every coupling",
    )
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--clip", type=float, default=10.0, help="gradient-norm clip (0: none)")
    ap.add_argument(
        "--compile",
        default="auto",
        choices=["auto", "true", "false"],
        help="torch.compile the training step (auto: on CUDA); false keeps the CUDA graph and skips the "
        "per-run compilation, which dominates short runs",
    )


def _settings(args):
    """The study's settings: QUICK or FULL, with --seeds, --steps, --p and --smc-particles over them."""
    s = dict(QUICK if args.quick else FULL)
    for key, name in (("seeds", "seeds"), ("steps", "steps"), ("p", "p"), ("smc_particles", "smc_particles")):
        if getattr(args, key) is not None:
            s[name] = getattr(args, key)
    return s


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _add_run_options(ap)
    _add_flow_options(ap)
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.merge:
        result = merge_parts(args.merge, args.reference)
        report(result)
        out.write_text(json.dumps(result, indent=2, default=float))
        print(f"\nwrote {out}")
        return 0

    s = _settings(args)
    device = resolve_device(args.device)
    study_dir = Path(args.study_dir or out.with_suffix(""))
    study_dir.mkdir(parents=True, exist_ok=True)
    spec = target_spec(args, s)
    dim = make_target(spec["name"], **spec["params"]).dim
    result = {
        "target": spec,
        "dim": dim,
        "part": args.part,
        "settings": {
            **s,
            "base": args.base,
            "spline": args.spline,
            "hierarchical": args.hierarchical,
            "permute": args.permute,
            "lr": args.lr,
            "clip": args.clip,
            "compile": args.compile,
            "first_seed": args.first_seed,
        },
        "device": str(device),
        "torch": torch.__version__,
        "dtype": args.dtype,
    }
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    print(f"stability benchmark: {spec['name']} (d={dim}) on {device}, part {args.part}", flush=True)
    start = time.perf_counter()
    if args.part in ("all", "stabilized", "unstabilized"):
        reference = find_reference(args, spec, study_dir, s, result)
        result["reference"] = str(reference) if reference else None
        result["flows"] = run_flows(args, s, spec, device, study_dir, reference, args.part)
        if reference is not None:
            result["zero_guess"] = zero_guess(spec, reference)
        if reference is not None and Path(reference).suffix == ".npz":
            result["reference_ceiling_within_0.1_sd"] = ceiling_share(Path(reference), min(s["eval_samples"], 10_000))
    if args.part in ("all", "smc"):
        result["smc"] = run_smc_part(s, spec, device, args.first_seed)
    result["wall_seconds"] = time.perf_counter() - start
    report(result)
    out.write_text(json.dumps(result, indent=2, default=float))
    print(f"\nwrote {out} and {study_dir}/ ({result['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
