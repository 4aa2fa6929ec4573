"""``flowvi fit-data DATA``: density estimation with Glow on images or vectors, end to end or by parts."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from flowvi.cli.common import add_device_options, nonnegative_float, nonnegative_int, positive_float
from flowvi.data.arrays import SHIPPED
from flowvi.objectives.estimators import FORWARD_ESTIMATORS
from flowvi.runs.run_dir import read_config
from flowvi.runs.run_files import check_out
from flowvi.training import density
from flowvi.training.parts import SCHEDULES, PartsConfig
from flowvi.transforms import CLAMPS


def register(sub):
    p = sub.add_parser(
        "fit-data",
        help="fit Glow to data by maximum likelihood, end to end or by parts (writes a run directory)",
        description="Density estimation on DATA: a shipped data set "
        f"({', '.join(SHIPPED)}) or a .npy/.npz file of (N, C, H, W) integer images or (N, D) real vectors. "
        "See docs/parts.md.",
    )
    p.add_argument("data", help=f"shipped name ({', '.join(SHIPPED)}) or path/to/array.npy|.npz")
    p.add_argument("--key", help="array name inside a .npz holding several arrays")
    p.add_argument("--levels", type=int, help="pixel levels of integer images (default: 256 for uint8, else max+1)")
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="held-out fraction (default 0.2; the patch sets have a fixed split by source photograph)",
    )
    p.add_argument("--out", help="run directory (default runs/DATA-TIME)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--force", action="store_true", help="overwrite an existing run directory")
    add_device_options(p)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="CPU threads for torch (small models often run fastest on 1)")
    _training_options(p)
    _parts_options(p)
    _flow_options(p)
    g = p.add_argument_group("output")
    g.add_argument("--n-samples", type=int, default=64, help="samples written to samples.npy/.png")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _training_options(p) -> None:
    """The optimizer, its schedule and the cadence of evaluations and checkpoints."""
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, default=2000)
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--lr", type=positive_float, default=1e-3)
    g.add_argument("--lr-schedule", default="constant", choices=["constant", "cosine"])
    g.add_argument("--warmup", type=nonnegative_int, default=50)
    g.add_argument("--clip", type=nonnegative_float, default=50.0, help="gradient-norm clip per part (0 turns it off)")
    g.add_argument(
        "--estimator", default="ml", help="forward-KL estimator: ml (data has no density, so 'path' is refused)"
    )
    g.add_argument("--eval-every", type=int, default=100)
    g.add_argument("--checkpoint-every", type=int, default=500)


def _parts_options(p) -> None:
    """How the flow is cut into parts and which schedule trains them."""
    g = p.add_argument_group("training by parts (docs/parts.md)")
    g.add_argument("--parts-schedule", dest="schedule", default="end_to_end", help=f"one of {', '.join(SCHEDULES)}")
    g.add_argument(
        "--schedule",
        dest="schedule",
        action=DeprecatedAlias,
        new="--parts-schedule",
        default=argparse.SUPPRESS,
        help="deprecated alias of --parts-schedule (removed in the next release)",
    )
    g.add_argument("--parts", type=int, default=2, help="number of parts with equal flow steps (default 2)")
    g.add_argument("--layers-per-part", type=int, help="cut after every N flow steps instead of --parts")
    g.add_argument(
        "--balance-parts",
        action="store_true",
        help="with --parts K: cut where the parts hold about equal activation bytes (measured on one batch) "
        "instead of equal numbers of flow steps",
    )
    g.add_argument("--cut-at-blocks", action="store_true", help="one part per scale (cut after each split)")
    g.add_argument("--finetune-fraction", type=float, default=1 / 3, help="alternate_then_finetune: end-to-end share")
    g.add_argument("--switch-every", type=int, default=1, help="alternate: consecutive steps per part")
    g.add_argument(
        "--cache-prefix",
        action="store_true",
        help="reuse the frozen parts' output per example while they are unchanged (pays with sequential or a long "
        "--switch-every; a cached example keeps its dequantization noise; see docs/parts.md)",
    )
    g.add_argument("--part-devices", help="comma-separated device of each part, e.g. cuda:0,cuda:1 (or cpu,cpu)")


def _flow_options(p) -> None:
    """The Glow: its size and coupling clamp."""
    g = p.add_argument_group("flow (Glow)")
    g.add_argument(
        "--preset",
        choices=list(density.PRESETS),
        help="named Glow size: "
        + "; ".join(
            f"{k}: {v['scales']} scales x {v['steps']} steps, width {v['hidden']}" for k, v in density.PRESETS.items()
        )
        + " (explicit --scales/--flow-steps/--hidden win)",
    )
    g.add_argument("--scales", type=int, help="images: squeeze levels (default min(3, log2 side)); vectors: blocks")
    g.add_argument("--flow-steps", type=int, help="flow steps per scale (default 4)")
    g.add_argument("--hidden", type=int, help="coupling network width (default 64)")
    g.add_argument("--depth", type=int, default=2, help="vectors: coupling MLP hidden layers")
    g.add_argument("--clamp", default="asymmetric", help=f"coupling scale clamp: {', '.join(CLAMPS)}")
    g.add_argument("--alpha-pos", type=float, default=0.1)
    g.add_argument("--alpha-neg", type=float, default=2.0)
    g.add_argument("--alpha", type=float, default=2.0, help="symmetric clamp bound")


class DeprecatedAlias(argparse.Action):
    """An option's old name: stores like the new one and warns on stderr that the name is going."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: warning: {option_string} is deprecated, use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _flow_size(args) -> None:
    """Fill --scales/--flow-steps/--hidden from --preset, then from the defaults, where not given."""
    preset = density.PRESETS[args.preset] if args.preset else {}
    for arg, key in (("scales", "scales"), ("flow_steps", "steps"), ("hidden", "hidden")):
        if getattr(args, arg) is None:
            setattr(args, arg, preset.get(key, density.FLOW_DEFAULTS[key]))


