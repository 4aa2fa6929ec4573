"""Lattice gauge theory targets in 2D: compact U(1) (Wilson action) and the two-flavour Schwinger model.

Variables are link angles of shape ``(2, L, L)`` (see :mod:`flowvi.physics.u1`), periodic, on the torus
``[0, 2pi)^(2V)``; ``log_prob`` is the unnormalized ``-S``.

* ``u1``: ``S = S_g = -beta sum_x cos P(x)``; exact ``log Z`` (``log_evidence``), average plaquette and topological susceptibility from
  the character expansion (:func:`flowvi.physics.u1.exact_log_partition_function`).
* ``schwinger``: U(1) gauge field with ``N_f = 2`` degenerate Wilson fermions,
  ``S = S_g - log det(D^dagger D) = S_g - 2 log|det D|`` with ``D`` the Wilson–Dirac operator at hopping
  parameter ``kappa`` (:mod:`flowvi.physics.dirac`), computed by a batched LU of the dense complex
  ``2V x 2V`` matrix on the inputs' device. Presets (Bialas, Korcyl, Stebel 2023, arXiv 2308.13294,
  following Albergo et al. 2022): ``beta = 2``, ``kappa = 0.276`` (near criticality), ``L = 16`` the largest
  lattice; ``L = 8, 12`` are the smaller sizes of the comparison.
"""

from __future__ import annotations

import torch

from flowvi.flows.gauge import NEUMC_ARCH, u1_gauge_flow
from flowvi.physics.dirac import hop_indices, log_abs_det_dirac, spin_projectors, time_boundary
from flowvi.physics.u1 import (
    check_links,
    exact_average_plaquette,
    exact_log_partition_function,
    exact_topological_susceptibility,
    wilson_action,
)
from flowvi.targets.base import Target, TargetError

#: The REINFORCE paper's Schwinger-model settings: name -> constructor parameters.
SCHWINGER_PRESETS = {
    "reinforce_L8": {"L": 8, "beta": 2.0, "kappa": 0.276},
    "reinforce_L12": {"L": 12, "beta": 2.0, "kappa": 0.276},
    "reinforce_L16": {"L": 16, "beta": 2.0, "kappa": 0.276},
}

#: flow presets of ``flowvi fit --gauge-arch``: flowvi's own (Kanwar et al. stripes) and the REINFORCE authors'
GAUGE_ARCHS = {"kanwar": {"layers": 16, "channels": 8, "depth": 2, "bins": 8}, "neumc": NEUMC_ARCH}


def _as_bool(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise TargetError(f"{name} must be true or false, got {value!r}")


def _gauge_flow(L: int, flow_options: dict):
    """The gauge-equivariant flow from the CLI's flow options (``layers``, ``hidden`` = conditioner channels,
    ``depth``, ``seed``, ``gauge_arch``, ``gauge_masks``, ``dilations``; the rest do not apply to link angles).
    ``gauge_arch="neumc"`` starts from :data:`NEUMC_ARCH` (the REINFORCE authors' flow); given options win."""
    arch = flow_options.get("gauge_arch") or "kanwar"
    if arch not in GAUGE_ARCHS:
        raise TargetError(f"unknown gauge flow architecture {arch!r}; choose one of {', '.join(GAUGE_ARCHS)}")
    opts = dict(GAUGE_ARCHS[arch])
    names = {"layers": "layers", "hidden": "channels", "depth": "depth", "bins": "bins", "gauge_masks": "masks"}
    opts.update({ours: flow_options[k] for k, ours in names.items() if flow_options.get(k) is not None})
    if flow_options.get("dilations") is not None:
        opts["dilations"] = tuple(flow_options["dilations"])
    depth = int(opts.get("depth", 2))
    if "dilations" in opts and len(opts["dilations"]) != depth + 1:
        raise TargetError(
            f"need {depth + 1} dilations for depth {depth} (one per convolution), got {opts['dilations']}"
        )
    return u1_gauge_flow(L, seed=flow_options.get("seed"), **opts)


class U1Gauge(Target):
    """Compact U(1) gauge theory, Wilson plaquette action, on a periodic ``L x L`` lattice."""

    def __init__(self, L: int = 8, beta: float = 2.0):
        super().__init__()
        L = int(L)
        if L < 2:
            raise TargetError(f"lattice size L must be >= 2, got {L}")
        if beta < 0:
            raise TargetError(f"beta must be >= 0, got {beta}")
        self.L, self.beta = L, float(beta)
        self.event_shape = (2, L, L)
        self.log_evidence = exact_log_partition_function(self.beta, L)

    def log_prob(self, x):
        return -wilson_action(check_links(x), self.beta)

    def exact_average_plaquette(self) -> float:
        return exact_average_plaquette(self.beta, self.L)

    def exact_topological_susceptibility(self) -> float:
        return exact_topological_susceptibility(self.beta, self.L)

    def default_flow(self, **flow_options):
        return _gauge_flow(self.L, flow_options)

    def extra_repr(self):
        return f"L={self.L}, beta={self.beta}"


class Schwinger(Target):
    """Schwinger model with two degenerate flavours of Wilson fermions (defaults: the REINFORCE paper's
    ``beta = 2``, ``kappa = 0.276``, ``L = 8``; fermions antiperiodic in time)."""

    def __init__(self, L: int = 8, beta: float = 2.0, kappa: float = 0.276, antiperiodic: bool = True):
        super().__init__()
        L = int(L)
        if L < 2:
            raise TargetError(f"lattice size L must be >= 2, got {L}")
        if beta < 0 or kappa < 0:
            raise TargetError(f"beta and kappa must be >= 0, got beta={beta}, kappa={kappa}")
        self.L, self.beta, self.kappa = L, float(beta), float(kappa)
        self.antiperiodic = _as_bool("antiperiodic", antiperiodic)
        self.event_shape = (2, L, L)
        # the Dirac stencil as buffers: no constant is rebuilt or copied from the host per call
        self.register_buffer("hop_index", hop_indices(L, L, None), persistent=False)
        self.register_buffer("projectors", torch.view_as_real(spin_projectors()), persistent=False)
        self.register_buffer("boundary", time_boundary(L, L, self.antiperiodic), persistent=False)

    def log_prob(self, x):
        x = check_links(x)
        stencil = {"hop_index": self.hop_index, "projectors": self.projectors, "boundary": self.boundary}
        return -wilson_action(x, self.beta) + 2 * log_abs_det_dirac(x, self.kappa, self.antiperiodic, **stencil)

    def default_flow(self, **flow_options):
        return _gauge_flow(self.L, flow_options)

    def extra_repr(self):
        return f"L={self.L}, beta={self.beta}, kappa={self.kappa}, antiperiodic={self.antiperiodic}"
