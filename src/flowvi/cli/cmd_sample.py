"""``flowvi sample RUN_DIR -n N``: draws from a trained flow, saved as .npy. A phi^4 flow built with
``z2="symmetrize"`` draws from its Z2 mixture ``(q(x) + q(-x))/2`` like every other phi^4 sampler
(:func:`flowvi.flows.phi4.z2_proposal`)."""

from __future__ import annotations

from pathlib import Path

from flowvi.cli.common import add_device_options
from flowvi.flows.phi4 import z2_proposal
from flowvi.runs.named import write_named_samples
from flowvi.runs.run_dir import load_run, write_samples


def register(sub):
    p = sub.add_parser("sample", help="draw samples from a trained run")
    p.add_argument("run_dir", help="a 'flowvi fit' run directory")
    p.add_argument("-n", type=int, default=10_000, help="number of draws")
    p.add_argument("-o", "--output", help="output .npy (default RUN_DIR/samples-N.npy)")
    p.add_argument("--seed", type=int, default=2, help="seeds the draws")
    add_device_options(p)
    p.set_defaults(func=run)


def run(args):
    import torch

    if args.n < 1:
        raise ValueError(f"-n must be positive, got {args.n}")
    flow, target, _ = load_run(args.run_dir, device=args.device)
    torch.manual_seed(args.seed)
    out = Path(args.output or Path(args.run_dir) / f"samples-{args.n}.npy")
    samples = write_samples(z2_proposal(flow), out, args.n)
    named = write_named_samples(target, samples, out.with_suffix(".npz"))
    print(f"wrote {samples.shape[0]} draws of dimension {samples.shape[1:]} to {out} (by name: {named})")
    return 0
