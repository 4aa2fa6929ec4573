"""Uniform dequantization and bits per dimension for discrete data (Theis et al. 2016; Dinh et al. 2017).

Integer pixels k in {0, ..., levels-1} become y = (k + u) / levels with u ~ U[0, 1)^D. For a density p on
[0, 1)^D, -E log p(y) + D log(levels) upper-bounds the discrete negative log-likelihood in nats, and
bits/dim = nll_nats / (D log 2).
"""

import math

import torch


def uniform_dequantize(
    x: torch.Tensor, levels: int, generator: torch.Generator | None = None, check: bool = True
) -> torch.Tensor:
    """Map integer-valued x in [0, levels-1] to (x + u) / levels with u ~ U[0, 1).

    ``check=False`` skips the NaN and range checks (each would synchronise a GPU), for data checked before."""
    if levels < 2:
        raise ValueError(f"levels must be at least 2, got {levels}")
    if not torch.is_floating_point(x):
        x = x.to(torch.get_default_dtype())
    if check and torch.isnan(x).any():
        raise ValueError("data contain NaN")
    if check and ((x < 0).any() or (x > levels - 1).any()):
        raise ValueError(f"data must lie in [0, {levels - 1}]")
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return (x + u) / levels


def bits_per_dim(log_prob: torch.Tensor, dim: int, levels: int) -> torch.Tensor:
    """Bits/dim of the discrete data from log p(y) of the dequantized data y on [0, 1)^dim (per example)."""
    nll_nats = -log_prob + dim * math.log(levels)
    return nll_nats / (dim * math.log(2.0))
