"""Training objectives: reverse-KL gradient estimators, forward KL (maximum likelihood), and FAB (alpha = 2),
and :func:`get_estimator`, which builds any of them by name."""

from flowvi.objectives.estimators import ESTIMATORS, FORWARD_ESTIMATORS
from flowvi.objectives.fab import FAB

#: every name :func:`get_estimator` knows: the reverse-KL estimators (:data:`ESTIMATORS`), and ``fab``
#: (:class:`flowvi.objectives.fab.FAB`, the alpha = 2 divergence by annealed importance sampling; a new object per
#: call, as it adapts step sizes and keeps a replay buffer).
ESTIMATOR_NAMES = (*ESTIMATORS, "fab")


def get_estimator(name: str, **options):
    """The estimator called ``name``; ``options`` go to a stateful estimator's constructor (``fab``)."""
    if name == "fab":
        return FAB(**options)
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; choose one of {', '.join(ESTIMATOR_NAMES)}")
    if options:
        raise ValueError(f"the {name!r} estimator takes no options, got {sorted(options)}")
    return ESTIMATORS[name]


__all__ = ["ESTIMATORS", "ESTIMATOR_NAMES", "FAB", "FORWARD_ESTIMATORS", "get_estimator"]
