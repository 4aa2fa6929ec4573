"""MCMC samplers: flow-based independence Metropolis-Hastings and HMC."""

from .hmc import hmc
from .nmcmc import flow_proposals, imh_indices, independence_mh

__all__ = ["flow_proposals", "hmc", "imh_indices", "independence_mh"]
