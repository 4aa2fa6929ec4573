"""flowvi: stable, fast normalizing flows for variational inference and sampling."""

from . import diagnostics, estimators, targets, transforms
from .distributions import StandardNormal, StudentT, make_base
from .estimators import ESTIMATORS
from .evaluate import evaluate, importance_log_weights
from .flow import Flow
from .pretrain import pretrain_on_draws
from .realnvp import realnvp
from .train import TrainConfig, TrainingDiverged, fit

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
    "transforms",
]
