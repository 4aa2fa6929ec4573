"""The flow itself: a base distribution pushed through a sequence of transforms (:class:`Flow`), and the bases."""

from flowvi.core.bases import BASES, StandardNormal, StudentT, make_base
from flowvi.core.flow import Flow

__all__ = ["BASES", "Flow", "StandardNormal", "StudentT", "make_base"]
