"""``flowvi fit TARGET``: train a stabilised Real NVP on a target by reverse KL and evaluate it."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from flowvi.cli.common import (
    add_device_options,
    format_summary,
    nonnegative_float,
    nonnegative_int,
    parse_params,
    positive_float,
    positive_int,
)
from flowvi.diagnostics.evaluate import evaluate
from flowvi.diagnostics.resample import psis_resample
from flowvi.diagnostics.verdict import fit_verdict, format_verdict
from flowvi.flows.phi4 import z2_proposal
from flowvi.objectives import ESTIMATOR_NAMES, FORWARD_ESTIMATORS
from flowvi.runs import checkpoint as ckpt
from flowvi.runs.named import write_named_samples
from flowvi.runs.run_dir import build, load_flow_weights, plot_training_curve, read_config
from flowvi.runs.run_files import check_out, start_run
from flowvi.targets.guard import guarded
from flowvi.training import distributed as dist
from flowvi.training.distributed import COMM_DTYPES
from flowvi.training.fast_step import PRECISIONS
from flowvi.training.loop import TrainConfig, check_target, fit
from flowvi.training.mode_init import init_at_mode, mode_coverage
from flowvi.training.pretrain import load_draws, pretrain_on_draws
from flowvi.training.sizing import default_size
from flowvi.transforms import CLAMPS


def register(sub):
    p = sub.add_parser(
        "fit",
        help="fit a flow to a target (writes a run directory)",
        description="Fit a normalizing flow to TARGET by reverse KL.",
    )
    p.add_argument("target", help="built-in target name (see 'flowvi targets') or path/to/file.py:function")
    p.add_argument("--dim", type=int, help="target dimension (not for a Pyro model: its sites give it)")
    p.add_argument("--data", metavar="FILE", help="a Pyro model's keyword arguments: a .json object or a .npz file")
    p.add_argument("--lattice", type=int, help="lattice size L of a lattice target (e.g. phi4)")
    p.add_argument("-p", "--param", action="append", metavar="KEY=VALUE", help="target parameter (repeatable)")
    p.add_argument("--out", help="run directory (default runs/TARGET-TIME)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--force", action="store_true", help="overwrite an existing run directory")
    add_device_options(p)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="floating-point type")
    p.add_argument("--seed", type=int, default=0, help="seeds initialisation, training and sampling")
    _training_options(p)
    _speed_options(p)
    _flow_options(p)
    _warm_start_options(p)
    _evaluation_options(p)
    p.set_defaults(func=run)


def _training_options(p) -> None:
    g = p.add_argument_group("training")
    g.add_argument(
        "--steps",
        type=_steps,
        default="auto",
        help="training steps, or 'auto' (default): until the ELBO is flat and PSIS k-hat < 0.7 (docs/convergence.md)",
    )
    g.add_argument("--max-steps", type=int, default=20_000, help="with --steps auto: the most steps")
    g.add_argument("--max-time", type=float, default=None, help="stop training after this many seconds")
    g.add_argument("--batch-size", type=int, default=None, help="draws per step (default: from d, see README)")
    g.add_argument("--lr", type=positive_float, default=None, help="Adam learning rate (default: from d, see README)")
    g.add_argument(
        "--schedule",
        default="auto",
        choices=["auto", "cosine", "constant"],
        help="auto: cosine for an integer --steps; with --steps auto constant, halved on plateaus, a closing decay",
    )
    g.add_argument(
        "--init",
        default="mode",
        choices=["mode", "none"],
        help="mode (default; not for lattice targets): start the flow's location-scale layer at the target's mode "
        "(L-BFGS) with scales from the curvature",
    )
    g.add_argument("--warmup", type=nonnegative_int, default=0, help="linear learning-rate warm-up steps")
    g.add_argument("--clip", type=nonnegative_float, default=10.0, help="gradient-norm clip (0 turns it off)")
    g.add_argument(
        "--estimator",
        default="reparam",
        help=f"gradient estimator: {', '.join(ESTIMATOR_NAMES)} (fab: mass-covering, by AIS; see docs/howto/fab.md)",
    )
    g.add_argument("--fab-stages", type=int, default=8, help="--estimator fab: annealing stages of the AIS")
    g.add_argument("--fab-leapfrog", type=int, default=3, help="--estimator fab: leapfrog steps per HMC transition")
    g.add_argument(
        "--fab-buffer",
        type=int,
        default=16384,
        help="--estimator fab: prioritized replay buffer size in draws (0: none)",
    )
    g.add_argument(
        "--fab-replay", type=int, default=4, help="--estimator fab with a buffer: training steps per AIS run"
    )
    g.add_argument("--checkpoint-every", type=positive_int, default=200, help="steps between checkpoints")


def _speed_options(p) -> None:
    g = p.add_argument_group("speed (docs/performance.md)")
    g.add_argument("--precision", default="fp32", choices=list(PRECISIONS), help="autocast precision of the networks")
    g.add_argument("--compile", default="auto", choices=["auto", "true", "false"], help="torch.compile the step")
    g.add_argument("--cuda-graph", default="auto", choices=["auto", "true", "false"], help="CUDA-graph the step")
    g.add_argument("--no-tf32", dest="tf32", action="store_false", help="strict float32 matmuls on CUDA")
    g.add_argument(
        "--overlap",
        default="auto",
        choices=["auto", "true", "false"],
        help="compile layer by layer so the torchrun all-reduce overlaps the backward pass (auto: under torchrun)",
    )
    g.add_argument(
        "--overlap-layers",
        type=int,
        default=1,
        help="with --overlap: consecutive flow layers per compiled region (more fuse more; fewer overlap)",
    )
    g.add_argument(
        "--grad-comm",
        default="fp32",
        choices=list(COMM_DTYPES),
        help="dtype of the torchrun gradient all-reduce (bf16/fp16 halve the traffic, round the gradients)",
    )


def _flow_options(p) -> None:
    g = p.add_argument_group("flow")
    arch = "default: the flow's own (Real NVP {}; lattice targets: their field flow's)"
    g.add_argument("--layers", type=int, default=None, help="coupling layers (" + arch.format(8) + ")")
    g.add_argument("--hidden", type=int, default=None, help="conditioner width or channels (" + arch.format(256) + ")")
    g.add_argument("--depth", type=int, default=None, help="conditioner hidden layers (" + arch.format(2) + ")")
    g.add_argument("--clamp", default="asymmetric", help=f"scale clamp: {', '.join(CLAMPS)}")
    g.add_argument("--alpha-pos", type=float, default=0.1, help="asymmetric clamp bound of positive log-scales")
    g.add_argument("--alpha-neg", type=float, default=2.0, help="asymmetric clamp bound of negative log-scales")
    g.add_argument("--loft", action="store_true", default=True, help="LOFT as last layer (default)")
    g.add_argument("--no-loft", dest="loft", action="store_false")
    g.add_argument("--tau", type=float, default=100.0, help="LOFT threshold")
    g.add_argument("--base", default="gaussian", help="gaussian or student_t")
    g.add_argument("--df", type=float, default=5.0, help="Student-t base degrees of freedom")
    g.add_argument(
        "--permute", default="alternate", choices=["alternate", "random"], help="coordinate order between couplings"
    )
    g.add_argument(
        "--spline",
        action="store_true",
        help="a monotone spline per coordinate after the couplings (marginals can change shape)",
    )
    g.add_argument("--spline-bins", type=int, default=8, help="bins of each --spline")
    g.add_argument("--spline-bound", type=float, default=5.0, help="the spline acts on [-B, B], identity outside")
    g.add_argument(
        "--hierarchical",
        nargs="?",
        const="on",
        default="auto",
        choices=["auto", "on", "off"],
        help="per-coordinate couplings along the target's hierarchy, e.g. z_j given log lambda_j and log tau "
        "(learned partial non-centring); auto: on for targets that declare a hierarchy (horseshoe, regularized "
        "horseshoe, funnel, centered eight schools, target files with fn.hierarchy)",
    )
    g.add_argument("--hierarchy-hidden", type=int, default=8, help="each child's own network width (0: linear)")
    g.add_argument(
        "--gauge-arch",
        choices=["kanwar", "neumc"],
        help="gauge flows (u1, schwinger): neumc = the REINFORCE authors' flow (48 layers, 2x1 masks, 9-knot "
        "splines, channels [64, 64], kernel 3, dilations 1,2,3); --layers/--hidden/--depth override it",
    )
    g.add_argument("--gauge-masks", choices=["stripes", "2x1"], help="gauge flows: coupling masks")
    g.add_argument("--dilations", type=_int_list, help="gauge flows: conditioner dilations, e.g. 1,2,3 (depth + 1)")


def _warm_start_options(p) -> None:
    g = p.add_argument_group("warm start (pre-training on a sampler's draws, or another run's flow)")
    g.add_argument(
        "--init-draws",
        metavar="PATH",
        help="pre-train the flow by maximum likelihood on draws of the target first: a .npy (N, d) array, a .npz "
        "(choose the array with --init-key) or a 'flowvi baseline smc|hmc|nuts|flowmc' run directory (its samples.npy)",
    )
    g.add_argument(
        "--init-flow",
        metavar="RUN_DIR",
        help="start from the trained flow of another 'flowvi fit' run (its flow.pt, else its checkpoint) with the same "
        "target, flow options, seed and dtype: e.g. reverse KL first, then --estimator fab",
    )
    g.add_argument("--init-key", help="the array of a .npz --init-draws file (default: its only one)")
    g.add_argument("--init-steps", type=int, default=1000, help="pre-training steps (Adam, cosine schedule)")
    g.add_argument("--init-lr", type=float, default=1e-3, help="pre-training learning rate")
    g.add_argument("--init-batch-size", type=int, help="pre-training minibatch of draws (default: --batch-size)")
    g.add_argument(
        "--init-estimator",
        default="ml",
        choices=list(FORWARD_ESTIMATORS),
        help="forward-KL estimator of the pre-training",
    )
    g.add_argument(
        "--no-init-standardize",
        dest="init_standardize",
        action="store_false",
        help="do not set the flow's elementwise affine layer to the draws' mean and sd before pre-training",
    )


def _evaluation_options(p) -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-samples", type=int, default=100_000, help="importance samples of the final evaluation")
    g.add_argument("--n-samples", type=int, default=10_000, help="draws saved to samples.npy")
    g.add_argument(
        "--refine",
        nargs="?",
        const="auto",
        default=None,
        choices=["auto", "imh", "neutra", "mixture"],
        help="when the fit's verdict is not trustworthy, run 'flowvi refine' at once (auto: a mixture of flows when "
        "modes were missed, else independence MH, then NeuTra-HMC); off when not given",
    )
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def config_from_args(args) -> dict:
    params = parse_params(args.param)
    if args.dim is not None:
        params["dim"] = args.dim
    if getattr(args, "data", None):
        params["data"] = args.data
    if args.lattice is not None:
        params["L"] = args.lattice
    _check_args(args)
    return {
        "target": {"name": args.target, "params": params},
        "flow": _flow_config(args),
        "train": _train_config(args).flat(),
        **({"init": _init_config(args)} if getattr(args, "init_draws", None) else {}),
        **({"init_flow": str(args.init_flow)} if getattr(args, "init_flow", None) else {}),
        "seed": args.seed,
        "device": args.device,
        "dtype": args.dtype,
        "start": getattr(args, "init", "none"),
    }


def _check_args(args) -> None:
    """One-line errors for option values no builder would catch before training."""
    if args.estimator not in ESTIMATOR_NAMES:
        raise ValueError(f"unknown estimator {args.estimator!r}; choose one of {', '.join(ESTIMATOR_NAMES)}")
    if args.clamp not in CLAMPS:
        raise ValueError(f"unknown clamp {args.clamp!r}; choose one of {', '.join(CLAMPS)}")
    for name in ("steps", "batch_size", "layers", "hidden", "eval_samples", "init_steps", "init_batch_size",
                 "fab_stages", "fab_leapfrog", "fab_replay", "overlap_layers", "max_steps"):  # fmt: skip
        if isinstance(getattr(args, name, None), int) and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name, None)}")
    if getattr(args, "init_draws", None) and getattr(args, "init_flow", None):
        raise ValueError("--init-draws and --init-flow are two warm starts; choose one")
    if getattr(args, "fab_buffer", 16384) < 0:
        raise ValueError(f"--fab-buffer must be >= 0 (0: no buffer), got {args.fab_buffer}")
    if args.steps == "auto" and args.schedule == "cosine":
        raise ValueError("--schedule cosine needs an integer --steps (with --steps auto: --schedule auto or constant)")
    if getattr(args, "max_time", None) is not None and not args.max_time > 0:
        raise ValueError(f"--max-time must be a positive number of seconds, got {args.max_time:g}")


def _train_config(args) -> TrainConfig:
    """The :class:`TrainConfig` of the options (their defaults where the command has no such option)."""
    return TrainConfig(
        steps=args.steps,
        max_steps=getattr(args, "max_steps", 20_000),
        max_time=getattr(args, "max_time", None),
        batch_size=args.batch_size or 256,
        lr=args.lr or 1e-3,
        schedule=args.schedule,
        warmup=args.warmup,
        clip=args.clip or None,
        estimator=args.estimator,
        fab_stages=getattr(args, "fab_stages", 8),
        fab_leapfrog=getattr(args, "fab_leapfrog", 3),
        fab_buffer=getattr(args, "fab_buffer", 16384),
        fab_replay=getattr(args, "fab_replay", 4),
        checkpoint_every=args.checkpoint_every,
        precision=getattr(args, "precision", "fp32"),
        compile=_tristate(getattr(args, "compile", "auto")),
        cuda_graph=_tristate(getattr(args, "cuda_graph", "auto")),
        tf32=getattr(args, "tf32", True),
        overlap=_tristate(getattr(args, "overlap", "auto")),
        overlap_layers=getattr(args, "overlap_layers", 1),
        grad_comm=getattr(args, "grad_comm", "fp32"),
    )


def _flow_config(args) -> dict:
    """config.json's ``flow`` section: the architecture's size only where given (Real NVP and the lattice flows
    have different defaults), the stabilizers, the base, splines, gauge layout and hierarchical couplings."""
    return {
        **{k: getattr(args, k) for k in ("layers", "hidden", "depth") if getattr(args, k) is not None},
        "clamp": args.clamp,
        "alpha_pos": args.alpha_pos,
        "alpha_neg": args.alpha_neg,
        "loft": args.loft,
        "tau": args.tau,
        "base": args.base,
        "df": args.df,
        "permute": args.permute,
        "seed": args.seed,
        **(
            {"spline": True, "spline_bins": args.spline_bins, "spline_bound": args.spline_bound}
            if getattr(args, "spline", False)
            else {}
        ),
        **{k: getattr(args, k) for k in ("gauge_arch", "gauge_masks", "dilations") if getattr(args, k, None)},
        **(
            {
                "hierarchical": {"on": True, "auto": "auto"}[args.hierarchical],
                "hierarchy_hidden": args.hierarchy_hidden,
            }
            if getattr(args, "hierarchical", "off") in ("on", "auto")
            else {}
        ),
    }


def _init_config(args) -> dict:
    """The warm start's settings as recorded in config.json (``flowvi.training.pretrain.pretrain_on_draws``)."""
    if not args.init_lr > 0:
        raise ValueError(f"--init-lr must be positive, got {args.init_lr}")
    return {
        "draws": args.init_draws,
        "key": args.init_key,
        "steps": args.init_steps,
        "batch_size": args.init_batch_size or args.batch_size or 256,
        "lr": args.init_lr,
        "estimator": args.init_estimator,
        "standardize": args.init_standardize,
    }


