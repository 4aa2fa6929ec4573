"""Gauge-equivariant flows for 2D U(1) link angles (Kanwar et al. 2020, arXiv 2003.06413;
Albergo et al. 2021, arXiv 2101.08176): masked plaquette couplings with circular splines.

**Densities and angles.** Configurations live on the torus ``[0, 2pi)^(2V)`` of link angles; densities are
with respect to the Haar (Lebesgue) measure on that torus. The base is uniform, ``log q0 = -2V log 2pi``.
Every layer is a diffeomorphism of the torus: angles are reduced mod 2pi (``torch.remainder``), which
changes the representative but not the point, so Jacobians and scores are those of the smooth map.

**Layer** (direction ``mu``, stripe ``offset``). With ``nu != mu``, the links ``theta_mu(x)`` with
``x_nu = offset mod 4`` are *active*. Each enters exactly one *active* plaquette with sign +1 (``theta_0(x)``
enters ``P(x)``, ``theta_1(x)`` enters ``P(x - e0)``) and that plaquette holds no other active link. The
plaquettes at ``x_nu = offset + 1, offset + 2 mod 4`` contain no active link and are *frozen*. With ``P`` an
active plaquette and ``h`` a circular spline whose parameters come from a periodic CNN on ``(cos, sin)`` of the
frozen plaquettes,

    P' = h(P mod 2pi),     theta_mu(x)' = theta_mu(x) + P' - (P mod 2pi),

and every other link is unchanged. A gauge transformation leaves all plaquettes invariant and shifts each
link by terms that the update does not touch, so the layer commutes with it. The Jacobian is triangular with
diagonal ``h'(P)`` on the active links: ``log|det J| = sum_active log h'(P)``.

**Implementation.** The links are handled flattened, ``(batch, 2 L^2)``, and the geometry of a layer is a set
of precomputed index tensors, so one layer is a short fixed sequence of batched kernels (all plaquettes by one
gather; circular padding by one gather per convolution; one spline call for all active links; the update by
one ``index_copy``) with no host synchronisation. In eager mode on a GPU the cost of this flow is the number of
kernel launches, not arithmetic; ``torch.compile`` fuses the elementwise spline algebra further.

**Masks** (``masks``). ``"stripes"`` is the layout above (Kanwar et al.). ``"2x1"`` is the layout of Bialas,
Korcyl and Stebel (arXiv 2308.13294, their ``schwinger_masks_with_2x1_loops``): the active links
``theta_mu(x)`` sit at ``x_mu = offset + 2 (x_nu mod 2) mod 4`` (staggered, period 4 along ``mu``), the frozen
plaquettes at ``x_mu = offset + 1 mod 2``, and the conditioner also sees the 2x1 rectangles
``P(x) + P(x + e_nu)`` at the frozen sites (both of their plaquettes are frozen). Layer ``i`` then updates
direction ``(i // 4) % 2`` at offset ``i % 4``. With ``shift`` the spline is followed by a learned rotation
``P' = h(P) + t`` (their circular splines' last output channel); ``log h'`` is unchanged by it.

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

from flowvi.core.flow import Flow
from flowvi.physics.u1 import TWO_PI
from flowvi.transforms.base import Transform, input_requiring_grad, vjp
from flowvi.transforms.rational_quadratic import spline_forward, spline_inverse, spline_table

MASKS = ("stripes", "2x1")
#: the flow of Bialas, Korcyl and Stebel (arXiv 2308.13294; neumc's scripts): 48 layers, '2x1' masks, circular
#: splines with 9 knots (8 bins) and a rotation, conditioners with hidden channels [64, 64], kernel 3,
#: dilations [1, 2, 3], LeakyReLU
NEUMC_ARCH = {
    "layers": 48,
    "bins": 8,
    "channels": 64,
    "depth": 2,
    "kernel": 3,
    "activation": "leaky_relu",
    "masks": "2x1",
    "dilations": (1, 2, 3),
    "shift": True,
}
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


class PeriodicCNN(nn.Module):
    """``depth`` hidden convolutions on the periodic ``L x L`` lattice; the last layer starts at zero (so the
    flow starts as the identity). Circular padding is one ``index_select`` with a precomputed index on the
    flattened lattice (``F.pad(mode="circular")`` costs about 18 small kernels per convolution)."""

    def __init__(
        self,
        L: int,
        n_in: int,
        n_out: int,
        channels: int,
        depth: int,
        kernel: int,
        activation: str,
        dilations: tuple[int, ...] | None = None,
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        if kernel % 2 != 1:
            raise ValueError(f"the conditioner kernel size must be odd, got {kernel}")
        dilations = tuple(int(d) for d in (dilations or (1,) * (depth + 1)))
        if len(dilations) != depth + 1 or min(dilations) < 1:
            raise ValueError(f"need {depth + 1} positive dilations (one per convolution), got {dilations}")
        self.L, self.dilations = L, dilations
        for d in sorted(set(dilations)):  # one circular-padding index per dilation
            coords = torch.arange(-d * (kernel // 2), L + d * (kernel // 2)) % L
            index = (coords[:, None] * L + coords[None, :]).reshape(-1)
            self.register_buffer("pad_index" if d == 1 else f"pad_index_{d}", index, persistent=False)
        widths = [n_in] + [channels] * depth + [n_out]
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, kernel, dilation=d) for a, b, d in zip(widths[:-1], widths[1:], dilations, strict=True)
        )
        self.activation = ACTIVATIONS[activation]()
        nn.init.zeros_(self.convs[-1].weight)
        nn.init.zeros_(self.convs[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, n_in, L, L) -> (B, n_out, L, L)``."""
        for i, (conv, d) in enumerate(zip(self.convs, self.dilations, strict=True)):
            if i:
                x = self.activation(x)
            index = self.pad_index if d == 1 else getattr(self, f"pad_index_{d}")
            padded = self.L + d * (conv.kernel_size[0] - 1)
            x = conv(x.flatten(-2).index_select(-1, index).unflatten(-1, (padded, padded)))
        return x


