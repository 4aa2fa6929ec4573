"""Reweighted gauge observables from a trained flow: average plaquette, topological charge and susceptibility.

Draws ``x ~ q`` and weights ``w ∝ p(x)/q(x)`` (self-normalized importance sampling), so the estimates are
unbiased in the large-sample limit even when the flow is imperfect. The standard error of a self-normalized
estimate ``sum_i w_i f_i`` is the delta-method ``sqrt(sum_i w_i^2 (f_i - f_hat)^2)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowvi.physics.u1 import average_plaquette, topological_charge


def weighted_mean_and_se(values: Tensor, log_weights: Tensor) -> tuple[float, float]:
    """Self-normalized importance-sampling mean of ``values`` and its delta-method standard error."""
    w = torch.softmax(log_weights.double(), 0)
    v = values.double()
    mean = (w * v).sum()
    se = torch.sqrt((w * w * (v - mean) ** 2).sum())
    return float(mean), float(se)


@torch.no_grad()
def gauge_observables(flow, target, n: int = 10_000, batch_size: int = 1_000) -> dict:
    """Reweighted ``<plaquette>``, ``<Q>``, ``chi_t = <Q^2>/V`` (each with its standard error), the normalized
    ESS, and for targets that know them the exact plaquette, ``chi_t`` and ``log Z``."""
    if n < 2:
        raise ValueError(f"need at least 2 samples, got n={n}")
    log_w, plaq, charge = [], [], []
    for i in range(0, n, batch_size):
        x, log_q = flow.sample_and_log_prob(min(batch_size, n - i))
        log_w.append((target.log_prob(x) - log_q).double().cpu())
        plaq.append(average_plaquette(x).double().cpu())
        charge.append(topological_charge(x).double().cpu())
    log_w, plaq, charge = torch.cat(log_w), torch.cat(plaq), torch.cat(charge)
    volume = x.shape[-1] * x.shape[-2]
    w = torch.softmax(log_w, 0)
    out = {"n": n, "ess": float(1 / (w * w).sum() / n)}
    out["plaquette"], out["plaquette_se"] = weighted_mean_and_se(plaq, log_w)
    out["charge"], out["charge_se"] = weighted_mean_and_se(charge, log_w)
    chi, chi_se = weighted_mean_and_se(charge.round() ** 2, log_w)
    out["chi_t"], out["chi_t_se"] = chi / volume, chi_se / volume
    if hasattr(target, "exact_average_plaquette"):
        out["exact_plaquette"] = target.exact_average_plaquette()
    if hasattr(target, "exact_topological_susceptibility"):
        out["exact_chi_t"] = target.exact_topological_susceptibility()
    if getattr(target, "log_evidence", None) is not None:
        out["log_z"] = float(torch.logsumexp(log_w, 0) - torch.log(torch.tensor(float(n), dtype=torch.float64)))
        out["exact_log_z"] = float(target.log_evidence)
    return out
