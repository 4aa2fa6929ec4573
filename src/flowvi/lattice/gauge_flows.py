"""Gauge-equivariant flows for 2D U(1) link angles (Kanwar et al. 2020, arXiv 2003.06413;
Albergo et al. 2021, arXiv 2101.08176): masked plaquette couplings with circular splines.

**Densities and angles.** Configurations live on the torus ``[0, 2pi)^(2V)`` of link angles; densities are
with respect to the Haar (Lebesgue) measure on that torus. The base is uniform, ``log q0 = -2V log 2pi``.
Every layer is a diffeomorphism of the torus: angles are reduced mod 2pi (``torch.remainder``), which
changes the representative but not the point, so Jacobians and scores are those of the smooth map.

**Layer** (direction ``mu``, stripe ``offset``). The links ``theta_mu(x)`` with ``x_nu = offset mod 4``
(``nu != mu``) are *active*. Each sits in exactly one *active* plaquette with sign +1 and that plaquette holds no
other active link. The plaquettes two and three rows away (``x_nu = offset + 1, offset + 2 mod 4``) contain no
active link and are *frozen*. With ``P`` an active plaquette and ``h`` a circular spline whose parameters come
from a periodic CNN on ``(cos, sin)`` of the frozen plaquettes,

    P' = h(P mod 2pi),     theta_mu(x)' = theta_mu(x) + P' - (P mod 2pi),

and every other link is unchanged. A gauge transformation leaves all plaquettes invariant and shifts each
link by terms that the update does not touch, so the layer commutes with it. The Jacobian is triangular with
diagonal ``h'(P)`` on the active links: ``log|det J| = sum_active log h'(P)``. Direction ``mu = 1`` is the
``mu = 0`` layer conjugated by the lattice transpose (swap directions and axes; a permutation, unit Jacobian).

**Fast path gradient.** Split the input into active links ``a`` and the rest ``o``. With ``v`` the incoming
score and ``l = log|det J|``, ``J^T w = v - grad l`` gives

    w_a = (v_a - d log h'/dP) / h'(P),      w_o = v_o - d/do [ l + w_a . theta'_a ]  (w_a held fixed),

where ``d log h'/dP`` is analytic (the spline is elementwise, so that part of the recursion is diagonal)
and the second line is one vector-Jacobian product through the conditioner and the plaquettes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..flow import Flow
from ..transforms.base import Transform, input_requiring_grad, vjp
from .splines import circular_spline, circular_spline_inverse, spline_params
from .u1 import TWO_PI, plaquette_angles

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU, "leaky_relu": nn.LeakyReLU}


class UniformTorus(nn.Module):
    """Uniform distribution on ``[0, 2pi)^event_shape`` (Haar measure of U(1)^n), with ``log_prob``,
    ``sample`` and ``score`` (identically zero)."""

    def __init__(self, event_shape):
        super().__init__()
        self.event_shape = tuple(event_shape)
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    @property
    def dim(self) -> int:
        return math.prod(self.event_shape)

    def log_prob(self, z: Tensor) -> Tensor:
        return z.new_full((z.shape[0],), -self.dim * math.log(TWO_PI))

    def sample(self, n: int) -> Tensor:
        a = self._anchor
        return TWO_PI * torch.rand((n, *self.event_shape), device=a.device, dtype=a.dtype)

    def score(self, z: Tensor) -> Tensor:
        return torch.zeros_like(z)


def periodic_cnn(n_in: int, n_out: int, channels: int, depth: int, kernel: int, activation: str) -> nn.Sequential:
    """``depth`` hidden convolutions with circular padding; the last layer starts at zero (identity flow)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
    if kernel % 2 != 1:
        raise ValueError(f"the conditioner kernel size must be odd, got {kernel}")
    layers, width = [], n_in
    for _ in range(depth):
        layers += [nn.Conv2d(width, channels, kernel, padding=kernel // 2, padding_mode="circular")]
        layers += [ACTIVATIONS[activation]()]
        width = channels
    last = nn.Conv2d(width, n_out, kernel, padding=kernel // 2, padding_mode="circular")
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(*layers, last)


def _transpose(links: Tensor) -> Tensor:
    """Swap the two directions and the two lattice axes (an involution)."""
    return links.flip(1).transpose(-2, -1)


class PlaquetteCoupling(Transform):
    """Masked plaquette coupling with a circular spline (see the module docstring).

    Args:
        L: lattice size (``L x L``, ``L`` divisible by 4).
        mu: direction of the updated links.
        offset: stripe ``0..3``.
        bins, channels, depth, kernel, activation: spline and conditioner.
    """

    def __init__(
        self,
        L: int,
        mu: int,
        offset: int,
        bins: int = 8,
        channels: int = 8,
        depth: int = 2,
        kernel: int = 3,
        activation: str = "gelu",
    ):
        super().__init__()
        if L % 4 != 0:
            raise ValueError(f"masked plaquette couplings need L divisible by 4, got L={L}")
        if mu not in (0, 1) or offset not in range(4):
            raise ValueError(f"need mu in (0, 1) and offset in 0..3, got mu={mu}, offset={offset}")
        self.L, self.mu, self.offset, self.bins = L, mu, offset, bins
        rows = torch.arange(L) % 4
        active = (rows == offset).to(torch.float32)[None, :].expand(L, L)  # indexed [x0, x1]; stripes in x1
        frozen = ((rows == (offset + 1) % 4) | (rows == (offset + 2) % 4)).to(torch.float32)[None, :].expand(L, L)
        self.register_buffer("active", active.clone(), persistent=False)
        self.register_buffer("frozen", frozen.clone(), persistent=False)
        self.net = periodic_cnn(2, 3 * bins, channels, depth, kernel, activation)

    def _orient(self, links):
        return _transpose(links) if self.mu == 1 else links

    def _params(self, plaq):
        f = self.frozen.to(plaq.dtype)
        raw = self.net(torch.stack([torch.cos(plaq) * f, torch.sin(plaq) * f], 1))  # (B, 3K, L, L)
        return spline_params(raw.movedim(1, -1))

    def _update(self, links):
        """Forward on oriented links: (new links, log h'(P), d log h'(P)/dP), the last two zero off the active links."""
        plaq = plaquette_angles(links)
        widths, heights, derivs = self._params(plaq)
        p = torch.remainder(plaq, TWO_PI)
        p_new, log_dh, dlog_dh = circular_spline(p, widths, heights, derivs)
        act = self.active.to(links.dtype)
        new0 = torch.remainder(links[:, 0] + act * (p_new - p), TWO_PI)
        return torch.stack([new0, links[:, 1]], 1), act * log_dh, act * dlog_dh

    def forward(self, z):
        links = self._orient(z)
        x, log_dh, _ = self._update(links)
        return self._orient(x), log_dh.sum((-2, -1))

    def inverse(self, x):
        links = self._orient(x)
        plaq = plaquette_angles(links)
        widths, heights, derivs = self._params(plaq)  # frozen plaquettes are unchanged by the layer
        p_new = torch.remainder(plaq, TWO_PI)
        p, log_dinv = circular_spline_inverse(p_new, widths, heights, derivs)
        act = self.active.to(links.dtype)
        old0 = torch.remainder(links[:, 0] + act * (p - p_new), TWO_PI)
        return self._orient(torch.stack([old0, links[:, 1]], 1)), (act * log_dinv).sum((-2, -1))

    def forward_with_score(self, z, score):
        links = input_requiring_grad(self._orient(z))
        v = self._orient(score)
        x, log_dh, dlog_dh = self._update(links)
        act = self.active.to(links.dtype)
        w_a = ((v[:, 0] - dlog_dh) * torch.exp(-log_dh) * act).detach()
        logdet = log_dh.sum((-2, -1))
        # d/dtheta [ sum log h' + w_a . theta'_a ]; only its components on the non-active links are used.
        g = vjp((logdet, x[:, 0]), links, (torch.ones_like(logdet), w_a))
        keep = torch.stack([1 - act, torch.ones_like(act)], 0)
        w = torch.stack([w_a, torch.zeros_like(w_a)], 1) + keep * (v - g)
        return self._orient(x), logdet, self._orient(w).detach()

    def extra_repr(self):
        return f"L={self.L}, mu={self.mu}, offset={self.offset}, bins={self.bins}"


def u1_gauge_flow(
    L: int,
    layers: int = 16,
    bins: int = 8,
    channels: int = 8,
    depth: int = 2,
    kernel: int = 3,
    activation: str = "gelu",
    seed: int | None = None,
) -> Flow:
    """Uniform base on the torus and ``layers`` plaquette couplings cycling through (mu, offset) as in
    Kanwar et al.: layer ``i`` updates direction ``i % 2`` in stripe ``(i // 2) % 4`` (8 layers touch every link
    once)."""
    if layers < 1:
        raise ValueError(f"need at least one coupling layer, got layers={layers}")
    if seed is not None:
        torch.manual_seed(seed)
    couplings = [
        PlaquetteCoupling(
            L,
            mu=i % 2,
            offset=(i // 2) % 4,
            bins=bins,
            channels=channels,
            depth=depth,
            kernel=kernel,
            activation=activation,
        )
        for i in range(layers)
    ]
    return Flow(UniformTorus((2, L, L)), couplings)
