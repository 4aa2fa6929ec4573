"""Neal's funnel (Neal 2003): ``v ~ N(0, sigma^2)``, ``x_i | v ~ N(0, exp(v))``, i = 1..d-1.

Normalized, so log Z = 0. The neck (v << 0) is the classic failure case of VI and HMC.
"""

from __future__ import annotations

import math

import torch

from flowvi.targets.base import Target


class Funnel(Target):
    """Neal's funnel in ``dim`` dimensions (module docstring): ``x = (v, x_1..x_{d-1})``,
    ``log p(x) = log N(v; 0, sigma^2) + sum_i log N(x_i; 0, exp(v))``, normalized (``log_evidence = 0``).
    Input (batch, dim), output (batch,)."""

    def __init__(self, dim: int = 10, sigma: float = 3.0):
        super().__init__()
        if dim < 2:
            raise ValueError(f"funnel needs dim >= 2, got {dim}")
        self.event_shape, self.sigma, self.log_evidence = (int(dim),), float(sigma), 0.0

    def log_prob(self, x):
        v, rest = x[:, 0], x[:, 1:]
        d1 = rest.shape[1]
        lp_v = -0.5 * (v / self.sigma) ** 2 - math.log(self.sigma) - 0.5 * math.log(2 * math.pi)
        lp_rest = -0.5 * (rest * rest).sum(-1) * torch.exp(-v) - 0.5 * d1 * v - 0.5 * d1 * math.log(2 * math.pi)
        return lp_v + lp_rest

    def hierarchy(self):
        """``(children, parents)`` for :class:`flowvi.transforms.HierarchicalAffine`: every ``x_i`` given ``v``
        (``x_i = exp(v / 2) * eps_i`` exactly, a log-scale linear in ``v``)."""
        return [(torch.arange(1, self.dim), torch.zeros(self.dim - 1, 1, dtype=torch.long))]

    def sample(self, n):
        v = self.sigma * torch.randn(n, 1, dtype=torch.get_default_dtype())
        return torch.cat([v, torch.exp(v / 2) * torch.randn(n, self.dim - 1)], dim=1)
