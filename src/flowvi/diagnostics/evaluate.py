"""Evaluate a trained flow against its target: ELBO and importance-sampling log Z with standard
errors, normalized ESS and Pareto k-hat, from ``n`` samples drawn in batches (only the log weights
are kept, so 10^6 samples fit in memory whatever the dimension)."""

from __future__ import annotations

import torch

from flowvi.diagnostics.importance import summarize
from flowvi.targets import checked_log_prob


@torch.no_grad()
def importance_log_weights(flow, target, n: int = 100_000, batch_size: int = 10_000) -> torch.Tensor:
    """``log p(x) - log q(x)`` for ``n`` draws ``x ~ q``, as a float64 CPU tensor."""
    if n < 2:
        raise ValueError(f"evaluation needs n >= 2 samples, got {n}")
    out = []
    for start in range(0, n, batch_size):
        x, log_q = flow.sample_and_log_prob(min(batch_size, n - start))
        out.append((checked_log_prob(target, x) - log_q).to("cpu", torch.float64))
    return torch.cat(out)


def evaluate(flow, target, n: int = 100_000, batch_size: int = 10_000, shard=None) -> dict:
    """Summary dict: n, elbo, elbo_se, log_z, log_z_se, ess, pareto_k, and where the target knows
    it, the exact ``log_evidence`` with ``log_z_error = log_z - log_evidence``.

    ``shard = (rank, world, gather)`` shares the ``n`` draws out over ``world`` processes: this one draws its
    share, ``gather`` (a list of every rank's log weights from this rank's) pools them, and every rank returns
    the same summary (:func:`flowvi.training.distributed.evaluate`)."""
    rank, world, gather = shard or (0, 1, None)
    share = n // world + (1 if rank < n % world else 0)
    was_training = flow.training
    flow.eval()
    try:
        log_w = importance_log_weights(flow, target, max(share, 2) if world > 1 else n, batch_size)
    finally:
        flow.train(was_training)
    stats = summarize(torch.cat(gather(log_w)) if world > 1 else log_w)
    exact = getattr(target, "log_evidence", None)
    if exact is not None:
        stats["log_evidence"] = float(exact)
        stats["log_z_error"] = stats["log_z"] - float(exact)
    return stats
