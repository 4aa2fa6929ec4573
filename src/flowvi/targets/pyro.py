"""Pyro models as targets: the joint log density of the latent sites in unconstrained coordinates.

A model's latent sites ``z_s`` (continuous, with supports ``S_s``) are mapped to unconstrained vectors
``u_s`` by the bijections ``T_s = biject_to(S_s)`` of ``torch.distributions``; flowvi's coordinates are the
concatenation ``u = (u_1, ..., u_m)`` and the target is

    log p(u) = log p(T(u), y) + sum_s log |det dT_s/du_s (u_s)|,

with ``log p(z, y)`` the model's joint log density (``pyro.poutine.trace`` of the model conditioned on
``z = T(u)``: every ``pyro.sample`` term with its plates, masks and scales; ``pyro.deterministic`` sites
contribute nothing). This is the density that Stan and Pyro's HMC sample (Carpenter et al. 2017, *Stan: a
probabilistic programming language*, Sec. 10). A batch of draws is evaluated by ``torch.func.vmap`` over one
draw, so the model is written for a single draw, as in Pyro.
"""

from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.distributions import biject_to

from flowvi.targets.base import Target, TargetError


@dataclass(frozen=True)
class Site:
    """A latent site: its name, constrained shape (plate dimensions included), support and bijection
    ``transform`` from the unconstrained shape ``free_shape`` (``free_size`` coordinates)."""

    name: str
    shape: tuple
    support: object
    transform: object
    free_shape: tuple

    @property
    def free_size(self) -> int:
        return math.prod(self.free_shape)


def _pyro():
    import pyro
    import pyro.poutine

    return pyro


def _check_arguments(model, args, kwargs) -> list[str]:
    """A one-line error naming what ``model(*args, **kwargs)`` lacks or does not take; returns the names of the
    parameters left at their defaults (an observation left at ``y=None`` becomes a latent site)."""
    name = getattr(model, "__name__", "model")
    try:
        sig = inspect.signature(model)
    except (TypeError, ValueError):
        return []
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as e:
        given = ", ".join(list(kwargs)) or "none"
        raise TargetError(f"Pyro model {name!r}: {e} (arguments given: {given})") from None
    return [p for p in sig.parameters if p not in bound.arguments]


def _as_data(value):
    """Numeric NumPy arrays become tensors, 0-d ones Python numbers (plate sizes, counts); anything else is
    passed as it is."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return value.item() if value.ndim == 0 else torch.as_tensor(value)
    return value


def _latent_sites(trace, model_name: str) -> tuple[list[Site], list[str]]:
    """Latent sites (in trace order) and the names of the ``pyro.deterministic`` sites of a prototype trace."""
    from pyro.poutine.util import site_is_subsample

    sites, deterministic = [], []
    for name, site in trace.nodes.items():
        if site["type"] == "param":
            raise TargetError(f"Pyro model {model_name!r} has a pyro.param site {name!r}; give it as a model argument")
        if site["type"] != "sample":
            continue
        if site_is_subsample(site):
            if len(site["value"]) < site["fn"].size:
                raise TargetError(f"Pyro model {model_name!r}: plate {name!r} subsamples; flowvi needs the full data")
            continue
        if site["infer"].get("_deterministic"):
            deterministic.append(name)
            continue
        if site["is_observed"]:
            continue
        support = site["fn"].support
        if support.is_discrete:
            raise TargetError(
                f"Pyro model {model_name!r}: site {name!r} is a discrete latent variable ({type(site['fn']).__name__});"
                " flowvi needs continuous latents: marginalise it out or observe it"
            )
        transform = biject_to(support)
        shape = tuple(site["value"].shape)
        sites.append(Site(name, shape, support, transform, tuple(transform.inverse_shape(shape))))
    return sites, deterministic


def _cast_constraint(constraint, dtype, device):
    """A copy of ``constraint`` whose tensor parameters (interval bounds, nested constraints') are in ``dtype``."""
    params = vars(constraint)
    if not any(isinstance(v, Tensor) or hasattr(v, "is_discrete") for v in params.values()):
        return constraint
    new = copy.copy(constraint)
    for key, v in params.items():
        if isinstance(v, Tensor):
            setattr(new, key, v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype))
        elif hasattr(v, "is_discrete") and hasattr(v, "check"):
            setattr(new, key, _cast_constraint(v, dtype, device))
    return new


