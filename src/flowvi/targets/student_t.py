"""Multivariate Student-t ``t_nu(loc, scale^2 I)`` in d dimensions (normalized: log Z = 0).

log p(x) = lgamma((nu+d)/2) - lgamma(nu/2) - d/2 log(nu pi) - d log(scale)
           - (nu+d)/2 log(1 + |x - loc|^2 / (nu scale^2))
"""

from __future__ import annotations

import math

import torch

from flowvi.targets.base import Target


class MultivariateStudentT(Target):
    """Multivariate Student-t ``t_df(loc, scale^2 I)`` in ``dim`` dimensions (normalized, ``log_evidence = 0``):
    ``log p(x) = log G((nu+d)/2) - log G(nu/2) - (d/2) log(nu pi scale^2) - ((nu+d)/2) log(1 + |x-loc|^2/(nu scale^2))``.
    Input (batch, dim), output (batch,)."""

    def __init__(self, dim: int = 10, df: float = 3.0, loc: float = 0.0, scale: float = 1.0):
        super().__init__()
        if dim < 1 or df <= 0 or scale <= 0:
            raise ValueError(f"Student-t needs dim >= 1, df > 0, scale > 0; got {dim}, {df}, {scale}")
        self.event_shape, self.df, self.loc, self.scale = (int(dim),), float(df), float(loc), float(scale)
        self.log_evidence = 0.0

    def log_prob(self, x):
        nu, d = self.df, self.dim
        r2 = ((x - self.loc) ** 2).sum(-1) / (nu * self.scale**2)
        const = (
            math.lgamma((nu + d) / 2)
            - math.lgamma(nu / 2)
            - 0.5 * d * math.log(nu * math.pi)
            - d * math.log(self.scale)
        )
        return const - 0.5 * (nu + d) * torch.log1p(r2)

    def sample(self, n):
        z = torch.randn(n, self.dim)
        chi2 = torch.distributions.Chi2(torch.tensor(self.df)).sample((n, 1))
        return self.loc + self.scale * z / torch.sqrt(chi2 / self.df)