def config_from_args(args) -> dict:
    _flow_size(args)
    if args.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {args.schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if args.estimator not in FORWARD_ESTIMATORS:
        raise ValueError(f"unknown estimator {args.estimator!r}; choose one of {', '.join(FORWARD_ESTIMATORS)}")
    if args.estimator == "path":
        raise ValueError("the path estimator needs a target density; data have none, use --estimator ml")
    if args.clamp not in CLAMPS:
        raise ValueError(f"unknown clamp {args.clamp!r}; choose one of {', '.join(CLAMPS)}")
    for name in ("steps", "batch_size", "parts", "flow_steps", "hidden", "eval_every", "checkpoint_every"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    devices = [d.strip() for d in args.part_devices.split(",")] if args.part_devices else []
    parts = args.parts if args.schedule != "end_to_end" or devices else 1
    train = PartsConfig(
        schedule=args.schedule,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_schedule=args.lr_schedule,
        warmup=args.warmup,
        clip=args.clip or None,
        finetune_fraction=args.finetune_fraction,
        switch_every=args.switch_every,
        cache_prefix=args.cache_prefix,
        estimator=args.estimator,
        eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
    )
    train.check()
    return {
        "data": {"spec": args.data, "key": args.key, "levels": args.levels, "test_fraction": args.test_fraction},
        "flow": {
            "scales": args.scales,
            "steps": args.flow_steps,
            "hidden": args.hidden,
            "depth": args.depth,
            "clamp": args.clamp,
            "alpha_pos": args.alpha_pos,
            "alpha_neg": args.alpha_neg,
            "alpha": args.alpha,
            "seed": args.seed,
        },
        "parts": {
            "parts": parts,
            "every": args.layers_per_part,
            "blocks": args.cut_at_blocks,
            "balance": args.balance_parts,
            "devices": devices,
        },
        "train": asdict(train),
        "n_samples": args.n_samples,
        "temperature": args.temperature,
        "seed": args.seed,
        "device": args.device,
        "dtype": args.dtype,
    }


def run(args):
    config = config_from_args(args)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be positive, got {args.threads}")
        torch.set_num_threads(args.threads)
    name = Path(args.data).stem if args.data not in SHIPPED else args.data
    out = Path(args.out or f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    check_out(out, resume=args.resume, force=args.force)
    if args.resume:
        saved = read_config(out)
        diff = sorted(k for k in set(saved) | set(config) if k != "device" and saved.get(k) != config.get(k))
        if diff:
            raise ValueError(
                f"--resume: the options differ from the run in {out} ({', '.join(diff)}); resume with the same options"
            )
    summary = density.run(config, out, resume=args.resume, progress=not args.quiet, force=args.force)
    unit = summary["unit"]
    print(f"  train        {summary['train_loss']:.4f} {unit}")
    print(f"  test         {summary['test_loss']:.4f} {unit}   (best {summary['best_test_loss']:.4f})")
    if "baseline_test_loss" in summary:
        print(f"  baseline     {summary['baseline_test_loss']:.4f} {unit}   ({summary['baseline']}, test)")
    print(f"  steps        {summary['steps']} ({summary['skipped_steps']} skipped), {summary['train_seconds']:.1f} s")
    extra = ",samples.png" if unit == "bits/dim" else ""
    print(f"wrote {out}/{{config.json,metrics.jsonl,summary.json,flow.pt,learning_curve.png,samples.npy{extra}}}")
    return 0
