"""Invertible 1x1 convolution with an LU-parameterised weight (Kingma & Dhariwal 2018, Glow, sec. 3.2).

Every position of a ``(N, C, *spatial)`` input (or every row of an ``(N, C)`` input) is multiplied by one
C x C matrix

    W = P L (U + diag(sign(s) * exp(log|s|))),

with P a fixed permutation, L unit lower triangular and U strictly upper triangular (learned), so that

    log|det dx/dz| = (number of positions) * sum(log|s|)

costs O(C) instead of O(C^3). W starts as a random rotation (P, L, U, s from its LU decomposition).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from flowvi.transforms.base import Transform


class InvertibleConv1x1(Transform):
    def __init__(self, channels: int, generator: torch.Generator | None = None):
        super().__init__()
        if channels < 1:
            raise ValueError(f"InvertibleConv1x1 needs channels >= 1, got {channels}")
        q, _ = torch.linalg.qr(torch.randn(channels, channels, generator=generator, dtype=torch.float64))
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        self.register_buffer("perm", p.float())
        self.register_buffer("sign_s", torch.sign(s).float())
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.lower = nn.Parameter(lower.float())
        self.upper = nn.Parameter(torch.triu(upper, 1).float())
        self.log_s = nn.Parameter(torch.log(torch.abs(s)).float())
        self.channels = channels

    def _factors(self) -> tuple[Tensor, Tensor]:
        eye = torch.eye(self.channels, dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return lower, upper

    def weight(self) -> Tensor:
        lower, upper = self._factors()
        return self.perm @ lower @ upper

    def inverse_weight(self) -> Tensor:
        """W^{-1} = U^{-1} L^{-1} P^T by triangular solves (no pivoting, no singularity check that would
        synchronise a GPU; U is invertible because its diagonal is exp(log|s|) > 0 up to sign)."""
        lower, upper = self._factors()
        eye = torch.eye(self.channels, dtype=lower.dtype, device=lower.device)
        inv_lower = torch.linalg.solve_triangular(lower, eye, upper=False, unitriangular=True)
        inv_upper = torch.linalg.solve_triangular(upper, eye, upper=True)
        return inv_upper @ inv_lower @ self.perm.T

    def _check(self, z: Tensor) -> None:
        if z.dim() < 2 or z.shape[1] != self.channels:
            raise ValueError(f"InvertibleConv1x1 expects (N, {self.channels}, ...), got {tuple(z.shape)}")

    @staticmethod
    def _mix(w: Tensor, z: Tensor) -> Tensor:
        """(C_out, C_in) matrix acting on dim 1 of (N, C_in, ...)."""
        if z.dim() == 2:
            return z @ w.T
        if z.dim() == 4:
            return F.conv2d(z, w.view(*w.shape, 1, 1))
        return torch.einsum("oc,nc...->no...", w, z)

    def _logdet(self, z: Tensor) -> Tensor:
        positions = z[0, 0].numel()
        return (self.log_s.sum() * positions).expand(z.shape[0])

    def forward(self, z):
        self._check(z)
        return self._mix(self.weight(), z), self._logdet(z)

    def inverse(self, x):
        self._check(x)
        return self._mix(self.inverse_weight(), x), -self._logdet(x)

    def forward_with_score(self, z, score):
        """Linear with constant log-det: score_x = W^{-T} score at every position."""
        x, logdet = self.forward(z)
        w_inv = self.inverse_weight().detach()
        return x, logdet, self._mix(w_inv.T, score).detach()
