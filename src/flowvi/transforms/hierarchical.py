"""Per-coordinate affine couplings along a model's hierarchy (learned partial non-centring).

In a hierarchical model a child coordinate is scaled by its parents: the non-centred horseshoe has
``beta_j = z_j * lambda_j * tau``, Neal's funnel ``x_i = exp(v / 2) * eps_i``. Its posterior is a funnel in
whichever parameterization the target uses (non-centred where the likelihood is strong, centred where it is
weak), and a Real NVP coupling cannot model one funnel per coefficient: its conditioner would have to route
each of p parents to its own child through a network narrower than p. This layer gives every child ``c``
an affine map whose log-scale and shift depend on ``c``'s own parents only:

    x_c = z_c * exp(clamp(s_c)) + t_c,       (s_c, t_c) = A_c f_c + a_c + W_c relu(U_c f_c + u_c),
    f_c = (z_{pi(c, 1)}, ..., z_{pi(c, k)}),  log|det J| = sum_c clamp(s_c),

with separate (not shared) parameters per child; coordinates that are not children pass unchanged, so the
Jacobian is triangular and the inverse reads the parents from ``x``. ``s_c = -(log lambda_c + log tau)`` turns
a centred coefficient into a non-centred one; learning ``A_c`` per coefficient is the variationally inferred
parameterization of Gorinova, Moore & Hoffman (2020, ICML, "Automatic reparameterisation of probabilistic
programs"), and the layer plays the part of the prior-structured layers of embedded-model flows (Silvestri et
al. 2022, ICLR). ``A``, ``a`` and ``W`` start at zero: a new layer is the identity. ``clamp`` is LOFT's soft
log extension (:mod:`flowvi.transforms.loft`) with threshold ``bound`` (default 10): the identity on
``[-bound, bound]``, so a realistic centring is represented exactly, and logarithmic beyond, so ``exp(s)`` stays
finite.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from flowvi.transforms.base import Transform, input_requiring_grad, vjp
from flowvi.transforms.loft import loft


def _index(values, name: str) -> Tensor:
    t = torch.as_tensor(values)
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer indices, got dtype {t.dtype}")
    return t.long()


class HierarchicalAffine(Transform):
    """Affine maps of the ``children`` coordinates of ``(batch, dim)`` tensors given their ``parents``.

    Args:
        dim: event size.
        children: ``(m,)`` distinct coordinate indices to transform.
        parents: ``(m, k)`` (or ``(m,)`` for k = 1) coordinate indices; row ``c`` conditions child ``c``. No
            parent may be a child; a parent may serve several children (``log tau`` serves every ``z_j``).
        hidden: width of each child's own one-hidden-layer network beside the linear part (0: linear only).
        bound: the log-scale is the identity on ``[-bound, bound]`` and grows logarithmically beyond.
    """

    def __init__(self, dim: int, children: Sequence[int], parents: Sequence, hidden: int = 8, bound: float = 10.0):
        super().__init__()
        children, parents = _index(children, "children"), _index(parents, "parents")
        if parents.ndim == 1:
            parents = parents[:, None]
        if children.ndim != 1 or children.numel() == 0:
            raise ValueError(f"children must be a non-empty 1-D index list, got shape {tuple(children.shape)}")
        m = children.numel()
        if parents.ndim != 2 or parents.shape[0] != m or parents.shape[1] == 0:
            raise ValueError(f"parents must have shape ({m}, k) for {m} children, got {tuple(parents.shape)}")
        for name, idx in (("children", children), ("parents", parents)):
            if idx.min() < 0 or idx.max() >= dim:
                raise ValueError(f"{name} indices must lie in [0, {dim}), got [{int(idx.min())}, {int(idx.max())}]")
        if children.unique().numel() != m:
            raise ValueError("children must be distinct coordinates")
        both = set(children.tolist()) & set(parents.flatten().tolist())
        if both:
            raise ValueError(f"a coordinate cannot be both a child and a parent: {sorted(both)[:5]}")
        if hidden < 0:
            raise ValueError(f"hidden must be >= 0, got {hidden}")
        if not bound > 0:
            raise ValueError(f"bound must be positive, got {bound}")
        self.dim, self.hidden = int(dim), int(hidden)
        self.register_buffer("child_index", children)
        self.register_buffer("parent_index", parents)
        k = parents.shape[1]
        self.linear = nn.Parameter(torch.zeros(m, k, 2))
        self.bias = nn.Parameter(torch.zeros(m, 2))
        if hidden:
            r = 1 / math.sqrt(k)  # nn.Linear's initialisation
            self.w_in = nn.Parameter(torch.empty(m, k, hidden).uniform_(-r, r))
            self.b_in = nn.Parameter(torch.empty(m, hidden).uniform_(-r, r))
            self.w_out = nn.Parameter(torch.zeros(m, hidden, 2))
        self.bound = float(bound)

    def extra_repr(self) -> str:
        m, k = self.parent_index.shape
        return f"dim={self.dim}, children={m}, parents per child={k}, hidden={self.hidden}, bound={self.bound}"

    def _scale_shift(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Clamped log-scales and shifts ``(batch, m)`` from the parents' values in ``z``."""
        f = z[:, self.parent_index]  # (batch, m, k)
        h = torch.einsum("bmk,mko->bmo", f, self.linear) + self.bias
        if self.hidden:
            u = torch.relu(torch.einsum("bmk,mkh->bmh", f, self.w_in) + self.b_in)
            h = h + torch.einsum("bmh,mho->bmo", u, self.w_out)
        return loft(h[..., 0], self.bound), h[..., 1]

    def _check(self, z: Tensor):
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise ValueError(f"HierarchicalAffine expects (batch, {self.dim}) tensors, got {tuple(z.shape)}")

    def forward(self, z):
        self._check(z)
        s, t = self._scale_shift(z)
        y = torch.addcmul(t, z[:, self.child_index], torch.exp(s))
        return z.index_copy(1, self.child_index, y), s.sum(-1)

    def inverse(self, x):
        self._check(x)
        s, t = self._scale_shift(x)  # the parents are not changed by the layer
        b = (x[:, self.child_index] - t) * torch.exp(-s)
        return x.index_copy(1, self.child_index, b), -s.sum(-1)

    def forward_with_score(self, z, score):
        # As in AffineCoupling, with b the children and a every other coordinate:
        #   score_b' = exp(-s) * score_b,
        #   score_a' = score_a - (ds/da)^T (1 + b * score_b) - (dt/da)^T score_b'
        # (log|det J| depends on the parents only, so it enters only through ds/da).
        self._check(z)
        z = input_requiring_grad(z)
        s, t = self._scale_shift(z)
        b = z[:, self.child_index]
        x = z.index_copy(1, self.child_index, torch.addcmul(t, b, torch.exp(s)))
        score_b = score[:, self.child_index]
        w_b = (score_b * torch.exp(-s)).detach()
        g = vjp((s, t), z, (1 + b.detach() * score_b, w_b))
        return x, s.sum(-1), (score - g).index_copy(1, self.child_index, w_b).detach()
