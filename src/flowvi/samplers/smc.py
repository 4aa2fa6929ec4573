"""Sequential Monte Carlo with adaptive tempering and MALA moves, for log Z (Del Moral et al. 2006).

Tempered path from a reference ``q0`` (the target's prior when it defines ``prior_sample`` and
``prior_log_prob``, else ``N(0, ref_scale^2 I)``) to the unnormalized target ``p``:

    pi_b(x) ∝ q0(x)^(1 - b) p(x)^b,   0 = b_0 < b_1 < ... < b_T = 1.

With N equally weighted particles ``x_i ~ pi_{b_t}``, the incremental weights are
``w_i = exp((b_{t+1} - b_t) (log p(x_i) - log q0(x_i)))`` and ``log Z += log mean_i w_i`` (unbiased for Z).
The next temperature is found by bisection so that the effective sample size of ``w`` is ``ess_target * N``
(adaptive tempering, Jasra et al. 2011; with resampling at every step this equals the conditional ESS of
Zhou et al. 2016). Then particles are resampled (systematic) and moved by ``moves`` steps of MALA on
``pi_{b_{t+1}}``, preconditioned by the particles' per-coordinate standard deviation, whose step size is
adapted towards an acceptance rate of 0.57 (Roberts & Rosenthal 1998). All particles move as one batch.

Libraries checked before writing this: Pyro (``pyro.infer.SMCFilter`` is for state-space models, no tempering),
BlackJAX and TensorFlow Probability (tempered SMC, but JAX / TensorFlow), ``particles`` (Chopin; NumPy, no
batched torch potentials). None runs on flowvi's torch targets on the GPU, hence this module.
"""

from __future__ import annotations

import math
import time

import torch


def log_mean_exp(a):
    return torch.logsumexp(a, 0) - math.log(a.shape[0])


def ess_fraction(log_w):
    """Normalized effective sample size ``(sum w)^2 / (N sum w^2)`` of log weights."""
    return float(torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0)) / log_w.shape[0])


def next_temperature(b, log_ratio, ess_target, tol=1e-6):
    """Largest ``b' <= 1`` with ESS of ``(b' - b) * log_ratio`` >= ``ess_target`` (bisection)."""
    if ess_fraction((1.0 - b) * log_ratio) >= ess_target:
        return 1.0
    lo, hi = b, 1.0
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if ess_fraction((mid - b) * log_ratio) >= ess_target:
            lo = mid
        else:
            hi = mid
    return max(lo, b + tol)


def systematic_resample(log_w, generator=None):
    """Indices of a systematic resample of the particles with weights ``softmax(log_w)``."""
    n = log_w.shape[0]
    w = torch.softmax(log_w.double(), 0)
    u = (torch.rand((), generator=generator, dtype=torch.float64).to(w.device) + torch.arange(n, device=w.device)) / n
    cdf = torch.cumsum(w, 0)
    cdf[-1] = 1.0
    return torch.searchsorted(cdf, u).clamp_(max=n - 1)


class TemperedDensity:
    """``log pi_b = (1 - b) log q0 + b log p`` and its gradient, for a batch of particles."""

    def __init__(self, target, ref_log_prob):
        self.target, self.ref_log_prob = target, ref_log_prob

    def parts(self, x):
        """``(log q0(x), log p(x))`` with their gradients w.r.t. x."""
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            lq, lp = self.ref_log_prob(x), self.target.log_prob(x)
            gq = torch.autograd.grad(lq.sum(), x, retain_graph=True)[0]
            gp = torch.autograd.grad(lp.sum(), x)[0]
        return lq.detach(), lp.detach(), gq, gp


