"""Is the HMC regime reachable by the hierarchical flow? ML on HMC draws, then reverse KL; ELBO and scores.

    PYTHONPATH=src python benchmarks/results/hierarchical_2026-11-23/warm_start_p200.py 200 hier-spline,realnvp
(run from the repository root; the CPU log of 2026-11-23 is warm_start_p200_cpu.log beside this file).
"""

import sys
import time

import numpy as np
import torch

sys.path.insert(0, "benchmarks")
from regularized_horseshoe import hmc_reference, regimes, scores  # noqa: E402

from flowvi.diagnostics.importance import summarize
from flowvi.runs.run_dir import build
from flowvi.targets import make_target
from flowvi.training.loop import TrainConfig, fit
from flowvi.training.pretrain import pretrain_on_draws

torch.set_num_threads(2)
p = int(sys.argv[1]) if len(sys.argv) > 1 else 200
target = make_target("regularized_horseshoe_nci60", p=p).double()
t0 = time.time()
row, ref, draws = hmc_reference(target, 64, 1000, 64, 0)
print("HMC", time.time() - t0, row["log_tau_q05_q50_q95"], row["beta0_q05_q50_q95"], flush=True)
x_draws = torch.as_tensor(draws.reshape(-1, target.dim), dtype=torch.float32)


def evaluate(flow, tgt, label):
    with torch.no_grad():
        x, lq = flow.sample_and_log_prob(20000)
        lw = (tgt.log_prob(x) - lq).double().numpy()
        coef = tgt.coefficients(x).double().numpy()
    s = summarize(lw)
    r = regimes(target, x.double())
    print(
        label,
        f"ELBO {s['elbo']:.2f} logZ {s['log_z']:.2f} k {s['pareto_k']:.2f}",
        scores(coef.mean(0), np.median(coef, 0), ref),
        "logtau",
        np.round(r["log_tau_q05_q50_q95"], 2),
        "b0",
        np.round(r["beta0_q05_q50_q95"], 2),
        "sdb",
        round(r["median_sd_beta"], 4),
        flush=True,
    )


for variant in sys.argv[2].split(","):
    cfg = {
        "target": {"name": "regularized_horseshoe_nci60", "params": {"p": p}},
        "seed": 0,
        "dtype": "float32",
        "flow": {"layers": 8, "hidden": 256, "spline": "spline" in variant, "hierarchical": "hier" in variant},
    }
    flow, tgt = build(cfg)
    t0 = time.time()
    info = pretrain_on_draws(flow, x_draws, steps=2000, batch_size=256, lr=1e-3)
    print(variant, "pretrain", round(time.time() - t0), "nll", info["nll_start"], info["nll_end"], flush=True)
    evaluate(flow, tgt, variant + " ML")
    fit(flow, tgt, TrainConfig(steps=1000, batch_size=256, lr=1e-4, checkpoint_every=10**9), progress=False)
    evaluate(flow, tgt, variant + " ML+RKL1000@1e-4")
