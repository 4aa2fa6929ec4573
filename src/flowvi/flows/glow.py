"""Glow (Kingma & Dhariwal 2018) for images, and its flat counterpart for vectors, as
:class:`~flowvi.flows.multiscale.MultiscaleFlow` density models.

Image Glow, ``levels`` scales, ``steps`` flow steps per scale (normalizing direction x -> z):

    for each level:  squeeze (C, H, W) -> (4C, H/2, W/2);
                     ``steps`` x [ActNorm -> invertible 1x1 conv (LU) -> affine coupling (clamped)];
                     split half of the channels off under a learned conditional prior (not after the last level).

Flat Glow for ``(N, D)`` vectors: ``blocks`` blocks of ``steps`` x [ActNorm -> LU linear map -> affine coupling
with an MLP conditioner], with a split between blocks. ActNorm initialises itself from the first data batch.
"""

from __future__ import annotations

import torch

from flowvi.flows.multiscale import MultiscaleFlow, Split
from flowvi.transforms import AffineCoupling, Compose
from flowvi.transforms.actnorm import ActNorm
from flowvi.transforms.conv_coupling import ConvAffineCoupling
from flowvi.transforms.invconv import InvertibleConv1x1
from flowvi.transforms.squeeze import Unsqueeze


def _clamp_kwargs(clamp: str, alpha_pos: float, alpha_neg: float, alpha: float) -> dict:
    options = {
        "none": {},
        "symmetric": {"alpha": alpha},
        "asymmetric": {"alpha_pos": alpha_pos, "alpha_neg": alpha_neg},
    }
    if clamp not in options:
        raise ValueError(f"unknown clamp {clamp!r}; choose one of {', '.join(options)}")
    return options[clamp]


def glow_step(coupling, channels: int, generator: torch.Generator) -> Compose:
    """One flow step; ``Compose`` lists it in the generative order, so ``inverse`` applies
    ActNorm, then the 1x1 convolution, then the coupling."""
    return Compose([coupling, InvertibleConv1x1(channels, generator=generator), ActNorm(channels)])


def glow(
    image_shape,
    levels: int = 3,
    steps: int = 8,
    hidden: int = 128,
    clamp: str = "asymmetric",
    alpha_pos: float = 0.1,
    alpha_neg: float = 2.0,
    alpha: float = 2.0,
    seed: int = 0,
) -> MultiscaleFlow:
    """Glow for ``(N, C, H, W)`` images; H and W must be divisible by ``2**levels``."""
    if len(image_shape) != 3:
        raise ValueError(f"glow needs an image shape (C, H, W), got {tuple(image_shape)}")
    c, h, w = image_shape
    if levels < 1 or steps < 1 or hidden < 1:
        raise ValueError(f"levels, steps and hidden must be positive, got {levels}, {steps}, {hidden}")
    if h % 2**levels or w % 2**levels:
        raise ValueError(f"image height and width ({h}x{w}) must be divisible by 2**levels = {2**levels}")
    kwargs = _clamp_kwargs(clamp, alpha_pos, alpha_neg, alpha)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    layers = []
    for level in range(levels):
        layers.append(Unsqueeze())
        c, h, w = 4 * c, h // 2, w // 2
        for _ in range(steps):
            layers.append(glow_step(ConvAffineCoupling(c, hidden, clamp, kwargs), c, gen))
        if level < levels - 1:
            layers.append(Split(c, image=True))
            c = c // 2
    return MultiscaleFlow(layers, image_shape, (c, h, w))


def flat_glow(
    dim: int,
    blocks: int = 2,
    steps: int = 4,
    hidden: int = 128,
    depth: int = 2,
    clamp: str = "asymmetric",
    alpha_pos: float = 0.1,
    alpha_neg: float = 2.0,
    alpha: float = 2.0,
    seed: int = 0,
) -> MultiscaleFlow:
    """Glow for ``(N, dim)`` vectors: the same steps with an LU linear map and an MLP coupling."""
    if blocks < 1 or steps < 1 or hidden < 1:
        raise ValueError(f"blocks, steps and hidden must be positive, got {blocks}, {steps}, {hidden}")
    if dim < 2**blocks:
        raise ValueError(
            f"dim = {dim} is too small for {blocks} blocks (each split halves it; need dim >= {2**blocks})"
        )
    kwargs = _clamp_kwargs(clamp, alpha_pos, alpha_neg, alpha)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    layers, d = [], dim
    for block in range(blocks):
        for _ in range(steps):
            coupling = AffineCoupling(d, hidden=hidden, depth=depth, clamp=clamp, clamp_kwargs=kwargs)
            layers.append(glow_step(coupling, d, gen))
        if block < blocks - 1:
            layers.append(Split(d, image=False))
            d = d // 2
    return MultiscaleFlow(layers, (dim,), (d,))
