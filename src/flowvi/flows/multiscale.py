"""Flows for density estimation with a multi-scale architecture (Dinh et al. 2017; Kingma & Dhariwal 2018).

A :class:`MultiscaleFlow` is a list of layers in the *normalizing* direction, data x -> latent z:

* a bijection (any :class:`~flowvi.transforms.Transform`; its ``inverse`` maps towards the latent),
  contributing log|det dz/dx|;
* a :class:`Split`, which factors out half of the channels, z_2, and scores them with a learned conditional
  prior N(z_2; mu(h_1), diag(sigma(h_1)^2)) (Glow's "learned prior"), contributing log p(z_2 | h_1).

With h_0 = x and (h_i, c_i) = layer_i(h_{i-1}),

    log p(x) = sum_i c_i + log N(h_L; 0, I).

Sampling runs the layers backwards: h_L ~ N(0, T^2 I), every split draws z_2 from its prior (temperature T).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from flowvi.transforms.base import sum_except_batch

LOG_2PI = math.log(2 * math.pi)


def standard_normal_log_prob(h: Tensor) -> Tensor:
    """log N(h; 0, I) summed over every dimension but the batch."""
    return -0.5 * sum_except_batch(h * h) - 0.5 * h[0].numel() * LOG_2PI


class Split(nn.Module):
    """Keep the first ``channels // 2`` channels of dim 1, factor out the rest under a conditional prior.

    The prior's mean and log standard deviation come from a zero-initialised 3x3 convolution of the kept
    channels (images, ``(N, C, H, W)``) or a linear map (vectors, ``(N, C)``); it starts as N(0, I).
    """

    def __init__(self, channels: int, image: bool = True):
        super().__init__()
        if channels < 2:
            raise ValueError(f"Split needs at least 2 channels, got {channels}")
        self.keep = channels // 2
        self.out = channels - self.keep
        self.channels = channels
        self.prior = nn.Conv2d(self.keep, 2 * self.out, 3, padding=1) if image else nn.Linear(self.keep, 2 * self.out)
        nn.init.zeros_(self.prior.weight)
        nn.init.zeros_(self.prior.bias)

    def _prior(self, h1: Tensor) -> tuple[Tensor, Tensor]:
        p = self.prior(h1).to(h1.dtype)
        return p[:, : self.out], p[:, self.out :]

    def normalize(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """``(h_1, log p(z_2 | h_1))`` for ``h = (h_1, z_2)``."""
        if h.dim() < 2 or h.shape[1] != self.channels:
            raise ValueError(f"Split expects (N, {self.channels}, ...), got {tuple(h.shape)}")
        h1, z2 = h[:, : self.keep], h[:, self.keep :]
        mean, log_std = self._prior(h1)
        eps = (z2 - mean) * torch.exp(-log_std)
        log_p = standard_normal_log_prob(eps) - sum_except_batch(log_std)
        return h1, log_p

    def generate(self, h1: Tensor, temperature: float = 1.0) -> Tensor:
        mean, log_std = self._prior(h1)
        z2 = mean + torch.exp(log_std) * temperature * torch.randn_like(mean)
        return torch.cat((h1, z2), dim=1)


def normalize_layer(layer: nn.Module, h: Tensor) -> tuple[Tensor, Tensor]:
    """One layer in the normalizing direction: ``(h_out, log|det dh_out/dh|)`` or ``(h_1, log p(z_2|h_1))``."""
    if isinstance(layer, Split):
        return layer.normalize(h)
    return layer.inverse(h)


class MultiscaleFlow(nn.Module):
    """Density model ``log p(x) = sum_i c_i + log N(h_L; 0, I)`` (see the module docstring).

    Args:
        layers: modules in the normalizing order (transforms and splits).
        event_shape: shape of one data point x.
        latent_shape: shape of one final latent h_L.
    """

    def __init__(self, layers, event_shape, latent_shape):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.event_shape = tuple(event_shape)
        self.latent_shape = tuple(latent_shape)

    @property
    def dim(self) -> int:
        return math.prod(self.event_shape)

    def _check(self, x: Tensor) -> None:
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(
                f"expected data of shape (N, {', '.join(map(str, self.event_shape))}), got {tuple(x.shape)}"
            )

    def normalize(self, x: Tensor, start: int = 0, stop: int | None = None) -> tuple[Tensor, Tensor]:
        """Run ``layers[start:stop]``: the output and the sum of their log terms c_i."""
        total = x.new_zeros(x.shape[0])
        for layer in self.layers[start:stop]:
            x, c = normalize_layer(layer, x)
            total = total + c
        return x, total

    def prior_log_prob(self, h: Tensor) -> Tensor:
        return standard_normal_log_prob(h)

    def log_prob(self, x: Tensor) -> Tensor:
        self._check(x)
        h, total = self.normalize(x)
        return total + self.prior_log_prob(h)

    def _anchor(self) -> Tensor:
        return next(self.parameters())

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        a = self._anchor()
        h = temperature * torch.randn((n, *self.latent_shape), device=a.device, dtype=a.dtype)
        for layer in reversed(self.layers):
            h = layer.generate(h, temperature) if isinstance(layer, Split) else layer(h)[0]
        return h
