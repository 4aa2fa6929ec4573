"""``flowvi summary RUN_DIR``: ArviZ's posterior summary of a run's named draws; ``--plot``: trace and pair plots."""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

from flowvi.cli.common import add_device_options


def register(sub):
    p = sub.add_parser(
        "summary",
        help="posterior summary of a run by variable (ArviZ): mean, sd, HDI, MCSE, ESS, R-hat",
        description="Summarize the named draws of a run (refined chains where 'flowvi refine' wrote them, else the "
        "flow's draws) with arviz.summary; --plot writes trace.png and pair.png into the run directory.",
    )
    p.add_argument("run_dir")
    p.add_argument("--var-names", nargs="+", metavar="NAME", help="variables to summarize and plot (default: all)")
    p.add_argument("--plot", action="store_true", help="write ArviZ trace and pair plots (PNG) into RUN_DIR")
    p.add_argument("--max-pair", type=int, default=6, help="coordinates in the pair plot at most")
    add_device_options(p)
    p.set_defaults(func=run)


def _header(idata) -> str:
    stats = idata.sample_stats.attrs
    n_chain, n_draw = idata.posterior.sizes["chain"], idata.posterior.sizes["draw"]
    if stats.get("draws") == "flow":
        k = stats["pareto_k"]
        verdict = "reliable: k < 0.7" if k < 0.7 else "unreliable: k >= 0.7"
        return (
            f"  {n_draw} independent flow draws; importance weights: Pareto k {k:.3f} ({verdict}), "
            f"ESS/n {stats['ess_per_draw']:.3f}; R-hat needs chains ('flowvi refine')"
        )
    return f"  refined draws: {n_chain} chains x {n_draw} draws"


def _pair_vars(idata, names, limit: int) -> list[str]:
    """Variables in order while their coordinates fit in ``limit`` (a pair plot of hundreds is unreadable)."""
    chosen, total = [], 0
    for name in names:
        size = math.prod(idata.posterior[name].shape[2:])
        if total + size <= limit:
            chosen.append(name)
            total += size
    return chosen or list(names[:1])


def write_plots(idata, run_dir: Path, names, max_pair: int) -> list[Path]:
    """``trace.png`` (az.plot_trace) and ``pair.png`` (az.plot_pair) of ``names`` in ``run_dir``."""
    import arviz as az
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    for file, plot in (
        ("trace.png", lambda: az.plot_trace(idata, var_names=names, compact=True)),
        ("pair.png", lambda: az.plot_pair(idata, var_names=_pair_vars(idata, names, max_pair), marginals=True)),
    ):
        axes = plot()
        fig = (axes.ravel()[0] if hasattr(axes, "ravel") else axes).figure
        fig.tight_layout()
        fig.savefig(run_dir / file, dpi=90)
        plt.close(fig)
        out.append(run_dir / file)
    return out


def run(args):
    import arviz as az

    from flowvi.runs.inference_data import to_arviz

    device = "cpu" if args.device == "auto" else args.device
    idata = to_arviz(args.run_dir, device=device)
    names = args.var_names or list(idata.posterior.data_vars)
    unknown = sorted(set(names) - set(idata.posterior.data_vars))
    if unknown:
        raise ValueError(
            f"no variable {', '.join(unknown)} in {args.run_dir}; it has {', '.join(idata.posterior.data_vars)}"
        )
    log = getattr(az, "_log", None)  # ArviZ's own logger: one chain of flow draws, and it warns that R-hat needs two
    level = log.level if log is not None else None
    with warnings.catch_warnings(), az.rc_context({"plot.max_subplots": 200}):
        warnings.simplefilter("ignore")
        if log is not None:
            log.setLevel(logging.ERROR)
        try:
            table = az.summary(idata, var_names=names)
        finally:
            if log is not None:
                log.setLevel(level)
        print(f"flowvi summary: {args.run_dir}")
        print(_header(idata))
        print(table.to_string())
        if args.plot:
            files = write_plots(idata, Path(args.run_dir), names, args.max_pair)
            print(f"wrote {', '.join(str(f) for f in files)}")
    return 0
