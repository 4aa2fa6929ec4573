"""Correlated Gaussian ``N(0, Sigma)`` with ``Sigma_ij = scale_i scale_j rho^|i-j|`` (AR(1)
correlation; scales log-spaced from 1 to ``condition``^(1/2)), normalized: log Z = 0."""

from __future__ import annotations

import math

import torch

from flowvi.targets.base import Target


class CorrelatedGaussian(Target):
    """``N(0, Sigma)`` in ``dim`` dimensions with AR(1) correlation ``rho`` and scales log-spaced so that the
    covariance's scale ratio is ``condition`` (module docstring); normalized, ``log_evidence = 0``.
    Input (batch, dim), output (batch,)."""

    def __init__(self, dim: int = 10, rho: float = 0.9, condition: float = 100.0):
        super().__init__()
        if dim < 1 or not -1 < rho < 1 or condition < 1:
            raise ValueError(
                f"correlated Gaussian needs dim >= 1, |rho| < 1, condition >= 1; got {dim}, {rho}, {condition}"
            )
        self.event_shape, self.rho, self.condition, self.log_evidence = (int(dim),), float(rho), float(condition), 0.0
        idx = torch.arange(dim, dtype=torch.float64)
        scales = torch.logspace(0, 0.5 * math.log10(condition), dim, dtype=torch.float64)
        cov = scales[:, None] * scales[None, :] * rho ** (idx[:, None] - idx[None, :]).abs()
        self.register_buffer("cov", cov)
        self.register_buffer("chol", torch.linalg.cholesky(cov))

    def log_prob(self, x):
        chol = self.chol.to(x.dtype)
        y = torch.linalg.solve_triangular(chol, x.unsqueeze(-1), upper=False).squeeze(-1)
        logdet = 2 * torch.log(torch.diagonal(chol)).sum()
        return -0.5 * (y * y).sum(-1) - 0.5 * logdet - 0.5 * self.dim * math.log(2 * math.pi)

    def sample(self, n):
        return torch.randn(n, self.dim, dtype=self.chol.dtype) @ self.chol.T
