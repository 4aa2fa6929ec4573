"""Elementwise affine (location-scale) layer ``x = loc + exp(log_scale) * z``."""

from __future__ import annotations

import torch
from torch import nn

from flowvi.transforms.base import Transform


class ElementwiseAffine(Transform):
    """Learnable location and log-scale per coordinate of the event, initialised at the identity."""

    def __init__(self, event_shape):
        super().__init__()
        event_shape = (event_shape,) if isinstance(event_shape, int) else tuple(event_shape)
        self.loc = nn.Parameter(torch.zeros(event_shape))
        self.log_scale = nn.Parameter(torch.zeros(event_shape))

    def _logdet(self, z):
        return self.log_scale.sum().expand(z.shape[0])

    def forward(self, z):
        return self.loc + torch.exp(self.log_scale) * z, self._logdet(z)

    def inverse(self, x):
        return (x - self.loc) * torch.exp(-self.log_scale), -self._logdet(x)

    def forward_with_score(self, z, score):
        x, logdet = self.forward(z)
        return x, logdet, score * torch.exp(-self.log_scale.detach())
