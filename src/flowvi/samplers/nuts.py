"""Reference posterior draws with the No-U-Turn Sampler (Hoffman & Gelman 2014), run by Pyro.

Pyro's ``NUTS`` kernel is driven by flowvi's potential energy ``U(x) = -target.log_prob(x)`` (Pyro
differentiates it with autograd), with step-size and diagonal mass-matrix adaptation during warm-up.
Chains run one after another (each from its own seed), so any device works. Pyro is a dependency of flowvi.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from flowvi.diagnostics.mcmc import effective_sample_size, split_rhat


def require_pyro():
    try:
        import pyro  # noqa: F401
        from pyro.infer import MCMC, NUTS  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "the NUTS baseline needs Pyro: pip install 'flowvi[baselines]' (or pip install pyro-ppl)"
        ) from e


def _chain_diagnostics(mcmc) -> dict:
    """Divergences and acceptance rate of a finished single-chain MCMC run, as in ``MCMC.diagnostics()``."""
    per_chain = getattr(mcmc, "_diagnostics", None)
    if not per_chain or not isinstance(per_chain[0], dict):  # a Pyro without the attribute: the public route
        return mcmc.diagnostics()
    return {name: {"chain 0": value} for name, value in per_chain[0].items()}


def _one_chain(potential, init, num_samples, warmup, max_tree_depth, target_accept, progress):
    """One Pyro NUTS chain from ``init``: its draws (num_samples, d) and its divergences, acceptance, step size."""
    from pyro.infer import MCMC, NUTS

    kernel = NUTS(
        potential_fn=potential,
        adapt_step_size=True,
        adapt_mass_matrix=True,
        full_mass=False,
        max_tree_depth=max_tree_depth,
        target_accept_prob=target_accept,
    )
    mcmc = MCMC(
        kernel, num_samples=num_samples, warmup_steps=warmup, initial_params={"x": init}, disable_progbar=not progress
    )
    mcmc.run()
    # Per-chain divergences and acceptance rate only: MCMC.diagnostics() also recomputes ESS and R-hat of every
    # site, which with Pyro 1.9 takes memory growing with the square of the number of draws (15 GB for 1300 draws
    # of d = 4002); the caller computes those once.
    extra = _chain_diagnostics(mcmc)
    stats = {
        "divergences": len(extra.get("divergences", {}).get("chain 0", [])),
        "accept_prob": float(extra.get("acceptance rate", {}).get("chain 0", float("nan"))),
        "step_size": float(kernel.step_size),
    }
    return mcmc.get_samples()["x"].detach(), stats


def run_nuts(
    target,
    num_samples: int = 1000,
    warmup: int = 1000,
    chains: int = 1,
    seed: int = 0,
    max_tree_depth: int = 10,
    target_accept: float = 0.8,
    init_scale: float = 0.0,
    progress: bool = False,
) -> dict:
    """Run ``chains`` NUTS chains on ``target``; returns draws (chains, num_samples, d) and diagnostics.

    Chains start at ``init_scale * N(0, I)`` (0: the origin). Diagnostics: acceptance rate, step size,
    divergent transitions, split R-hat and effective sample size per coordinate (Pyro's estimators).
    """
    require_pyro()
    import pyro

    if num_samples < 1 or warmup < 0 or chains < 1:
        raise ValueError(
            f"NUTS needs num_samples >= 1, warmup >= 0, chains >= 1; got {num_samples}, {warmup}, {chains}"
        )
    anchor = next(iter(target.buffers()), torch.zeros(()))
    dtype = anchor.dtype if anchor.is_floating_point() else torch.get_default_dtype()

    def potential(params):
        return -target.log_prob(params["x"][None])[0]

    draws, stats = [], []
    start = time.perf_counter()
    for c in range(chains):
        pyro.set_rng_seed(seed + c)
        init = init_scale * torch.randn(target.dim, dtype=dtype, device=anchor.device)
        chain, chain_stats = _one_chain(potential, init, num_samples, warmup, max_tree_depth, target_accept, progress)
        draws.append(chain)
        stats.append(chain_stats)
    seconds = time.perf_counter() - start
    x = torch.stack(draws)  # (chains, num_samples, d)
    # Stan's split-chain estimators in NumPy (flowvi.diagnostics.mcmc): Pyro's take memory quadratic in the draws
    draws_np = x.double().cpu().numpy()
    ess = effective_sample_size(draws_np)
    summary = {
        "method": "nuts",
        "chains": chains,
        "num_samples": num_samples,
        "warmup": warmup,
        "max_tree_depth": max_tree_depth,
        "seconds": seconds,
        "divergences": sum(s["divergences"] for s in stats),
        "accept_prob": [s["accept_prob"] for s in stats],
        "step_size": [s["step_size"] for s in stats],
        "ess_min": float(ess.min()),
        "ess_median": float(np.median(ess)),
    }
    if chains > 1 and num_samples > 3:
        summary["rhat_max"] = float(split_rhat(draws_np).max())
    return {"samples": draws_np, "summary": summary}
