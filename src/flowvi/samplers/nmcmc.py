"""Neural MCMC: independence Metropolis-Hastings with a flow as the proposal.

Proposal x' ~ q; accept with probability min(1, w(x') / w(x)), w = p(x) / q(x) (unnormalized).
"""

from __future__ import annotations

import torch


@torch.no_grad()
def independence_mh(flow, target, n_steps: int, batch_size: int = 1024, seed: int | None = None):
    """Run one chain of ``n_steps``; returns (chain (n_steps, *event_shape), acceptance rate)."""
    if n_steps < 2:
        raise ValueError(f"n_steps must be >= 2, got {n_steps}")
    if seed is not None:
        torch.manual_seed(seed)
    xs, logw = [], []
    left = n_steps
    while left > 0:
        n = min(batch_size, left)
        x, log_q = flow.sample_and_log_prob(n)
        xs.append(x)
        logw.append(target.log_prob(x) - log_q)
        left -= n
    x, logw = torch.cat(xs), torch.cat(logw)
    u = torch.rand(n_steps, dtype=logw.dtype, device=logw.device).log()
    idx = torch.zeros(n_steps, dtype=torch.long)
    cur, accepted = 0, 0
    logw_cpu, u_cpu = logw.cpu(), u.cpu()
    for i in range(1, n_steps):
        if u_cpu[i] < logw_cpu[i] - logw_cpu[cur]:
            cur = i
            accepted += 1
        idx[i] = cur
    return x[idx.to(x.device)], accepted / (n_steps - 1)
