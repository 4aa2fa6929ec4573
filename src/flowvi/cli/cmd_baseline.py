"""``flowvi baseline nuts|hmc|flowmc|smc TARGET``: reference draws (NUTS via Pyro, many-chain HMC, hybrid
NF-MCMC) or log Z (SMC).

Writes a run directory like ``flowvi fit``: config.json, summary.json and samples.npy (draws of the target);
``flowmc`` also writes its trained flow, flowmc_flow.pt.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from flowvi.cli.common import add_device_options, parse_params
from flowvi.runs import checkpoint as ckpt
from flowvi.runs.run_dir import resolve_device, resolve_dtype
from flowvi.runs.run_files import check_out, start_run
from flowvi.targets import make_target


def register(sub):
    p = sub.add_parser(
        "baseline",
        help="MCMC reference draws (nuts, hmc, flowmc) or SMC log Z for a target (writes a run directory)",
        description="Run a classical baseline on TARGET: 'nuts' (Pyro's No-U-Turn sampler; needs pyro-ppl) "
        "for reference posterior draws, 'hmc' (many-chain adaptive HMC), 'flowmc' (many-chain HMC plus global "
        "moves proposed by a flow trained on the chains, FlowMC-style), or 'smc' (adaptive tempering + MALA moves) "
        "for log Z over repeats.",
    )
    p.add_argument(
        "method",
        choices=["nuts", "hmc", "flowmc", "smc"],
        help="nuts, hmc (many-chain adaptive HMC), flowmc (hybrid NF-MCMC) or smc",
    )
    p.add_argument("target", help="built-in target name (see 'flowvi targets') or path/to/file.py:function")
    p.add_argument("--dim", type=int, help="target dimension")
    p.add_argument("-p", "--param", action="append", metavar="KEY=VALUE", help="target parameter (repeatable)")
    p.add_argument("--out", help="run directory (default runs/METHOD-TARGET-TIME)")
    p.add_argument("--force", action="store_true", help="overwrite an existing run directory")
    add_device_options(p)
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("nuts")
    g.add_argument("--samples", "--draws", type=int, default=1000, help="draws per chain")
    g.add_argument("--warmup", type=int, default=1000, help="adaptation steps per chain")
    g.add_argument(
        "--chains", type=int, help="chains (nuts: one after another, default 2; hmc: in lock-step, 256; flowmc: 64)"
    )
    g.add_argument("--max-tree-depth", type=int, default=10)
    g.add_argument("--target-accept", type=float, default=0.8)
    g = p.add_argument_group("hmc (also --samples/--draws, --warmup, --chains, --target-accept)")
    g.add_argument("--max-leapfrog", type=int, default=32, help="leapfrog steps per iteration drawn from 1..L")
    g.add_argument("--thin", type=int, default=1, help="keep every k-th draw")
    g.add_argument("--init-radius", type=float, default=2.0, help="chains start uniform(-r, r) per coordinate")
    g.add_argument("--max-seconds", type=float, help="wall-time limit: warm-up and sampling stop early, results kept")
    g.add_argument("--store-dtype", choices=["float32", "float64"], help="dtype of the kept draws (default --dtype)")
    g.add_argument("--no-samples", action="store_true", help="do not write samples.npy (large at d = 4002)")
    g.add_argument(
        "--cuda-graph", default="auto", choices=["auto", "true", "false"], help="replay the leapfrog step (auto: CUDA)"
    )
    g.add_argument("--reference-out", metavar="FILE.npz", help="also write a reference file (+ .json) of the draws")
    g = p.add_argument_group(
        "flowmc (also the hmc options but --reference-out; --draws counts local and global moves of production)"
    )
    g.add_argument("--rounds", type=int, default=20, help="training rounds (local moves, flow training, global moves)")
    g.add_argument("--local-steps", type=int, default=20, help="HMC iterations per round")
    g.add_argument("--global-steps", type=int, default=20, help="flow independence moves per round")
    g.add_argument("--train-steps", type=int, default=50, help="maximum-likelihood Adam steps per training round")
    g.add_argument("--layers", type=int, default=4, help="Real NVP coupling layers")
    g.add_argument("--hidden", type=int, default=64, help="width of the couplings' networks")
    g.add_argument("--spline", action="store_true", help="elementwise spline after the couplings")
    g.add_argument("--flow-dtype", default="float32", choices=["float32", "float64"])
    g.add_argument("--batch-size", type=int, default=256, help="minibatch of buffered chain states per Adam step")
    g.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of the flow")
    g.add_argument("--buffer-size", type=int, default=20_000, help="newest chain states kept for training")
    g = p.add_argument_group("smc")
    g.add_argument("--particles", type=int, default=1000)
    g.add_argument("--moves", type=int, default=10, help="MALA steps per temperature")
    g.add_argument("--ess-target", type=float, default=0.5, help="ESS fraction that sets the next temperature")
    g.add_argument(
        "--ref-scale", type=float, default=1.0, help="scale of the N(0, s^2 I) reference (targets without a prior)"
    )
    g.add_argument("--repeats", type=int, default=5, help="independent SMC runs (seeds seed..seed+repeats-1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args):
    params = parse_params(args.param)
    if args.dim is not None:
        params["dim"] = args.dim
    if args.chains is None:
        args.chains = {"hmc": 256, "flowmc": 64}.get(args.method, 2)
    for name in ("samples", "chains", "particles", "moves", "repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be positive, got {getattr(args, name)}")
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    if args.method in ("hmc", "flowmc"):  # before the CPU thread pool starts: its threads inherit it (adaptive_hmc.py)
        torch.set_flush_denormal(True)
    target = make_target(args.target, **params).to(device, dtype)
    out = Path(
        args.out or f"runs/{args.method}-{Path(args.target.split(':')[0]).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    check_out(out, force=args.force)
    config = {
        "method": args.method,
        "target": {"name": args.target, "params": params},
        "seed": args.seed,
        "device": args.device,
        "dtype": args.dtype,
    }
    runner = {"nuts": _nuts, "hmc": _mcmc, "flowmc": _mcmc, "smc": _smc}[args.method]
    samples, summary = runner(args, target, config, out)
    summary["dim"] = target.dim
    ckpt.write_json_atomic(summary, out / "summary.json")
    files = ["config.json", "summary.json"] + (["flowmc_flow.pt"] if args.method == "flowmc" else [])
    if samples is not None:  # None with --no-samples
        ckpt.atomic_write(out / "samples.npy", lambda f: np.save(f, samples))
        files.insert(2, "samples.npy")
    print(f"wrote {out}/{{{','.join(files)}}}")
    return 0


def _nuts(args, target, config: dict, out):
    """NUTS through Pyro: returns the draws (chains * n, d) and the run summary."""
    from flowvi.samplers.nuts import require_pyro, run_nuts

    try:
        require_pyro()
    except ImportError as e:  # one-line message from the CLI
        raise ValueError(str(e)) from None
    config["nuts"] = {
        "samples": args.samples,
        "warmup": args.warmup,
        "chains": args.chains,
        "max_tree_depth": args.max_tree_depth,
        "target_accept": args.target_accept,
    }
    start_run(out, config, "baseline", force=args.force)
    print(f"flowvi baseline nuts: {args.target} (d={target.dim}) -> {out}")
    result = run_nuts(
        target,
        num_samples=args.samples,
        warmup=args.warmup,
        chains=args.chains,
        seed=args.seed,
        max_tree_depth=args.max_tree_depth,
        target_accept=args.target_accept,
        progress=not args.quiet,
    )
    samples, summary = result["samples"].reshape(-1, target.dim), result["summary"]
    print(
        f"  {summary['chains']} x {summary['num_samples']} draws in {summary['seconds']:.1f} s; "
        f"divergences {summary['divergences']}; ESS min {summary['ess_min']:.0f}, median {summary['ess_median']:.0f}"
        + (f"; R-hat max {summary['rhat_max']:.3f}" if "rhat_max" in summary else "")
    )
    return samples, summary


def _mcmc(args, target, config: dict, out):
    """Many-chain adaptive HMC or flowMC, their grouped options from the arguments (the runners write their own
    config section)."""
    from flowvi.runs.hmc_baseline import Output
    from flowvi.samplers.adaptive_hmc import ChainSchedule, HMCKernel

    if args.method == "flowmc" and args.reference_out:
        raise ValueError("--reference-out is for 'flowvi baseline hmc'")
    kernel = HMCKernel(
        max_leapfrog=args.max_leapfrog, target_accept=args.target_accept, init_radius=args.init_radius,
        cuda_graph={"auto": None, "true": True, "false": False}[args.cuda_graph],
    )  # fmt: skip
    output = Output(
        dtype=args.dtype, store_dtype=args.store_dtype, progress=not args.quiet, keep_samples=not args.no_samples,
        reference_out=args.reference_out,
    )  # fmt: skip
    start_run(out, config, "baseline", force=args.force)  # the runner adds its section to config.json
    if args.method == "hmc":
        from flowvi.runs.hmc_baseline import run_hmc_baseline

        schedule = ChainSchedule(
            chains=args.chains, warmup=args.warmup, draws=args.samples, thin=args.thin, seed=args.seed,
            max_seconds=args.max_seconds,
        )  # fmt: skip
        return run_hmc_baseline(target, schedule, kernel, output, config, out)
    from flowvi.runs.flowmc_baseline import run_flowmc_baseline
    from flowvi.samplers.flowmc import FlowTraining, Schedule

    schedule = Schedule(
        chains=args.chains, warmup=args.warmup, rounds=args.rounds, local_steps=args.local_steps,
        global_steps=args.global_steps, train_steps=args.train_steps, draws=args.samples, thin=args.thin,
        seed=args.seed, max_seconds=args.max_seconds,
    )  # fmt: skip
    training = FlowTraining(batch_size=args.batch_size, lr=args.lr, buffer_size=args.buffer_size)
    flow_options = {"layers": args.layers, "hidden": args.hidden, "spline": args.spline, "seed": args.seed}
    options = (schedule, kernel, training)
    return run_flowmc_baseline(target, options, flow_options, args.flow_dtype, output, config, out)


def _smc(args, target, config: dict, out):
    """Adaptive-tempering SMC, ``--repeats`` independent runs: log Z with its spread over seeds."""
    from flowvi.samplers.smc import run_smc

    config["smc"] = {
        "particles": args.particles,
        "moves": args.moves,
        "ess_target": args.ess_target,
        "ref_scale": args.ref_scale,
        "repeats": args.repeats,
    }
    start_run(out, config, "baseline", force=args.force)
    print(f"flowvi baseline smc: {args.target} (d={target.dim}) -> {out}")
    runs = []
    for r in range(args.repeats):
        res = run_smc(
            target,
            particles=args.particles,
            ess_target=args.ess_target,
            moves=args.moves,
            ref_scale=args.ref_scale,
            seed=args.seed + r,
        )
        runs.append(res)
        if not args.quiet:
            print(
                f"  seed {args.seed + r}: log Z = {res['log_z']:.4f}  ({len(res['temperatures']) - 1} stages, {res['seconds']:.1f} s)"
            )
    log_z = np.array([r["log_z"] for r in runs])
    summary = {
        "method": "smc",
        "reference": runs[0]["reference"],
        "log_z": float(log_z.mean()),
        "log_z_sd": float(log_z.std(ddof=1)) if len(log_z) > 1 else float("nan"),
        "log_z_se": float(log_z.std(ddof=1) / np.sqrt(len(log_z))) if len(log_z) > 1 else float("nan"),
        "log_z_runs": log_z.tolist(),
        "stages": [len(r["temperatures"]) - 1 for r in runs],
        "seconds": [r["seconds"] for r in runs],
        "acceptance_final": [r["acceptance"][-1] for r in runs],
    }
    exact = getattr(target, "log_evidence", None)
    if exact is not None:
        summary["log_evidence"] = float(exact)
        summary["log_z_error"] = summary["log_z"] - float(exact)
    samples = torch.cat([r["samples"] for r in runs]).cpu().double().numpy()
    print(
        f"  log Z = {summary['log_z']:.4f}, sd over {len(log_z)} seeds {summary['log_z_sd']:.4f}"
        + (f"; exact {exact:.4f}" if exact is not None else "")
    )
    return samples, summary
