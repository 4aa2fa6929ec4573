"""phi^4 benchmark: train the checkerboard flow with each available estimator, report ESS and IMH acceptance.

PYTHONPATH=src python benchmarks/phi4.py --device cuda --out phi4.json
PYTHONPATH=src python benchmarks/phi4.py --quick
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from flowvi.estimators import ESTIMATORS
from flowvi.evaluate import evaluate
from flowvi.lattice.flows_phi4 import phi4_flow
from flowvi.lattice.phi4 import Phi4
from flowvi.samplers import independence_mh
from flowvi.train import fit


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="phi4.json")
    args = ap.parse_args()
    L, steps, batch, n_eval = (4, 100, 64, 2000) if args.quick else (16, 3000, 1024, 100_000)
    rows = []
    for name in ("reparam", "path", "reinforce"):
        if name not in ESTIMATORS:
            print(f"estimator {name!r} not available in flowvi.estimators; skipped")
            continue
        torch.manual_seed(0)
        target = Phi4(L=L, kappa=0.3, lam=0.022).to(args.device)
        flow = phi4_flow(L, layers=8, hidden=32 if not args.quick else 8, depth=2).to(args.device)
        t0 = time.perf_counter()
        fit(flow, target, steps=steps, batch_size=batch, lr=1e-3, estimator=name, progress=False)
        if args.device == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        ev = evaluate(flow, target, n_eval, batch_size=min(n_eval, 10_000))
        _, acc = independence_mh(flow, target, min(n_eval, 20_000))
        rows.append({"estimator": name, "L": L, "steps": steps, "train_s": wall, "ess": ev["ess"], "acceptance": acc})
        print(f"{name:10s} L={L} steps={steps} train {wall:7.1f}s  ESS/n {ev['ess']:.4f}  IMH acceptance {acc:.3f}")
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
