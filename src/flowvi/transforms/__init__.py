"""Bijections: each maps base space to sample space and returns its log|det J|."""

from .base import Compose, PathGradientUnsupported, Transform, sum_except_batch
from .clamps import CLAMPS, AsymmetricClamp, NoClamp, SymmetricClamp, make_clamp
from .coupling import AffineCoupling, mlp
from .elementwise import ElementwiseAffine
from .hierarchical import HierarchicalAffine
from .loft import LOFT
from .permutation import Permutation
from .spline import ElementwiseSpline

__all__ = [
    "CLAMPS",
    "LOFT",
    "AffineCoupling",
    "AsymmetricClamp",
    "Compose",
    "ElementwiseAffine",
    "ElementwiseSpline",
    "HierarchicalAffine",
    "NoClamp",
    "PathGradientUnsupported",
    "Permutation",
    "SymmetricClamp",
    "Transform",
    "make_clamp",
    "mlp",
    "sum_except_batch",
]
