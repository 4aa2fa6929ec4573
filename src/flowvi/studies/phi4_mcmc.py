"""phi^4 estimates from three samplers with one set of observables (:mod:`.observables_phi4`):

* ``nmcmc_phi4``: the flow as proposal of an independence Metropolis-Hastings chain (neural MCMC), and
  self-normalised importance reweighting of the very same proposals (w = p/q);
* ``hmc_phi4``: the HMC baseline on the same ``Phi4`` target (same ``log_prob``), chains started from flow
  samples or any given fields.

Errors: binned jackknife. For a chain the bins are at least 10 integrated autocorrelation times long
(fewer bins when tau_int is large); independent HMC chains are binned chain by chain.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from flowvi.diagnostics.errors import tau_int
from flowvi.diagnostics.importance import normalized_ess, pareto_k
from flowvi.flows.phi4 import z2_proposal
from flowvi.physics.phi4_observables import measurements, phi4_estimates
from flowvi.samplers import hmc
from flowvi.samplers.nmcmc import flow_proposals, imh_indices


def chain_estimates(phi_chain, bins: int = 50) -> dict:
    """Estimates of one Markov chain (n, L, L) in time order, with tau_int of |M| and M^2."""
    meas = measurements(phi_chain)
    n = len(meas["abs_m"])
    taus = {"abs_magnetization": tau_int(meas["abs_m"]), "chi_2": tau_int(meas["m2"])}
    longest = max(taus.values())
    nbins = int(max(2, min(bins, n // max(1, math.ceil(10 * longest)))))
    est = phi4_estimates(meas, bins=nbins)
    for name, tau in taus.items():
        est[name]["tau_int"] = tau
    est["jackknife_bins"] = nbins
    return est


@torch.no_grad()
def nmcmc_phi4(
    flow,
    target,
    n: int,
    bins: int = 50,
    batch_size: int = 1024,
    seed: int | None = None,
    reweighted_errors: str = "jackknife",
    return_chain: bool = False,
) -> dict:
    """IMH chain of ``n`` steps with ``flow`` as proposal (its Z2-symmetrized mixture for flows built with
    ``z2="symmetrize"``, see :func:`flowvi.flows.phi4.z2_proposal`), and the reweighted estimates of its proposals
    (independent draws, so their errors may also come from the bootstrap: ``reweighted_errors``). With
    ``return_chain`` the result also holds ``chain_states`` (n, L, L), ``accepted`` (n,) and ``log_weight`` (n,)
    (tensors; drop them before writing JSON)."""
    if seed is not None:
        torch.manual_seed(seed)
    x, logw = flow_proposals(z2_proposal(flow), target, n, batch_size)
    idx, acc = imh_indices(logw)
    chain = chain_estimates(x[idx.to(x.device)], bins=bins)
    rew = phi4_estimates(measurements(x), log_w=logw, method=reweighted_errors, bins=bins, seed=seed or 0)
    rew["ess"] = normalized_ess(logw)
    rew["pareto_k"] = pareto_k(logw)
    result = {"steps": n, "acceptance": acc, "chain": chain, "reweighted": rew}
    if return_chain:
        from flowvi.runs.ensemble import chain_record

        result.update(chain_record(x[idx.to(x.device)], idx, logw))
    return result


def hmc_phi4(
    target,
    x0,
    n_steps: int,
    step_size: float = 0.1,
    n_leapfrog: int = 10,
    burn_in: int | None = None,
    seed: int | None = None,
) -> dict:
    """HMC from x0 (chains, L, L); the first ``burn_in`` trajectories (default n_steps // 5) are dropped and
    the jackknife bins are the chains (needs at least 2 chains)."""
    chains = x0.shape[0]
    if chains < 2:
        raise ValueError(f"hmc_phi4 needs at least 2 chains for its errors, got {chains}")
    burn_in = n_steps // 5 if burn_in is None else burn_in
    if not 0 <= burn_in < n_steps:
        raise ValueError(f"burn_in must be in [0, n_steps), got {burn_in}")
    xs, acc = hmc(target, x0, n_steps, step_size=step_size, n_leapfrog=n_leapfrog, seed=seed)
    xs = xs[burn_in:]
    per_chain = xs.transpose(0, 1).reshape(-1, *xs.shape[2:])  # chain-major: a jackknife bin = one chain
    meas = measurements(per_chain)
    est = phi4_estimates(meas, bins=chains)
    steps_per_chain = xs.shape[0]
    m = meas["abs_m"].reshape(chains, steps_per_chain)
    est["abs_magnetization"]["tau_int"] = float(np.median([tau_int(c) for c in m]))
    return {"chains": chains, "steps": n_steps, "burn_in": burn_in, "acceptance": acc, "estimates": est}
