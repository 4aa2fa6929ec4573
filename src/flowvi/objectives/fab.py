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
(Robbins-Monro on log step size, as in the FAB paper); the moves are flowvi's one HMC transition
(:mod:`flowvi.samplers.hmc`), which rejects a move where log q, log p or the energy is not finite.

Costs: each AIS run evaluates log q and log p with their x-gradients ``stages * leapfrog`` times, so a step
that runs one is about that many times a reverse-KL step.

Prioritized replay buffer (``buffer > 0``; the default holds 16 384 draws; the FAB paper's prioritized
buffer). AIS runs only every ``replay``-th step; its draws x_M join a first-in-first-out buffer of ``buffer``
draws with their log weights and log q at the time, and every step trains on ``batch_size`` draws resampled
from the whole buffer with probabilities softmax(log w) (with replacement), by the plain maximum-likelihood
loss ``-mean log q_theta(x)``. Its expected gradient is that of the weighted loss over the buffer. A weight was
computed for the target p^alpha / q_old^(alpha-1) of the flow q_old that ran its AIS; as q moves, the resampled
draws' weights are corrected to the current flow,

    log w <- log w + (alpha - 1) (log q_old(x) - log q_theta(x)),     log q_old(x) <- log q_theta(x),

so the buffer pools the few high-weight draws of many AIS runs (AIS weights in high dimension are degenerate:
a batch's effective sample size is often a few draws) and reuses each run ``replay`` times.

The logged ELBO and ESS (``Estimate.log_weights``) are those of fresh draws x_0 ~ q at every step, so they
describe the flow, not the AIS.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flowvi.diagnostics.importance import normalized_ess
from flowvi.objectives.estimators import Estimate, masked_mean, with_value
from flowvi.samplers.hmc import HMCState, step
from flowvi.targets.base import log_prob_and_grad


class _Annealed:
    """The AIS density ``pi_a ∝ q^(1 - a) p^a``; keeps the parts (log q, its gradient, log p, its gradient) of its
    last evaluation, so that an HMC move (:func:`flowvi.samplers.hmc.step`) costs no extra evaluation."""

    def __init__(self, flow, target, a: float):
        self.flow, self.target, self.a = flow, target, a
        self.parts = None

    def log_prob_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        lq, gq = log_prob_and_grad(self.flow, x)
        lp, gp = log_prob_and_grad(self.target, x)
        lp, gp = lp.to(lq.dtype), gp.to(gq.dtype)
        self.parts = (lq, gq, lp, gp)
        return (1 - self.a) * lq + self.a * lp, (1 - self.a) * gq + self.a * gp


def _finite_mean(log_w0: Tensor) -> Tensor:
    """The batch ELBO over the draws with a finite weight (:func:`flowvi.objectives.estimators.masked_mean`)."""
    return masked_mean(log_w0, torch.isfinite(log_w0))


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
        buffer: int = 16384,
        replay: int = 4,
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
        if not (isinstance(buffer, int) and buffer >= 0):
            raise ValueError(f"FAB's buffer is a number of draws >= 0 (0: no buffer), got {buffer!r}")
        if not (isinstance(replay, int) and replay >= 1):
            raise ValueError(f"FAB's replay (training steps per AIS run) must be an integer >= 1, got {replay!r}")
        self.stages, self.leapfrog, self.alpha = stages, leapfrog, float(alpha)
        self.capacity, self.replay = buffer, replay
        self.calls = 0  # training steps taken (sets when AIS runs, with the buffer)
        self.buffer: dict[str, Tensor] = {}  # x, log_w, log_q (float32), filled up to ``capacity`` then FIFO
        self.head = 0  # where the next draw goes, once the buffer is full
        self.target_accept, self.adapt_rate = target_accept, adapt_rate
        self.log_step = torch.full((stages,), math.log(step_size), dtype=torch.float64)
        self.last: dict = {}

    def state_dict(self) -> dict:
        state = {"log_step": self.log_step.clone(), "calls": self.calls, "head": self.head}
        state["buffer"] = {k: v.detach().cpu().clone() for k, v in self.buffer.items()}  # moved back on use
        return state

    def load_state_dict(self, state: dict) -> None:
        log_step = torch.as_tensor(state["log_step"], dtype=torch.float64)
        if log_step.shape != self.log_step.shape:
            raise ValueError(f"FAB state has {log_step.numel()} stages, this estimator {self.stages}")
        buffer = state.get("buffer", {})
        if buffer and len(buffer["log_w"]) > self.capacity:
            raise ValueError(
                f"FAB state holds {len(buffer['log_w'])} buffered draws, this estimator's buffer {self.capacity}"
            )
        self.log_step = log_step.clone()
        self.calls, self.head = int(state.get("calls", 0)), int(state.get("head", 0))
        self.buffer = {k: v.clone() for k, v in buffer.items()}

    def ais(self, flow, target, n: int) -> tuple[Tensor, Tensor, Tensor, list[float], Tensor]:
        """AIS from q to p^alpha / q^(alpha - 1): returns (x_M, log w, log p(x_0) - log q(x_0), acceptance per
        stage, log q(x_M)). Adapts the step sizes."""
        with torch.no_grad():
            x = flow.sample(n)
        log_q, grad_q = log_prob_and_grad(flow, x)
        log_p, grad_p = log_prob_and_grad(target, x)
        log_p, grad_p = log_p.to(log_q.dtype), grad_p.to(grad_q.dtype)
        log_w0 = log_p - log_q
        scale = x.std(0).clamp_min(1e-6) if n > 1 else torch.ones_like(x[0])
        log_w = torch.zeros_like(log_q)
        accept = []
        for j in range(1, self.stages + 1):
            a = self.alpha * j / self.stages  # pi_j = q^(1 - a) p^a
            log_w = log_w + (self.alpha / self.stages) * (log_p - log_q)
            eps = math.exp(float(self.log_step[j - 1])) * scale
            pi_j = _Annealed(flow, target, a)
            start = HMCState(x, (1 - a) * log_q + a * log_p, (1 - a) * grad_q + a * grad_p)
            moved, info = step(pi_j, start, eps, 1, self.leapfrog)
            lq_y, gq_y, lp_y, gp_y = pi_j.parts
            take = info.accepted
            x = moved.x
            log_q, log_p = torch.where(take, lq_y, log_q), torch.where(take, lp_y, log_p)
            grad_q = torch.where(take[:, None], gq_y, grad_q)
            grad_p = torch.where(take[:, None], gp_y, grad_p)
            rate = float(info.accept_prob.mean())
            accept.append(rate)
            self.log_step[j - 1] += self.adapt_rate * (rate - self.target_accept)
        return x.detach(), torch.nan_to_num(log_w, nan=-math.inf), log_w0, accept, log_q.detach()

    def __call__(self, flow, target, batch_size: int) -> Estimate:
        if self.capacity:
            return self._replay(flow, target, batch_size)
        x, log_w, log_w0, accept, _ = self.ais(flow, target, batch_size)
        weights = torch.softmax(log_w.detach(), 0)
        surrogate = -(weights * flow.log_prob(x)).sum()
        self.last = {"accept": accept, "ais_ess": normalized_ess(log_w)}
        return Estimate(loss=with_value(-_finite_mean(log_w0), surrogate), log_weights=log_w0.detach())

    def _replay(self, flow, target, batch_size: int) -> Estimate:
        """One training step from the prioritized buffer; AIS refills it every ``replay`` steps."""
        self.last = {}
        device = next(flow.parameters()).device
        self.buffer = {k: v.to(device) for k, v in self.buffer.items()}  # a resumed buffer comes on the CPU
        if self.calls % self.replay == 0:
            x, log_w, log_w0, accept, log_q_x = self.ais(flow, target, batch_size)
            self._push(x, log_w, log_q_x)
            self.last = {"accept": accept, "ais_ess": normalized_ess(log_w)}
        else:  # fresh draws from q for the logged ELBO / ESS only
            with torch.no_grad():
                x0, log_q0 = flow.sample_and_log_prob(batch_size)
                log_w0 = target.log_prob(x0).to(log_q0.dtype) - log_q0
        self.calls += 1
        buf = self.buffer
        if not buf or not len(buf["log_w"]):  # no AIS draw has had a finite weight yet: a skipped step
            with torch.no_grad():
                x0 = flow.sample(batch_size)
            return Estimate(loss=with_value(torch.tensor(math.nan), -flow.log_prob(x0).mean()), log_weights=log_w0)
        self.last["buffer_ess"] = normalized_ess(buf["log_w"])
        pick = torch.multinomial(torch.softmax(buf["log_w"], 0), batch_size, replacement=True)
        log_q = flow.log_prob(buf["x"][pick].to(log_w0.dtype))
        with torch.no_grad():  # the picked weights now refer to the current flow (duplicates write equal values)
            new_q = log_q.detach().to(buf["log_q"].dtype)
            buf["log_w"][pick] = buf["log_w"][pick] + (self.alpha - 1) * (buf["log_q"][pick] - new_q)
            buf["log_q"][pick] = new_q
        return Estimate(loss=with_value(-_finite_mean(log_w0), -log_q.mean()), log_weights=log_w0.detach())

    def _push(self, x: Tensor, log_w: Tensor, log_q: Tensor) -> None:
        """Add an AIS run's draws (float32), the oldest leaving once ``capacity`` is reached."""
        new = {"x": x.float(), "log_w": log_w.float(), "log_q": log_q.float()}
        keep = new["log_w"] > -math.inf  # draws that no longer have weight carry no information
        new = {k: v[keep][-self.capacity :] for k, v in new.items()}
        if not self.buffer:
            self.buffer = {k: v.clone() for k, v in new.items()}
            return
        size, n = len(self.buffer["log_w"]), len(new["log_w"])
        if size + n <= self.capacity:
            self.buffer = {k: torch.cat([self.buffer[k], new[k]]) for k in new}
            return
        if size < self.capacity:  # fill up, then overwrite the oldest
            fill = self.capacity - size
            self.buffer = {k: torch.cat([self.buffer[k], new[k][:fill]]) for k in new}
            new = {k: v[fill:] for k, v in new.items()}
            self.head, n = 0, n - fill
        slots = (self.head + torch.arange(n, device=new["x"].device)) % self.capacity
        for k in new:
            self.buffer[k][slots] = new[k]
        self.head = (self.head + n) % self.capacity


__all__ = ["FAB"]
