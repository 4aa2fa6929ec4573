"""MCMC and SMC samplers: HMC (fixed and adaptive, many chains in lock-step), flow-based independence
Metropolis-Hastings (neural MCMC), flowMC (local HMC plus flow proposals), tempered SMC, and NUTS through Pyro
(:mod:`flowvi.samplers.nuts`, optional)."""

from flowvi.samplers.adaptive_hmc import adaptive_hmc
from flowvi.samplers.flowmc import flowmc
from flowvi.samplers.hmc import hmc
from flowvi.samplers.nmcmc import flow_proposals, imh_indices, independence_mh
from flowvi.samplers.smc import run_smc

__all__ = ["adaptive_hmc", "flow_proposals", "flowmc", "hmc", "imh_indices", "independence_mh", "run_smc"]
