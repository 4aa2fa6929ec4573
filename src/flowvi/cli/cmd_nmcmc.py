"""``flowvi nmcmc RUN_DIR``: independence Metropolis-Hastings with a trained flow as proposal.

For phi^4 runs it reports, from one set of flow proposals: the IMH chain's estimates (jackknife errors,
tau_int), the self-normalised reweighted estimates (ESS, Pareto k-hat) and, with ``--hmc N``, the HMC
baseline on the same target; everything goes to ``RUN_DIR/nmcmc.json``.
"""

from __future__ import annotations

from pathlib import Path

from flowvi.diagnostics.errors import jackknife, tau_int
from flowvi.runs.checkpoint import write_json_atomic
from flowvi.runs.run_dir import load_run
from flowvi.samplers import independence_mh

PHI4_ROWS = ("abs_magnetization", "chi_2", "susceptibility", "xi_2nd_moment")


def register(subparsers):
    p = subparsers.add_parser("nmcmc", help="neural MCMC: IMH chain with the trained flow as proposal")
    p.add_argument("run_dir")
    p.add_argument("--steps", type=int, default=20_000, help="chain length (= number of flow proposals)")
    p.add_argument("--bins", type=int, default=50, help="jackknife bins (fewer if tau_int needs longer bins)")
    p.add_argument(
        "--errors", default="jackknife", choices=["jackknife", "bootstrap"], help="errors of the reweighted estimates"
    )
    p.add_argument("--hmc", type=int, default=0, metavar="N", help="also run N HMC trajectories per chain")
    p.add_argument("--hmc-chains", type=int, default=16, help="HMC chains, started from flow samples")
    p.add_argument("--hmc-step-size", type=float, default=0.1)
    p.add_argument("--hmc-leapfrog", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def _fmt(e):
    tau = f"   tau_int {e['tau_int']:.2f}" if "tau_int" in e else ""
    return f"{e['mean']:12.5f} ± {e['se']:.5f}{tau}"


def _run_phi4(args, flow, target):
    import torch

    from flowvi.studies.phi4_mcmc import hmc_phi4, nmcmc_phi4

    result = nmcmc_phi4(flow, target, args.steps, bins=args.bins, seed=args.seed, reweighted_errors=args.errors)
    rew = result["reweighted"]
    print(f"IMH acceptance {result['acceptance']:.4f}   ESS/n {rew['ess']:.4f}   Pareto k {rew['pareto_k']:.3f}")
    if rew["pareto_k"] > 0.7:
        print("warning: Pareto k > 0.7: the importance weights are heavy-tailed; IMH and reweighted estimates")
        print("         can be biased with understated errors (train the flow longer)")
    if args.hmc:
        from flowvi.flows.phi4 import z2_proposal

        with torch.no_grad():
            x0 = z2_proposal(flow).sample(args.hmc_chains)
        result["hmc"] = hmc_phi4(target, x0, args.hmc, args.hmc_step_size, args.hmc_leapfrog, seed=args.seed + 1)
        print(f"HMC acceptance {result['hmc']['acceptance']:.4f} ({args.hmc_chains} chains x {args.hmc})")
    print(f"{'':20s} {'IMH chain':>28s}  {'reweighted':>22s}" + (f"  {'HMC':>22s}" if args.hmc else ""))
    for name in PHI4_ROWS:
        row = f"{name:20s} {_fmt(result['chain'][name]):>28s}  {_fmt(rew[name])}"
        if args.hmc:
            row += f"  {_fmt(result['hmc']['estimates'][name])}"
        print(row)
    return result


def _run_generic(args, flow, target):
    chain, acc = independence_mh(flow, target, args.steps, seed=args.seed)
    v = chain.reshape(len(chain), -1)[:, 0].double().cpu().numpy()
    mean, se = jackknife(v, bins=args.bins)
    result = {"steps": args.steps, "acceptance": acc, "chain": {"x0": {"mean": mean, "se": se, "tau_int": tau_int(v)}}}
    print(f"IMH acceptance {acc:.4f}")
    print(f"{'x0':20s} {_fmt(result['chain']['x0'])}")
    return result


def run(args):
    if args.steps < 2:
        raise ValueError(f"--steps must be >= 2, got {args.steps}")
    if args.hmc < 0 or args.hmc_chains < 2:
        raise ValueError(f"--hmc must be >= 0 and --hmc-chains >= 2, got {args.hmc}, {args.hmc_chains}")
    flow, target, _ = load_run(args.run_dir)
    from flowvi.targets.phi4 import Phi4

    if isinstance(target, Phi4):
        result = _run_phi4(args, flow, target)
    else:
        if args.hmc:
            raise ValueError("--hmc is implemented for phi4 runs only")
        result = _run_generic(args, flow, target)
    out = Path(args.run_dir) / "nmcmc.json"
    write_json_atomic(result, out)
    print(f"wrote {out}")
