"""A normalizing flow: a base distribution pushed through a composition of transforms.

x = f(z),  z ~ q0,   log q(x) = log q0(z) - log|det J_f(z)|
"""

from __future__ import annotations

from torch import Tensor, nn

from flowvi.transforms import Compose


class Flow(nn.Module):
    """A normalizing flow ``q``: draws ``z ~ q0`` from ``base`` and maps them through ``transforms``.

    Change of variables (Rezende & Mohamed 2015, arXiv 1505.05770; review: Papamakarios et al. 2021, JMLR 22(57)):

        x = f(z) = f_K o ... o f_1 (z),   log q(x) = log q0(z) - sum_k log|det J_{f_k}|.

    Args:
        base: a base distribution with ``sample(n)``, ``log_prob(z)`` and ``score(z)`` over an ``event_shape``
            (:class:`StandardNormal`, :class:`StudentT`).
        transforms: a list of :class:`flowvi.transforms.Transform` (or one ``Compose``), applied in order from
            base space to sample space; each returns ``(x, log|det J|)`` forward and ``(z, log|det J^-1|)``
            inverse.

    Shapes: samples are ``(n, *event_shape)`` (``(n, d)`` for a vector flow, ``(n, L, L)`` or ``(n, 2, L, L)``
    for lattice fields); log densities are ``(n,)``. Move the flow with ``flow.to(device, dtype)``.

    Example:
        >>> import flowvi
        >>> flow = flowvi.realnvp(3, layers=2, hidden=8)
        >>> x, log_q = flow.sample_and_log_prob(5)
        >>> x.shape, log_q.shape
        (torch.Size([5, 3]), torch.Size([5]))
    """

    def __init__(self, base: nn.Module, transforms: list | Compose):
        super().__init__()
        self.base = base
        self.transform = transforms if isinstance(transforms, Compose) else Compose(list(transforms))

    @property
    def event_shape(self):
        """The shape of one sample (the base's), e.g. ``(d,)`` or ``(L, L)``."""
        return self.base.event_shape

    @property
    def dim(self) -> int:
        """The number of coordinates of one sample, ``prod(event_shape)``."""
        return self.base.dim

    def sample_and_log_prob(self, n: int) -> tuple[Tensor, Tensor]:
        """``n`` samples ``x`` (n, *event_shape) with ``log q(x)`` (n,), in one forward pass; differentiable with
        respect to the flow's parameters (the reparameterization path ``x = f_theta(z)``)."""
        z = self.base.sample(
            n,
        )
        x, logdet = self.transform(z)
        return x, self.base.log_prob(z) - logdet

    def sample(self, n: int) -> Tensor:
        """``n`` samples (n, *event_shape); wrap in ``torch.no_grad()`` when no gradient is needed."""
        return self.sample_and_log_prob(n)[0]

    def log_prob(self, x: Tensor) -> Tensor:
        """``log q(x) = log q0(f^-1(x)) + log|det J_{f^-1}(x)|`` (n,) of points ``x`` (n, *event_shape), by the
        inverse pass."""
        z, logdet = self.transform.inverse(x)
        return self.base.log_prob(z) + logdet

    def sample_with_score(self, n: int) -> tuple[Tensor, Tensor, Tensor]:
        """Samples ``x`` (n, *event_shape, with graph), ``log q(x)`` (n,) and the detached score
        ``d log q(x)/dx`` (n, *event_shape), in one forward pass: the fast path-gradient recursion of Vaitl et al.
        2024 (arXiv 2403.15881), ``s_k = J_k^-T (s_{k-1} - d log|det J_k|/dz)`` carried through the layers."""
        z = self.base.sample(
            n,
        )
        x, logdet, score = self.transform.forward_with_score(z, self.base.score(z))
        return x, self.base.log_prob(z) - logdet, score
