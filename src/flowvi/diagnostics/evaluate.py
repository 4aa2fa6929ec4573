"""Evaluate a trained flow against its target: ELBO and importance-sampling log Z with standard
errors, normalized ESS and Pareto k-hat, from ``n`` samples drawn in batches (only the log weights
are kept, so 10^6 samples fit in memory whatever the dimension)."""

from __future__ import annotations

import torch

from flowvi.diagnostics.importance import summarize
from flowvi.targets import checked_log_prob


@torch.no_grad()
def importance_log_weights(flow, target, n: int = 100_000, batch_size: int = 10_000) -> torch.Tensor:
    """Importance log weights ``log w_i = log p(x_i) - log q(x_i)`` (n,) of ``n`` draws ``x_i ~ q``, drawn in
    batches of ``batch_size`` without a graph, as a float64 CPU tensor (the input of
    :mod:`flowvi.diagnostics`: log Z, ESS, Pareto k-hat)."""
    if n < 2:
        raise ValueError(f"evaluation needs n >= 2 samples, got {n}")
    out = []
    for start in range(0, n, batch_size):
        x, log_q = flow.sample_and_log_prob(min(batch_size, n - start))
        out.append((checked_log_prob(target, x, allow_nan=True) - log_q).to("cpu", torch.float64))
    return torch.cat(out)


def evaluate(flow, target, n: int = 100_000, batch_size: int = 10_000, shard=None) -> dict:
    """Evaluate a trained ``flow`` against its ``target`` from ``n`` draws ``x_i ~ q`` with log weights
    ``log w_i = log p(x_i) - log q(x_i)``:

    * ``elbo`` = mean(log w) with its standard error ``elbo_se`` (a lower bound of log Z);
    * ``log_z`` = log mean(w), the importance-sampling estimate of log Z, with the delta-method standard error
      ``log_z_se = sqrt(var(w)/n) / mean(w)``, computed in log space;
    * ``ess`` = (sum w)^2 / (n sum w^2), the normalized effective sample size (Kish);
    * ``pareto_k``: the shape of a generalized Pareto fit to the largest weights (Vehtari et al. 2024, "Pareto
      smoothed importance sampling", JMLR 25(72)); below 0.7 the IS estimates are reliable, at or above 0.7
      the weights' variance is effectively infinite and log Z and its error cannot be trusted;
    * ``n``, and where the target knows it, the exact ``log_evidence`` and ``log_z_error = log_z - log_evidence``.

    ``shard = (rank, world, gather)`` shares the ``n`` draws out over ``world`` processes: this one draws its
    share, ``gather`` (a list of every rank's log weights from this rank's) pools them, and every rank returns
    the same summary (:func:`flowvi.training.distributed.evaluate`).

    Returns a dict of floats.
    """
    rank, world, gather = shard or (0, 1, None)
    share = n // world + (1 if rank < n % world else 0)
    was_training = flow.training
    flow.eval()
    try:
        log_w = importance_log_weights(flow, target, max(share, 2) if world > 1 else n, batch_size)
    finally:
        flow.train(was_training)
    log_w = torch.cat(gather(log_w)) if world > 1 else log_w
    stats = summarize(log_w)
    stats["non_finite_draws"] = int((~torch.isfinite(log_w)).sum())  # zero weight: NaN read as -inf
    exact = getattr(target, "log_evidence", None)
    if exact is not None:
        stats["log_evidence"] = float(exact)
        stats["log_z_error"] = stats["log_z"] - float(exact)
    return stats
