"""Hamiltonian Monte Carlo: flowvi's one leapfrog integrator and one HMC transition, for batched chains.

Every HMC in flowvi runs through this module: fixed-step chains (:func:`hmc`, the phi^4 baseline), the adaptive
many-chain sampler (:mod:`flowvi.samplers.adaptive_hmc`: reference posteriors, NeuTra, flowMC's local moves)
and the AIS transitions of FAB (:mod:`flowvi.objectives.fab`).

With a diagonal inverse mass matrix ``m_inv`` (the kinetic energy is ``K(p) = p^T M^{-1} p / 2``,
``p ~ N(0, M)``, ``M = diag(1 / m_inv)``), one leapfrog trajectory of ``n`` steps of size ``eps`` is

    p <- p + eps/2 grad log p(x);  n times { x <- x + eps m_inv p;  p <- p + eps grad log p(x) }  (last kick eps/2)

(Neal 2011, *MCMC using Hamiltonian dynamics*, Sec. 5.2.3), followed by a Metropolis test on the energy error
``dH = H(x', p') - H(x, p)`` with ``H = -log p(x) + K(p)``: accept with probability ``min(1, exp(-dH))``.
A trajectory whose ``dH`` exceeds 1000 or is not finite, or whose end has a non-finite gradient, is *divergent*
and rejected.

Chains are the first axis of ``x`` (chains, *event_shape); ``eps`` and ``m_inv`` broadcast against ``x`` (a
number, a per-chain step ``(chains, 1, ...)``, a per-coordinate vector ``(d,)``). A sampler here has the shape
of blackjax's kernels: :func:`init` makes a state, :func:`step` moves it, :func:`hmc` runs chains.

Fixed-step chains draw each trajectory's step size uniformly from [(1 - jitter) eps, (1 + jitter) eps],
independently per chain. Without the jitter a fixed trajectory length T = eps * n_leapfrog is not ergodic for
near-Gaussian modes of frequency omega with omega T close to a multiple of pi (they map to -x every trajectory).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from flowvi.targets.base import log_prob_and_grad

__all__ = [
    "GraphedLeapfrog",
    "HMCInfo",
    "HMCState",
    "hmc",
    "init",
    "kinetic_energy",
    "leapfrog",
    "log_prob_and_grad",
    "step",
]

#: energy error above which a trajectory counts as divergent (Stan's threshold)
DIVERGENCE = 1000.0


class HMCState(NamedTuple):
    """Positions of the chains with their log density and its gradient."""

    x: Tensor
    log_prob: Tensor
    grad: Tensor


class HMCInfo(NamedTuple):
    """What one transition did, per chain: ``min(1, exp(-dH))`` (0 when divergent), the divergence flags and
    whether the proposal was accepted."""

    accept_prob: Tensor
    divergent: Tensor
    accepted: Tensor


def init(target, x: Tensor) -> HMCState:
    """The state of chains at ``x`` (chains, *event_shape)."""
    x = x.detach().clone()
    return HMCState(x, *log_prob_and_grad(target, x))


def kinetic_energy(p: Tensor, m_inv) -> Tensor:
    """``p^T M^{-1} p / 2`` per chain."""
    return 0.5 * (p * p * m_inv).flatten(1).sum(1)


def leapfrog(target, x, p, lp, g, eps, m_inv, n_steps: int):
    """``n_steps`` leapfrog steps of size ``eps`` from (x, p); returns (x, p, log_prob, grad) at the end."""
    p = p + 0.5 * eps * g
    for i in range(n_steps):
        x = x + eps * m_inv * p
        lp, g = log_prob_and_grad(target, x)
        p = p + (eps if i < n_steps - 1 else 0.5 * eps) * g
    return x, p, lp, g


def _where(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return torch.where(mask.view((-1,) + (1,) * (a.dim() - 1)), a, b)


def step(
    target,
    state: HMCState,
    eps,
    m_inv,
    n_steps: int,
    generator: torch.Generator | None = None,
    integrator=leapfrog,
) -> tuple[HMCState, HMCInfo]:
    """One HMC transition of every chain: momentum ``p ~ N(0, diag(1 / m_inv))``, a leapfrog trajectory of
    ``n_steps`` steps, the Metropolis test on the energy error (divergent trajectories rejected).
    ``integrator`` has :func:`leapfrog`'s signature (:class:`GraphedLeapfrog` replays it from a CUDA graph)."""
    x, lp, g = state
    p = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if not (isinstance(m_inv, (int, float)) and m_inv == 1):
        p = p / torch.as_tensor(m_inv, dtype=x.dtype, device=x.device).sqrt()
    xn, pn, lpn, gn = integrator(target, x, p, lp, g, eps, m_inv, n_steps)
    dh = (-lpn + kinetic_energy(pn, m_inv)) - (-lp + kinetic_energy(p, m_inv))
    divergent = ~torch.isfinite(dh) | (dh > DIVERGENCE) | ~torch.isfinite(gn).flatten(1).all(1)
    a = torch.where(divergent, torch.zeros_like(dh), torch.exp(-dh.clamp(min=0)))
    u = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype)
    accept = (u < a) & ~divergent
    new = HMCState(_where(accept, xn, x), torch.where(accept, lpn, lp), _where(accept, gn, g))
    return new, HMCInfo(a, divergent, accept)


