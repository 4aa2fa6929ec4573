"""``flowvi nmcmc RUN_DIR``: independence Metropolis-Hastings with a trained flow as proposal.

From one set of flow proposals it reports the IMH chain's estimates (jackknife errors, tau_int) and the
self-normalised reweighted estimates (ESS, Pareto k-hat): for phi^4 runs the magnetization, susceptibilities
and correlation length (with ``--hmc N`` also the HMC baseline on the same target); for U(1) and Schwinger runs
the plaquette, topological charge and susceptibility; for other targets every coordinate's mean. Everything
goes to ``RUN_DIR/nmcmc.json``; ``--save-configs PATH`` writes the chain's configurations
(:mod:`flowvi.runs.ensemble`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from flowvi.diagnostics.errors import jackknife, tau_int
from flowvi.runs.checkpoint import write_json_atomic
from flowvi.runs.ensemble import chain_record, check_configs_path, save_configs
from flowvi.runs.run_dir import load_run
from flowvi.samplers.nmcmc import flow_proposals, imh_indices

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
    p.add_argument("--seed", type=int, default=0, help="seeds the proposals and the accept/reject draws")
    p.add_argument(
        "--save-configs",
        metavar="PATH",
        help="write the chain's configurations (the MCMC-corrected ensemble) to PATH.npy, or to PATH.npz with "
        "per-step acceptance and log weights (format: docs/tutorials/lattice.md)",
    )
    p.set_defaults(func=run)


def _fmt(e):
    tau = f"   tau_int {e['tau_int']:.2f}" if "tau_int" in e else ""
    return f"{e['mean']:12.5f} ± {e['se']:.5f}{tau}"


def _run_phi4(args, flow, target):
    import torch

    from flowvi.studies.phi4_mcmc import hmc_phi4, nmcmc_phi4

    result = nmcmc_phi4(
        flow,
        target,
        args.steps,
        bins=args.bins,
        seed=args.seed,
        reweighted_errors=args.errors,
        return_chain=bool(args.save_configs),
    )
    rew = result["reweighted"]
    print(f"IMH acceptance {result['acceptance']:.4f}   ESS/n {rew['ess']:.4f}   Pareto k {rew['pareto_k']:.3f}")
    _warn_k(rew["pareto_k"])
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


def _run_gauge(args, flow, target):
    from flowvi.studies.gauge_mcmc import GAUGE_ROWS, nmcmc_gauge

    result = nmcmc_gauge(flow, target, args.steps, bins=args.bins, seed=args.seed, return_chain=bool(args.save_configs))
    rew = result["reweighted"]
    print(f"IMH acceptance {result['acceptance']:.4f}   ESS/n {rew['ess']:.4f}   Pareto k {rew['pareto_k']:.3f}")
    _warn_k(rew["pareto_k"])
    exact = result.get("exact", {})
    print(f"{'':20s} {'IMH chain':>28s}  {'reweighted':>22s}" + ("  exact" if exact else ""))
    for name in GAUGE_ROWS:
        row = f"{name:20s} {_fmt(result['chain'][name]):>28s}  {_fmt(rew[name])}"
        print(row + (f"  {exact[name]:.5f}" if name in exact else ""))
    return result


def _run_generic(args, flow, target):
    """Every coordinate's chain mean; the table shows the first few (all of them go to nmcmc.json)."""
    torch.manual_seed(args.seed)
    x, logw = flow_proposals(flow, target, args.steps)
    idx, acc = imh_indices(logw)
    chain = x[idx.to(x.device)]
    v = chain.reshape(len(chain), -1).double().cpu().numpy()
    coords = {f"x{i}": _chain_stats(v[:, i], args.bins) for i in range(v.shape[1])}
    result = {"steps": args.steps, "acceptance": acc, "chain": coords}
    if args.save_configs:
        result.update(chain_record(chain, idx, logw))
    print(f"IMH acceptance {acc:.4f}")
    for name in list(coords)[:10]:
        print(f"{name:20s} {_fmt(coords[name])}")
    if len(coords) > 10:
        print(f"... {len(coords) - 10} more coordinates in nmcmc.json")
    return result


def _chain_stats(v, bins):
    mean, se = jackknife(v, bins=bins)
    return {"mean": mean, "se": se, "tau_int": tau_int(v)}


def _warn_k(k):
    if k > 0.7:
        print("warning: Pareto k > 0.7: the importance weights are heavy-tailed; IMH and reweighted estimates")
        print("         can be biased with understated errors (train the flow longer)")


def _is_gauge(target) -> bool:
    shape = tuple(target.event_shape)
    return len(shape) == 3 and shape[0] == 2 and hasattr(target, "beta")


def run(args):
    if args.steps < 2:
        raise ValueError(f"--steps must be >= 2, got {args.steps}")
    if args.hmc < 0 or args.hmc_chains < 2:
        raise ValueError(f"--hmc must be >= 0 and --hmc-chains >= 2, got {args.hmc}, {args.hmc_chains}")
    if args.save_configs:
        check_configs_path(args.save_configs)  # refused before any work
    flow, target, config = load_run(args.run_dir)
    from flowvi.targets.phi4 import Phi4

    if args.hmc and not isinstance(target, Phi4):
        raise ValueError("--hmc is implemented for phi4 runs only")
    if isinstance(target, Phi4):
        result = _run_phi4(args, flow, target)
    elif _is_gauge(target):
        result = _run_gauge(args, flow, target)
    else:
        result = _run_generic(args, flow, target)
    records = {k: result.pop(k) for k in ("chain_states", "accepted", "log_weight") if k in result}
    out = Path(args.run_dir) / "nmcmc.json"
    write_json_atomic(result, out)
    print(f"wrote {out}")
    if records:
        path = save_configs(
            args.save_configs,
            records["chain_states"],
            records["accepted"],
            records["log_weight"],
            result["acceptance"],
            {k: config[k] for k in ("target", "flow", "dtype") if k in config},
        )
        print(f"wrote {len(records['accepted'])} configurations of shape {tuple(target.event_shape)} to {path}")
