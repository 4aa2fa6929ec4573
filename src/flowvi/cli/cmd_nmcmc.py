"""``flowvi nmcmc RUN_DIR``: independence Metropolis-Hastings with a trained flow as proposal."""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import write_json_atomic
from ..runs import load_run
from ..samplers import independence_mh
from ..stats import jackknife, tau_int


def register(subparsers):
    p = subparsers.add_parser("nmcmc", help="neural MCMC: IMH chain with the trained flow as proposal")
    p.add_argument("run_dir")
    p.add_argument("--steps", type=int, default=20_000, help="chain length")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def _observables(x):
    """Per-configuration observables: phi^4 |M|, M^2 for lattice fields; the first coordinate otherwise."""
    if x.dim() == 3:
        m = x.sum(dim=(-2, -1))
        v = x.shape[-1] * x.shape[-2]
        return {"abs_magnetization": m.abs() / v, "m2_per_volume": m * m / v}
    return {"x0": x.reshape(len(x), -1)[:, 0]}


def run(args):
    if args.steps < 2:
        raise ValueError(f"--steps must be >= 2, got {args.steps}")
    flow, target, _ = load_run(args.run_dir)
    chain, acc = independence_mh(flow, target, args.steps, seed=args.seed)
    result = {"steps": args.steps, "acceptance": acc, "observables": {}}
    print(f"acceptance {acc:.4f}")
    for name, vals in _observables(chain).items():
        v = vals.double().cpu().numpy()
        tau = tau_int(v)
        mean, se = jackknife(v, bins=50)
        result["observables"][name] = {"mean": mean, "se": se, "tau_int": tau}
        print(f"{name:20s} {mean:.5f} ± {se:.5f}   tau_int {tau:.2f}")
    out = Path(args.run_dir) / "nmcmc.json"
    write_json_atomic(result, out)
    print(f"wrote {out}")
