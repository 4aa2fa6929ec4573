"""The stabilised Real NVP of Andrade (2024): couplings with soft-clamped scales, an optional
elementwise spline (marginal shapes, see :mod:`flowvi.transforms.spline`), an optional elementwise affine
layer, optional per-coordinate couplings along the target's hierarchy (:mod:`flowvi.transforms.hierarchical`),
and LOFT as the last bijection."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch

from flowvi.core.bases import make_base
from flowvi.core.flow import Flow
from flowvi.core.options import split_options
from flowvi.transforms import (
    LOFT,
    AffineCoupling,
    ElementwiseAffine,
    ElementwiseSpline,
    HierarchicalAffine,
    Permutation,
)


@dataclass(frozen=True)
class Couplings:
    """The affine couplings: ``layers`` of them alternating halves (``permute='random'``: a fixed random
    permutation before each), conditioners of ``depth`` hidden layers of width ``hidden``."""

    layers: int = 8
    hidden: int = 256
    depth: int = 2
    activation: str = "relu"
    permute: str = "alternate"


@dataclass(frozen=True)
class Clamp:
    """The log-scale clamp: ``none``, ``symmetric`` (``alpha tanh(s / alpha)``) or ``asymmetric`` (Andrade 2024:
    ``(2/pi) alpha_pm arctan(s / alpha_pm)``, ``alpha_pos`` for s > 0, ``alpha_neg`` for s < 0)."""

    clamp: str = "asymmetric"
    alpha_pos: float = 0.1
    alpha_neg: float = 2.0
    alpha: float = 2.0


@dataclass(frozen=True)
class Marginals:
    """Per-coordinate layers after the couplings: a monotone rational-quadratic ``spline`` (``spline_bins`` bins
    on ``[-spline_bound, spline_bound]``, the identity outside) and an ``affine`` location-scale layer."""

    spline: bool = False
    spline_bins: int = 8
    spline_bound: float = 5.0
    affine: bool = True


@dataclass(frozen=True)
class Tails:
    """The tails: the base (``gaussian`` or ``student_t`` with ``df``) and LOFT (threshold ``tau``) last."""

    base: str = "gaussian"
    df: float = 5.0
    loft: bool = True
    tau: float = 100.0


@dataclass(frozen=True)
class RealNVPOptions:
    """All options of :func:`realnvp`, by concern. :meth:`from_flat` takes the flat keywords of the command line
    and of ``config.json`` (``layers=8, clamp="none", base="student_t", ...``)."""

    couplings: Couplings = field(default_factory=Couplings)
    clamp: Clamp = field(default_factory=Clamp)
    marginals: Marginals = field(default_factory=Marginals)
    tails: Tails = field(default_factory=Tails)
    hierarchy_hidden: int = 8
    seed: int = 0

    @classmethod
    def from_flat(cls, **flat) -> RealNVPOptions:
        top = {k: flat.pop(k) for k in ("hierarchy_hidden", "seed") if k in flat}
        couplings, clamp, marginals, tails = split_options(flat, Couplings, Clamp, Marginals, Tails, owner="realnvp")
        return cls(couplings=couplings, clamp=clamp, marginals=marginals, tails=tails, **top)

    def flat(self) -> dict:
        """The flat keywords (the inverse of :meth:`from_flat`)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out.update(asdict(value) if hasattr(value, "__dataclass_fields__") else {f.name: value})
        return out


def realnvp(dim: int, options: RealNVPOptions | None = None, *, hierarchy: list | None = None, **flat) -> Flow:
    """Build a stabilised Real NVP (Dinh et al. 2017, arXiv 1605.08803; stabilised as in Andrade 2024, arXiv
    2402.16408) for ``(batch, dim)`` samples, starting at the identity map.

    Each affine coupling keeps half the coordinates ``x_a`` and maps the other half,
    ``y_b = x_b * exp(c(s(x_a))) + t(x_a)``, with ``s``, ``t`` an MLP (:class:`Couplings`); the clamp ``c`` bounds
    the log-scale (:class:`Clamp`). Then the per-coordinate layers (:class:`Marginals`), one
    :class:`~flowvi.transforms.HierarchicalAffine` per ``(children, parents)`` pair of ``hierarchy`` (a target's
    ``hierarchy()``; each child its own network of width ``hierarchy_hidden`` besides a linear part), and last
    the LOFT layer ``g(z) = sign(z) (min(|z|, tau) + log(1 + max(|z| - tau, 0)))`` that keeps samples from blowing
    up, over a Gaussian or Student-t base (:class:`Tails`).

    Options come grouped (``realnvp(d, RealNVPOptions(couplings=Couplings(layers=4)))``) or as flat keywords
    (``realnvp(d, layers=4, clamp="none")``), not both.
    """
    if options is not None and flat:
        raise TypeError("realnvp takes grouped options or flat keywords, not both")
    o = options or RealNVPOptions.from_flat(**flat)
    c, k, m, t = o.couplings, o.clamp, o.marginals, o.tails
    if dim < 2:
        raise ValueError(f"Real NVP needs dim >= 2, got {dim}")
    if c.permute not in ("alternate", "random"):
        raise ValueError(f"unknown permute {c.permute!r}; choose alternate or random")
    clamp_kwargs = {
        "none": {},
        "symmetric": {"alpha": k.alpha},
        "asymmetric": {"alpha_pos": k.alpha_pos, "alpha_neg": k.alpha_neg},
    }
    if k.clamp not in clamp_kwargs:
        raise ValueError(f"unknown clamp {k.clamp!r}; choose one of {', '.join(clamp_kwargs)}")
    gen = torch.Generator().manual_seed(o.seed)
    transforms = []
    for i in range(c.layers):
        if c.permute == "random":
            transforms.append(Permutation.random(dim, gen))
        transforms.append(
            AffineCoupling(
                dim,
                flip=bool(i % 2),
                hidden=c.hidden,
                depth=c.depth,
                activation=c.activation,
                clamp=k.clamp,
                clamp_kwargs=clamp_kwargs[k.clamp],
            )
        )
    if m.spline:
        transforms.append(ElementwiseSpline(dim, bins=m.spline_bins, bound=m.spline_bound))
    if m.affine:
        transforms.append(ElementwiseAffine(dim))
    for children, parents in hierarchy or ():
        transforms.append(HierarchicalAffine(dim, children, parents, hidden=o.hierarchy_hidden))
    if t.loft:
        transforms.append(LOFT(t.tau))
    return Flow(make_base(t.base, dim, df=t.df), transforms)
