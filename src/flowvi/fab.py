"""FAB: flow annealed importance sampling bootstrap (Midgley et al. 2023, ICLR, arXiv 2208.01893).

A mass-covering objective that needs no draws from the target. The flow q_theta is trained to minimize the
alpha-divergence with alpha = 2,

    D_2(p || q) ∝ ∫ p(x)^2 / q(x) dx,      grad_theta = -Z_2 E_{p^2/q}[grad_theta log q_theta(x)],

whose minimizer puts mass wherever p has it (the variance of the importance weights p/q is what it
penalizes), unlike reverse KL, which may drop a region of p that q never visits. The expectation over p^2/q is
estimated by annealed importance sampling (AIS, Neal 2001) that starts from q:

    x_0 ~ q,   pi_j(x) ∝ q(x)^(1 - alpha b_j) p(x)^(alpha b_j),   b_j = j / M  (j = 1..M; pi_M = p^alpha / q^(alpha-1)),
    log w = sum_j alpha (b_j - b_{j-1}) (log p(x_{j-1}) - log q(x_{j-1})),   x_j ~ HMC leaving pi_j invariant,

and the surrogate loss is ``-sum_i softmax(log w)_i log q_theta(x_M^i)`` with x and w held fixed (the
bootstrap: q is both AIS's start and the distribution being trained). Each HMC transition takes ``leapfrog``
steps with a diagonal metric (position scales = the per-coordinate sd of the step's draws x_0) and a step size
per stage, adapted between training steps towards an acceptance probability of ``target_accept``
(Robbins-Monro on log step size, as in the FAB paper). A move is rejected where log q, log p or the energy is
not finite.

Costs: each training step evaluates log q and log p with their x-gradients ``stages * leapfrog`` times, so a
step is about that many times a reverse-KL step. This is the FAB estimator without the replay buffer. The
logged ELBO and ESS (``Estimate.log_weights``) are those of the draws x_0 ~ q, so they describe the flow, not
the AIS.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .estimators import Estimate, _with_value
from .estimators import _target_log_prob_and_grad as _log_prob_and_grad  # also for the flow: x-gradient only


class FAB:
    """The FAB estimator (alpha-divergence, alpha = 2, by AIS from q with HMC transitions); see the module.

    Call it as any estimator, ``FAB()(flow, target, batch_size) -> Estimate``. It holds the adapted HMC step
    sizes (one per stage), so use one instance per training run; ``state_dict`` / ``load_state_dict`` carry
    them through checkpoints. After a call, ``last`` holds the AIS diagnostics of that step: the acceptance
    rate per stage and the effective sample size of the AIS weights over the batch size.
    """

    eager_only = True  # AIS has data-dependent accept/reject and inner autograd: no compile, no CUDA graph

    def __init__(
        self,
        stages: int = 8,
        leapfrog: int = 3,
        alpha: float = 2.0,
        target_accept: float = 0.65,
        step_size: float = 0.05,
        adapt_rate: float = 0.05,
    ):
        if not (isinstance(stages, int) and stages >= 1):
            raise ValueError(f"FAB needs stages >= 1 (an integer), got {stages!r}")
        if not (isinstance(leapfrog, int) and leapfrog >= 1):
            raise ValueError(f"FAB needs leapfrog >= 1 (an integer), got {leapfrog!r}")
        if not alpha > 1:
            raise ValueError(f"FAB's alpha-divergence needs alpha > 1, got {alpha}")
        if not 0 < target_accept < 1:
            raise ValueError(f"target_accept must lie in (0, 1), got {target_accept}")
        if not step_size > 0:
            raise ValueError(f"step_size must be positive, got {step_size}")
        self.stages, self.leapfrog, self.alpha = stages, leapfrog, float(alpha)
        self.target_accept, self.adapt_rate = target_accept, adapt_rate
        self.log_step = torch.full((stages,), math.log(step_size), dtype=torch.float64)
        self.last: dict = {}

    def state_dict(self) -> dict:
        return {"log_step": self.log_step.clone()}

    def load_state_dict(self, state: dict) -> None:
        log_step = torch.as_tensor(state["log_step"], dtype=torch.float64)
        if log_step.shape != self.log_step.shape:
            raise ValueError(f"FAB state has {log_step.numel()} stages, this estimator {self.stages}")
        self.log_step = log_step.clone()

    def ais(self, flow, target, n: int) -> tuple[Tensor, Tensor, Tensor, list[float]]:
        """AIS from q to p^alpha / q^(alpha - 1): returns (x_M, log w, log p(x_0) - log q(x_0), acceptance per
        stage). Adapts the step sizes."""
        with torch.no_grad():
            x = flow.sample(n)
        log_q, grad_q = _log_prob_and_grad(flow, x)
        log_p, grad_p = _log_prob_and_grad(target, x)
        log_p, grad_p = log_p.to(log_q.dtype), grad_p.to(grad_q.dtype)
        log_w0 = log_p - log_q
        scale = x.std(0).clamp_min(1e-6) if n > 1 else torch.ones_like(x[0])
        log_w = torch.zeros_like(log_q)
        accept = []
        for j in range(1, self.stages + 1):
            a = self.alpha * j / self.stages  # pi_j = q^(1 - a) p^a
            log_w = log_w + (self.alpha / self.stages) * (log_p - log_q)
            eps = math.exp(float(self.log_step[j - 1])) * scale
            momentum = torch.randn_like(x)
            h0 = (1 - a) * log_q + a * log_p - 0.5 * (momentum**2).sum(-1)
            y, m = x, momentum
            grad = (1 - a) * grad_q + a * grad_p
            for _ in range(self.leapfrog):
                m = m + 0.5 * eps * grad
                y = y + eps * m
                lq_y, gq_y = _log_prob_and_grad(flow, y)
                lp_y, gp_y = _log_prob_and_grad(target, y)
                lp_y, gp_y = lp_y.to(lq_y.dtype), gp_y.to(gq_y.dtype)
                grad = (1 - a) * gq_y + a * gp_y
                m = m + 0.5 * eps * grad
            h1 = (1 - a) * lq_y + a * lp_y - 0.5 * (m**2).sum(-1)
            log_acc = torch.nan_to_num(h1 - h0, nan=-math.inf).clamp(max=0.0)
            ok = torch.isfinite(lq_y) & torch.isfinite(lp_y) & torch.isfinite(y).all(-1)
            log_acc = torch.where(ok, log_acc, torch.full_like(log_acc, -math.inf))
            take = torch.rand_like(log_acc).log() < log_acc
            x = torch.where(take[:, None], y, x)
            log_q, log_p = torch.where(take, lq_y, log_q), torch.where(take, lp_y, log_p)
            grad_q = torch.where(take[:, None], gq_y, grad_q)
            grad_p = torch.where(take[:, None], gp_y, grad_p)
            rate = float(log_acc.exp().mean())
            accept.append(rate)
            self.log_step[j - 1] += self.adapt_rate * (rate - self.target_accept)
        return x.detach(), torch.nan_to_num(log_w, nan=-math.inf), log_w0, accept

    def __call__(self, flow, target, batch_size: int) -> Estimate:
        x, log_w, log_w0, accept = self.ais(flow, target, batch_size)
        weights = torch.softmax(log_w.detach(), 0)
        surrogate = -(weights * flow.log_prob(x)).sum()
        self.last = {"accept": accept, "ais_ess": float(1.0 / (weights**2).sum()) / batch_size}
        return Estimate(loss=_with_value(-log_w0.mean(), surrogate), log_weights=log_w0.detach())


__all__ = ["FAB"]
