"""Many-chain adaptive HMC: hundreds of chains in lock-step on one batched ``log_prob``, for reference posteriors.

All chains share one step size ``eps``, one diagonal inverse mass matrix ``m_inv`` (the posterior variances)
and, per iteration, one number of leapfrog steps; a GPU evaluates the batched gradient of 512 chains at about
the cost of one. What is implemented:

* **Leapfrog HMC** (:mod:`flowvi.samplers.hmc`, the one integrator and transition) with kinetic energy ``p^T M^{-1} p / 2``, ``p ~ N(0, M)``, ``M = diag(1 / m_inv)``;
  Metropolis accept/reject on the energy error ``dH = H(x', p') - H(x, p)``.
* **Jittered trajectory length**: every iteration draws the number of leapfrog steps uniformly from
  ``{1, ..., max_leapfrog}`` (Neal 2011, *MCMC using Hamiltonian dynamics*, Sec. 5.4.4; fixed-length HMC is not
  ergodic for modes with frequency x length near a multiple of pi, see :mod:`flowvi.samplers.hmc`).
  No ChEES trajectory-length adaptation (Hoffman, Radul & Sountsov 2021): ``max_leapfrog`` is set by the user.
* **Step size by dual averaging** (Hoffman & Gelman 2014, *The No-U-Turn Sampler*, Alg. 5; gamma = 0.05,
  t0 = 10, kappa = 0.75, mu = log(10 eps)) on the cross-chain mean acceptance probability
  ``mean_c min(1, exp(-dH_c))`` towards ``target_accept``; restarted after every mass-matrix update; the final
  step size is the averaged ``eps_bar``.
* **Diagonal mass matrix, Stan's windowed warm-up** (Stan Reference Manual, "HMC algorithm parameters"):
  an initial fast window (15 % of warm-up, step size only), slow windows doubling in length from 25 % / ... of
  the middle 75 %, a final fast window (10 %). At the end of each slow window ``m_inv`` is the variance of the
  window's draws pooled over all chains and iterations, shrunk as in Stan:
  ``m_inv = n / (n + 5) var + 1e-3 * 5 / (n + 5)`` with n the number of pooled draws per chain-window.
* **Divergences**: a trajectory whose energy error exceeds 1000 or is not finite is divergent; it is rejected
  (acceptance probability 0) and counted per chain, separately for warm-up and sampling.
* **Dispersed start**: ``uniform(-init_radius, init_radius)`` per coordinate (Stan's default, radius 2), seeded,
  so that split R-hat over chains started apart is a real check of convergence.
* **Wall-time limit** ``max_seconds``: warm-up gets the share ``warmup / (warmup + draws)`` of it and ends its
  adaptation early when over it; sampling stops when the total is exhausted and keeps the draws so far.

Draws are kept on the device in ``store_dtype`` (default: the input's dtype), every ``thin``-th iteration:
``(draws / thin) * chains * d`` numbers, e.g. 1000 x 512 x 4002 in float32 = 8.2 GB (16.4 GB in float64),
fine on an 80 GB GPU. ESS and split R-hat need the whole chains, running moments are not enough.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import torch

from flowvi.core.options import split_options
from flowvi.samplers.hmc import GraphedLeapfrog, HMCState, kinetic_energy, leapfrog, log_prob_and_grad, step


def warmup_windows(warmup: int) -> tuple[int, list[int]]:
    """Stan's adaptation schedule: (end of the initial fast window, ends of the slow windows).

    The final fast window runs from the last slow window's end to ``warmup``. With fewer than 20 iterations
    only the step size is adapted (no slow windows)."""
    if warmup < 20:
        return warmup, []
    init, term = int(0.15 * warmup), int(0.1 * warmup)
    ends, start, size = [], init, 25 if warmup >= 150 else max(1, (warmup - init - term) // 3)
    stop = warmup - term
    while start < stop:
        end = start + size
        if end + 2 * size > stop:  # the next window would not fit: stretch this one to the end
            end = stop
        ends.append(end)
        start, size = end, 2 * size
    return init, ends


class DualAveraging:
    """Hoffman & Gelman (2014) dual averaging of log step size towards a target acceptance probability."""

    def __init__(self, step_size: float, target_accept: float, gamma=0.05, t0=10.0, kappa=0.75):
        self.mu, self.target, self.gamma, self.t0, self.kappa = (
            math.log(10 * step_size),
            target_accept,
            gamma,
            t0,
            kappa,
        )
        self.t, self.h_bar, self.log_eps, self.log_eps_bar = 0, 0.0, math.log(step_size), 0.0

    def update(self, accept_prob: float) -> float:
        """Feed one iteration's mean acceptance probability; returns the next step size."""
        self.t += 1
        w = 1.0 / (self.t + self.t0)
        self.h_bar = (1 - w) * self.h_bar + w * (self.target - accept_prob)
        self.log_eps = self.mu - math.sqrt(self.t) / self.gamma * self.h_bar
        eta = self.t ** (-self.kappa)
        self.log_eps_bar = eta * self.log_eps + (1 - eta) * self.log_eps_bar
        return math.exp(self.log_eps)

    @property
    def final(self) -> float:
        return math.exp(self.log_eps_bar)


