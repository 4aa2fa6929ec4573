"""Lattice field theories: the physics of the targets (phi^4, U(1), Schwinger), observables, samplers and field flows."""