def _dim_names(site) -> list[str]:
    """Names of a site's dimensions: its plates' names where a plate sets the dimension, else ``{site}_dim_{i}``."""
    shape = site["value"].shape
    names = [f"{site['name']}_dim_{i}" for i in range(len(shape))]
    # a deterministic site's dims all count as event dims (pyro.deterministic's default); plates still name them
    batch_rank = len(shape) - (0 if site["infer"].get("_deterministic") else site["fn"].event_dim)
    for frame in site["cond_indep_stack"]:
        i = batch_rank + frame.dim if frame.dim is not None else -1
        if 0 <= i < batch_rank and shape[i] == frame.size:
            names[i] = frame.name
    return names


class PyroTarget(Target):
    """A Pyro model's posterior over its latent sites in unconstrained coordinates (module docstring).

    ``sites`` lists the latent sites (name, shape, support, bijection), ``deterministic`` the names of the
    ``pyro.deterministic`` sites, ``shapes`` and ``dims`` (dimension names: plates where they set one) of both;
    :meth:`constrain` maps a batch of unconstrained draws to named, constrained
    arrays. Model arguments that are tensors or arrays go to the device of the draws, floating ones in their
    dtype (converted once per dtype and device from the originals, so float64 data keep their precision). While the model runs, torch's default dtype and device are
    those of the draws, so constants created in the model (``torch.ones(3)``, ``Normal(0., 5.)``) follow them.
    """

    def __init__(self, model, *args, **kwargs):
        super().__init__()
        pyro = _pyro()
        self.model, self.name = model, getattr(model, "__name__", "model")
        self.defaulted = _check_arguments(model, args, kwargs)
        self._args, self._kwargs = [_as_data(v) for v in args], {k: _as_data(v) for k, v in kwargs.items()}
        self._converted = {}
        self.register_buffer("_anchor", torch.zeros(()))  # carries the target's device and dtype
        args, kwargs = self._model_args(torch.float64, None)
        old = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)  # supports' bounds (Uniform(0, 0.1)) exact in float64
        try:
            with pyro.poutine.seed(rng_seed=0):
                trace = pyro.poutine.trace(model).get_trace(*args, **kwargs)
        except Exception as e:  # the user's model failed on its arguments: name it
            raise TargetError(f"Pyro model {self.name!r} failed: {type(e).__name__}: {e}") from e
        finally:
            torch.set_default_dtype(old)
        self._transforms = {}
        self.sites, self.deterministic = _latent_sites(trace, self.name)
        if not self.sites:
            raise TargetError(f"Pyro model {self.name!r} has no latent sample sites (everything is observed)")
        self.event_shape = (sum(s.free_size for s in self.sites),)
        self.shapes = {s.name: s.shape for s in self.sites}
        self.shapes.update({n: tuple(trace.nodes[n]["value"].shape) for n in self.deterministic})
        self.dims = {n: _dim_names(trace.nodes[n]) for n in self.shapes}

    def _model_args(self, dtype, device) -> tuple[list, dict]:
        """The model's arguments with floating tensors in ``dtype`` and every tensor on ``device`` (cached, so
        the data are converted once per dtype and device, always from the originals)."""
        key = (dtype, str(device))
        if key not in self._converted:

            def convert(v):
                if not isinstance(v, Tensor):
                    return v
                return v.to(device=device or v.device, dtype=dtype if v.is_floating_point() else v.dtype)

            self._converted[key] = ([convert(v) for v in self._args], {k: convert(v) for k, v in self._kwargs.items()})
        return self._converted[key]

    def _unpack(self, u: Tensor) -> tuple[dict, Tensor]:
        """One draw ``u`` (d,) -> constrained values by site and the summed log |det J| of the bijections."""
        values, log_det, i = {}, u.new_zeros(()), 0
        for s in self.sites:
            free = u[i : i + s.free_size].reshape(s.free_shape)
            i += s.free_size
            transform = self._transform(s, u.dtype, u.device)
            values[s.name] = transform(free)
            log_det = log_det + transform.log_abs_det_jacobian(free, values[s.name]).sum()
        return values, log_det

    def _transform(self, site: Site, dtype, device):
        """``biject_to(site.support)`` with the support's bounds in ``dtype`` on ``device`` (cached)."""
        key = (site.name, dtype, str(device))
        if key not in self._transforms:
            self._transforms[key] = biject_to(_cast_constraint(site.support, dtype, device))
        return self._transforms[key]

    def _trace(self, values: dict, dtype, device):
        pyro = _pyro()
        args, kwargs = self._model_args(dtype, device)
        conditioned = pyro.poutine.condition(self.model, data=values)
        return pyro.poutine.trace(conditioned).get_trace(*args, **kwargs)

    def _batched(self, fn, x: Tensor):
        """``vmap(fn)(x)`` with Pyro's validation off (its checks branch on values) and torch's default dtype
        and device those of ``x``."""
        pyro = _pyro()
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise TargetError(f"{self.name}: draws must have shape (batch, {self.dim}), got {tuple(x.shape)}")
        old = torch.get_default_dtype()
        torch.set_default_dtype(x.dtype)
        try:
            with pyro.validation_enabled(False), torch.device(x.device):
                return torch.func.vmap(fn)(x)
        finally:
            torch.set_default_dtype(old)

    def log_prob(self, x: Tensor) -> Tensor:
        def one(u):
            values, log_det = self._unpack(u)
            return self._trace(values, u.dtype, u.device).log_prob_sum() + log_det

        return self._batched(one, x)

    def constrain(self, x: Tensor) -> dict[str, Tensor]:
        """Unconstrained draws (n, d) -> ``{site: (n, *shape)}`` in constrained space, latent sites in model
        order, then the ``pyro.deterministic`` sites."""

        def one(u):
            values, _ = self._unpack(u)
            if self.deterministic:
                trace = self._trace(values, u.dtype, u.device)
                values.update({n: trace.nodes[n]["value"] for n in self.deterministic})
            return values

        with torch.no_grad():
            return self._batched(one, x)

    def unconstrain(self, values: dict) -> Tensor:
        """Constrained values ``{site: (n, *shape)}`` of the latent sites -> unconstrained draws (n, d)."""
        parts = []
        for s in self.sites:
            v = torch.as_tensor(values[s.name])
            n = v.shape[0]
            transform = self._transform(s, v.dtype, v.device)
            parts.append(transform.inv(v).reshape(n, s.free_size))
        return torch.cat(parts, 1)

    def describe(self) -> str:
        """One line per site: name, shape, support."""
        lines = [f"  {s.name:<12} {str(s.shape):<12} {s.support}" for s in self.sites]
        lines += [f"  {n:<12} {str(self.shapes[n]):<12} deterministic" for n in self.deterministic]
        return "\n".join(lines)