def chain_device_dtype(target, x0=None, device=None, dtype=None) -> tuple[torch.device, torch.dtype]:
    """Where the chains live: ``x0``'s device and dtype if given, else ``device``/``dtype``, by default those of the
    target's first buffer (floating dtypes only), else CPU float64."""
    if x0 is not None:
        return x0.device, x0.dtype
    anchor = next(iter(target.buffers()), None)
    device = (
        torch.device(device) if device is not None else (anchor.device if anchor is not None else torch.device("cpu"))
    )
    dtype = dtype or (anchor.dtype if anchor is not None and anchor.is_floating_point() else torch.float64)
    return device, dtype


def _initial_step_size(target, x, lp, g, m_inv, eps, gen, integrator=leapfrog):
    """Halve (or double) ``eps`` until one leapfrog step has cross-chain mean acceptance near 0.5 (Stan-like)."""
    for _ in range(50):
        p = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype) / m_inv.sqrt()
        xn, pn, lpn, _ = integrator(target, x, p, lp, g, eps, m_inv, 1)
        dh = (-lpn + kinetic_energy(pn, m_inv)) - (-lp + kinetic_energy(p, m_inv))
        a = torch.where(torch.isfinite(dh), torch.exp(-dh.clamp(min=0)), torch.zeros_like(dh)).mean().item()
        if a < 0.5:
            eps *= 0.5
        elif a > 0.9 and eps < 1e3:
            eps *= 2.0
        else:
            break
    return eps


def hmc_step(target, x, lp, g, eps, m_inv, max_leapfrog, gen, integrator=leapfrog):
    """One lock-step HMC transition of all chains (:func:`flowvi.samplers.hmc.step`) with ``n ~
    uniform{1..max_leapfrog}`` leapfrog steps, one n for all chains. Returns ``(x, lp, g, accept_prob, divergent,
    n)``: the new states, their log density and gradient, the per-chain acceptance probability ``min(1,
    exp(-dH))`` (0 when divergent), the divergence flags and the number of leapfrog steps."""
    n_steps = int(torch.randint(1, max_leapfrog + 1, (1,), generator=gen, device=x.device).item())
    state, info = step(target, HMCState(x, lp, g), eps, m_inv, n_steps, gen, integrator)
    return state.x, state.log_prob, state.grad, info.accept_prob, info.divergent, n_steps


@contextlib.contextmanager
def flush_denormals():
    """Flush subnormal numbers to zero on the CPU while the block runs (then back to PyTorch's default, off).

    Diverging trajectories in the tails of funnels pass through exp(-700) and friends; subnormal arithmetic made
    the horseshoe at d = 4002 14 times slower on an x86 CPU (55 s instead of 4 s for 100 warm-up iterations)."""
    flush = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if flush:
            torch.set_flush_denormal(False)