def hmc(
    target,
    x0,
    n_steps: int,
    step_size: float = 0.1,
    n_leapfrog: int = 10,
    seed: int | None = None,
    jitter: float = 0.2,
):
    """Run fixed-step chains from x0 (chains, *event_shape), unit mass, the step size jittered per chain and
    trajectory; returns (samples (n_steps, chains, ...), mean acceptance rate)."""
    if n_steps < 1 or n_leapfrog < 1 or step_size <= 0:
        raise ValueError(f"need n_steps >= 1, n_leapfrog >= 1, step_size > 0; got {n_steps}, {n_leapfrog}, {step_size}")
    if not 0 <= jitter < 1:
        raise ValueError(f"jitter must be in [0, 1), got {jitter}")
    if seed is not None:
        torch.manual_seed(seed)
    state = init(target, x0)
    x = state.x
    shape = (-1,) + (1,) * (x.dim() - 1)
    out, acc = [], 0.0
    for _ in range(n_steps):
        eps = step_size * (1 + jitter * (2 * torch.rand(x.shape[0], dtype=x.dtype, device=x.device) - 1))
        state, info = step(target, state, eps.view(shape), 1, n_leapfrog)
        acc += info.accepted.float().mean().item()
        out.append(state.x.clone())
    return torch.stack(out), acc / n_steps


class GraphedLeapfrog:
    """The leapfrog integrator with its inner step captured once in a CUDA graph and replayed.

    One leapfrog step of a many-chain sampler is a few dozen small kernels (the target's ``log_prob``, its
    backward, the updates); launching them from Python costs more than the arithmetic. The captured step is
    ``x += eps * m_inv * p; g = grad log p(x); p += eps * g`` on static buffers; a trajectory of n steps is a half
    kick, n replays, and ``p -= eps/2 * g`` (so the last kick is a half kick): the same integrator as
    :func:`leapfrog`, up to rounding. ``eps`` and ``m_inv`` live in device buffers, so the step size and the mass
    matrix can change between trajectories without a new capture. The target's ``log_prob`` must not synchronise
    with the host (no ``.item()``, no data-dependent checks).
    """

    def __init__(self, target, x, m_inv):
        if x.device.type != "cuda":
            raise ValueError(f"GraphedLeapfrog needs CUDA tensors; got {x.device}")
        self.target = target
        self.x, self.p = x.detach().clone(), torch.zeros_like(x)
        self.m_inv = m_inv.detach().clone()
        self.eps = torch.zeros((), device=x.device, dtype=x.dtype)
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):  # warm-up outside the capture (autograd and library workspaces)
            for _ in range(3):
                self._step()
        torch.cuda.current_stream(x.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.lp, self.g = self._step()

    def _step(self):
        self.x.add_(self.eps * self.m_inv * self.p)
        lp, g = log_prob_and_grad(self.target, self.x)
        self.p.add_(self.eps * g)
        return lp, g

    def __call__(self, target, x, p, lp, g, eps, m_inv, n_steps):
        """Same arguments and results as :func:`leapfrog` (``target`` must be the captured one)."""
        if target is not self.target:
            raise ValueError("GraphedLeapfrog was captured for another target")
        self.eps.fill_(eps)
        self.m_inv.copy_(m_inv)
        self.x.copy_(x)
        self.p.copy_(p + 0.5 * eps * g)
        for _ in range(n_steps):
            self.graph.replay()
        return self.x.clone(), self.p - 0.5 * eps * self.g, self.lp.clone(), self.g.clone()
