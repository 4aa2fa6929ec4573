"""Make the reference files of the posterior benchmark (``benchmarks/posteriors.py``).

    # posteriordb: copy the small data sets into the package, reduce the reference draws to means and sds
    PYTHONPATH=src python benchmarks/posteriors/make_references.py posteriordb --repo PATH/TO/posteriordb
    # the two simulated data sets (fixed seeds) and the exact references (funnel, Gaussian mixture)
    PYTHONPATH=src python benchmarks/posteriors/make_references.py simulate
    PYTHONPATH=src python benchmarks/posteriors/make_references.py exact
    # long many-chain NumPyro NUTS references where no exact value exists
    PYTHONPATH=src python benchmarks/posteriors/make_references.py nuts stochastic_volatility --chains 8 --draws 5000

``--repo`` is a clone of https://github.com/stan-dev/posteriordb (a working tree or a bare git directory;
files are read with ``git show HEAD:...``). Every reference file records the command that made it.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
REFS = ROOT / "benchmarks" / "posteriors" / "references"
DATA = ROOT / "src" / "flowvi" / "data" / "posteriordb"

#: posteriordb posterior -> (data name, data fields the model uses)
POSTERIORDB = {
    "arK-arK": ("arK", ["K", "T", "y"]),
    "arma-arma11": ("arma", ["T", "y"]),
    "garch-garch11": ("garch", ["T", "y", "sigma1"]),
    "eight_schools-eight_schools_noncentered": ("eight_schools", ["J", "y", "sigma"]),
    "gp_pois_regr-gp_pois_regr": ("gp_pois_regr", ["N", "x", "k"]),
    "low_dim_gauss_mix-low_dim_gauss_mix": ("low_dim_gauss_mix", ["N", "y"]),
    "kidiq-kidscore_momhsiq": ("kidiq", ["N", "kid_score", "mom_hs", "mom_iq"]),
    "sblrc-blr": ("sblrc", ["N", "D", "X", "y"]),
    "mesquite-logmesquite_logvash": (
        "mesquite",
        ["N", "weight", "diam1", "diam2", "canopy_height", "total_height", "group"],
    ),
}
#: posteriors scored against another posterior's reference draws (the same posterior, reparameterized)
SAME_AS = {"eight_schools-eight_schools_centered": "eight_schools-eight_schools_noncentered"}


def git_show(repo: Path, path: str) -> bytes:
    return subprocess.run(["git", "-C", str(repo), "show", f"HEAD:{path}"], check=True, capture_output=True).stdout


def unzip_json(blob: bytes):
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        return json.loads(z.read(z.namelist()[0]))


def write_ref(name: str, params, mean, sd, **info):
    ref = {"name": name, "params": list(params), "mean": [float(m) for m in mean], "sd": [float(s) for s in sd]}
    ref.update(info)
    (REFS / f"{name}.json").write_text(json.dumps(ref, indent=1) + "\n")
    print(f"wrote {REFS / f'{name}.json'} ({len(ref['params'])} parameters)")


def cmd_posteriordb(args):
    repo = Path(args.repo)
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, capture_output=True, text=True)
    commit = commit.stdout.strip()
    base = "posterior_database"
    for name, (data_name, fields) in POSTERIORDB.items():
        data = unzip_json(git_show(repo, f"{base}/data/data/{data_name}.json.zip"))
        (DATA / f"{data_name}.json").write_text(json.dumps({k: data[k] for k in fields}) + "\n")
        chains = unzip_json(git_show(repo, f"{base}/reference_posteriors/draws/draws/{name}.json.zip"))
        params = list(chains[0])
        draws = np.stack([np.concatenate([np.asarray(c[p], float) for c in chains]) for p in params], axis=1)
        info = json.loads(git_show(repo, f"{base}/reference_posteriors/draws/info/{name}.info.json"))
        for target in [name] + [k for k, v in SAME_AS.items() if v == name]:
            write_ref(
                target,
                params,
                draws.mean(0),
                draws.std(0, ddof=1),
                log_z=None,
                draws=int(draws.shape[0]),
                source=f"posteriordb reference draws {name} (stan-dev/posteriordb@{commit[:12]}): "
                f"{info['inference']['method']} {json.dumps(info['inference']['method_arguments'])}",
                command=f"benchmarks/posteriors/make_references.py posteriordb --repo posteriordb  # {commit}",
            )


def cmd_simulate(_args):
    """The two data sets of the d >= 100 posteriors, simulated once with fixed seeds and shipped."""
    rng = np.random.default_rng(20)
    t, mu, phi, sigma = 100, -1.0, 0.9, 0.35
    h = np.empty(t)
    h[0] = mu + sigma / np.sqrt(1 - phi**2) * rng.standard_normal()
    for i in range(1, t):
        h[i] = mu + phi * (h[i - 1] - mu) + sigma * rng.standard_normal()
    y = np.exp(h / 2) * rng.standard_normal(t)
    sim = {"T": t, "y": np.round(y, 6).tolist(), "truth": {"mu": mu, "phi": phi, "sigma": sigma}}
    (DATA / "stochastic_volatility.json").write_text(json.dumps(sim) + "\n")
    rng = np.random.default_rng(21)
    groups, per, mu, tau, beta = 100, 10, -0.5, 1.0, np.array([1.0, -0.5])
    g = np.repeat(np.arange(groups), per)
    x = np.round(rng.standard_normal((groups * per, 2)), 4)
    alpha = mu + tau * rng.standard_normal(groups)
    y = (rng.random(groups * per) < 1 / (1 + np.exp(-(alpha[g] + x @ beta)))).astype(int)
    sim = {"J": groups, "N": groups * per, "group": g.tolist(), "X": x.tolist(), "y": y.tolist()}
    sim["truth"] = {"mu": mu, "tau": tau, "beta": beta.tolist()}
    (DATA / "hierarchical_logistic.json").write_text(json.dumps(sim) + "\n")
    print("wrote stochastic_volatility.json and hierarchical_logistic.json")


def cmd_exact(_args):
    sys.path.insert(0, str(ROOT / "src"))
    from flowvi.targets import make_target

    funnel = make_target("funnel")
    d, s = funnel.dim, funnel.sigma
    params = ["v"] + [f"x[{i}]" for i in range(1, d)]
    write_ref(
        "funnel",
        params,
        np.zeros(d),
        [s] + [float(np.exp(s**2 / 4))] * (d - 1),
        log_z=0.0,
        source="exact: v ~ N(0, sigma^2), x_i | v ~ N(0, e^v), so sd(x_i) = exp(sigma^2 / 4); normalized (log Z = 0)",
        command="benchmarks/posteriors/make_references.py exact",
    )
    mix = make_target("gauss_mix_separated")
    mean, sd = mix.exact_moments()
    write_ref(
        "gauss_mix_separated",
        [f"x[{i}]" for i in range(1, mix.dim + 1)],
        mean,
        sd,
        log_z=0.0,
        source="exact mixture moments: mean = sum_k w_k m_k, E[x^2] = sum_k w_k (s_k^2 + m_k^2); normalized",
        command="benchmarks/posteriors/make_references.py exact",
    )


def cmd_nuts(args):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import arviz as az
    from numpyro_models import reported_draws, run_nuts

    t0 = time.perf_counter()
    res = run_nuts(
        args.name,
        chains=args.chains,
        warmup=args.warmup,
        draws=args.draws,
        seed=args.seed,
        target_accept=args.target_accept,
    )
    seconds = time.perf_counter() - t0
    params, draws = reported_draws(args.name, res["samples"])  # draws (chains, n, k)
    rhat = np.array([float(az.rhat(draws[:, :, j], method="rank")) for j in range(draws.shape[2])])
    ess = np.array([float(az.ess(draws[:, :, j], method="bulk")) for j in range(draws.shape[2])])
    flat = draws.reshape(-1, draws.shape[2])
    print(f"max rank R-hat {rhat.max():.4f}, min bulk ESS {ess.min():.0f}, divergences {res['divergences']}")
    if rhat.max() > 1.01:
        raise SystemExit(f"max rank-normalized R-hat {rhat.max():.4f} > 1.01: not written; run longer")
    write_ref(
        args.name,
        params,
        flat.mean(0),
        flat.std(0, ddof=1),
        log_z=None,
        draws=int(flat.shape[0]),
        max_rank_rhat=float(rhat.max()),
        min_bulk_ess=float(ess.min()),
        divergences=int(res["divergences"]),
        seconds=round(seconds, 1),
        source=f"NumPyro NUTS, {args.chains} chains x ({args.warmup} warm-up + {args.draws}), seed {args.seed}, "
        f"float64, target_accept {args.target_accept}",
        command=f"benchmarks/posteriors/make_references.py nuts {args.name} --chains {args.chains} "
        f"--warmup {args.warmup} --draws {args.draws} --seed {args.seed} --target-accept {args.target_accept}",
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("posteriordb")
    p.add_argument("--repo", required=True, help="a clone of stan-dev/posteriordb")
    sub.add_parser("simulate")
    sub.add_parser("exact")
    p = sub.add_parser("nuts")
    p.add_argument("name")
    p.add_argument("--chains", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2000)
    p.add_argument("--draws", type=int, default=5000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--target-accept", type=float, default=0.95)
    args = ap.parse_args(argv)
    REFS.mkdir(parents=True, exist_ok=True)
    DATA.mkdir(parents=True, exist_ok=True)
    {"posteriordb": cmd_posteriordb, "simulate": cmd_simulate, "exact": cmd_exact, "nuts": cmd_nuts}[args.cmd](args)


if __name__ == "__main__":
    main()
