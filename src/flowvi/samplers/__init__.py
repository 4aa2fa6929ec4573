"""MCMC samplers: flow-based independence Metropolis-Hastings and HMC."""

from .hmc import hmc
from .nmcmc import independence_mh

__all__ = ["hmc", "independence_mh"]