def _load_init_flow(flow, config: dict) -> None:
    """``--init-flow RUN_DIR``: that run's trained parameters, after checking that it built the same flow."""
    source = Path(config["init_flow"])
    other = read_config(source)
    diff = [k for k in ("target", "flow", "dtype") if other.get(k) != config.get(k)]
    if diff:
        raise ValueError(
            f"--init-flow {source}: this run's {', '.join(diff)} settings differ from that run's; give the same target, flow "
            "options, seed and dtype"
        )
    load_flow_weights(flow, source)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _check_target_early(flow, target) -> None:
    """The first check of the target (as ``fit`` does it) before the run directory is written, with the random
    state restored afterwards: a run gives the same draws with or without it."""
    device = next(flow.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        check_target(flow, target)


def _steps(text):
    if text == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--steps must be an integer or 'auto', got {text!r}") from None


def _tristate(text):
    return {"true": True, "false": False}.get(text, text)


def run(args):
    if dist.launched_by_torchrun():
        args.device = dist.init_from_env(args.device)
        try:
            rc = _run(args)
        except BaseException:
            dist.shutdown()
            raise
        dist.leave()  # leave together: a rank that exits while another still talks can abort
        return rc
    return _run(args)


def _run(args):
    """``flowvi fit``; under torchrun every rank trains and rank 0 alone writes and prints."""
    main = dist.rank() == 0
    config, out = _prepare(args)
    dist.barrier()  # every rank has checked the run directory before rank 0 writes into it
    flow, target = build(config)
    init = config.get("init")
    # A warm start happens once: --resume continues from checkpoint.pt, or from pretrain.pt when the run was
    # killed between the pre-training and the first reverse-KL checkpoint.
    resume_fit = args.resume and (out / "checkpoint.pt").exists()
    pretrained = init is not None and args.resume and not resume_fit and (out / "pretrain.pt").exists()
    if args.resume and not resume_fit and not pretrained and "init_flow" not in config:
        raise FileNotFoundError(f"nothing to resume: no checkpoint.pt in {out}")
    if "init_flow" in config and not resume_fit:  # checked before the run directory is written
        _load_init_flow(flow, config)
    draws = None
    if init is not None and not resume_fit and not pretrained:
        draws = load_draws(init["draws"], init["key"], dim=target.dim)  # checked before the run directory is written
    if not resume_fit:
        _check_target_early(flow, target)
    if main:
        start_run(out, config, "fit", resume=args.resume, force=args.force)
        world = f" on {dist.world_size()} processes" if dist.world_size() > 1 else ""
        print(f"flowvi fit: {args.target} (d={target.dim}) -> {out}{world}")
        if hasattr(target, "describe"):  # a Pyro model: its sites
            print(target.describe())
    dist.barrier()
    _warm_start(args, flow, target, config, out, draws, pretrained)
    start = None
    if config.get("start") == "mode" and not (resume_fit or draws is not None or pretrained or "init_flow" in config):
        check_target(flow, target)  # a broken target gets its one-line error before the mode search
        start = _start_at_mode(flow, target, config, main)
    state = fit(flow, target, TrainConfig(**config["train"]), run_dir=out, resume=resume_fit,
                progress=not args.quiet and main)  # fmt: skip
    with guarded(target, "evaluation"):
        if dist.world_size() > 1:
            summary = dist.evaluate(flow, target, n=args.eval_samples)
        else:
            summary = evaluate(flow, target, n=args.eval_samples)
    if main:
        _finish(args, flow, target, config, out, state, summary, start)
    return 0


def _prepare(args) -> tuple[dict, Path]:
    """The run's config and directory, checked (a resume must repeat the run's options)."""
    config = config_from_args(args)
    size_from_dim(config, args)
    if dist.world_size() > 1:
        config["world_size"] = dist.world_size()
    if dist.world_size() > 1 and not args.out:
        raise ValueError("--out is needed under torchrun (every process must name the same run directory)")
    out = Path(args.out or f"runs/{Path(args.target.split(':')[0]).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    check_out(out, resume=args.resume, force=args.force)
    if args.resume:
        saved = read_config(out)
        if "train" in saved:  # options added to TrainConfig since the run was written take their defaults
            # (FAB runs written before the replay buffer existed had none)
            old_fab = {"fab_buffer": 0} if saved["train"].get("estimator") == "fab" else {}
            saved["train"] = TrainConfig(**{**old_fab, **saved["train"]}).flat()
        saved.setdefault("start", config.get("start"))  # runs written before --init mode: a resume never starts anew
        diff = sorted(k for k in set(saved) | set(config) if k != "device" and saved.get(k) != config.get(k))
        if diff:
            raise ValueError(
                f"--resume: the options differ from the run in {out} ({', '.join(diff)}); resume with the same options"
            )
    return config, out


def _warm_start(args, flow, target, config: dict, out: Path, draws, pretrained: bool) -> None:
    """``--init-draws``: pre-train on the draws (once), or take the pre-trained flow of a killed run."""
    main, init = dist.rank() == 0, config.get("init")
    if draws is not None:
        info = pretrain_on_draws(
            flow, draws, steps=init["steps"], batch_size=init["batch_size"], lr=init["lr"],
            estimator=init["estimator"], target=target, standardize=init["standardize"], seed=config["seed"],
            progress=not args.quiet and main,
        )  # fmt: skip
        if main:
            ckpt.save_atomic({"flow": flow.state_dict(), "info": info}, out / "pretrain.pt")
            ckpt.write_json_atomic(info, out / "pretrain.json")
            print(
                f"  pre-trained on {info['n_draws']} draws ({info['steps']} steps, {info['seconds']:.1f} s): "
                f"mean -log q {info['nll_start']:.3f} -> {info['nll_end']:.3f}"
            )
    elif pretrained:
        saved = ckpt.load(out / "pretrain.pt", map_location=next(flow.parameters()).device, keys=("flow",))
        ckpt.load_state_into(flow, saved["flow"], out / "pretrain.pt")
        if main:
            print(f"  the pre-trained flow from {out / 'pretrain.pt'} (pre-training not repeated)")


def _finish(args, flow, target, config: dict, out: Path, state, summary: dict, start) -> None:
    """Rank 0: the summary, the resampled draws and the verdict, printed before the files are written."""
    summary.update({"steps": state.step, "skipped_steps": state.skipped, "train_seconds": state.elapsed})
    summary["stop_reason"] = state.stop_reason
    d = summary["dropped_draws"] = {
        "target": state.dropped[0],
        "flow": state.dropped[1],
        "fraction": sum(state.dropped) / max(state.draws, 1),
    }
    if start is not None:
        summary["init"] = start.to_dict()
        if start.ends:  # the modes the search found: does the flow cover them? (refine starts chains there)
            summary["modes"] = mode_coverage(flow, target, start.ends)
            modes = torch.stack([x for _, x in start.ends]).cpu().numpy()
            ckpt.atomic_write(out / "modes.npy", lambda f: np.save(f, modes))
    if config.get("init") is not None and (out / "pretrain.json").exists():
        summary["pretrain"] = json.loads((out / "pretrain.json").read_text())
    samples, summary["samples"] = psis_resample(z2_proposal(flow), target, args.n_samples, seed=config["seed"])
    summary["verdict"] = fit_verdict(summary, state.stop_reason)
    print(format_summary(summary))  # before the files: a failed write loses nothing computed
    print(f"  skipped      {state.skipped} of {state.step} steps; {state.elapsed:.1f} s")
    if d["target"] or d["flow"]:
        print(f"  dropped      {d['target']} draws (target not finite), {d['flow']} (flow not finite)")
    print(f"  stopped      {state.stop_reason}")
    how = "PSIS-resampled" if summary["samples"]["resampled"] else "the flow's draws, not resampled"
    print(f"  samples.npy  {args.n_samples} draws, {how}")
    ckpt.save_atomic(flow.state_dict(), out / "flow.pt")
    ckpt.atomic_write(out / "samples.npy", lambda f: np.save(f, samples))
    write_named_samples(target, samples, out / "samples.npz")
    ckpt.write_json_atomic(summary, out / "summary.json")
    plot_training_curve(out, summary)
    print(f"wrote {out}/{{config.json,metrics.jsonl,summary.json,samples.npy,samples.npz,training_curve.png,flow.pt}}")
    print(format_verdict(summary["verdict"]).replace("RUN_DIR", str(out)), flush=True)
    if args.refine and not summary["verdict"]["trustworthy"]:
        _refine_now(flow, target, out, summary, args.refine, config["seed"])


def _refine_now(flow, target, out: Path, summary: dict, method: str, seed: int) -> None:
    """``--refine``: ``flowvi refine`` on the run just written; its verdict joins summary.json."""
    from flowvi.cli.cmd_refine import refine_and_write
    from flowvi.samplers.neutra import RefineOptions

    record = refine_and_write(flow, target, out, RefineOptions(method=method, seed=seed))
    summary["refined"] = {"method": record["method"], "verdict": record["verdict"]}
    ckpt.write_json_atomic(summary, out / "summary.json")


def _start_at_mode(flow, target, config, main) -> dict:
    """``--init mode`` (:func:`flowvi.training.mode_init.init_at_mode`), said in one line."""
    with guarded(target, "the search for the mode (--init mode)"):
        report = init_at_mode(flow, target, seed=config["seed"])
    if main:
        print(f"  start        {report.reason} ({report.seconds:.1f} s)")
    return report


def size_from_dim(config: dict, args) -> None:
    """Flow size, batch and learning rate from the target's dimension where not given (``default_size``); a
    lattice target keeps its field flow's own defaults. Recorded in the config."""
    from flowvi.targets import make_target

    target = make_target(config["target"]["name"], **config["target"].get("params", {}))
    if hasattr(target, "default_flow"):
        config["start"] = "none"
        return
    size = default_size(target.dim)
    for key in ("layers", "hidden", "depth"):
        config["flow"].setdefault(key, size[key])
    train = config["train"]
    if getattr(args, "batch_size", None) is None:
        train["batch_size"] = size["batch_size"]
    if getattr(args, "lr", None) is None:
        train["lr"] = size["lr"]


__all__ = ["config_from_args", "register", "run", "json"]
