"""Neural MCMC: independence Metropolis-Hastings with a flow as the proposal.

Proposal x' ~ q; accept with probability min(1, w(x') / w(x)), w = p(x) / q(x) (unnormalized). The
chain is exact for any q whose support covers p, but its error bars are only as good as the estimate of
the autocorrelation time: if the weights are heavy-tailed (Pareto k-hat > 0.7, see
:func:`flowvi.diagnostics.pareto_k`) the chain sticks for stretches far longer than a finite run shows,
and both the IMH average and the reweighted average are biased at any practical length.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def flow_proposals(flow, target, n: int, batch_size: int = 1024):
    """``n`` flow samples x ~ q with log weights log p(x) - log q(x), drawn in batches."""
    xs, logw = [], []
    left = n
    while left > 0:
        k = min(batch_size, left)
        x, log_q = flow.sample_and_log_prob(k)
        xs.append(x)
        logw.append(target.log_prob(x) - log_q)
        left -= k
    return torch.cat(xs), torch.cat(logw)


def imh_indices(logw, generator: torch.Generator | None = None):
    """Accept/reject over a fixed proposal sequence: returns (indices into the proposals, acceptance).

    The chain starts at proposal 0; step i accepts proposal i if log u < logw[i] - logw[current].
    """
    logw = logw.detach().to("cpu", torch.float64)
    n = len(logw)
    if n < 2:
        raise ValueError(f"need at least 2 proposals, got {n}")
    if not torch.isfinite(logw).all():
        raise ValueError("log weights contain NaN or inf (check the flow and the target)")
    log_u = torch.rand(n, dtype=torch.float64, generator=generator).log()
    idx = torch.zeros(n, dtype=torch.long)
    cur, accepted = 0, 0
    lw, lu = logw.tolist(), log_u.tolist()
    for i in range(1, n):
        if lu[i] < lw[i] - lw[cur]:
            cur = i
            accepted += 1
        idx[i] = cur
    return idx, accepted / (n - 1)


@torch.no_grad()
def independence_mh(
    flow, target, n_steps: int, batch_size: int = 1024, seed: int | None = None, return_proposals: bool = False
):
    """Run one chain of ``n_steps``; returns (chain (n_steps, *event_shape), acceptance rate), and with
    ``return_proposals`` also the proposals and their log weights (for reweighted estimates)."""
    if n_steps < 2:
        raise ValueError(f"n_steps must be >= 2, got {n_steps}")
    if seed is not None:
        torch.manual_seed(seed)
    x, logw = flow_proposals(flow, target, n_steps, batch_size)
    idx, acc = imh_indices(logw)
    chain = x[idx.to(x.device)]
    return (chain, acc, x, logw) if return_proposals else (chain, acc)
