"""Training objectives: reverse-KL gradient estimators, forward KL (maximum likelihood), and FAB (alpha = 2)."""

from flowvi.objectives.estimators import ESTIMATORS, FORWARD_ESTIMATORS

__all__ = ["ESTIMATORS", "FORWARD_ESTIMATORS"]
