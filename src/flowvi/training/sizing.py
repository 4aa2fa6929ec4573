"""Default flow size, batch and learning rate of ``flowvi fit`` from the target's dimension d.

A posterior with ten parameters does not need eight couplings of width 256: most of their time goes into
matrix products that a narrow network does as well. The rule (measured: benchmarks/RESULTS.md, "Default sizes
from d"):

    d <= 20:    4 couplings, width  64, batch 256, lr 2e-3
    d <= 200:   6 couplings, width 128, batch 256, lr 2e-3
    otherwise:  8 couplings, width 256, batch 256, lr 1e-3   (the stabilised Real NVP of Andrade 2024)

always with 2 hidden layers per conditioner. The d <= 20 rule is measured against the former default (8 x 256,
lr 1e-3) and 4 x 32 with lr 5e-3; the middle rule is interpolated, not measured.
"""

from __future__ import annotations


def default_size(d: int) -> dict:
    """``{"layers", "hidden", "depth", "batch_size", "lr"}`` for a target of dimension ``d`` (module docstring)."""
    if d <= 20:
        return {"layers": 4, "hidden": 64, "depth": 2, "batch_size": 256, "lr": 2e-3}
    if d <= 200:
        return {"layers": 6, "hidden": 128, "depth": 2, "batch_size": 256, "lr": 2e-3}
    return {"layers": 8, "hidden": 256, "depth": 2, "batch_size": 256, "lr": 1e-3}


__all__ = ["default_size"]
