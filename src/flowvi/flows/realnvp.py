"""The stabilised Real NVP of Andrade (2024): couplings with soft-clamped scales, an optional
elementwise spline (marginal shapes, see :mod:`flowvi.transforms.spline`), an optional elementwise affine
layer, optional per-coordinate couplings along the target's hierarchy (:mod:`flowvi.transforms.hierarchical`),
and LOFT as the last bijection."""

from __future__ import annotations

import torch

from flowvi.core.bases import make_base
from flowvi.core.flow import Flow
from flowvi.transforms import (
    LOFT,
    AffineCoupling,
    ElementwiseAffine,
    ElementwiseSpline,
    HierarchicalAffine,
    Permutation,
)


def realnvp(
    dim: int,
    layers: int = 8,
    hidden: int = 256,
    depth: int = 2,
    activation: str = "relu",
    clamp: str = "asymmetric",
    alpha_pos: float = 0.1,
    alpha_neg: float = 2.0,
    alpha: float = 2.0,
    loft: bool = True,
    tau: float = 100.0,
    base: str = "gaussian",
    df: float = 5.0,
    affine: bool = True,
    permute: str = "alternate",
    seed: int = 0,
    spline: bool = False,
    spline_bins: int = 8,
    spline_bound: float = 5.0,
    hierarchy: list | None = None,
    hierarchy_hidden: int = 8,
) -> Flow:
    """Build a stabilised Real NVP (Dinh et al. 2017, arXiv 1605.08803; stabilised as in Andrade 2024, arXiv
    2402.16408) for ``(batch, dim)`` samples, starting at the identity map.

    Each affine coupling keeps half the coordinates ``x_a`` and maps the other half,
    ``y_b = x_b * exp(c(s(x_a))) + t(x_a)``, with ``s``, ``t`` an MLP of ``depth`` hidden layers of width
    ``hidden``; ``clamp`` bounds the log-scale: ``asymmetric`` ``c(s) = (2/pi) alpha_pm arctan(s / alpha_pm)``
    (``alpha_pos`` for s > 0, ``alpha_neg`` for s < 0), ``symmetric`` ``alpha tanh(s/alpha)``, or ``none``. The
    LOFT layer ``g(z) = sign(z) (min(|z|, tau) + log(1 + max(|z| - tau, 0)))`` (Andrade 2024) keeps samples from
    blowing up. ``base``: ``gaussian`` or ``student_t`` with ``df`` degrees of freedom.

    ``layers`` coupling layers alternate which half they transform; ``permute='random'`` also puts
    a fixed random permutation (drawn from ``seed``) before every coupling layer. ``spline`` adds a
    monotone rational-quadratic spline per coordinate after the couplings (``spline_bins`` bins on
    ``[-spline_bound, spline_bound]``, the identity outside), so that marginals can change shape, ``affine`` a
    learnable elementwise location-scale layer after that, and ``loft`` a LOFT layer last. ``hierarchy``, a
    list of ``(children, parents)`` index pairs (a target's ``hierarchy()``), adds one
    :class:`~flowvi.transforms.HierarchicalAffine` per pair, in order, before LOFT (each child its own
    network of width ``hierarchy_hidden`` besides a linear part).
    """
    if dim < 2:
        raise ValueError(f"Real NVP needs dim >= 2, got {dim}")
    if permute not in ("alternate", "random"):
        raise ValueError(f"unknown permute {permute!r}; choose alternate or random")
    clamp_kwargs = {
        "none": {},
        "symmetric": {"alpha": alpha},
        "asymmetric": {"alpha_pos": alpha_pos, "alpha_neg": alpha_neg},
    }
    if clamp not in clamp_kwargs:
        raise ValueError(f"unknown clamp {clamp!r}; choose one of {', '.join(clamp_kwargs)}")
    gen = torch.Generator().manual_seed(seed)
    transforms = []
    for i in range(layers):
        if permute == "random":
            transforms.append(Permutation.random(dim, gen))
        transforms.append(
            AffineCoupling(
                dim,
                flip=bool(i % 2),
                hidden=hidden,
                depth=depth,
                activation=activation,
                clamp=clamp,
                clamp_kwargs=clamp_kwargs[clamp],
            )
        )
    if spline:
        transforms.append(ElementwiseSpline(dim, bins=spline_bins, bound=spline_bound))
    if affine:
        transforms.append(ElementwiseAffine(dim))
    for children, parents in hierarchy or ():
        transforms.append(HierarchicalAffine(dim, children, parents, hidden=hierarchy_hidden))
    if loft:
        transforms.append(LOFT(tau))
    return Flow(make_base(base, dim, df=df), transforms)