@dataclass(frozen=True)
class HMCKernel:
    """The transition and its warm-up: at most ``max_leapfrog`` leapfrog steps per trajectory, dual averaging
    towards ``target_accept`` from the initial guess ``step_size``, dispersed starts in ``[-init_radius,
    init_radius]``, the leapfrog step replayed from a CUDA graph when ``cuda_graph`` (default: on CUDA)."""

    max_leapfrog: int = 32
    target_accept: float = 0.8
    step_size: float = 0.1
    init_radius: float = 2.0
    cuda_graph: bool | None = None


@dataclass(frozen=True)
class ChainSchedule:
    """``chains`` in lock-step, ``warmup`` adaptation iterations, ``draws`` sampling iterations (every ``thin``-th
    kept), seeded by ``seed``, within ``max_seconds`` of wall time if given."""

    chains: int = 256
    warmup: int = 1000
    draws: int = 1000
    thin: int = 1
    seed: int = 0
    max_seconds: float | None = None


def _check(target, s: ChainSchedule, k: HMCKernel, x0) -> None:
    if s.chains < 2:
        raise ValueError(
            f"adaptive HMC needs chains >= 2 (R-hat and the mass matrix are across chains); got {s.chains}"
        )
    if s.warmup < 0 or s.draws < 0 or k.max_leapfrog < 1 or s.thin < 1:
        raise ValueError(
            f"need warmup >= 0, draws >= 0, max_leapfrog >= 1, thin >= 1; got {s.warmup}, {s.draws}, "
            f"{k.max_leapfrog}, {s.thin}"
        )
    if not 0 < k.target_accept < 1:
        raise ValueError(f"target_accept must be in (0, 1), got {k.target_accept}")
    if not k.step_size > 0 or not k.init_radius > 0:
        raise ValueError(f"step_size and init_radius must be positive; got {k.step_size}, {k.init_radius}")
    if s.max_seconds is not None and not s.max_seconds > 0:
        raise ValueError(f"max_seconds must be positive, got {s.max_seconds}")
    d = target.dim
    if x0 is not None and (x0.ndim != 2 or x0.shape != (s.chains, d)):
        raise ValueError(f"x0 must have shape (chains, d) = ({s.chains}, {d}); got {tuple(x0.shape)}")


def _start(target, s: ChainSchedule, k: HMCKernel, x0, gen, device, dtype):
    """The chains' first states: ``x0``, or uniform in ``[-init_radius, init_radius]``; refused if not finite."""
    if x0 is None:
        x = (2 * torch.rand(s.chains, target.dim, generator=gen, device=device, dtype=dtype) - 1) * k.init_radius
    else:
        x = x0.detach().clone()
    lp, g = log_prob_and_grad(target, x)
    bad = ~(torch.isfinite(lp) & torch.isfinite(g).all(1))
    if bad.any():
        raise ValueError(
            f"log_prob or its gradient is not finite at the initial point of {int(bad.sum())} of {s.chains} chains"
            + ("; pass a finite x0 or a smaller init_radius" if x0 is None else "")
        )
    return x, lp, g


