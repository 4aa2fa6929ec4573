"""Neural MCMC for 2D U(1) gauge theory and the Schwinger model: the flow as the proposal of an independence
Metropolis-Hastings chain (Albergo, Kanwar & Shanahan 2019, arXiv 1904.12072; Kanwar et al. 2020, arXiv
2003.06413), with the gauge observables of :mod:`flowvi.physics.u1`:

* average plaquette ``P = (1/V) sum_x cos P_x``;
* topological charge ``Q = (1/2pi) sum_x arg P_x`` (integer up to rounding);
* topological susceptibility ``chi_t = <Q^2> / V`` (Q rounded to the nearest integer).

Chain estimates carry binned-jackknife errors with bins at least ten integrated autocorrelation times long;
the same proposals, reweighted by ``w = p/q``, give self-normalized estimates with delta-method errors
(:func:`flowvi.physics.gauge_observables.weighted_mean_and_se`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from flowvi.diagnostics.errors import jackknife, tau_int
from flowvi.diagnostics.importance import normalized_ess, pareto_k
from flowvi.physics.gauge_observables import weighted_mean_and_se
from flowvi.physics.u1 import average_plaquette, topological_charge
from flowvi.runs.ensemble import chain_record
from flowvi.samplers.nmcmc import flow_proposals, imh_indices

GAUGE_ROWS = ("plaquette", "charge", "chi_t")


def gauge_series(links: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-configuration plaquette, charge and ``Q_int^2 / V`` of links (n, 2, L, L), as float64 arrays."""
    volume = links.shape[-1] * links.shape[-2]
    q = topological_charge(links).double().cpu().numpy()
    return {
        "plaquette": average_plaquette(links).double().cpu().numpy(),
        "charge": q,
        "chi_t": np.round(q) ** 2 / volume,
    }


def gauge_chain_estimates(chain: torch.Tensor, bins: int = 50) -> dict:
    """Mean, jackknife error and tau_int of each observable over one Markov chain (n, 2, L, L) in time order."""
    series = gauge_series(chain)
    n = len(series["plaquette"])
    taus = {k: tau_int(v) for k, v in series.items()}
    nbins = int(max(2, min(bins, n // max(1, math.ceil(10 * max(taus.values()))))))
    est = {}
    for name, v in series.items():
        mean, se = jackknife(v, bins=nbins)
        est[name] = {"mean": mean, "se": se, "tau_int": taus[name]}
    est["jackknife_bins"] = nbins
    return est


def gauge_reweighted_estimates(links: torch.Tensor, log_w: torch.Tensor) -> dict:
    """Self-normalized importance-sampling estimates of each observable from independent draws of q."""
    series = gauge_series(links)
    lw = log_w.detach().double().cpu()
    est = {}
    for name, v in series.items():
        mean, se = weighted_mean_and_se(torch.from_numpy(v), lw)
        est[name] = {"mean": mean, "se": se}
    est["ess"] = normalized_ess(lw)
    est["pareto_k"] = pareto_k(lw)
    return est


@torch.no_grad()
def nmcmc_gauge(
    flow, target, n: int, bins: int = 50, batch_size: int = 1024, seed: int | None = None, return_chain: bool = False
) -> dict:
    """IMH chain of ``n`` steps with ``flow`` as proposal on a gauge target (event shape (2, L, L)): the chain's
    estimates, the reweighted estimates of its proposals, and the target's exact values where known. With
    ``return_chain`` the result also holds ``chain_states`` (n, 2, L, L), ``accepted`` (n,) and ``log_weight`` (n,)
    of each chain state (tensors; drop them before writing JSON)."""
    if seed is not None:
        torch.manual_seed(seed)
    x, logw = flow_proposals(flow, target, n, batch_size)
    idx, acc = imh_indices(logw)
    chain = x[idx.to(x.device)]
    result = {
        "steps": n,
        "acceptance": acc,
        "chain": gauge_chain_estimates(chain, bins=bins),
        "reweighted": gauge_reweighted_estimates(x, logw),
    }
    exact = {}
    if hasattr(target, "exact_average_plaquette"):
        exact["plaquette"] = target.exact_average_plaquette()
    if hasattr(target, "exact_topological_susceptibility"):
        exact["chi_t"] = target.exact_topological_susceptibility()
    if exact:
        result["exact"] = exact
    if return_chain:
        result.update(chain_record(chain, idx, logw))
    return result
