"""Fixed permutations of the last dimension (volume preserving)."""

from __future__ import annotations

import torch

from flowvi.transforms.base import Transform


class Permutation(Transform):
    """``x = z[..., perm]``. ``Permutation.random(dim, generator)`` draws one; ``reverse`` flips."""

    def __init__(self, perm):
        super().__init__()
        perm = torch.as_tensor(perm, dtype=torch.long)
        if not torch.equal(torch.sort(perm).values, torch.arange(len(perm))):
            raise ValueError("perm must be a permutation of 0..dim-1")
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))

    @classmethod
    def random(cls, dim: int, generator: torch.Generator | None = None):
        return cls(torch.randperm(dim, generator=generator))

    @classmethod
    def reverse(cls, dim: int):
        return cls(torch.arange(dim - 1, -1, -1))

    def forward(self, z):
        return z[..., self.perm], z.new_zeros(z.shape[0])

    def inverse(self, x):
        return x[..., self.inv_perm], x.new_zeros(x.shape[0])

    def forward_with_score(self, z, score):
        x, logdet = self.forward(z)
        return x, logdet, score[..., self.perm]
