"""Affine coupling for images (Dinh et al. 2017; Kingma & Dhariwal 2018) with soft-clamped scales.

The channels of a ``(N, C, H, W)`` input are split into a conditioning half ``a`` (the first ``C // 2``)
and a transformed half ``b``:

    x_a = a,    x_b = b * exp(c(s(a))) + t(a),    log|det J| = sum over (channels, H, W) of c(s(a)),

where ``s, t`` come from one convolutional network (3x3 conv, ReLU, 1x1 conv, ReLU, zero-initialised
3x3 conv, as in Glow) and ``c`` is a soft clamp of :mod:`flowvi.transforms.clamps`. A new layer is the
identity. Channel mixing is left to the invertible 1x1 convolution before it.
"""

from __future__ import annotations

import torch
from torch import nn

from flowvi.transforms.base import Transform, sum_except_batch
from flowvi.transforms.clamps import make_clamp


def conv_net(c_in: int, c_out: int, hidden: int) -> nn.Sequential:
    """Glow's coupling network; the last convolution starts at zero."""
    last = nn.Conv2d(hidden, c_out, 3, padding=1)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(
        nn.Conv2d(c_in, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, hidden, 1), nn.ReLU(), last
    )


class ConvAffineCoupling(Transform):
    """Affine coupling on the channels of ``(N, channels, H, W)`` tensors (``channels >= 2``)."""

    def __init__(self, channels: int, hidden: int = 128, clamp: str = "asymmetric", clamp_kwargs: dict | None = None):
        super().__init__()
        if channels < 2:
            raise ValueError(f"a coupling layer needs at least 2 channels, got {channels}")
        self.channels = channels
        self.n_cond = channels // 2
        self.n_trans = channels - self.n_cond
        self.net = conv_net(self.n_cond, 2 * self.n_trans, hidden)
        self.clamp = make_clamp(clamp, **(clamp_kwargs or {}))

    def _scale_shift(self, a):
        h = self.net(a).to(a.dtype)
        return self.clamp(h[:, : self.n_trans]), h[:, self.n_trans :]

    def _check(self, z):
        if z.dim() != 4 or z.shape[1] != self.channels:
            raise ValueError(f"ConvAffineCoupling expects (N, {self.channels}, H, W), got {tuple(z.shape)}")

    def forward(self, z):
        self._check(z)
        a, b = z[:, : self.n_cond], z[:, self.n_cond :]
        s, t = self._scale_shift(a)
        return torch.cat((a, torch.addcmul(t, b, torch.exp(s))), dim=1), sum_except_batch(s)

    def inverse(self, x):
        self._check(x)
        a, y = x[:, : self.n_cond], x[:, self.n_cond :]
        s, t = self._scale_shift(a)
        return torch.cat((a, (y - t) * torch.exp(-s)), dim=1), -sum_except_batch(s)
