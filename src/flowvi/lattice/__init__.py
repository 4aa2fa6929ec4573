"""Lattice field theories: targets' physics, observables, samplers and field flows."""
