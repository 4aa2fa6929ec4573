"""Bijections: each maps base space to sample space and returns its log|det J|."""

from flowvi.transforms.base import Compose, PathGradientUnsupported, Transform, sum_except_batch
from flowvi.transforms.clamps import CLAMPS, AsymmetricClamp, NoClamp, SymmetricClamp, make_clamp
from flowvi.transforms.coupling import AffineCoupling, mlp
from flowvi.transforms.elementwise import ElementwiseAffine
from flowvi.transforms.hierarchical import HierarchicalAffine
from flowvi.transforms.loft import LOFT
from flowvi.transforms.permutation import Permutation
from flowvi.transforms.spline import ElementwiseSpline

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
