"""Hamiltonian Monte Carlo (leapfrog, unit mass) for any target with a differentiable log_prob, batched chains.

Each trajectory draws its step size uniformly from [(1 - jitter) eps, (1 + jitter) eps], independently per
chain. Without the jitter a fixed trajectory length T = eps * n_leapfrog is not ergodic for near-Gaussian
modes of frequency omega with omega T close to a multiple of pi (they map to -x every trajectory): on a
6 x 6 free field with eps = 0.25, n_leapfrog = 8 this underestimates <phi^2> by 7 %.
"""

from __future__ import annotations

import torch


def _grad(target, x):
    x = x.detach().requires_grad_(True)
    lp = target.log_prob(x)
    return lp.detach(), torch.autograd.grad(lp.sum(), x)[0]


def hmc(
    target,
    x0,
    n_steps: int,
    step_size: float = 0.1,
    n_leapfrog: int = 10,
    seed: int | None = None,
    jitter: float = 0.2,
):
    """Run batched chains from x0 (chains, *event_shape); returns (samples (n_steps, chains, ...), acceptance)."""
    if n_steps < 1 or n_leapfrog < 1 or step_size <= 0:
        raise ValueError(f"need n_steps >= 1, n_leapfrog >= 1, step_size > 0; got {n_steps}, {n_leapfrog}, {step_size}")
    if not 0 <= jitter < 1:
        raise ValueError(f"jitter must be in [0, 1), got {jitter}")
    if seed is not None:
        torch.manual_seed(seed)
    x = x0.detach().clone()
    lp, g = _grad(target, x)
    shape = (-1,) + (1,) * (x.dim() - 1)
    out, acc = [], 0.0
    for _ in range(n_steps):
        eps = step_size * (1 + jitter * (2 * torch.rand(x.shape[0], dtype=x.dtype, device=x.device) - 1))
        eps = eps.view(shape)
        p = torch.randn_like(x)
        h0 = -lp + 0.5 * (p * p).flatten(1).sum(1)
        xn, gn = x, g
        pn = p + 0.5 * eps * gn
        for i in range(n_leapfrog):
            xn = xn + eps * pn
            lpn, gn = _grad(target, xn)
            pn = pn + (eps if i < n_leapfrog - 1 else 0.5 * eps) * gn
        h1 = -lpn + 0.5 * (pn * pn).flatten(1).sum(1)
        accept = torch.rand_like(h0).log() < (h0 - h1)
        x = torch.where(accept.view(shape), xn, x)
        g = torch.where(accept.view(shape), gn, g)
        lp = torch.where(accept, lpn, lp)
        acc += accept.float().mean().item()
        out.append(x.clone())
    return torch.stack(out), acc / n_steps
