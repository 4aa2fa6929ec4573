"""LOFT: the log soft extension of Andrade (2024, arXiv 2402.16408, eq. 8).

Elementwise and identity on [-tau, tau], logarithmic beyond:

    g(z) = sign(z) * (min(|z|, tau) + log(max(|z| - tau, 0) + 1))

Placed as the last bijection of a flow it bounds how far a sample can go however the coupling
layers misbehave, while leaving the bulk (|z| <= tau, tau = 100 by default) untouched.
"""

from __future__ import annotations

import torch

from flowvi.transforms.base import Transform, sum_except_batch


def _loft(z, tau: float):
    """``(g(z), log(1 + max(|z| - tau, 0)))`` elementwise (the second is ``-log g'(z)``). The identity branch is
    ``z`` itself, so autograd gives slope 1 at ``z = 0`` too (``sign(z) * |z|`` would give 0 there); relu keeps
    the other branch finite."""
    log_excess = torch.log1p(torch.relu(z.abs() - tau))
    return torch.where(z.abs() <= tau, z, torch.sign(z) * (tau + log_excess)), log_excess


def loft(z, tau: float):
    """``g(z)`` elementwise (the module docstring's formula)."""
    return _loft(z, tau)[0]


class LOFT(Transform):
    """The LOFT layer ``g(z) = sign(z) (min(|z|, tau) + log(1 + max(|z| - tau, 0)))`` elementwise (module
    docstring; Andrade 2024, arXiv 2402.16408), ``log|det J| = -sum log(1 + max(|z| - tau, 0))``.
    Any shape (batch, ...)."""

    def __init__(self, tau: float = 100.0):
        super().__init__()
        if tau <= 0:
            raise ValueError(f"LOFT needs tau > 0, got {tau}")
        self.tau = float(tau)

    def forward(self, z):
        x, log_excess = _loft(z, self.tau)
        return x, -sum_except_batch(log_excess)

    def inverse(self, x):
        excess = torch.clamp(x.abs() - self.tau, min=0.0)
        z = torch.sign(x) * (torch.clamp(x.abs(), max=self.tau) + torch.expm1(excess))
        return z, sum_except_batch(excess)

    def forward_with_score(self, z, score):
        # g'(z) = 1 / (1 + excess); d log g'(z) / dz = -sign(z) / (1 + excess) beyond tau.
        x, logdet = self.forward(z)
        excess = torch.clamp(z.detach().abs() - self.tau, min=0.0)
        dlogdet = -torch.sign(z.detach()) * (excess > 0) / (1 + excess)
        return x, logdet, (score - dlogdet) * (1 + excess)

    def extra_repr(self):
        return f"tau={self.tau}"
