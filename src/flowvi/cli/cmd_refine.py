"""``flowvi refine RUN_DIR``: exact MCMC draws from a fitted flow (independence MH, NeuTra-HMC, or both in turn;
independence MH with a mixture of flows, one per mode, where the fit missed modes).

Writes ``refined_samples.npy`` (chains, draws, d) and ``refine.json`` (settings, R-hat, bulk/tail ESS, acceptance,
divergences, the verdict; with the mixture also its IS log Z, k-hat and components) into the run directory; the fit's own files are left as they are."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from flowvi.cli.common import add_device_options
from flowvi.diagnostics.verdict import format_verdict
from flowvi.runs import checkpoint as ckpt
from flowvi.runs.run_dir import load_run


def register(sub):
    p = sub.add_parser(
        "refine",
        help="exact MCMC draws from a fitted run: independence MH with the flow as proposal, or NeuTra-HMC",
        description="Refine a 'flowvi fit' run by MCMC that uses its flow (docs/convergence.md).",
    )
    p.add_argument("run_dir")
    p.add_argument(
        "--method",
        default="auto",
        choices=["auto", "imh", "neutra", "mixture"],
        help="auto: mixture when the fit missed modes of its mode search, else independence MH, then NeuTra-HMC if "
        "its verdict fails; mixture: a flow fitted at each missed mode, independence MH with their mixture",
    )
    p.add_argument("--chains", type=int, default=None, help="chains (default: neutra 32, imh 8)")
    p.add_argument("--warmup", type=int, default=300, help="neutra: adaptation iterations")
    p.add_argument("--draws", type=int, default=None, help="draws per chain (default: neutra 500, imh 10000)")
    p.add_argument("--max-leapfrog", type=int, default=8, help="neutra: most leapfrog steps per trajectory")
    p.add_argument("--target-accept", type=float, default=0.8, help="neutra: dual-averaging target")
    p.add_argument("--seed", type=int, default=0)
    add_device_options(p)
    p.set_defaults(func=run)


def refine_and_write(flow, target, run_dir: Path, options) -> dict:
    """:func:`flowvi.samplers.neutra.refine`, its summary printed, then its files written; returns its record."""
    import torch

    from flowvi.samplers.neutra import refine

    flow.eval()
    torch.manual_seed(options.seed)
    modes = run_dir / "modes.npy"  # the fit's mode search: some chains start there
    starts = np.load(modes, allow_pickle=False) if modes.exists() else None
    if options.method == "mixture" or (options.method == "auto" and _missed_modes(run_dir)):
        if starts is None:
            raise FileNotFoundError(f"{run_dir} has no modes.npy (the fit's mode search): --method mixture needs it")
        x, record = _mixture_refine(flow, target, run_dir, options, starts)
    else:
        x, record = refine(flow, target, options, starts=starts)
    print(f"  R-hat max    {record['rhat_max']:.4f}")
    print(f"  bulk ESS     {record['bulk_ess_min']:.0f} (smallest)   tail ESS {record['tail_ess_min']:.0f}")
    print(f"  acceptance   {record['accept']:.3f}   divergences {record['divergences']}   {record['seconds']:.1f} s")
    if "log_z" in record:
        print(f"  IS log Z     {record['log_z']:.4f} ± {record['log_z_se']:.4f}   Pareto k {record['pareto_k']:.3f}")
    ckpt.atomic_write(run_dir / "refined_samples.npy", lambda f: np.save(f, x.astype(np.float32)))
    ckpt.write_json_atomic(record, run_dir / "refine.json")
    print(f"wrote {run_dir}/{{refined_samples.npy,refine.json}}")
    print(format_verdict(record["verdict"], refined=True).replace("RUN_DIR", str(run_dir)))
    return record


def _missed_modes(run_dir: Path) -> int:
    """The modes the fit's flow misses (summary.json's ``modes.uncovered``; 0 when not recorded)."""
    path = run_dir / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else {}
    return int((summary.get("modes") or {}).get("uncovered") or 0)


def _mixture_refine(flow, target, run_dir: Path, options, starts):
    """A flow fitted at each mode the fit's flow misses (:func:`flowvi.training.mode_mixture.mode_mixture`, with
    the fit's flow and training settings), then :func:`flowvi.samplers.neutra.mixture_refine`."""
    import time

    from flowvi.runs.run_dir import build, read_config
    from flowvi.samplers.neutra import mixture_refine
    from flowvi.training.loop import TrainConfig
    from flowvi.training.mode_mixture import mode_mixture

    t0 = time.perf_counter()
    config = read_config(run_dir)
    config["device"] = str(next(flow.parameters()).device)
    make_flow = lambda: build(config)[0]  # noqa: E731
    mixture, info = mode_mixture(flow, target, starts, make_flow, TrainConfig(**config["train"]), seed=options.seed)
    for k, c in enumerate(info["components"]):
        print(f"  component {k}  weight {c['weight']:.3f}   IS log Z {c['log_z']:.4f}")
    x, record = mixture_refine(mixture, target, options, starts=starts)
    record |= {"mixture": info, "seconds": time.perf_counter() - t0}
    return x, record


def run(args):
    from flowvi.samplers.neutra import RefineOptions

    run_dir = Path(args.run_dir)
    if not (run_dir / "flow.pt").exists() and not (run_dir / "checkpoint.pt").exists():
        if not (run_dir / "config.json").exists():
            raise FileNotFoundError(f"{run_dir} is not a flowvi run directory (no config.json)")
        raise FileNotFoundError(
            f"{run_dir} holds no trained flow (no flow.pt or checkpoint.pt): run 'flowvi fit' first"
        )
    options = RefineOptions(
        method=args.method, chains=args.chains, draws=args.draws, warmup=args.warmup,
        max_leapfrog=args.max_leapfrog, target_accept=args.target_accept, seed=args.seed,
    )  # fmt: skip
    flow, target, _ = load_run(run_dir, device=args.device)
    print(f"flowvi refine: {run_dir}")
    refine_and_write(flow, target, run_dir, options)
    return 0


__all__ = ["refine_and_write", "register", "run"]
