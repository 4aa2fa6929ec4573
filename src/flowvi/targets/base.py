"""The target protocol: an unnormalized log density over ``(batch, *event_shape)`` tensors.

A target has ``log_prob(x) -> (batch,)``, ``dim`` and ``event_shape``; optionally ``log_evidence``
(the exact log normalizing constant log Z of ``exp(log_prob)``) and ``sample(n)`` (exact reference
draws). Any callable on ``(batch, d)`` tensors becomes a target with :class:`CallableTarget`.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
from torch import Tensor, nn


class TargetError(ValueError):
    """A target returned something flowvi cannot use (wrong shape, dtype, NaN, ...)."""


class Target(nn.Module):
    """Base class for built-in targets. Subclasses set ``event_shape`` and define ``log_prob``.

    Data tensors are registered as buffers, so ``target.to(device, dtype)`` moves them.
    """

    event_shape: tuple = ()
    log_evidence: float | None = None

    @property
    def dim(self) -> int:
        """``prod(event_shape)``."""
        return math.prod(self.event_shape)

    def log_prob(self, x: Tensor) -> Tensor:  # pragma: no cover - interface
        """Unnormalized log density ``log p(x)`` (batch,) of points ``x`` (batch, *event_shape) on all of
        R^d: a constrained parameter enters through an unconstrained transform and its log-Jacobian."""
        raise TypeError(f"{type(self).__name__} must define log_prob")

    def forward(self, x):
        return self.log_prob(x)


class CallableTarget(Target):
    """Wrap a user's function ``f(x: (batch, dim)) -> (batch,)`` as a target."""

    def __init__(self, fn, dim: int, log_evidence: float | None = None, name: str | None = None):
        super().__init__()
        if not callable(fn):
            raise TargetError(f"target {fn!r} is not callable")
        if int(dim) < 1:
            raise TargetError(f"--dim must be a positive integer, got {dim}")
        self.fn, self.event_shape, self.log_evidence = fn, (int(dim),), log_evidence
        self.name = name or getattr(fn, "__name__", "callable")
        pairs = getattr(fn, "hierarchy", None)
        if pairs is not None and not (
            isinstance(pairs, (list, tuple)) and all(isinstance(q, (list, tuple)) and len(q) == 2 for q in pairs)
        ):
            raise TargetError(
                f"{self.name}.hierarchy must be a list of (children, parents) index pairs, got {type(pairs).__name__}"
            )
        self._hierarchy = pairs

    def hierarchy(self):
        """The function's ``hierarchy`` attribute, ``[(children, parents), ...]`` for
        :class:`flowvi.transforms.HierarchicalAffine` (``flowvi fit --hierarchical``), or None."""
        return self._hierarchy

    def log_prob(self, x):
        return self.fn(x)


def load_callable(spec: str):
    """Load ``path/to/file.py:function`` (the function is looked up after running the file)."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise TargetError(f"a target file must be given as path/to/file.py:function, got {spec!r}")
    file = Path(path)
    if not file.is_file():
        raise TargetError(f"target file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"flowvi_user_target_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # the user's file failed to import: name it
        raise TargetError(f"could not import {path!r}: {type(e).__name__}: {e}") from e
    if not hasattr(module, name):
        raise TargetError(f"{path!r} has no function {name!r}")
    return getattr(module, name)


def checked_log_prob(target, x: Tensor, allow_nan: bool = False) -> Tensor:
    """``target.log_prob(x)`` with its output checked: shape ``(batch,)``, floating point, no NaN.

    +inf is an error too; -inf (zero density) is allowed and gives zero importance weight. With ``allow_nan``
    a NaN is read as -inf (a draw dropped, as in training) instead of an error.
    """
    out = target.log_prob(x)
    if allow_nan and isinstance(out, Tensor) and out.is_floating_point():
        out = torch.nan_to_num(out, nan=-math.inf, posinf=math.inf, neginf=-math.inf)
    if not isinstance(out, Tensor):
        raise TargetError(f"target log_prob must return a torch.Tensor, got {type(out).__name__}")
    if out.shape != (x.shape[0],):
        raise TargetError(
            f"target log_prob returned shape {tuple(out.shape)} for a batch of shape {tuple(x.shape)}; "
            f"expected ({x.shape[0]},): one log density per sample"
        )
    if not out.is_floating_point():
        raise TargetError(f"target log_prob returned dtype {out.dtype}; expected a floating-point tensor")
    bad = torch.isnan(out) | (out == math.inf)
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise TargetError(
            f"target log_prob returned {out[i].item()} for {int(bad.sum())} of {len(out)} samples "
            f"(first at sample {i}); the target must be finite or -inf"
        )
    return out


def log_prob_and_grad(target, x: Tensor) -> tuple[Tensor, Tensor]:
    """``log p(x)`` and ``d log p(x) / dx``, both detached, for any density with a batched ``log_prob`` (a target,
    a flow). A density with its own ``log_prob_and_grad`` (an annealed density that keeps its parts, a model with
    an analytic gradient) is asked for it."""
    own = getattr(target, "log_prob_and_grad", None)
    if own is not None:
        return own(x)
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        lp = target.log_prob(x)
        (g,) = torch.autograd.grad(lp.sum(), x)
    return lp.detach(), g.detach()


def coordinates(target, x: Tensor) -> Tensor:
    """The quantities whose marginals are compared with a reference: regression coefficients where the target
    defines ``coefficients(x)`` (e.g. the horseshoe's beta = tau * lambda * z), else the raw coordinates."""
    f = getattr(target, "coefficients", None)
    return f(x) if f is not None else x
