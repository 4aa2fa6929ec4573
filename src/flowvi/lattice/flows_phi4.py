"""Flows for scalar lattice fields: checkerboard affine couplings with convolutional conditioners.

For a checkerboard mask m (1 on frozen sites), a layer maps z -> x with

    x = m z + (1 - m) (z exp(s(m z)) + t(m z)),     log|det J| = sum_x (1 - m) s

as in Albergo et al. 2019 / Nicoli et al. 2021. Convolutions use periodic (circular) padding, so the layer
commutes with lattice translations by two sites. Z2 equivariance (phi -> -phi): the shift network is odd
(tanh activations, no biases) and the scale network is even (it sees |m z|), so f(-z) = -f(z) and the
flow density inherits the symmetry of the phi^4 action. Scales pass through a soft clamp
(:mod:`flowvi.transforms.clamps`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..distributions import StandardNormal
from ..flow import Flow
from ..transforms.base import Transform, input_requiring_grad, vjp
from ..transforms.clamps import make_clamp


def checkerboard(L: int, parity: int) -> torch.Tensor:
    """(L, L) float mask, 1 where (i + j) % 2 == parity."""
    i = torch.arange(L)
    return (((i[:, None] + i[None, :]) % 2) == parity).float()


def conv_net(hidden: int, depth: int, kernel: int) -> nn.Sequential:
    """Bias-free circular conv net with tanh activations (an odd function); last layer zero-initialised."""
    layers, width = [], 1
    for _ in range(depth):
        layers += [
            nn.Conv2d(width, hidden, kernel, padding=kernel // 2, padding_mode="circular", bias=False),
            nn.Tanh(),
        ]
        width = hidden
    last = nn.Conv2d(width, 1, kernel, padding=kernel // 2, padding_mode="circular", bias=False)
    nn.init.zeros_(last.weight)
    return nn.Sequential(*layers, last)


class CheckerboardAffineCoupling(Transform):
    """Z2-equivariant affine coupling on (batch, L, L) fields with a checkerboard mask."""

    def __init__(
        self,
        L: int,
        parity: int,
        hidden: int = 16,
        depth: int = 2,
        kernel: int = 3,
        clamp: str = "asymmetric",
        clamp_kwargs: dict | None = None,
    ):
        super().__init__()
        if L < 2 or L % 2:
            raise ValueError(f"checkerboard couplings need an even lattice size L >= 2, got {L}")
        self.register_buffer("mask", checkerboard(L, parity))
        self.scale_net = conv_net(hidden, depth, kernel)
        self.shift_net = conv_net(hidden, depth, kernel)
        self.clamp = make_clamp(clamp, **(clamp_kwargs or {}))

    def _scale_shift(self, z):
        a = (z * self.mask).unsqueeze(1)
        free = 1 - self.mask
        s = self.clamp(self.scale_net(a.abs()).squeeze(1)) * free
        t = self.shift_net(a).squeeze(1) * free
        return s, t

    def forward(self, z):
        s, t = self._scale_shift(z)
        return z * torch.exp(s) + t, s.sum(dim=(-2, -1))

    def inverse(self, x):
        s, t = self._scale_shift(x)
        return (x - t) * torch.exp(-s), -s.sum(dim=(-2, -1))

    def forward_with_score(self, z, score):
        # score_x = J^{-T}(score - grad log|det J|): on free sites w = exp(-s) score; on frozen sites
        # w = score - (ds/da)^T (1 + z score)_free - (dt/da)^T w_free (one VJP through the conditioners).
        z = input_requiring_grad(z)
        s, t = self._scale_shift(z)
        x = z * torch.exp(s) + t
        free = 1 - self.mask
        w_free = (score * torch.exp(-s) * free).detach()
        g = vjp((s, t), z, ((1 + z.detach() * score) * free, w_free))
        score_x = score * self.mask - g * self.mask + w_free
        return x, s.sum(dim=(-2, -1)), score_x.detach()


def phi4_flow(
    L: int,
    layers: int = 8,
    hidden: int = 16,
    depth: int = 2,
    kernel: int = 3,
    clamp: str = "asymmetric",
    alpha_pos: float = 0.1,
    alpha_neg: float = 2.0,
    seed: int | None = None,
    **_unused,
) -> Flow:
    """StandardNormal base over (L, L) and ``layers`` checkerboard couplings of alternating parity.

    Accepts the CLI flow options; ``hidden`` is the number of conv channels (capped at 64 since the CLI
    default of 256 is meant for MLPs), options that do not apply (loft, base, permute, ...) are ignored.
    """
    if seed is not None:
        torch.manual_seed(seed)
    hidden = min(int(hidden), 64)
    kw = {"alpha_pos": alpha_pos, "alpha_neg": alpha_neg} if clamp == "asymmetric" else {}
    transforms = [CheckerboardAffineCoupling(L, i % 2, hidden, depth, kernel, clamp, kw) for i in range(layers)]
    return Flow(StandardNormal((L, L)), transforms)
