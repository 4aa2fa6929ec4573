"""Squeeze (Dinh et al. 2017, Real NVP): (N, C, H, W) -> (N, 4C, H/2, W/2), a permutation, so log|det| = 0."""

import torch

from flowvi.transforms.base import Transform


def _squeeze(z: torch.Tensor) -> torch.Tensor:
    if z.dim() != 4 or z.shape[2] % 2 or z.shape[3] % 2:
        raise ValueError(f"Squeeze expects (N, C, H, W) with even H and W, got {tuple(z.shape)}")
    n, c, h, w = z.shape
    z = z.view(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return z.reshape(n, 4 * c, h // 2, w // 2)


def _unsqueeze(x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 4 or x.shape[1] % 4:
        raise ValueError(f"Unsqueeze expects (N, 4C, H, W), got {tuple(x.shape)}")
    n, c4, h, w = x.shape
    x = x.view(n, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(n, c4 // 4, 2 * h, 2 * w)


class Squeeze(Transform):
    def forward(self, z):
        return _squeeze(z), z.new_zeros(z.shape[0])

    def inverse(self, x):
        return _unsqueeze(x), x.new_zeros(x.shape[0])

    def forward_with_score(self, z, score):
        """A permutation: the score is permuted the same way."""
        return _squeeze(z), z.new_zeros(z.shape[0]), _squeeze(score).detach()


class Unsqueeze(Transform):
    """The inverse of :class:`Squeeze`: (N, 4C, H, W) -> (N, C, 2H, 2W). In a density model, whose layers run
    from data to latent through ``inverse``, it is the layer that squeezes the data."""

    def forward(self, z):
        return _unsqueeze(z), z.new_zeros(z.shape[0])

    def inverse(self, x):
        return _squeeze(x), x.new_zeros(x.shape[0])

    def forward_with_score(self, z, score):
        return _unsqueeze(z), z.new_zeros(z.shape[0]), _unsqueeze(score).detach()
