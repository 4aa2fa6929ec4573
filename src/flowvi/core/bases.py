"""Base distributions over an event shape, with ``log_prob``, ``sample`` and ``score``.

``score(z) = d log q0(z) / dz`` seeds the fast path-gradient recursion. Both bases keep a
zero-sized buffer so ``.to(device, dtype)`` moves them with the flow.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

BASES = ("gaussian", "student_t")


class _Base(nn.Module):
    def __init__(self, event_shape: int | tuple[int, ...]):
        super().__init__()
        self.event_shape = (event_shape,) if isinstance(event_shape, int) else tuple(event_shape)
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    @property
    def dim(self) -> int:
        return math.prod(self.event_shape)

    def _flat(self, z):
        return z.reshape(z.shape[0], -1)


class StandardNormal(_Base):
    """``N(0, I)`` over ``event_shape``: ``log q0(z) = -|z|^2/2 - (d/2) log(2 pi)``, score ``-z``.

    Args:
        event_shape: an int ``d`` or a shape such as ``(L, L)``; samples are ``(n, *event_shape)``.
    """

    def log_prob(self, z: Tensor) -> Tensor:
        z = self._flat(z)
        return -0.5 * (z * z).sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)

    def sample(self, n: int) -> Tensor:
        a = self._anchor
        return torch.randn((n, *self.event_shape), device=a.device, dtype=a.dtype)

    def score(self, z):
        return -z


class StudentT(_Base):
    """Independent Student-t with ``df`` degrees of freedom in each coordinate, a heavy-tailed base (Jaini et
    al. 2020, "Tails of Lipschitz triangular flows", ICML; Andrade 2024, arXiv 2402.16408):

        log q0(z) = sum_i [ log G((nu+1)/2) - log G(nu/2) - (1/2) log(nu pi) - ((nu+1)/2) log(1 + z_i^2/nu) ],

    score ``-(nu+1) z / (nu + z^2)``. Samples ``(n, *event_shape)`` drawn as ``N / sqrt(V/nu)``, ``V ~ chi^2_nu``.
    """

    def __init__(self, event_shape: int | tuple[int, ...], df: float = 5.0):
        super().__init__(event_shape)
        if df <= 0:
            raise ValueError(f"Student-t base needs df > 0, got {df}")
        self.df = float(df)

    def log_prob(self, z):
        nu = self.df
        z = self._flat(z)
        const = math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - 0.5 * math.log(nu * math.pi)
        return z.shape[-1] * const - 0.5 * (nu + 1) * torch.log1p(z * z / nu).sum(-1)

    def sample(self, n):
        a = self._anchor
        # t = N / sqrt(V / df) with V ~ chi^2_df = 2 * Gamma(df / 2, 1).
        normal = torch.randn((n, *self.event_shape), device=a.device, dtype=a.dtype)
        conc = torch.full((n, *self.event_shape), self.df / 2, device=a.device, dtype=a.dtype)
        gamma = torch.distributions.Gamma(conc, torch.ones_like(conc)).sample()
        return normal / torch.sqrt(2 * gamma / self.df)

    def score(self, z):
        return -(self.df + 1) * z / (self.df + z * z)

    def extra_repr(self):
        return f"df={self.df}"


def make_base(kind: str, event_shape, df: float = 5.0) -> _Base:
    """The base distribution named ``kind``: ``gaussian`` (:class:`StandardNormal`) or ``student_t``
    (:class:`StudentT` with ``df``), over ``event_shape`` (an int ``d`` or a shape)."""
    if kind == "gaussian":
        return StandardNormal(event_shape)
    if kind in ("student_t", "student-t", "t"):
        return StudentT(event_shape, df=df)
    raise ValueError(f"unknown base {kind!r}; choose one of {', '.join(BASES)}")
