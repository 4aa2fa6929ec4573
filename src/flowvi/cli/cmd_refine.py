"""``flowvi refine RUN_DIR``: exact MCMC draws from a fitted flow (independence MH, NeuTra-HMC, or both in turn).

Writes ``refined_samples.npy`` (chains, draws, d) and ``refine.json`` (settings, R-hat, bulk/tail ESS, acceptance,
divergences, the verdict) into the run directory; the fit's own files are left as they are."""

from __future__ import annotations

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
        choices=["auto", "imh", "neutra"],
        help="auto: independence MH, then NeuTra-HMC if its verdict fails",
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
    x, record = refine(flow, target, options, starts=starts)
    print(f"  R-hat max    {record['rhat_max']:.4f}")
    print(f"  bulk ESS     {record['bulk_ess_min']:.0f} (smallest)   tail ESS {record['tail_ess_min']:.0f}")
    print(f"  acceptance   {record['accept']:.3f}   divergences {record['divergences']}   {record['seconds']:.1f} s")
    ckpt.atomic_write(run_dir / "refined_samples.npy", lambda f: np.save(f, x.astype(np.float32)))
    ckpt.write_json_atomic(record, run_dir / "refine.json")
    print(f"wrote {run_dir}/{{refined_samples.npy,refine.json}}")
    print(format_verdict(record["verdict"], refined=True).replace("RUN_DIR", str(run_dir)))
    return record


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
