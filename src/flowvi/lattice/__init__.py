"""Lattice field theory targets and observables."""

from .phi4 import PRESETS, Phi4, phi4_action

__all__ = ["PRESETS", "Phi4", "phi4_action"]
