"""Real scalar phi^4 theory on an L x L periodic lattice.

Action in the hopping-parameter form of Nicoli et al. 2021 (PRL 126, 032001), the parameterization the
path-gradient work of Vaitl et al. (arXiv 2403.15881) is said to use (provenance: docs/notes/lattice.md):

    S(phi) = sum_x [ -2 kappa sum_{mu=1,2} phi_x phi_{x+mu} + (1 - 2 lambda) phi_x^2 + lambda phi_x^4 ]

with hopping parameter ``kappa`` and coupling ``lambda``; the density is exp(-S) (unnormalized).
The action is invariant under the Z2 symmetry phi -> -phi.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowvi.targets.base import Target, TargetError

#: name -> (L, kappa, lambda); provenance in docs/notes/lattice.md. ``nicoli``: lambda = 0.022 of Nicoli et al.
#: 2021 at kappa = 0.3 (broken phase: kappa_c is about 0.27 at this lambda) on 16 x 16; ``small``: the same
#: couplings on 4 x 4 for quick CPU runs; ``upg-default``: the defaults of the phi^4 options (--lat-shape 8x8,
#: --kappa 0.21, --lam 1.0) of script/train.py in the path-gradient authors' repository
#: (github.com/lenz3000/unified-path-gradients), which does not ship the phi^4 action itself.
PRESETS = {
    "nicoli": (16, 0.3, 0.022),
    "small": (4, 0.3, 0.022),
    "upg-default": (8, 0.21, 1.0),
}


def phi4_action(phi: Tensor, kappa: float, lam: float) -> Tensor:
    """S(phi) for fields of shape (batch, L, L), periodic boundaries; returns (batch,)."""
    hop = phi * (torch.roll(phi, -1, dims=-1) + torch.roll(phi, -1, dims=-2))
    phi2 = phi * phi
    local = -2.0 * kappa * hop + (1.0 - 2.0 * lam) * phi2 + lam * phi2 * phi2
    return local.sum(dim=(-2, -1))


class Phi4(Target):
    """phi^4 target: log_prob(phi) = -S(phi) on (batch, L, L) fields.

    ``preset`` (see :data:`PRESETS`) sets L, kappa and lam; explicit values override it. ``z2`` picks how
    :meth:`default_flow` respects phi -> -phi (``symmetrize`` or ``equivariant``, see :mod:`.flows_phi4`);
    as a target parameter it is stored with a run (``flowvi fit phi4 -p z2=equivariant``).
    """

    #: the values of L, kappa and lam when neither they nor a preset are given (shown by ``flowvi targets``)
    DEFAULTS = {"L": 8, "kappa": 0.3, "lam": 0.022}

    def __init__(
        self,
        L: int | None = None,
        kappa: float | None = None,
        lam: float | None = None,
        preset: str | None = None,
        z2: str = "symmetrize",
    ):
        super().__init__()
        if z2 not in ("symmetrize", "equivariant"):
            raise TargetError(f"unknown phi4 z2 mode {z2!r}; choose symmetrize or equivariant")
        self.z2 = z2
        if preset is not None:
            if preset not in PRESETS:
                raise TargetError(f"unknown phi4 preset {preset!r}; presets: {', '.join(PRESETS)}")
            pL, pk, pl = PRESETS[preset]
            L = pL if L is None else L
            kappa = pk if kappa is None else kappa
            lam = pl if lam is None else lam
        L = self.DEFAULTS["L"] if L is None else int(L)
        kappa = self.DEFAULTS["kappa"] if kappa is None else float(kappa)
        lam = self.DEFAULTS["lam"] if lam is None else float(lam)
        if L < 2:
            raise TargetError(f"phi4 lattice size L must be >= 2, got {L}")
        if lam < 0:
            raise TargetError(f"phi4 coupling lam must be >= 0, got {lam}")
        self.L, self.kappa, self.lam = L, kappa, lam
        self.event_shape = (L, L)

    def log_prob(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (self.L, self.L) or x.dim() != 3:
            raise TargetError(f"phi4 expects fields of shape (batch, {self.L}, {self.L}), got {tuple(x.shape)}")
        return -phi4_action(x, self.kappa, self.lam)

    def default_flow(self, **flow_options):
        from flowvi.flows.phi4 import phi4_flow

        return phi4_flow(self.L, **{**flow_options, "z2": self.z2})
