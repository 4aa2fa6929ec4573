"""Warm start: pre-train a flow by maximum likelihood on a sampler's draws, then fine-tune by reverse KL.

Reverse KL, KL(q||p) = E_q[log q - log p], is mode seeking: a flow that starts near the origin settles in the
first regime it finds and has no gradient towards mass it never samples (docs/high_dimensional.md, the
horseshoe's separation regime). Forward KL from draws x_1..x_N of p (SMC particles, MCMC draws),

    KL(p||q_theta) = E_p[log p(x)] - E_p[log q_theta(x)] ~ const - (1/N) sum_i log q_theta(x_i),

is mass covering: its minimiser, the maximum-likelihood flow, puts mass wherever the draws are. So
:func:`pretrain_on_draws` fits the flow to the draws (a density-estimation run of
:class:`flowvi.training.parts.PartsTrainer`, end to end, forward-KL estimator ``ml`` or ``path`` of
:data:`flowvi.estimators.FORWARD_ESTIMATORS`), and :func:`flowvi.training.loop.fit` continues from there by reverse KL.

Standardisation (``standardize=True``): before training, the flow's last elementwise affine layer
``v -> loc + exp(log_scale) * v`` is set from the draws: with ``u_i = g^{-1}(x_i)`` their pre-image under the
layers after it (LOFT: the identity for |x| <= tau), ``loc = mean_i u_i`` and ``log_scale = log sd_i u_i`` per
coordinate. For a freshly built flow (couplings at the identity) q is then the maximum-likelihood diagonal
Gaussian of the draws (pushed through g), and the couplings start on standardised coordinates. This matters for
the stabilised Real NVP, whose asymmetric clamp lets a coupling widen a coordinate by at most exp(0.1) per layer.

``flowvi fit --init-draws PATH`` does the same from the command line (:func:`load_draws` reads PATH).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from flowvi.data.arrays import read_array
from flowvi.objectives.estimators import FORWARD_ESTIMATORS
from flowvi.training.parts import PartedFlow, PartsConfig, PartsTrainer
from flowvi.transforms import ElementwiseAffine


def check_draws(draws, dim: int, name: str = "draws") -> np.ndarray | Tensor:
    """``draws`` as given, after checking it is a real (N, dim) array of finite values with N >= 2."""
    x = draws if isinstance(draws, Tensor) else np.asarray(draws)
    if isinstance(x, np.ndarray) and not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{name} must be real-valued, got dtype {x.dtype}")
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(
            f"{name} must have shape (N, {dim}) (one draw per row, the target's dimension); got {tuple(x.shape)}"
        )
    if x.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 draws, got {x.shape[0]}")
    t = torch.as_tensor(x)
    if t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must be real-valued, got dtype {t.dtype}")
    bad = ~torch.isfinite(t.double()).all(1)
    if bad.any():
        raise ValueError(
            f"{name} has NaN or infinite values in {int(bad.sum())} of {x.shape[0]} rows (first: row {int(bad.nonzero()[0])})"
        )
    return x


def load_draws(path, key: str | None = None, dim: int | None = None) -> np.ndarray:
    """Draws from ``path``: a ``.npy`` array, an array ``key`` of a ``.npz`` file (the only one when ``key`` is
    None), or a run directory of ``flowvi baseline smc|hmc|nuts|flowmc`` (its ``samples.npy``). Checked to be
    (N, ``dim``) and finite; returned as float64.

    A reference file written by ``flowvi baseline hmc --reference-out`` holds summaries of the compared
    coordinates (means, quantiles, a few coefficients' draws), not draws of the target: use the run directory."""
    path = Path(path)
    if path.is_dir():
        if not (path / "samples.npy").exists():
            raise FileNotFoundError(f"--init-draws {path}: a directory without samples.npy (a 'flowvi baseline' run?)")
        path = path / "samples.npy"
    elif not path.exists():
        raise FileNotFoundError(f"--init-draws {path}: no such file")
    x = read_array(path, key, key_option="--init-key")
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        keys = _npz_keys(path) if path.suffix == ".npz" else []
        hint = (
            " (a reference summary from --reference-out holds no draws of the target; use the run directory)"
            if "info" in keys and "mean" in keys
            else ""
        )
        want = f"(N, {dim}) for this target" if dim is not None else "(N, d)"
        raise ValueError(f"--init-draws {path}: draws must have shape {want}, got {tuple(x.shape)}{hint}")
    return np.asarray(check_draws(x, x.shape[1], f"--init-draws {path}"), dtype=np.float64)


def _npz_keys(path: Path) -> list[str]:
    with np.load(path, allow_pickle=False) as f:
        return list(f.keys())


def draws_digest(x: np.ndarray) -> str:
    """First 16 hex digits of the SHA-256 of the draws (float64, C order): identifies them in a run's records."""
    return hashlib.sha256(np.ascontiguousarray(x, dtype=np.float64).tobytes()).hexdigest()[:16]


def last_affine(flow) -> tuple[int, ElementwiseAffine] | None:
    layers = list(getattr(flow, "transform", []))
    for i in reversed(range(len(layers))):
        if isinstance(layers[i], ElementwiseAffine):
            return i, layers[i]
    return None


@torch.no_grad()
def standardize_affine(flow, x: Tensor) -> bool:
    """Set the flow's last :class:`~flowvi.transforms.ElementwiseAffine` to the mean and sd of the draws' pre-image
    under the layers after it (module docstring). False (and nothing changed) when the flow has none."""
    found = last_affine(flow)
    if found is None:
        return False
    i, affine = found
    u = x
    for layer in reversed(list(flow.transform)[i + 1 :]):
        u, _ = layer.inverse(u)
    if not torch.isfinite(u).all():
        return False  # draws beyond LOFT's threshold overflow its inverse; pretrain_on_draws explains
    sd = u.std(0)
    affine.loc.copy_(u.mean(0))
    affine.log_scale.copy_(torch.log(torch.where(sd > 0, sd, torch.ones_like(sd))))
    return True


@torch.no_grad()
def mean_nll(flow, x: Tensor, batch_size: int = 4096) -> float:
    """``-(1/N) sum_i log q(x_i)`` over the draws (nats per draw, not per dimension)."""
    total = sum(float(flow.log_prob(x[i : i + batch_size]).double().sum()) for i in range(0, len(x), batch_size))
    return -total / len(x)


def _check_options(estimator: str, steps: int, batch_size: int, lr: float) -> None:
    if estimator not in FORWARD_ESTIMATORS:
        raise ValueError(f"unknown forward-KL estimator {estimator!r}; choose one of {', '.join(FORWARD_ESTIMATORS)}")
    for name, v in (("steps", steps), ("batch_size", batch_size)):
        if v < 1:
            raise ValueError(f"pre-training {name} must be positive, got {v}")
    if not lr > 0:
        raise ValueError(f"pre-training lr must be positive, got {lr}")


def _finite_nll(flow, x: Tensor) -> float:
    """:func:`mean_nll` of the draws before training; a one-line error when the flow's density is not finite."""
    nll = mean_nll(flow, x)
    if not math.isfinite(nll):
        with torch.no_grad():
            bad = int((~torch.isfinite(flow.log_prob(x))).sum())
        raise ValueError(
            f"the flow's log density is not finite at {bad} of {len(x)} draws (largest |x| "
            f"{float(x.abs().max()):.4g}); draws far beyond a LOFT layer's threshold tau overflow its inverse: build "
            "the flow with a larger tau (--tau), or drop those draws"
        )
    return nll


def pretrain_on_draws(
    flow,
    draws,
    steps: int = 1000,
    batch_size: int = 256,
    lr: float = 1e-3,
    estimator: str = "ml",
    target=None,
    standardize: bool = True,
    clip: float | None = 50.0,
    warmup: int = 50,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Fit ``flow`` to ``draws`` (N, d) by maximum likelihood (forward KL; module docstring), in place.

    Adam for ``steps`` steps on minibatches of ``batch_size`` draws taken with replacement (a generator seeded
    by ``seed``), linear warm-up over ``warmup`` steps then a cosine decay of ``lr``, gradient-norm clip
    ``clip``; ``estimator`` ``ml`` (needs the draws only) or ``path`` (needs ``target``); ``standardize`` sets
    the last elementwise affine layer from the draws first. Steps with a non-finite loss or gradient are skipped.
    The global torch RNG is not used, so what follows (reverse-KL ``fit``) sees the same RNG stream as without
    pre-training.

    Returns ``{"n_draws", "digest", "steps", "standardized", "nll_start", "nll_end", "skipped", "seconds"}``:
    the mean negative log-likelihood of the draws (nats per draw) before and after.
    """
    _check_options(estimator, steps, batch_size, lr)
    anchor = next(flow.parameters())
    draws = check_draws(draws, flow.dim)
    digest = draws_digest(draws.detach().cpu().numpy() if isinstance(draws, Tensor) else draws)
    x = torch.as_tensor(draws).to(anchor.device, anchor.dtype)
    n = len(x)
    standardized = standardize_affine(flow, x) if standardize else False
    nll_start = _finite_nll(flow, x)

    def sample_batch(generator, size):
        return x[torch.randint(0, n, (size,), generator=generator, device=x.device)]

    cfg = PartsConfig(
        schedule="end_to_end",
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        lr_schedule="cosine",
        warmup=min(warmup, steps),
        clip=clip,
        estimator=estimator,
        eval_every=max(steps, 1),
        checkpoint_every=max(steps, 1),
        seed=seed,
    )
    trainer = PartsTrainer(PartedFlow(flow, [0]), cfg, sample_batch, target=target)
    was_training = flow.training
    flow.train()
    state = trainer.run(progress=progress)
    flow.train(was_training)
    nll_end = mean_nll(flow, x)
    if not math.isfinite(nll_end):
        raise ValueError(f"pre-training on the draws ended with a non-finite log-likelihood ({nll_end})")
    return {
        "n_draws": n,
        "digest": digest,
        "steps": state.step,
        "estimator": estimator,
        "standardized": standardized,
        "nll_start": nll_start,
        "nll_end": nll_end,
        "skipped": state.skipped,
        "seconds": state.elapsed,
    }


__all__ = ["check_draws", "draws_digest", "load_draws", "mean_nll", "pretrain_on_draws", "standardize_affine"]
