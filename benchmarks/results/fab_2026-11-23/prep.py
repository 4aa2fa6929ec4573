# ruff: noqa  (the prototype as it ran, kept for provenance; flowvi.objectives.fab.FAB is the library version)
"""HMC reference and a reverse-KL warm flow at p=200, cached for the FAB experiments."""

import pickle
import sys
import time

import torch

sys.path.insert(0, "benchmarks")
from regularized_horseshoe import hmc_reference

from flowvi.runs.run_dir import build
from flowvi.training.loop import TrainConfig, fit

torch.set_num_threads(2)
p = 200
cfg = {
    "target": {"name": "regularized_horseshoe_nci60", "params": {"p": p}},
    "seed": 0,
    "dtype": "float32",
    "flow": {"layers": 8, "hidden": 256, "spline": True, "hierarchical": True},
}
flow, tgt = build(cfg)
t0 = time.time()
import copy

row, ref, draws = hmc_reference(copy.deepcopy(tgt).double(), 64, 1000, 64, 0)
print("HMC", time.time() - t0, flush=True)
pickle.dump({"ref": ref, "row": row}, open("/tmp/fab_ref200.pkl", "wb"))
torch.save(torch.as_tensor(draws.reshape(-1, tgt.dim)[::8].copy()), "/tmp/fab_draws200.pt")
t0 = time.time()
fit(flow, tgt, TrainConfig(steps=2000, batch_size=256, checkpoint_every=10**9), progress=False)
print("RKL", time.time() - t0, flush=True)
torch.save(flow.state_dict(), "/tmp/fab_rkl200.pt")
