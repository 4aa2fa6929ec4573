"""A normalizing flow: a base distribution pushed through a composition of transforms.

x = f(z),  z ~ q0,   log q(x) = log q0(z) - log|det J_f(z)|
"""

from __future__ import annotations

from torch import Tensor, nn

from flowvi.transforms import Compose


class Flow(nn.Module):
    def __init__(self, base: nn.Module, transforms):
        super().__init__()
        self.base = base
        self.transform = transforms if isinstance(transforms, Compose) else Compose(list(transforms))

    @property
    def event_shape(self):
        return self.base.event_shape

    @property
    def dim(self) -> int:
        return self.base.dim

    def sample_and_log_prob(self, n: int) -> tuple[Tensor, Tensor]:
        """``n`` samples with their log density (differentiable: the reparameterization path)."""
        z = self.base.sample(
            n,
        )
        x, logdet = self.transform(z)
        return x, self.base.log_prob(z) - logdet

    def sample(self, n: int) -> Tensor:
        return self.sample_and_log_prob(n)[0]

    def log_prob(self, x: Tensor) -> Tensor:
        z, logdet = self.transform.inverse(x)
        return self.base.log_prob(z) + logdet

    def sample_with_score(self, n: int) -> tuple[Tensor, Tensor, Tensor]:
        """Samples ``x`` (with graph), ``log q(x)`` and the detached ``d log q(x)/dx``, in one pass
        (the fast path-gradient recursion of Vaitl et al. 2024)."""
        z = self.base.sample(
            n,
        )
        x, logdet, score = self.transform.forward_with_score(z, self.base.score(z))
        return x, self.base.log_prob(z) - logdet, score
