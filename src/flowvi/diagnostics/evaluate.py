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
        out.append((checked_log_prob(target, x, allow_nan=True) - log_q).to("cpu", torch.float64))
    return torch.cat(out)


def evaluate(flow, target, n: int = 100_000, batch_size: int = 10_000) -> dict:
    """Summary dict: n, elbo, elbo_se, log_z, log_z_se, ess, pareto_k, and where the target knows
    it, the exact ``log_evidence`` with ``log_z_error = log_z - log_evidence``."""
    was_training = flow.training
    flow.eval()
    try:
        log_w = importance_log_weights(flow, target, n, batch_size)
        stats = summarize(log_w)
        stats["non_finite_draws"] = int((~torch.isfinite(log_w)).sum())  # zero weight: NaN read as -inf
    finally:
        flow.train(was_training)
    exact = getattr(target, "log_evidence", None)
    if exact is not None:
        stats["log_evidence"] = float(exact)
        stats["log_z_error"] = stats["log_z"] - float(exact)
    return stats
