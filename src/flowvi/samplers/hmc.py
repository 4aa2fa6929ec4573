"""Hamiltonian Monte Carlo (leapfrog, unit mass) for any target with a differentiable log_prob, batched chains."""

from __future__ import annotations

import torch


def _grad(target, x):
    x = x.detach().requires_grad_(True)
    lp = target.log_prob(x)
    return lp.detach(), torch.autograd.grad(lp.sum(), x)[0]


def hmc(target, x0, n_steps: int, step_size: float = 0.1, n_leapfrog: int = 10, seed: int | None = None):
    """Run batched chains from x0 (chains, *event_shape); returns (samples (n_steps, chains, ...), acceptance)."""
    if seed is not None:
        torch.manual_seed(seed)
    x = x0.detach().clone()
    lp, g = _grad(target, x)
    out, acc = [], 0.0
    for _ in range(n_steps):
        p = torch.randn_like(x)
        h0 = -lp + 0.5 * (p * p).flatten(1).sum(1)
        xn, gn = x, g
        pn = p + 0.5 * step_size * gn
        for i in range(n_leapfrog):
            xn = xn + step_size * pn
            lpn, gn = _grad(target, xn)
            pn = pn + (step_size if i < n_leapfrog - 1 else 0.5 * step_size) * gn
        h1 = -lpn + 0.5 * (pn * pn).flatten(1).sum(1)
        accept = torch.rand_like(h0).log() < (h0 - h1)
        shape = (-1,) + (1,) * (x.dim() - 1)
        x = torch.where(accept.view(shape), xn, x)
        g = torch.where(accept.view(shape), gn, g)
        lp = torch.where(accept, lpn, lp)
        acc += accept.float().mean().item()
        out.append(x.clone())
    return torch.stack(out), acc / n_steps