class _Adaptation:
    """Stan's windowed warm-up: dual averaging of the step size every iteration, and at the end of each slow window
    the diagonal metric from the window's draws (pooled over chains), shrunk, with a new step-size search."""

    def __init__(self, warmup: int, eps: float, target_accept: float, d: int, chains: int, device, dtype):
        self.target_accept, self.chains, self.dtype = target_accept, chains, dtype
        self.dual = DualAveraging(eps, target_accept)
        self.init_end, self.slow_ends = warmup_windows(warmup)
        self.sum = torch.zeros(d, device=device, dtype=torch.float64)
        self.sq = torch.zeros(d, device=device, dtype=torch.float64)
        self.n = 0

    def update(self, it: int, x, lp, g, eps, m_inv, mean_accept: float, target, gen, integrator):
        """Returns the next (eps, m_inv)."""
        eps = self.dual.update(mean_accept)
        if self.init_end <= it < (self.slow_ends[-1] if self.slow_ends else 0):
            xd = x.to(torch.float64)
            self.sum += xd.sum(0)
            self.sq += (xd * xd).sum(0)
            self.n += self.chains
            if it + 1 in self.slow_ends:
                var = (self.sq - self.sum**2 / self.n) / (self.n - 1)
                n_w = self.n / self.chains  # iterations in the window: Stan's shrinkage in draws per chain
                m_inv = (n_w / (n_w + 5) * var + 1e-3 * 5 / (n_w + 5)).to(self.dtype)
                self.sum.zero_(), self.sq.zero_()
                self.n = 0
                eps = _initial_step_size(target, x, lp, g, m_inv, eps, gen, integrator)
                self.dual = DualAveraging(eps, self.target_accept)
        return eps, m_inv


