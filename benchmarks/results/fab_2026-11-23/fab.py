# ruff: noqa  (the prototype as it ran, kept for provenance; flowvi.objectives.fab.FAB is the library version)
"""Prototype: FAB (Midgley et al. 2023) from the reverse-KL warm flow at p=200; AIS q -> p^2/q with HMC."""

import copy
import math
import pickle
import sys
import time

import numpy as np
import torch

sys.path.insert(0, "benchmarks")
from regularized_horseshoe import regimes, scores

from flowvi.diagnostics.importance import summarize
from flowvi.runs.run_dir import build

torch.set_num_threads(2)
args = dict(a.split("=") for a in sys.argv[1:])
M = int(args.get("M", 8))
L = int(args.get("L", 4))
N = int(args.get("N", 256))
steps = int(args.get("steps", 300))
lr = float(args.get("lr", 1e-4))
alpha = float(args.get("alpha", 2.0))
init = args.get("init", "rkl")
p = 200
cfg = {
    "target": {"name": "regularized_horseshoe_nci60", "params": {"p": p}},
    "seed": 0,
    "dtype": "float32",
    "flow": {"layers": 8, "hidden": 256, "spline": True, "hierarchical": True},
}
flow, tgt = build(cfg)
if init == "rkl":
    flow.load_state_dict(torch.load("/tmp/fab_rkl200.pt"))
ref = pickle.load(open("/tmp/fab_ref200.pkl", "rb"))["ref"]
tgt64 = copy.deepcopy(tgt).double()


def evaluate(label):
    with torch.no_grad():
        x, lq = flow.sample_and_log_prob(20000)
        lw = (tgt64.log_prob(x.double()) - lq.double()).numpy()
        coef = tgt64.coefficients(x.double()).numpy()
    s = summarize(lw)
    r = regimes(tgt64, x.double())
    print(
        label,
        f"ELBO {s['elbo']:.2f} logZ {s['log_z']:.2f} k {s['pareto_k']:.2f}",
        scores(coef.mean(0), np.median(coef, 0), ref),
        "logtau",
        np.round(r["log_tau_q05_q50_q95"], 2),
        "sdb",
        round(r["median_sd_beta"], 4),
        flush=True,
    )


def logq_grad(x):
    x = x.detach().requires_grad_(True)
    lq = flow.log_prob(x)
    (g,) = torch.autograd.grad(lq.sum(), x)
    return lq.detach(), g


def logp_grad(x):
    x = x.detach().double().requires_grad_(True)
    lp = tgt64.log_prob(x)
    (g,) = torch.autograd.grad(lp.sum(), x)
    return lp.detach().float(), g.float()


betas = torch.linspace(0, 1, M + 1)
log_eps = torch.full((M,), math.log(0.05))


def ais():
    """x_0 ~ q; pi_b = q^(1 - alpha b) p^(alpha b) (b = 1: p^alpha / q^(alpha - 1)); log weights."""
    with torch.no_grad():
        x, _ = flow.sample_and_log_prob(N)
    lq, gq = logq_grad(x)
    lp, gp = logp_grad(x)
    scale = x.std(0).clamp_min(1e-4)  # diagonal metric: position scale per coordinate
    logw = torch.zeros(N)
    accs = []
    for j in range(1, M + 1):
        b0, b1 = betas[j - 1], betas[j]
        logw += alpha * (b1 - b0) * (lp - lq)
        b = b1

        def lpi(lq_, lp_):
            return (1 - alpha * b) * lq_ + alpha * b * lp_

        eps = log_eps[j - 1].exp() * scale
        mom = torch.randn_like(x)
        cur = lpi(lq, lp)
        h0 = cur - 0.5 * (mom**2).sum(1)
        y, m = x.clone(), mom.clone()
        g = (1 - alpha * b) * gq + alpha * b * gp
        for _ in range(L):
            m = m + 0.5 * eps * g
            y = y + eps * m
            lq_y, gq_y = logq_grad(y)
            lp_y, gp_y = logp_grad(y)
            g = (1 - alpha * b) * gq_y + alpha * b * gp_y
            m = m + 0.5 * eps * g
        h1 = lpi(lq_y, lp_y) - 0.5 * (m**2).sum(1)
        log_acc = (h1 - h0).nan_to_num(nan=-math.inf).clamp(max=0)
        acc = torch.rand(N).log() < log_acc
        fin = torch.isfinite(lq_y) & torch.isfinite(lp_y)
        acc &= fin
        x = torch.where(acc[:, None], y, x)
        lq = torch.where(acc, lq_y, lq)
        lp = torch.where(acc, lp_y, lp)
        gq = torch.where(acc[:, None], gq_y, gq)
        gp = torch.where(acc[:, None], gp_y, gp)
        a = float(log_acc.exp().nan_to_num(0).mean())
        accs.append(a)
        log_eps[j - 1] += 0.05 * (a - 0.65)  # Robbins-Monro towards 65 % acceptance
    return x.detach(), logw, accs


opt = torch.optim.Adam(flow.parameters(), lr=lr)
evaluate("start")
t0 = time.time()
for it in range(1, steps + 1):
    x, logw, accs = ais()
    w = torch.softmax(logw.nan_to_num(nan=-math.inf), 0)
    ess = float(1 / (w**2).sum()) / N
    loss = -(w * flow.log_prob(x)).sum()
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(flow.parameters(), 10.0)
    opt.step()
    if it % 10 == 0:
        print(
            it,
            f"{time.time() - t0:.0f}s ess {ess:.3f} acc {np.round(accs, 2).tolist()} eps {np.round(log_eps.exp().numpy(), 3).tolist()}",
            flush=True,
        )
    if it % int(args.get("every", 50)) == 0:
        evaluate(f"it {it}")
