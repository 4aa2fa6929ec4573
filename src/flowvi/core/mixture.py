"""A mixture of flows, ``q(x) = sum_k pi_k q_k(x)``: a proposal that covers several separated modes.

Reverse KL fits one mode of a multimodal posterior (Bishop 2006, *Pattern Recognition and Machine Learning*,
Sec. 10.1.2). A flow per mode, mixed with weights ``pi_k`` proportional to each mode's mass, covers all of them:

    log q(x) = logsumexp_k (log pi_k + log q_k(x)),

and a draw picks its component ``k ~ Categorical(pi)``, then ``x ~ q_k``. With ``Z_k`` the evidence that
component k's importance weights estimate (the mass of the mode it sits in), ``pi_k = Z_k / sum_j Z_j``
(:func:`weights_from_log_evidence`) makes ``q`` close to ``p / Z`` in every mode. Importance sampling with ``q``
(weights ``p / q``) and independence Metropolis-Hastings with ``q`` as proposal are exact whatever ``pi``, as long
as ``q > 0`` wherever ``p > 0``; good weights only make them efficient. ``training.mode_mixture`` builds one.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def weights_from_log_evidence(log_z) -> Tensor:
    """``log pi_k = log Z_k - logsumexp_j log Z_j`` (K,) from the components' log evidences; a non-finite
    ``log Z_k`` (a component whose weights are all zero) gets weight 0."""
    log_z = torch.as_tensor(log_z, dtype=torch.float64)
    log_z = torch.where(torch.isfinite(log_z), log_z, torch.full_like(log_z, -math.inf))
    if not torch.isfinite(log_z).any():
        raise ValueError("no component of the mixture has a finite log evidence")
    return log_z - torch.logsumexp(log_z, 0)


class FlowMixture(nn.Module):
    """``q(x) = sum_k pi_k q_k(x)`` over flows ``q_k`` with log weights ``log_weights`` (K,) that sum to one in
    probability (module docstring). Has the flow interface that importance sampling and independence MH use:
    ``sample_and_log_prob(n)``, ``sample(n)``, ``log_prob(x)``, ``dim``, ``event_shape``."""

    def __init__(self, flows, log_weights):
        super().__init__()
        self.components = nn.ModuleList(flows)
        lw = torch.as_tensor(log_weights, dtype=torch.float64)
        if lw.shape != (len(self.components),) or not math.isclose(float(torch.logsumexp(lw, 0)), 0.0, abs_tol=1e-6):
            raise ValueError(f"need {len(self.components)} log weights whose exponentials sum to 1, got {lw.tolist()}")
        self.register_buffer("log_weights", lw, persistent=False)

    @property
    def event_shape(self):
        return self.components[0].event_shape

    @property
    def dim(self) -> int:
        return self.components[0].dim

    def log_prob(self, x: Tensor) -> Tensor:
        """``logsumexp_k (log pi_k + log q_k(x))`` (n,); every component is evaluated at every point."""
        per = torch.stack([q.log_prob(x).double() for q in self.components], dim=-1)  # (n, K)
        return torch.logsumexp(per + self.log_weights.to(per.device), dim=-1).to(x.dtype)

    def sample_and_log_prob(self, n: int) -> tuple[Tensor, Tensor]:
        """``n`` draws: component counts ``~ Multinomial(n, pi)`` from the global RNG, each component's draws from
        it, shuffled so that the order carries no component; with the mixture's ``log q`` (n,)."""
        counts = torch.distributions.Multinomial(n, probs=self.log_weights.exp().cpu()).sample().long().tolist()
        xs = [q.sample_and_log_prob(c)[0] for q, c in zip(self.components, counts, strict=True) if c > 0]
        x = torch.cat(xs)[torch.randperm(n, device=xs[0].device)]
        return x, self.log_prob(x)

    def sample(self, n: int) -> Tensor:
        return self.sample_and_log_prob(n)[0]


__all__ = ["FlowMixture", "weights_from_log_evidence"]
