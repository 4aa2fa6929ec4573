"""A run directory as an ArviZ ``InferenceData``: named posterior draws, their diagnostics, summaries, plots.

* ``posterior``: the run's draws by variable, in the target's own (constrained) space with named dimensions
  (plates for a Pyro model): the refined MCMC chains of ``refined_samples.npy`` (chains, draws, d), in the
  flow's coordinates like ``samples.npy``, where the run has them (``flowvi refine``), else the flow's draws (``samples.npz``, or ``samples.npy`` named by the
  target), as one chain of independent draws.
* ``sample_stats``: ``lp``, the target's unconstrained log density of each draw; for flow draws also
  ``log_weight``, the importance log weight ``log p(x) - log q(x)``, with the Pareto k-hat of the weights and
  the normalized ESS as attributes (Vehtari et al. 2024, PSIS); for refined chains the entries of
  ``refine.json`` as attributes. R-hat and bulk/tail ESS of refined chains come from ``az.summary``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from flowvi.diagnostics.importance import normalized_ess, pareto_k
from flowvi.runs.named import named_draws
from flowvi.runs.run_dir import load_run


@torch.no_grad()
def _log_densities(flow, target, x: np.ndarray, batch_size: int = 10_000) -> tuple[np.ndarray, np.ndarray]:
    """``(log p(x), log q(x))`` of draws ``x`` (n, d) in the flow's coordinates, in batches."""
    anchor = next(flow.parameters())
    lp, lq = [], []
    for i in range(0, len(x), batch_size):
        xb = torch.as_tensor(x[i : i + batch_size], device=anchor.device, dtype=anchor.dtype)
        lp.append(target.log_prob(xb).double().cpu())
        lq.append(flow.log_prob(xb).double().cpu())
    return torch.cat(lp).numpy(), torch.cat(lq).numpy()


def _dims(target, named: dict) -> dict:
    dims = getattr(target, "dims", None) or {}
    return {k: list(dims.get(k, [f"{k}_dim_{i}" for i in range(v.ndim - 2)])) for k, v in named.items()}


def _refined(run_dir: Path, flow, target):
    """Posterior and sample stats of ``refined_samples.npy`` (chains, draws, d)."""
    chains = np.load(run_dir / "refined_samples.npy")
    if chains.ndim != 3 or chains.shape[2] != target.dim:
        raise ValueError(
            f"{run_dir}/refined_samples.npy has shape {chains.shape}; expected (chains, draws, {target.dim})"
        )
    c, n, d = chains.shape
    flat = chains.reshape(c * n, d)
    named = {k: v.reshape(c, n, *v.shape[1:]) for k, v in named_draws(target, flat).items()}
    lp, _ = _log_densities(flow, target, flat)
    info = run_dir / "refine.json"
    attrs = json.loads(info.read_text()) if info.exists() else {}
    attrs = {k: v for k, v in attrs.items() if isinstance(v, (int, float, str, bool))}
    return named, {"lp": lp.reshape(c, n)}, {"draws": "refined", **attrs}


def _flow_draws(run_dir: Path, flow, target):
    """Posterior and sample stats of the flow's draws ``samples.npy`` (one chain)."""
    if not (run_dir / "samples.npy").exists():
        raise FileNotFoundError(f"{run_dir} has no samples.npy (run 'flowvi sample' or finish the fit)")
    x = np.load(run_dir / "samples.npy")
    if (run_dir / "samples.npz").exists():
        with np.load(run_dir / "samples.npz") as f:
            named = {k: f[k] for k in f.files}
    else:
        named = named_draws(target, x)
    lp, lq = _log_densities(flow, target, x)
    log_w = lp - lq
    attrs = {"draws": "flow", "pareto_k": pareto_k(log_w), "ess_per_draw": normalized_ess(log_w)}
    return {k: v[None] for k, v in named.items()}, {"lp": lp[None], "log_weight": log_w[None]}, attrs


def to_arviz(run_dir, device: str = "cpu"):
    """The run in ``run_dir`` as ``arviz.InferenceData`` (module docstring): ``posterior`` by variable with
    named dims, ``sample_stats`` with ``lp`` and, for flow draws, ``log_weight`` and the Pareto k-hat."""
    import arviz as az

    run_dir = Path(run_dir)
    flow, target, config = load_run(run_dir, device=device)
    flow.eval()
    refined = (run_dir / "refined_samples.npy").exists()
    posterior, stats, attrs = (_refined if refined else _flow_draws)(run_dir, flow, target)
    idata = az.from_dict(posterior=posterior, sample_stats=stats, dims=_dims(target, posterior))
    idata.posterior.attrs.update({"target": config["target"]["name"], "run_dir": str(run_dir)})
    idata.sample_stats.attrs.update(attrs)
    return idata
