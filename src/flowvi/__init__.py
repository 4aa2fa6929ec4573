"""flowvi: stable, fast normalizing flows for variational inference and sampling.

The package by concept: ``core`` (Flow, bases), ``transforms``, ``flows`` (builders), ``objectives``
(estimators, FAB), ``training`` (the loop and its fast step), ``samplers``, ``diagnostics``, ``targets``,
``physics`` (lattice observables), ``runs`` (run directories), ``data``, ``studies`` and ``cli``
(ARCHITECTURE.md).
"""

from flowvi import _compat, diagnostics, targets, transforms
from flowvi.core import Flow, StandardNormal, StudentT, make_base
from flowvi.diagnostics.evaluate import evaluate, importance_log_weights
from flowvi.flows.realnvp import realnvp
from flowvi.objectives import estimators
from flowvi.objectives.estimators import ESTIMATORS
from flowvi.runs.inference_data import to_arviz
from flowvi.training.loop import TrainConfig, TrainingDiverged, fit
from flowvi.training.pretrain import pretrain_on_draws

_compat.install()

__version__ = "0.1.0"

__all__ = [
    "ESTIMATORS",
    "Flow",
    "StandardNormal",
    "StudentT",
    "TrainConfig",
    "TrainingDiverged",
    "diagnostics",
    "estimators",
    "evaluate",
    "fit",
    "importance_log_weights",
    "make_base",
    "pretrain_on_draws",
    "realnvp",
    "targets",
    "to_arviz",
    "transforms",
]