class _Record:
    """What sampling keeps: every ``thin``-th state, divergences, acceptance, the warm-up's traces."""

    def __init__(self, s: ChainSchedule, d: int, device, dtype):
        self.thin, self.store = s.thin, torch.empty(s.draws // s.thin, s.chains, d, device=device, dtype=dtype)
        self.div_warm = torch.zeros(s.chains, dtype=torch.long, device=device)
        self.div = torch.zeros(s.chains, dtype=torch.long, device=device)
        self.acc_sum = torch.zeros(s.chains, dtype=torch.float64, device=device)
        self.accept_trace, self.step_trace = [], []
        self.kept = self.iterations = self.leapfrogs = 0

    def sampled(self, x, a, divergent) -> None:
        self.div += divergent
        self.acc_sum += a.to(torch.float64)
        if self.iterations % self.thin == self.thin - 1 and self.kept < len(self.store):
            self.store[self.kept] = x.to(self.store.dtype)
            self.kept += 1
        self.iterations += 1


def _run(target, s: ChainSchedule, k: HMCKernel, state, gen, integrator, rec: _Record, bar) -> dict:
    """Warm-up, then sampling, within the time budget; returns the final step size, metric, state and timing."""
    x, lp, g = state
    m_inv = torch.ones(target.dim, device=x.device, dtype=x.dtype)
    if isinstance(integrator, type):
        integrator = integrator(target, x, m_inv)
    eps = _initial_step_size(target, x, lp, g, m_inv, k.step_size, gen, integrator) if s.warmup > 0 else k.step_size
    adapt = _Adaptation(s.warmup, eps, k.target_accept, target.dim, s.chains, x.device, x.dtype)
    start = time.perf_counter()
    warm_budget = None if s.max_seconds is None else s.max_seconds * s.warmup / max(s.warmup + s.draws, 1)
    stopped_early, t_warm_end, warm_its, it, phase_warm = False, None, 0, 0, s.warmup > 0
    while True:
        if phase_warm and (it >= s.warmup or (warm_budget is not None and time.perf_counter() - start > warm_budget)):
            stopped_early |= it < s.warmup
            eps, phase_warm, t_warm_end, warm_its = adapt.dual.final, False, time.perf_counter(), it
            if bar is not None and s.draws > 0:
                bar.set_description("sampling")
                bar.n = s.warmup
        if not phase_warm:
            t_warm_end = t_warm_end or time.perf_counter()
            if rec.iterations >= s.draws:
                break
            if s.max_seconds is not None and time.perf_counter() - start > s.max_seconds:
                stopped_early = True
                break
        x, lp, g, a, divergent, n_steps = hmc_step(target, x, lp, g, eps, m_inv, k.max_leapfrog, gen, integrator)
        rec.leapfrogs += n_steps
        if phase_warm:
            rec.div_warm += divergent
            mean_a = a.mean().item()
            rec.accept_trace.append(mean_a)
            rec.step_trace.append(eps)
            eps, m_inv = adapt.update(it, x, lp, g, eps, m_inv, mean_a, target, gen, integrator)
        else:
            rec.sampled(x, a, divergent)
        it += 1
        if bar is not None:
            bar.update(1)
            if it % 20 == 0:
                bar.set_postfix(eps=f"{eps:.3g}", acc=f"{a.mean().item():.2f}", div=int((rec.div + rec.div_warm).sum()))
    end = time.perf_counter()
    return {"step_size": eps, "inverse_metric": m_inv, "last": x, "warmup_iterations": warm_its,
            "seconds_warmup": t_warm_end - start, "seconds_sampling": end - t_warm_end,
            "stopped_early": stopped_early}  # fmt: skip


@flush_denormals()
def adaptive_hmc(
    target,
    schedule: ChainSchedule | None = None,
    kernel: HMCKernel | None = None,
    *,
    x0: torch.Tensor | None = None,
    device=None,
    dtype: torch.dtype | None = None,
    store_dtype: torch.dtype | None = None,
    progress: bool = False,
    **flat,
) -> dict:
    """Run many adaptive HMC chains on ``target`` (batched ``log_prob`` of x (chains, d)).

    Options come grouped (:class:`ChainSchedule`, :class:`HMCKernel`) or as their flat keywords (``chains=64,
    warmup=500, max_leapfrog=16``), which fill the groups not given. ``step_size`` is the initial guess of the
    warm-up's search, or with ``warmup = 0`` the step size used. Start from ``x0`` (chains, d) if given (device and
    dtype follow it), else ``uniform(-init_radius, init_radius)`` on ``device``/``dtype`` (default: those of the
    target's first buffer, else CPU float64).

    Returns a dict: ``draws`` (chains, n, d) on the device (n = kept draws; fewer than ``draws // thin`` when
    ``max_seconds`` cut sampling short), ``step_size``, ``inverse_metric`` (d,), ``accept_prob`` (per chain, mean
    over sampling), ``divergences`` and ``warmup_divergences`` (per chain), ``accept_trace`` and ``step_trace``
    (warm-up), ``leapfrogs`` (total gradient evaluations per chain), ``warmup_iterations``, ``iterations``,
    ``seconds_warmup``, ``seconds_sampling``, ``stopped_early``, ``cuda_graph`` and ``last`` (the chains' final
    states). ``draws = 0`` runs the warm-up only (:func:`flowvi.samplers.flowmc.flowmc` starts from its ``last``).
    """
    given_s, given_k = split_options(flat, ChainSchedule, HMCKernel)
    s, k = schedule or given_s, kernel or given_k
    _check(target, s, k, x0)
    device, dtype = chain_device_dtype(target, x0, device, dtype)
    gen = torch.Generator(device=device).manual_seed(s.seed)
    state = _start(target, s, k, x0, gen, device, dtype)
    cuda_graph = state[0].device.type == "cuda" if k.cuda_graph is None else k.cuda_graph
    rec = _Record(s, target.dim, device, store_dtype or dtype)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=s.warmup + s.draws, desc="warm-up", unit="it", dynamic_ncols=True)
    try:
        out = _run(target, s, k, state, gen, GraphedLeapfrog if cuda_graph else leapfrog, rec, bar)
    finally:
        if bar is not None:
            bar.close()
    return {
        **out,
        "draws": rec.store[: rec.kept].transpose(0, 1),
        "accept_prob": (rec.acc_sum / max(rec.iterations, 1)).cpu(),
        "divergences": rec.div.cpu(),
        "warmup_divergences": rec.div_warm.cpu(),
        "accept_trace": rec.accept_trace,
        "step_trace": rec.step_trace,
        "leapfrogs": rec.leapfrogs,
        "iterations": rec.iterations,
        "cuda_graph": bool(cuda_graph),
    }
