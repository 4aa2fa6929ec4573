"""Classical baselines: NUTS reference draws (Pyro, optional) and tempered SMC for log Z."""

from .smc import run_smc

__all__ = ["run_smc"]