def from_pyro(model, *args, **kwargs) -> PyroTarget:
    """The posterior of a Pyro ``model(*args, **kwargs)`` as a flowvi target in unconstrained coordinates.

    Observed data are the model's arguments (``pyro.sample(..., obs=y)``). ``target.sites`` lists the latent
    sites, ``target.constrain(x)`` maps flow draws to named constrained arrays (deterministic sites too)."""
    return PyroTarget(model, *args, **kwargs)


def uses_pyro(fn) -> bool:
    """Whether the module that defines ``fn`` imported Pyro (``import pyro`` or ``from pyro ... import``)."""
    for value in getattr(fn, "__globals__", {}).values():
        module = value.__name__ if inspect.ismodule(value) else getattr(value, "__module__", None)
        if isinstance(module, str) and module.split(".")[0] == "pyro":
            return True
    return False


def load_model_data(path) -> dict:
    """Keyword arguments of a model from ``.json`` (an object; lists become arrays: integer arrays where every
    number is written without a decimal point, as indices need, else float64) or ``.npz`` (its arrays)."""
    import json
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise TargetError(f"data file {str(path)!r} does not exist")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    if path.suffix != ".json":
        raise TargetError(f"data file {str(path)!r} must be .json or .npz")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise TargetError(f"data file {str(path)!r} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise TargetError(f"data file {str(path)!r} must hold a JSON object {{argument: value}}")
    return {k: np.asarray(v) if isinstance(v, list) else v for k, v in data.items()}


def pyro_target_from_file(model, data=None, **params) -> PyroTarget:
    """``flowvi fit model.py:model --data FILE -p KEY=VALUE``: the model with the data file's entries and the
    parameters as keyword arguments; a required argument that neither gives is named in the error."""
    kwargs = {**(load_model_data(data) if data is not None else {}), **params}
    name = getattr(model, "__name__", "model")
    try:
        required = [
            p.name
            for p in inspect.signature(model).parameters.values()
            if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
    except (TypeError, ValueError):
        required = []
    missing = [p for p in required if p not in kwargs]
    if missing:
        where = f"the data file {str(data)!r} (its keys: {', '.join(kwargs) or 'none'})" if data else "no --data file"
        raise TargetError(
            f"Pyro model {name!r} needs argument {', '.join(repr(m) for m in missing)}, which {where} does not give"
        )
    return PyroTarget(model, **kwargs)
