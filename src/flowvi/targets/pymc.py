"""PyMC models as targets (the ``[pymc]`` extra): PyMC's own unconstrained log density, on the CPU.

PyMC maps every free variable to an unconstrained value variable (``tau_log__``, ``p_logodds__``,
``w_simplex__``) and compiles ``log p(u) = log p(T(u), y) + log |det dT/du|`` and its gradient with PyTensor
(``model.compile_logp(jacobian=True)``, ``model.compile_dlogp(jacobian=True)``). flowvi's coordinates are
the value variables raveled in model order, and :class:`PyMCTarget` wraps the two compiled functions as one
``torch.autograd.Function``: the forward pass evaluates them draw by draw (PyMC compiles for one point) on
the CPU and keeps the gradients, the backward pass returns ``grad_output * dlogp``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from flowvi.targets.base import Target, TargetError


class _LogpDlogp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, target) -> Tensor:
        rows = x.detach().to("cpu", torch.float64).numpy()
        logp = np.empty(len(rows))
        grad = np.empty_like(rows)
        for i, row in enumerate(rows):
            point = target._point(row)
            logp[i], grad[i] = target._logp(point), target._dlogp(point)
        ctx.save_for_backward(torch.as_tensor(grad, dtype=x.dtype, device=x.device))
        return torch.as_tensor(logp, dtype=x.dtype, device=x.device)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (grad,) = ctx.saved_tensors
        return grad_output[:, None] * grad, None


class PyMCTarget(Target):
    """A PyMC model's posterior in PyMC's unconstrained coordinates (module docstring). ``free`` lists the value
    variables (name, shape); :meth:`constrain` maps draws to the model's free and deterministic variables."""

    def __init__(self, model, mode: str | None = None):
        super().__init__()
        from pymc.blocking import DictToArrayBijection

        if model.discrete_value_vars:
            names = ", ".join(repr(v.name) for v in model.discrete_value_vars)
            raise TargetError(f"PyMC model: variable {names} is discrete; flowvi needs continuous free variables")
        if not model.value_vars:
            raise TargetError("PyMC model has no free variables")
        self.model = model
        start = model.initial_point()
        raveled = DictToArrayBijection.map({v.name: start[v.name] for v in model.value_vars})
        self._info = raveled.point_map_info
        self.free = [(name, tuple(shape)) for name, shape, _, _ in self._info]
        self.event_shape = (raveled.data.size,)
        self._logp = model.compile_logp(jacobian=True, mode=mode)
        self._dlogp = model.compile_dlogp(jacobian=True, mode=mode)
        by_name = {v.name: v for v in model.unobserved_value_vars}
        self._outputs = [by_name[rv.name] for rv in model.unobserved_RVs if rv.name in by_name]
        self._values = model.compile_fn(
            self._outputs, inputs=model.value_vars, point_fn=False, on_unused_input="ignore"
        )
        self.register_buffer("_anchor", torch.zeros(()))

    def _point(self, row: np.ndarray) -> dict:
        from pymc.blocking import DictToArrayBijection, RaveledVars

        return DictToArrayBijection.rmap(RaveledVars(row, self._info))

    def log_prob(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise TargetError(f"PyMC model: draws must have shape (batch, {self.dim}), got {tuple(x.shape)}")
        return _LogpDlogp.apply(x, self)

    def constrain(self, x: Tensor) -> dict[str, Tensor]:
        """Draws (n, d) -> ``{variable: (n, *shape)}``: the free variables in their own space, then the
        deterministic ones, in model order."""
        rows = torch.as_tensor(x).detach().to("cpu", torch.float64).numpy()
        out = {v.name: [] for v in self._outputs}
        for row in rows:
            point = self._point(row)
            values = self._values(*[point[name] for name, _ in self.free])
            for v, value in zip(self._outputs, values, strict=True):
                out[v.name].append(value)
        return {k: torch.as_tensor(np.stack(v)) for k, v in out.items()}


def from_pymc(model, mode: str | None = None) -> PyMCTarget:
    """The posterior of a PyMC ``model`` (a ``pm.Model`` with its observed data) as a flowvi target, in PyMC's
    unconstrained coordinates, with PyMC's compiled log density and gradient (CPU; needs ``flowvi[pymc]``).
    ``mode``: PyTensor's compilation mode (default: its C backend; ``"PYTORCH"``, ``"NUMBA"``)."""
    try:
        import pymc  # noqa: F401
    except ImportError as e:
        raise ImportError("from_pymc needs PyMC: pip install 'flowvi[pymc]'") from e
    return PyMCTarget(model, mode)
