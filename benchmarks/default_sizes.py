"""Default flow size, batch and learning rate for small posteriors (issue 20): wall time to a trustworthy fit.

For each small target and each candidate setting, ``flowvi fit``'s path in Python: --init mode, then steps="auto"
(flat ELBO and k-hat < 0.7, or max_steps), timed as wall and CPU time of the process (one thread; the
CPU time is what counts on a machine shared with other jobs), then the final check on 20 000 draws: PSIS k-hat, ESS/n, and the IS log Z
error where the exact log Z is known. The candidates are the former default (8 couplings x 256, lr 1e-3) and the
rule of flowvi.training.sizing for d <= 20 (4 x 64, lr 2e-3), and a smaller one (4 x 32, lr 5e-3).

    python benchmarks/default_sizes.py [--max-steps 3000] [--out benchmarks/results/default_sizes.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from flowvi import evaluate, fit, realnvp
from flowvi.targets import make_target
from flowvi.training.mode_init import init_at_mode

TARGETS = [("conjugate_regression", {"dim": 10}), ("funnel", {"dim": 10}), ("horseshoe_synthetic", {"p": 5})]
SETTINGS = {
    "8x256 lr1e-3 (former)": {"layers": 8, "hidden": 256, "lr": 1e-3},
    "4x64 lr2e-3 (new, d<=20)": {"layers": 4, "hidden": 64, "lr": 2e-3},
    "4x32 lr5e-3": {"layers": 4, "hidden": 32, "lr": 5e-3},
}


def one(name, params, setting, max_steps, seed=0):
    torch.manual_seed(seed)
    target = make_target(name, **params)
    flow = realnvp(target.dim, layers=setting["layers"], hidden=setting["hidden"])
    t0, c0 = time.perf_counter(), time.process_time()
    init_at_mode(flow, target, seed=seed)
    state = fit(flow, target, batch_size=256, lr=setting["lr"], max_steps=max_steps, progress=False)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    s = evaluate(flow, target, n=20_000)
    return {
        "target": name,
        "d": target.dim,
        "setting": setting,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "steps": state.step,
        "stop_reason": state.stop_reason,
        "pareto_k": s["pareto_k"],
        "ess": s["ess"],
        "log_z_error": s.get("log_z_error"),
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--max-steps", type=int, default=3000)
    p.add_argument("--out", default="benchmarks/results/default_sizes.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    print(
        f"{'target':22} {'setting':26} {'wall s':>8} {'CPU s':>7} {'steps':>6} {'k-hat':>6} {'ESS/n':>6} {'logZ err':>9}"
    )
    for name, params in TARGETS:
        for label, setting in SETTINGS.items():
            r = one(name, params, setting, args.max_steps) | {"label": label}
            rows.append(r)
            err = f"{r['log_z_error']:+.3f}" if r["log_z_error"] is not None else "-"
            print(
                f"{name:22} {label:26} {r['seconds']:8.1f} {r['cpu_seconds']:7.1f} {r['steps']:6d} {r['pareto_k']:6.2f} {r['ess']:6.3f} {err:>9}"
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
