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

import torch

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


@flush_denormals()
def adaptive_hmc(
    target,
    chains: int = 256,
    warmup: int = 1000,
    draws: int = 1000,
    max_leapfrog: int = 32,
    target_accept: float = 0.8,
    step_size: float = 0.1,
    x0: torch.Tensor | None = None,
    init_radius: float = 2.0,
    seed: int = 0,
    thin: int = 1,
    max_seconds: float | None = None,
    store_dtype: torch.dtype | None = None,
    device=None,
    dtype: torch.dtype | None = None,
    progress: bool = False,
    cuda_graph: bool | None = None,
) -> dict:
    """Run ``chains`` adaptive HMC chains on ``target`` (batched ``log_prob`` of x (chains, d)).

    ``step_size`` is the initial guess of the warm-up's search, or with ``warmup = 0`` the step size used.
    Start from ``x0`` (chains, d) if given (device and dtype follow it), else ``uniform(-init_radius,
    init_radius)`` on ``device``/``dtype`` (default: those of the target's first buffer, else CPU float64).
    Returns a dict: ``draws`` (chains, n, d) on the device (n = kept draws; fewer than ``draws // thin`` when
    ``max_seconds`` cut sampling short), ``step_size``, ``inverse_metric`` (d,), ``accept_prob`` (per chain, mean
    over sampling), ``divergences`` and ``warmup_divergences`` (per chain), ``accept_trace`` and ``step_trace``
    (warm-up), ``leapfrogs`` (total gradient evaluations per chain), ``warmup_iterations``, ``iterations``,
    ``seconds_warmup``, ``seconds_sampling``, ``stopped_early`` and ``last`` (the chains' final states).
    ``draws = 0`` runs the warm-up only (:func:`flowvi.samplers.flowmc.flowmc` starts from its ``last``).
    ``cuda_graph``: replay the leapfrog step from a CUDA graph (:class:`GraphedLeapfrog`); default: on CUDA.
    """
    if chains < 2:
        raise ValueError(f"adaptive HMC needs chains >= 2 (R-hat and the mass matrix are across chains); got {chains}")
    if warmup < 0 or draws < 0 or max_leapfrog < 1 or thin < 1:
        raise ValueError(
            f"need warmup >= 0, draws >= 0, max_leapfrog >= 1, thin >= 1; got {warmup}, {draws}, {max_leapfrog}, {thin}"
        )
    if not 0 < target_accept < 1:
        raise ValueError(f"target_accept must be in (0, 1), got {target_accept}")
    if not step_size > 0 or not init_radius > 0:
        raise ValueError(f"step_size and init_radius must be positive; got {step_size}, {init_radius}")
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds}")
    d = target.dim
    if x0 is not None:
        if x0.ndim != 2 or x0.shape != (chains, d):
            raise ValueError(f"x0 must have shape (chains, d) = ({chains}, {d}); got {tuple(x0.shape)}")
    device, dtype = chain_device_dtype(target, x0, device, dtype)
    gen = torch.Generator(device=device).manual_seed(seed)
    if x0 is None:
        x = (2 * torch.rand(chains, d, generator=gen, device=device, dtype=dtype) - 1) * init_radius
    else:
        x = x0.detach().clone()
    lp, g = log_prob_and_grad(target, x)
    bad = ~(torch.isfinite(lp) & torch.isfinite(g).all(1))
    if bad.any():
        raise ValueError(
            f"log_prob or its gradient is not finite at the initial point of {int(bad.sum())} of {chains} chains"
            + ("; pass a finite x0 or a smaller init_radius" if x0 is None else "")
        )

    m_inv = torch.ones(d, device=device, dtype=dtype)
    if cuda_graph is None:
        cuda_graph = x.device.type == "cuda"
    integrator = GraphedLeapfrog(target, x, m_inv) if cuda_graph else leapfrog
    eps = _initial_step_size(target, x, lp, g, m_inv, step_size, gen, integrator) if warmup > 0 else step_size
    adapt = DualAveraging(eps, target_accept)
    init_end, slow_ends = warmup_windows(warmup)
    window_sum = torch.zeros(d, device=device, dtype=torch.float64)
    window_sq = torch.zeros(d, device=device, dtype=torch.float64)
    window_n = 0
    n_keep = draws // thin
    store = torch.empty(n_keep, chains, d, device=device, dtype=store_dtype or dtype)
    div_warm = torch.zeros(chains, dtype=torch.long, device=device)
    div = torch.zeros(chains, dtype=torch.long, device=device)
    acc_sum = torch.zeros(chains, dtype=torch.float64, device=device)
    accept_trace, step_trace = [], []
    leapfrogs, kept, it_sampling = 0, 0, 0
    start = time.perf_counter()
    warm_budget = None if max_seconds is None else max_seconds * warmup / max(warmup + draws, 1)
    stopped_early, t_warm_end = False, None
    total = warmup + draws
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="warm-up", unit="it", dynamic_ncols=True)

    it, phase_warm = 0, warmup > 0
    while True:
        if phase_warm and (it >= warmup or (warm_budget is not None and time.perf_counter() - start > warm_budget)):
            stopped_early |= it < warmup
            eps, phase_warm, t_warm_end, warm_its = adapt.final, False, time.perf_counter(), it
            if bar is not None and draws > 0:
                bar.set_description("sampling")
                bar.n = warmup
        if not phase_warm:
            if t_warm_end is None:
                t_warm_end, warm_its = time.perf_counter(), 0
            if it_sampling >= draws:
                break
            if max_seconds is not None and time.perf_counter() - start > max_seconds:
                stopped_early = True
                break
        x, lp, g, a, divergent, n_steps = hmc_step(target, x, lp, g, eps, m_inv, max_leapfrog, gen, integrator)
        leapfrogs += n_steps
        if phase_warm:
            div_warm += divergent
            mean_a = a.mean().item()
            accept_trace.append(mean_a)
            step_trace.append(eps)
            eps = adapt.update(mean_a)
            if init_end <= it < (slow_ends[-1] if slow_ends else 0):
                xd = x.to(torch.float64)
                window_sum += xd.sum(0)
                window_sq += (xd * xd).sum(0)
                window_n += chains
                if it + 1 in slow_ends:
                    var = (window_sq - window_sum**2 / window_n) / (window_n - 1)
                    n_w = window_n / chains  # iterations in the window: Stan's shrinkage in draws per chain
                    m_inv = (n_w / (n_w + 5) * var + 1e-3 * 5 / (n_w + 5)).to(dtype)
                    window_sum.zero_(), window_sq.zero_()
                    window_n = 0
                    eps = _initial_step_size(target, x, lp, g, m_inv, eps, gen, integrator)
                    adapt = DualAveraging(eps, target_accept)
        else:
            div += divergent
            acc_sum += a.to(torch.float64)
            if it_sampling % thin == thin - 1 and kept < n_keep:
                store[kept] = x.to(store.dtype)
                kept += 1
            it_sampling += 1
        it += 1
        if bar is not None:
            bar.update(1)
            if it % 20 == 0:
                bar.set_postfix(eps=f"{eps:.3g}", acc=f"{a.mean().item():.2f}", div=int((div + div_warm).sum()))
    if bar is not None:
        bar.close()
    end = time.perf_counter()
    return {
        "draws": store[:kept].transpose(0, 1),
        "step_size": eps,
        "inverse_metric": m_inv,
        "accept_prob": (acc_sum / max(it_sampling, 1)).cpu(),
        "divergences": div.cpu(),
        "warmup_divergences": div_warm.cpu(),
        "accept_trace": accept_trace,
        "step_trace": step_trace,
        "leapfrogs": leapfrogs,
        "warmup_iterations": warm_its,
        "iterations": it_sampling,
        "seconds_warmup": t_warm_end - start,
        "seconds_sampling": end - t_warm_end,
        "stopped_early": stopped_early,
        "cuda_graph": bool(cuda_graph),
        "last": x,
    }
