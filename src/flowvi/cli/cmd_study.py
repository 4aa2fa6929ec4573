"""``flowvi study stability TARGET``: the clamp x LOFT x base x estimator stability grid over seeds."""

from __future__ import annotations

import time
from pathlib import Path

from flowvi.cli.common import add_device_options, parse_params
from flowvi.objectives.estimators import ESTIMATORS
from flowvi.runs.run_dir import hierarchy_of
from flowvi.studies.stability import BASE_CHOICES, CLAMP_CHOICES, grid, run_study, score_against_reference
from flowvi.targets import make_target
from flowvi.training.loop import TrainConfig


def comma_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def register(sub):
    p = sub.add_parser(
        "study",
        help="studies over many fits (stability: clamp x LOFT x base x estimator over seeds)",
        description="Run a study over many fits of TARGET and write a table and plots.",
    )
    p.add_argument(
        "study",
        choices=["stability", "score"],
        help="stability: run the grid on TARGET; score: score a finished study DIR against --reference",
    )
    p.add_argument(
        "target",
        help="built-in target name (see 'flowvi targets') or path/to/file.py:function; for 'score' the study's "
        "output directory",
    )
    p.add_argument("--dim", type=int, help="target dimension")
    p.add_argument("-p", "--param", action="append", metavar="KEY=VALUE", help="target parameter (repeatable)")
    p.add_argument("--out", help="output directory (default runs/study-TARGET-TIME)")
    add_device_options(p)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    g = p.add_argument_group("grid")
    g.add_argument("--clamps", default=",".join(CLAMP_CHOICES), help="comma list of none, symmetric, asymmetric")
    g.add_argument("--loft", default="on,off", help="comma list of on, off")
    g.add_argument("--bases", default=",".join(BASE_CHOICES), help="comma list of gaussian, student_t")
    g.add_argument("--estimators", default=None, help=f"comma list (default: all registered: {', '.join(ESTIMATORS)})")
    g.add_argument(
        "--spline",
        default="off",
        help="comma list of off, on: an elementwise spline after the couplings (lets marginals change shape)",
    )
    g.add_argument(
        "--hierarchical",
        default="off",
        help="comma list of off, on: the target's hierarchical couplings (flowvi fit --hierarchical)",
    )
    g.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per configuration")
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, default=2000)
    g.add_argument("--batch-size", type=int, default=256)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--clip", type=float, default=10.0, help="gradient-norm clip (0 turns it off)")
    g = p.add_argument_group("flow")
    g.add_argument("--layers", type=int, default=8)
    g.add_argument("--hidden", type=int, default=256)
    g.add_argument("--depth", type=int, default=2)
    g.add_argument("--alpha-pos", type=float, default=0.1)
    g.add_argument("--alpha-neg", type=float, default=2.0)
    g.add_argument("--tau", type=float, default=100.0, help="LOFT threshold")
    g.add_argument("--df", type=float, default=5.0, help="Student-t base degrees of freedom")
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-samples", type=int, default=10_000)
    g.add_argument(
        "--reference",
        help="NUTS run directory (flowvi baseline nuts) or reference summary .npz to compare marginals with",
    )
    g.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def settings_from_args(args) -> list[dict]:
    clamps, bases = comma_list(args.clamps), comma_list(args.bases)
    estimators = comma_list(args.estimators) if args.estimators else list(ESTIMATORS)
    lofts, splines = comma_list(args.loft), comma_list(args.spline)
    hierarchicals = comma_list(getattr(args, "hierarchical", "off"))
    for name, values, allowed in (
        ("spline", splines, ("on", "off")),
        ("hierarchical", hierarchicals, ("on", "off")),
        ("clamp", clamps, CLAMP_CHOICES),
        ("base", bases, BASE_CHOICES),
        ("estimator", estimators, tuple(ESTIMATORS)),
        ("loft", lofts, ("on", "off")),
    ):
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            raise ValueError(f"unknown {name} {', '.join(bad) or '(empty list)'}; choose from {', '.join(allowed)}")
    on = {"on": True, "off": False}
    return grid(
        clamps, [on[v] for v in lofts], bases, estimators, [on[v] for v in splines], [on[v] for v in hierarchicals]
    )


def run(args):
    if args.study == "score":
        return score(args)
    settings = settings_from_args(args)
    for name in ("seeds", "steps", "batch_size", "layers", "hidden", "eval_samples"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.eval_samples < 2:
        raise ValueError("--eval-samples must be at least 2")
    params = parse_params(args.param)
    if args.dim is not None:
        params["dim"] = args.dim
    if any(s["hierarchical"] for s in settings):
        hierarchy_of(make_target(args.target, **params), args.target)  # fail before any run, not in each
    out = Path(args.out or f"runs/study-{Path(args.target.split(':')[0]).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    flow_options = {
        "layers": args.layers,
        "hidden": args.hidden,
        "depth": args.depth,
        "alpha_pos": args.alpha_pos,
        "alpha_neg": args.alpha_neg,
        "tau": args.tau,
        "df": args.df,
    }
    train = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, clip=args.clip or None, checkpoint_every=10**9
    )
    print(f"flowvi study stability: {args.target}, {len(settings)} configurations x {args.seeds} seeds -> {out}")
    run_study(
        {"name": args.target, "params": params},
        out,
        settings,
        list(range(args.seeds)),
        flow_options,
        train,
        device=args.device,
        dtype=args.dtype,
        eval_samples=args.eval_samples,
        reference_dir=args.reference,
        progress=not args.quiet,
    )
    print((out / "table.md").read_text())
    print(f"wrote {out}/{{table.md,table.csv,runs.csv,elbo_curves.png{',marginals.png' if args.reference else ''}}}")
    return 0


def score(args):
    """``flowvi study score DIR --reference REF``: a study run before its NUTS reference was ready."""
    if not args.reference:
        raise ValueError("flowvi study score needs --reference (a flowvi baseline nuts run directory or a .npz)")
    summary = score_against_reference(args.target, args.reference)
    print((Path(args.target) / "table.md").read_text())
    shares = ", ".join(f"{s['config']} {s['within_0.1_sd']:.3f}" for s in summary if "within_0.1_sd" in s)
    print(f"share of coordinates within 0.1 reference sd: {shares}")
    print(f"rewrote {args.target}/{{table.md,table.csv,runs.csv}}")
    return 0
