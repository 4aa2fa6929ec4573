"""Built-in targets, by name, and the loader for a user's own target."""

from __future__ import annotations

import inspect

from flowvi.targets.base import CallableTarget, Target, TargetError, checked_log_prob, load_callable
from flowvi.targets.funnel import Funnel
from flowvi.targets.gauge import Schwinger, U1Gauge
from flowvi.targets.gaussian import CorrelatedGaussian
from flowvi.targets.horseshoe import (
    HorseshoeBreastCancer,
    HorseshoeColon,
    HorseshoeLogisticRegression,
    HorseshoeNCI60,
    HorseshoeSynthetic,
)
from flowvi.targets.phi4 import Phi4
from flowvi.targets.posteriordb import POSTERIORDB_TARGETS, PosteriorTarget
from flowvi.targets.pymc import PyMCTarget, from_pymc
from flowvi.targets.pyro import PyroTarget, from_pyro, pyro_target_from_file, uses_pyro
from flowvi.targets.regression import ConjugateLinearRegression
from flowvi.targets.regularized_horseshoe import (
    RegularizedHorseshoeLogisticRegression,
    RegularizedHorseshoeNCI60,
    RegularizedHorseshoeSynthetic,
)
from flowvi.targets.student_t import MultivariateStudentT
from flowvi.targets.suite import SUITE_TARGETS

#: name -> (constructor, one-line description). Other modules add their targets here.
TARGETS = {
    "funnel": (Funnel, "Neal's funnel; exact log Z = 0"),
    "student_t": (MultivariateStudentT, "multivariate Student-t; exact log Z = 0"),
    "gaussian": (CorrelatedGaussian, "correlated Gaussian (AR(1) correlation, graded scales); exact log Z = 0"),
    "conjugate_regression": (
        ConjugateLinearRegression,
        "Bayesian linear regression, normal-inverse-gamma prior; exact log Z",
    ),
    "horseshoe_nci60": (HorseshoeNCI60, "horseshoe logistic regression, NCI-60 microarray data; d = 2p + 2 (p = 2000)"),
    "horseshoe_colon": (
        HorseshoeColon,
        "horseshoe logistic regression, colon cancer microarray (data file not shipped); d = 4002",
    ),
    "horseshoe_breast_cancer": (HorseshoeBreastCancer, "horseshoe logistic regression, UCI breast cancer data; d = 62"),
    "horseshoe_synthetic": (HorseshoeSynthetic, "horseshoe logistic regression, simulated sparse data; d = 2p + 2"),
    "regularized_horseshoe_nci60": (
        RegularizedHorseshoeNCI60,
        "regularized horseshoe (Piironen & Vehtari 2017) logistic regression, NCI-60; d = 2p + 3 (p = 2000)",
    ),
    "regularized_horseshoe_synthetic": (
        RegularizedHorseshoeSynthetic,
        "regularized horseshoe logistic regression, simulated sparse data; d = 2p + 3",
    ),
    "u1": (U1Gauge, "2D compact U(1) lattice gauge theory, Wilson action; link angles (2, L, L)"),
    "schwinger": (Schwinger, "2D Schwinger model, 2 Wilson fermion flavours (S_g - 2 log|det D|); links (2, L, L)"),
    "phi4": (
        Phi4,
        "real scalar phi^4 on an L x L periodic lattice (hopping form; -p preset=nicoli|small|upg-default sets L, kappa, lam)",
    ),
    **POSTERIORDB_TARGETS,  # reference posteriors of benchmarks/posteriors.py
    **SUITE_TARGETS,
}


def target_parameters(name: str) -> dict:
    """The constructor parameters of a built-in target with their defaults: the signature's, where a class
    resolves ``None`` itself to a fixed value its ``DEFAULTS`` dict gives that value."""
    cls = TARGETS[name][0]
    sig = inspect.signature(cls.__init__)
    fixed = getattr(cls, "DEFAULTS", {})
    return {
        k: fixed.get(k, None if v.default is inspect.Parameter.empty else v.default)
        for k, v in sig.parameters.items()
        if k != "self"
    }


def make_target(name: str, **params) -> Target:
    """Build a target by registry name, or from ``path/to/file.py:function``: a Pyro model (its keyword
    arguments from ``data``, a .json or .npz file, and the other ``params``) or else a log density (then
    ``dim`` is required)."""
    if name in TARGETS:
        allowed = target_parameters(name)
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise TargetError(
                f"target {name!r} has no parameter {', '.join(unknown)}; its parameters are: {', '.join(allowed) or 'none'}"
            )
        return TARGETS[name][0](**params)
    if ":" in name and ".py" in name:
        fn, data = load_callable(name), params.pop("data", None)
        if params.get("dim") is None and uses_pyro(fn):
            return pyro_target_from_file(fn, data, **params)
        if data is not None:
            raise TargetError(f"--data passes a Pyro model's arguments; {name!r} is a log density (with --dim)")
        if params.get("dim") is None:
            raise TargetError(f"target {name!r} is a user function: give its dimension with --dim")
        return CallableTarget(fn, dim=params.pop("dim"), **params)
    raise TargetError(
        f"unknown target {name!r}; built-in targets: {', '.join(sorted(TARGETS))} "
        "(or give path/to/file.py:function with --dim)"
    )


__all__ = [
    "TARGETS",
    "CallableTarget",
    "ConjugateLinearRegression",
    "CorrelatedGaussian",
    "Funnel",
    "HorseshoeBreastCancer",
    "HorseshoeColon",
    "HorseshoeLogisticRegression",
    "HorseshoeNCI60",
    "HorseshoeSynthetic",
    "MultivariateStudentT",
    "PosteriorTarget",
    "RegularizedHorseshoeLogisticRegression",
    "RegularizedHorseshoeNCI60",
    "PyMCTarget",
    "PyroTarget",
    "RegularizedHorseshoeSynthetic",
    "Target",
    "TargetError",
    "checked_log_prob",
    "from_pymc",
    "from_pyro",
    "load_callable",
    "make_target",
    "target_parameters",
]
