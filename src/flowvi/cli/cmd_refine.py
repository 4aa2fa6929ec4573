"""``flowvi refine RUN_DIR --method neutra|imh``: exact MCMC draws from a fitted flow (NeuTra-HMC or independence MH).

Writes ``refined_samples.npy`` (chains, draws, d) and ``refine.json`` (settings, R-hat, bulk/tail ESS, acceptance,
divergences, the verdict) into the run directory; the fit's own files are left as they are."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from flowvi.cli.common import add_device_options
from flowvi.diagnostics.verdict import format_verdict, refine_verdict
from flowvi.runs import checkpoint as ckpt
from flowvi.runs.run_dir import load_run


def register(sub):
    p = sub.add_parser(
        "refine",
        help="exact MCMC draws from a fitted run: NeuTra-HMC in the flow's latent space, or independence MH",
        description="Refine a 'flowvi fit' run by MCMC that uses its flow (docs/refine.md).",
    )
    p.add_argument("run_dir")
    p.add_argument("--method", default="neutra", choices=["neutra", "imh"])
    p.add_argument("--chains", type=int, default=None, help="chains (default: neutra 32, imh 8)")
    p.add_argument("--warmup", type=int, default=300, help="neutra: adaptation iterations")
    p.add_argument("--draws", type=int, default=None, help="draws per chain (default: neutra 500, imh 10000)")
    p.add_argument("--max-leapfrog", type=int, default=8, help="neutra: most leapfrog steps per trajectory")
    p.add_argument("--target-accept", type=float, default=0.8, help="neutra: dual-averaging target")
    p.add_argument("--seed", type=int, default=0)
    add_device_options(p)
    p.set_defaults(func=run)


def run(args):
    import torch

    from flowvi.samplers.neutra import imh_chains, mcmc_diagnostics, neutra_hmc

    run_dir = Path(args.run_dir)
    if not (run_dir / "flow.pt").exists() and not (run_dir / "checkpoint.pt").exists():
        if not (run_dir / "config.json").exists():
            raise FileNotFoundError(f"{run_dir} is not a flowvi run directory (no config.json)")
        raise FileNotFoundError(
            f"{run_dir} holds no trained flow (no flow.pt or checkpoint.pt): run 'flowvi fit' first"
        )
    chains = args.chains or (32 if args.method == "neutra" else 8)
    draws = args.draws or (500 if args.method == "neutra" else 10_000)
    if chains < 2 or draws < 4:
        raise ValueError(f"refine needs --chains >= 2 and --draws >= 4 (R-hat compares chains); got {chains}, {draws}")
    flow, target, _ = load_run(run_dir, device=args.device)
    flow.eval()
    torch.manual_seed(args.seed)
    print(f"flowvi refine: {run_dir} ({args.method}, {chains} chains x {draws} draws)")
    if args.method == "neutra":
        x, info = neutra_hmc(
            flow,
            target,
            chains=chains,
            warmup=args.warmup,
            draws=draws,
            max_leapfrog=args.max_leapfrog,
            target_accept=args.target_accept,
            seed=args.seed,
        )
    else:
        x, info = imh_chains(flow, target, chains=chains, draws=draws, seed=args.seed)
    diag = mcmc_diagnostics(x)
    verdict = refine_verdict(
        args.method, diag["rhat_max"], diag["bulk_ess_min"], diag["tail_ess_min"], info["divergences"]
    )
    record = {
        "method": args.method,
        "chains": chains,
        "draws": draws,
        "seed": args.seed,
        **info,
        **diag,
        "verdict": verdict,
    }
    tmp = run_dir / "refined_samples.tmp.npy"
    np.save(tmp, x.astype(np.float32))
    tmp.replace(run_dir / "refined_samples.npy")
    ckpt.write_json_atomic(record, run_dir / "refine.json")
    print(f"  R-hat max    {diag['rhat_max']:.4f}")
    print(f"  bulk ESS     {diag['bulk_ess_min']:.0f} (smallest)   tail ESS {diag['tail_ess_min']:.0f}")
    print(f"  acceptance   {info['accept']:.3f}   divergences {info['divergences']}   {info['seconds']:.1f} s")
    print(f"wrote {run_dir}/{{refined_samples.npy,refine.json}}")
    print(format_verdict(verdict, refined=True))
    return 0


__all__ = ["register", "run", "json"]
