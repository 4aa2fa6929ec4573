"""Lattice physics beyond the actions: U(1) links and exact values, the Wilson-Dirac operator, observables of
phi^4 and of gauge theories."""