def mala_moves(x, parts, b, density, step, moves, scale):
    """``moves`` preconditioned MALA steps on ``pi_b``; returns particles, their parts, step size, acceptance."""
    lq, lp, gq, gp = parts
    accepted = 0.0
    for _ in range(moves):
        logpi = (1 - b) * lq + b * lp
        grad = (1 - b) * gq + b * gp
        mean_fwd = x + 0.5 * step**2 * scale**2 * grad
        y = mean_fwd + step * scale * torch.randn_like(x)
        lq_y, lp_y, gq_y, gp_y = density.parts(y)
        logpi_y = (1 - b) * lq_y + b * lp_y
        grad_y = (1 - b) * gq_y + b * gp_y
        mean_bwd = y + 0.5 * step**2 * scale**2 * grad_y
        log_fwd = -0.5 * (((y - mean_fwd) / (step * scale)) ** 2).sum(-1)
        log_bwd = -0.5 * (((x - mean_bwd) / (step * scale)) ** 2).sum(-1)
        log_alpha = logpi_y - logpi + log_bwd - log_fwd
        log_alpha = torch.where(torch.isfinite(log_alpha), log_alpha, torch.full_like(log_alpha, -math.inf))
        accept = torch.log(torch.rand_like(log_alpha)) < log_alpha
        a = accept[:, None]
        x = torch.where(a, y, x)
        lq, lp = torch.where(accept, lq_y, lq), torch.where(accept, lp_y, lp)
        gq, gp = torch.where(a, gq_y, gq), torch.where(a, gp_y, gp)
        rate = float(accept.double().mean())
        accepted += rate / moves
        step = step * math.exp(rate - 0.574)  # Robbins-Monro-style adaptation toward 0.574
    return x, (lq, lp, gq, gp), step, accepted


def run_smc(
    target,
    particles: int = 1000,
    ess_target: float = 0.5,
    moves: int = 10,
    ref_scale: float = 1.0,
    seed: int = 0,
    max_stages: int = 10_000,
) -> dict:
    """One SMC run on ``target``: returns ``log_z``, the final particles (an equally weighted sample
    of the target) and the temperature schedule."""
    if particles < 2 or not 0 < ess_target < 1 or moves < 1 or ref_scale <= 0:
        raise ValueError(
            f"SMC needs particles >= 2, 0 < ess_target < 1, moves >= 1, ref_scale > 0; got {particles}, {ess_target}, {moves}, {ref_scale}"
        )
    torch.manual_seed(seed)
    anchor = next(iter(target.buffers()), torch.zeros(()))
    dtype = anchor.dtype if anchor.is_floating_point() else torch.get_default_dtype()
    device = anchor.device
    if hasattr(target, "prior_sample") and hasattr(target, "prior_log_prob"):
        reference = "prior"
        ref_log_prob = target.prior_log_prob
        x = target.prior_sample(particles).to(device, dtype)
    else:
        reference = f"normal(0, {ref_scale}^2)"
        d = target.dim

        def ref_log_prob(v):
            return -0.5 * ((v / ref_scale) ** 2).sum(-1) - d * (math.log(ref_scale) + 0.5 * math.log(2 * math.pi))

        x = ref_scale * torch.randn(particles, d, dtype=dtype, device=device)
    density = TemperedDensity(target, ref_log_prob)
    parts = density.parts(x)
    b, log_z, step = 0.0, 0.0, 0.5
    temperatures, acceptance = [0.0], []
    start = time.perf_counter()
    while b < 1.0:
        if len(temperatures) > max_stages:
            raise RuntimeError(f"SMC did not reach temperature 1 within {max_stages} stages (at {b:.3g})")
        log_ratio = (parts[1] - parts[0]).double()
        log_ratio = torch.where(torch.isfinite(log_ratio), log_ratio, torch.full_like(log_ratio, -math.inf))
        b_next = next_temperature(b, log_ratio, ess_target)
        log_w = (b_next - b) * log_ratio
        log_z += float(log_mean_exp(log_w))
        idx = systematic_resample(log_w)
        x, parts = x[idx], tuple(p[idx] for p in parts)
        b = b_next
        scale = x.std(0).clamp_min(1e-6)
        x, parts, step, acc = mala_moves(x, parts, b, density, step, moves, scale)
        temperatures.append(b)
        acceptance.append(acc)
    return {
        "log_z": log_z,
        "samples": x.detach(),
        "temperatures": temperatures,
        "acceptance": acceptance,
        "reference": reference,
        "seconds": time.perf_counter() - start,
    }
