"""Bayesian-model targets and diagnostics, side by side in one run.

1. Diagnostics: flowvi's torch R-hat / bulk-ESS / tail-ESS (flowvi.diagnostics.mcmc.rank_diagnostics, vectorized
   over coordinates) against ArviZ's (az.rhat, az.ess: a Python loop over coordinates) on the same draws,
   (chains, draws, d); the maximum relative difference is printed too (both compute the same estimators).
2. Log density and gradient of eight schools (d = 10) for a batch of draws: from_pyro (torch.func.vmap over
   the model), from_pyro one draw at a time in a Python loop (what vmap replaces), and from_pymc (PyMC's
   compiled logp/dlogp, one draw at a time) with PyTensor's C backend and its PyTorch backend.

    PYTHONPATH=src python benchmarks/bayesian.py --out benchmarks/results/bayesian.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

SIGMA = np.array([15.0, 10, 16, 11, 9, 11, 10, 18])
Y = np.array([28.0, 8, -3, 7, -1, 1, 18, 12])


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def diagnostics_rows(chains: int, draws: int, dims: list[int]) -> list[dict]:
    import arviz as az

    from flowvi.diagnostics.mcmc import rank_diagnostics

    rows = []
    for d in dims:
        rng = np.random.default_rng(d)
        x = np.cumsum(rng.standard_normal((chains, draws, d)), axis=1) * 0.05 + rng.standard_normal((chains, draws, d))
        data = az.convert_to_dataset({"x": x})

        def ours(x=x):
            return {k: v.numpy() for k, v in rank_diagnostics(torch.as_tensor(x)).items()}

        def arviz(data=data):
            return {
                "rank_rhat": az.rhat(data)["x"].values,
                "bulk_ess": az.ess(data)["x"].values,
                "tail_ess": az.ess(data, method="tail")["x"].values,
            }

        a, b = ours(), arviz()
        diff = max(float(np.max(np.abs(a[k] / b[k] - 1))) for k in b)
        t_ours, t_az = best_of(ours), best_of(arviz, repeats=1)
        rows.append(
            {"chains": chains, "draws": draws, "d": d, "flowvi_s": t_ours, "arviz_s": t_az, "max_rel_diff": diff}
        )
        print(f"  diagnostics {chains} x {draws} x {d}: flowvi {t_ours:.3f} s, ArviZ {t_az:.3f} s, "
              f"ratio {t_az / t_ours:.1f}, max rel diff {diff:.1e}", flush=True)  # fmt: skip
    return rows


def pymc_schools():
    import pymc as pm

    with pm.Model() as model:
        mu = pm.Normal("mu", 0, 5)
        tau = pm.HalfCauchy("tau", 5)
        eta = pm.Normal("eta", 0, 1, shape=8)
        pm.Normal("y", mu + tau * eta, SIGMA, observed=Y)
    return model


def log_density_rows(batch: int) -> list[dict]:
    from eight_schools import model

    from flowvi.targets import from_pymc, from_pyro

    pyro_target = from_pyro(model, sigma=SIGMA, y=torch.as_tensor(Y)).double()
    u = torch.randn(batch, 10, dtype=torch.float64)

    def value_and_grad(log_prob):
        x = u.clone().requires_grad_(True)
        return torch.autograd.grad(log_prob(x).sum(), x)[0]

    variants = {
        "from_pyro (vmap)": pyro_target.log_prob,
        "from_pyro, loop over draws": lambda x: torch.cat([pyro_target.log_prob(x[i : i + 1]) for i in range(len(x))]),
    }
    for mode in ("C", "PYTORCH"):
        try:
            target = from_pymc(pymc_schools(), mode=None if mode == "C" else mode)
            variants[f"from_pymc ({mode} backend, loop over draws)"] = target.log_prob
        except Exception as e:  # PyMC missing, or the backend does not compile this model: say so
            print(f"  from_pymc {mode}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    rows = []
    reference = value_and_grad(pyro_target.log_prob)
    for name, fn in variants.items():
        grad = value_and_grad(fn)
        seconds = best_of(lambda fn=fn: value_and_grad(fn))
        rows.append(
            {
                "variant": name,
                "batch": batch,
                "seconds": seconds,
                "grad_max_abs_diff": float((grad - reference).abs().max()),
            }
        )
        print(f"  {name}: {seconds * 1e3:.1f} ms for log p and its gradient at {batch} draws", flush=True)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--dims", default="10,100,400")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--out", default="benchmarks/results/bayesian.json")
    args = p.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    result = {
        "diagnostics": diagnostics_rows(args.chains, args.draws, [int(d) for d in args.dims.split(",")]),
        "log_density": log_density_rows(args.batch),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
