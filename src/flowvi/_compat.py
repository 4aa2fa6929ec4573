"""Old import paths (flowvi 0.1's flat modules) kept for one release, with a DeprecationWarning.

``import flowvi.train`` still works and gives the module now at ``flowvi.training.loop``. The alias is a
module object that forwards attribute access to the new module (and, where the old module shared its name
with a public function, ``flowvi.evaluate`` and ``flowvi.realnvp``, is callable as that function, so that
importing the old path does not break ``flowvi.evaluate(...)``).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

#: old module path -> new module path
MOVED = {
    "flowvi.flow": "flowvi.core.flow",
    "flowvi.distributions": "flowvi.core.bases",
    "flowvi.realnvp": "flowvi.flows.realnvp",
    "flowvi.glow": "flowvi.flows.glow",
    "flowvi.multiscale": "flowvi.flows.multiscale",
    "flowvi.estimators": "flowvi.objectives.estimators",
    "flowvi.fab": "flowvi.objectives.fab",
    "flowvi.dequantize": "flowvi.data.dequantize",
    "flowvi.datasets": "flowvi.data.arrays",
    "flowvi.train": "flowvi.training.loop",
    "flowvi.fastpath": "flowvi.training.fast_step",
    "flowvi.distributed": "flowvi.training.distributed",
    "flowvi.overlap": "flowvi.training.overlap",
    "flowvi.parts": "flowvi.training.parts",
    "flowvi.pretrain": "flowvi.training.pretrain",
    "flowvi.density": "flowvi.training.density",
    "flowvi.checkpoint": "flowvi.runs.checkpoint",
    "flowvi.evaluate": "flowvi.diagnostics.evaluate",
    "flowvi.reference": "flowvi.diagnostics.mcmc",
    "flowvi.stats": "flowvi.diagnostics.errors",
    "flowvi.stability": "flowvi.studies.stability",
    "flowvi.lattice": "flowvi.physics",
    "flowvi.lattice.flows_phi4": "flowvi.flows.phi4",
    "flowvi.lattice.gauge_flows": "flowvi.flows.gauge",
    "flowvi.lattice.splines": "flowvi.transforms.rational_quadratic",
    "flowvi.lattice.phi4_mcmc": "flowvi.studies.phi4_mcmc",
    "flowvi.lattice.phi4": "flowvi.targets.phi4",
    "flowvi.lattice.u1": "flowvi.physics.u1",
    "flowvi.lattice.dirac": "flowvi.physics.dirac",
    "flowvi.lattice.gauge_observables": "flowvi.physics.gauge_observables",
    "flowvi.lattice.observables_phi4": "flowvi.physics.phi4_observables",
    "flowvi.baselines": "flowvi.samplers",
    "flowvi.baselines.nuts": "flowvi.samplers.nuts",
    "flowvi.baselines.smc": "flowvi.samplers.smc",
    "flowvi.baselines.hmc": "flowvi.runs.hmc_baseline",
    "flowvi.baselines.flowmc": "flowvi.runs.flowmc_baseline",
}

#: names that left a moved module for its package: old path -> the package that holds them now
PACKAGE_NAMES = {"flowvi.estimators": ("flowvi.objectives", ("ESTIMATOR_NAMES", "get_estimator"))}


class _Alias(types.ModuleType):
    """Forwards to the module at its new path; callable when the new module has a function of its own name."""

    def __init__(self, old: str, new: types.ModuleType):
        super().__init__(old, new.__doc__)
        self.__dict__["_new"] = new
        self.__path__ = []  # a package, so that old sub-module paths (flowvi.lattice.u1) resolve

    def __getattr__(self, name):
        package, names = PACKAGE_NAMES.get(self.__name__, (None, ()))
        if name in names:
            return getattr(importlib.import_module(package), name)
        return getattr(self.__dict__["_new"], name)

    def __call__(self, *args, **kwargs):
        new = self.__dict__["_new"]
        return getattr(new, self.__name__.rsplit(".", 1)[1])(*args, **kwargs)


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec):
        new = MOVED[spec.name]
        warnings.warn(
            f"{spec.name} moved to {new}; the old path will be removed in the next release",
            DeprecationWarning,
            stacklevel=3,
        )
        return _Alias(spec.name, importlib.import_module(new))

    def exec_module(self, module):
        pass


def install() -> None:
    """Put the old-path finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