class PlaquetteCoupling(Transform):
    """Masked plaquette coupling with a circular spline (see the module docstring).

    All geometry is precomputed as index tensors on the flattened links ``(batch, 2 L^2)`` (link
    ``mu * V + x0 * L + x1``), so a layer is a fixed, short sequence of batched kernels: one gather for all
    plaquettes, one for the conditioner's circular padding per convolution, one spline call for all active
    links, one ``index_copy`` for the update; no Python loops over sites, no rolls, no host synchronisation.

    Args:
        L: lattice size (``L x L``, ``L`` divisible by 4).
        mu: direction of the updated links.
        offset: stripe ``0..3``.
        bins, channels, depth, kernel, activation: spline and conditioner.
        masks: ``"stripes"`` (Kanwar et al.) or ``"2x1"`` (Bialas et al., with 2x1 loops as extra input).
        dilations: one per convolution of the conditioner (default all 1).
        shift: a learned rotation after the spline.
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
        masks: str = "stripes",
        dilations: tuple[int, ...] | None = None,
        shift: bool = False,
    ):
        super().__init__()
        if masks not in MASKS:
            raise ValueError(f"unknown gauge masks {masks!r}; choose one of {', '.join(MASKS)}")
        if L % 4 != 0:
            raise ValueError(f"masked plaquette couplings need L divisible by 4, got L={L}")
        if mu not in (0, 1) or offset not in range(4):
            raise ValueError(f"need mu in (0, 1) and offset in 0..3, got mu={mu}, offset={offset}")
        self.L, self.mu, self.offset, self.bins, self.masks, self.shift = L, mu, offset, bins, masks, shift
        V = L * L
        x0, x1 = torch.meshgrid(torch.arange(L), torch.arange(L), indexing="ij")
        site = x0 * L + x1
        up0, up1 = ((x0 + 1) % L) * L + x1, x0 * L + (x1 + 1) % L
        # P(x) = theta_0(x) + theta_1(x + e0) - theta_0(x + e1) - theta_1(x)
        plaq = torch.stack([site, V + up0, up1, V + site]).reshape(4, V)
        if masks == "stripes":
            stripe = (x1 if mu == 0 else x0) - offset  # position across the stripes
            active = (stripe % 4 == 0).reshape(-1)
            frozen = ((stripe % 4 == 1) | (stripe % 4 == 2)).reshape(-1)
        else:  # "2x1": staggered along mu; the 2x1 rectangle at x is P(x) + P(x + e_nu)
            along, across = (x0, x1) if mu == 0 else (x1, x0)
            active = ((along - offset - 2 * (across % 2)) % 4 == 0).reshape(-1)
            frozen = ((along - offset) % 2 == 1).reshape(-1)
            self.register_buffer("rect_index", (up1 if mu == 0 else up0).reshape(-1), persistent=False)
        # the active link enters its plaquette with +1: theta_0(x) in P(x), theta_1(x) in P(x - e0)
        plaq_site = site if mu == 0 else ((x0 - 1) % L) * L + x1
        self.register_buffer("plaq_index", plaq.reshape(-1), persistent=False)
        self.register_buffer("plaq_sign", torch.tensor([1.0, 1.0, -1.0, -1.0]).reshape(1, 4, 1), persistent=False)
        self.register_buffer("active_links", mu * V + site.reshape(-1)[active], persistent=False)
        self.register_buffer("active_plaquettes", plaq_site.reshape(-1)[active], persistent=False)
        self.register_buffer("frozen", frozen.to(torch.float32).reshape(1, 1, V), persistent=False)
        n_in = 2 if masks == "stripes" else 4
        phase = torch.tensor([0.0, math.pi / 2] * (n_in // 2)).reshape(1, n_in, 1)
        self.register_buffer("phase", phase, persistent=False)
        self.net = PeriodicCNN(L, n_in, 3 * bins + int(shift), channels, depth, kernel, activation, dilations)

    def _prepare(self, flat: Tensor):
        """Everything the layer needs from its (flattened) input, unchanged by the layer: the active
        plaquettes mod 2pi, the active links, and the spline table from the frozen plaquettes."""
        B = flat.shape[0]
        plaq = (flat.index_select(1, self.plaq_index).view(B, 4, -1) * self.plaq_sign).sum(1)  # (B, V)
        loops = plaq.unsqueeze(1)
        if self.masks == "2x1":
            loops = torch.stack([plaq, plaq + plaq.index_select(1, self.rect_index)], 1).repeat_interleave(2, 1)
        feats = torch.cos(loops - self.phase) * self.frozen  # (cos, sin) of the frozen loops
        # (B, 3K, V); under autocast the convolutions may run in 16 bits, the spline always in the links' dtype
        raw = self.net(feats.view(B, -1, self.L, self.L)).flatten(2).to(flat.dtype)
        raw = raw.transpose(1, 2).index_select(1, self.active_plaquettes)  # (B, n, 3K [+ 1])
        table = spline_table(raw[..., : 3 * self.bins])  # (B, n, 6, K)
        p = torch.remainder(plaq.index_select(1, self.active_plaquettes), TWO_PI)
        t = raw[..., -1] if self.shift else None
        return p, flat.index_select(1, self.active_links), table, t

    def _forward(self, flat: Tensor, with_score: bool):
        p, theta, table, t = self._prepare(flat)
        p_new, log_dh, dlog_dh = spline_forward(p, table, with_score)
        p_new = p_new if t is None else p_new + t
        theta_new = torch.remainder(theta + (p_new - p), TWO_PI)
        return flat.index_copy(1, self.active_links, theta_new), theta_new, log_dh, dlog_dh

    def forward(self, z):
        x, _, log_dh, _ = self._forward(z.reshape(z.shape[0], -1), with_score=False)
        return x.view_as(z), log_dh.sum(-1)

    def inverse(self, x):
        flat = x.reshape(x.shape[0], -1)
        p_new, theta, table, t = self._prepare(flat)  # the frozen plaquettes are unchanged by the layer
        p, log_dinv = spline_inverse(p_new if t is None else torch.remainder(p_new - t, TWO_PI), table)
        theta_old = torch.remainder(theta + (p - p_new), TWO_PI)
        return flat.index_copy(1, self.active_links, theta_old).view_as(x), log_dinv.sum(-1)

    def forward_with_score(self, z, score):
        links = input_requiring_grad(z)
        B = z.shape[0]
        x, theta_new, log_dh, dlog_dh = self._forward(links.reshape(B, -1), with_score=True)
        logdet = log_dh.sum(-1)
        v = score.reshape(B, -1)
        w_a = ((v.index_select(1, self.active_links) - dlog_dh) * torch.exp(-log_dh)).detach()
        # d/dtheta [ sum log h' + w_a . theta'_a ]; only its components on the non-active links are used.
        g = vjp((logdet, theta_new), links, (torch.ones_like(logdet), w_a))
        w = (v - g.reshape(B, -1)).index_copy(1, self.active_links, w_a)
        return x.view_as(z), logdet, w.view_as(z).detach()

    def extra_repr(self):
        return (
            f"L={self.L}, mu={self.mu}, offset={self.offset}, bins={self.bins}, masks={self.masks}, shift={self.shift}"
        )


def u1_gauge_flow(
    L: int,
    layers: int = 16,
    bins: int = 8,
    channels: int = 8,
    depth: int = 2,
    kernel: int = 3,
    activation: str = "gelu",
    seed: int | None = None,
    masks: str = "stripes",
    dilations: tuple[int, ...] | None = None,
    shift: bool = False,
) -> Flow:
    """Uniform base on the torus and ``layers`` plaquette couplings cycling through (mu, offset) as in
    Kanwar et al.: layer ``i`` updates direction ``i % 2`` in stripe ``(i // 2) % 4`` (8 layers touch every link
    once); with ``masks="2x1"`` as in Bialas et al.: direction ``(i // 4) % 2`` at offset ``i % 4``.
    ``u1_gauge_flow(L, **NEUMC_ARCH)`` is the latter's flow."""
    if layers < 1:
        raise ValueError(f"need at least one coupling layer, got layers={layers}")
    if seed is not None:
        torch.manual_seed(seed)
    couplings = [
        PlaquetteCoupling(
            L,
            mu=i % 2 if masks == "stripes" else (i // 4) % 2,
            offset=(i // 2) % 4 if masks == "stripes" else i % 4,
            bins=bins,
            channels=channels,
            depth=depth,
            kernel=kernel,
            activation=activation,
            masks=masks,
            dilations=dilations,
            shift=shift,
        )
        for i in range(layers)
    ]
    return Flow(UniformTorus((2, L, L)), couplings)
