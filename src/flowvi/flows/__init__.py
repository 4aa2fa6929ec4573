"""Flow builders: Real NVP for vectors, Glow (multi-scale) for images and vectors, and lattice field flows
(the Z2-equivariant phi^4 flow, gauge-equivariant U(1) flows)."""

from flowvi.flows.realnvp import Clamp, Couplings, Marginals, RealNVPOptions, Tails, realnvp

__all__ = ["Clamp", "Couplings", "Marginals", "RealNVPOptions", "Tails", "realnvp"]
