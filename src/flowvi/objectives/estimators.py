"""Gradient estimators: functions ``(flow, target, batch_size) -> Estimate``.

``Estimate.loss`` is a surrogate whose gradient with respect to the flow's parameters is the
estimator; ``Estimate.log_weights`` are the detached ``log p(x) - log q(x)`` of the batch, used for
logging the ELBO and the effective sample size during training. The value of ``loss`` is always the
plain Monte Carlo estimate of the objective (so it can be logged), whatever the gradient.

Reverse KL (the negative ELBO up to log Z):  KL(q||p) = E_q[log q(x) - log p(x)].

* ``reparam`` — the reparameterization trick (Kingma & Welling 2014; Rezende & Mohamed 2015):
  x = f_theta(z), z ~ q0, loss = mean(log q(x) - log p(x)), differentiated through x and theta.
* ``path`` — the fast path gradient (Roeder et al. 2017; Vaitl et al. 2024, arXiv 2403.15881):
  grad = E[(d log q_theta(x)/dx - d log p(x)/dx) . dx/dtheta], the score of q carried through the
  layers during sampling (``Flow.sample_with_score``), then one backward pass. Zero variance when q = p.
* ``path_naive`` — the same gradient, computed the slow way ("sticking the landing"): log q(x) is
  evaluated through the inverse pass with *detached* parameters, so only the sample path carries theta.
  The reference for testing ``path``.
* ``reinforce`` — the score-function estimator (Bialas et al. 2023, arXiv 2308.13294):
  grad = E[(f(x) - b) grad_theta log q_theta(x)],  f = log q - log p,  with samples drawn and the
  target evaluated under ``torch.no_grad()`` (no graph through the target, no target gradient), and
  a leave-one-out baseline b. ``reinforce_estimator(baseline="mean")`` gives the batch-mean version.

Non-finite draws. A draw whose target log density ``log p(x)`` or flow log density ``log q(x)`` is not
finite (NaN, -inf, an overflow) is dropped from the batch: every reverse-KL estimator (and FAB's logged
value) averages over the remaining draws, and the gradient of a dropped draw is set to zero before it can
reach the parameters (``0 * inf`` would otherwise turn the whole gradient into NaN). ``Estimate.dropped``
counts them, ``[target, flow]`` (a draw is charged to the target when ``log p`` is not finite, else to the
flow). When fewer than ``MIN_FINITE_FRACTION`` (one half) of the batch, or fewer than 2 draws, remain, the
loss is NaN and the training step is skipped. No host synchronisation is involved (masked means on the device).

Forward KL (maximum likelihood):  KL(p||q) = E_p[log p(x) - log q(x)], with ``x`` from the target or
data. ``FORWARD_ESTIMATORS`` holds functions ``(flow, x, target=None) -> Estimate``:

* ``ml`` — loss = -mean log q(x) (``log_weights`` = log p - log q if a target is given, else log q).
* ``path`` — the path gradient through the pullback density (Vaitl et al. 2024, sec. 4, Prop. 4.1):
  with z = f_theta^{-1}(x) and p_theta(z) = p(f(z)) |det J_f(z)| the pullback of p,
  KL(p||q) = KL(p_theta||q0) and grad = E_p[(d log p_theta(z)/dz - d log q0(z)/dz) . dz/dtheta].
  Needs the target density and its gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from flowvi.targets import checked_log_prob
from flowvi.targets.base import log_prob_and_grad

#: a step is skipped when fewer than this fraction of its draws (or fewer than 2) have finite log p and log q
MIN_FINITE_FRACTION = 0.5


@dataclass
class Estimate:
    """One batch's estimate: ``loss`` (a scalar surrogate whose gradient is the estimator's, whose value is the
    Monte Carlo objective) and the detached ``log_weights`` ``log p(x) - log q(x)`` (batch,) of its samples."""

    loss: Tensor
    log_weights: Tensor
    dropped: Tensor | None = None  # (2,) int64: draws dropped for a non-finite [log p, log q]


def finite_mask(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Draws whose target and flow log densities (and their difference) are finite."""
    return torch.isfinite(log_p) & torch.isfinite(log_q) & torch.isfinite(log_p - log_q)


def dropped_counts(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``[draws with a non-finite log p, draws with a finite log p but a non-finite log q]`` (int64, on the device)."""
    bad_p = ~torch.isfinite(log_p)
    bad_q = ~bad_p & ~finite_mask(log_p, log_q)
    return torch.stack([bad_p.sum(), bad_q.sum()])


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over ``mask``; NaN when fewer than ``MIN_FINITE_FRACTION`` of them (or < 2) are kept."""
    n_ok = mask.sum()
    mean = torch.where(mask, values, torch.zeros_like(values)).sum() / n_ok.clamp(min=1)
    need = max(2, math.ceil(MIN_FINITE_FRACTION * mask.shape[0]))
    return torch.where(n_ok >= need, mean, torch.full_like(mean, math.nan))


def _gate_rows(x: Tensor, mask: Tensor) -> Tensor:
    """Zero the gradient reaching ``x`` through dropped rows (their NaN or inf partials would spoil the sum)."""
    if x.requires_grad:
        shape = (-1,) + (1,) * (x.dim() - 1)
        x.register_hook(lambda g: torch.where(mask.view(shape), g, torch.zeros_like(g)))
    return x


def _flat_dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner product over the event dimensions, shape ``(batch,)``."""
    return (a * b).reshape(a.shape[0], -1).sum(-1)


def with_value(value: Tensor, surrogate: Tensor) -> Tensor:
    """A scalar equal to ``value`` whose gradient is that of ``surrogate``."""
    return value.detach() + (surrogate - surrogate.detach())


# --------------------------------------------------------------------------------------- reverse KL


def reparam(flow, target, batch_size: int) -> Estimate:
    """Reparameterization gradient of reverse KL: ``loss = mean(log q(x) - log p(x))``, ``x = f_theta(z)``
    differentiated through the sample path and the parameters (Kingma & Welling 2014)."""
    x, log_q = flow.sample_and_log_prob(batch_size)
    log_p = target.log_prob(x)
    log_w = log_p - log_q
    ok = finite_mask(log_p.detach(), log_q.detach())
    _gate_rows(x, ok)
    return Estimate(loss=-masked_mean(log_w, ok), log_weights=log_w.detach(), dropped=dropped_counts(log_p, log_q))


def path(flow, target, batch_size: int) -> Estimate:
    """Fast path gradient: ``loss.grad = mean_i (score_q(x_i) - grad log p(x_i)) . dx_i/dtheta``.

    Raises :class:`~flowvi.transforms.base.PathGradientUnsupported` when a transform has no
    ``forward_with_score``.
    """
    x, log_q, score_q = flow.sample_with_score(batch_size)
    log_p, grad_p = log_prob_and_grad(target, x)
    ok = finite_mask(log_p, log_q.detach())
    ok = ok & torch.isfinite(grad_p).reshape(len(ok), -1).all(-1) & torch.isfinite(score_q).reshape(len(ok), -1).all(-1)
    shape = (-1,) + (1,) * (x.dim() - 1)
    direction = torch.where(ok.view(shape), score_q - grad_p, torch.zeros_like(x))
    surrogate = masked_mean(_flat_dot(direction, x), ok)
    log_w = log_p - log_q.detach()
    loss = with_value(-masked_mean(log_w, ok), surrogate)
    return Estimate(loss=loss, log_weights=log_w, dropped=dropped_counts(log_p, log_q.detach()))


class _Call(nn.Module):
    """Wraps ``getattr(module, method)`` as a forward, so ``functional_call`` can swap its parameters."""

    def __init__(self, module: nn.Module, method: str):
        super().__init__()
        self.module, self.method = module, method

    def forward(self, *args):
        return getattr(self.module, self.method)(*args)


def _call_detached(module: nn.Module, method: str, *args):
    """``module.method(*args)`` with every parameter detached (no gradient to the parameters)."""
    params = {f"module.{k}": p.detach() for k, p in module.named_parameters()}
    return functional_call(_Call(module, method), params, args)


def path_naive(flow, target, batch_size: int) -> Estimate:
    """Reference path gradient ("sticking the landing", Roeder et al. 2017): the sample carries the
    parameters, the density log q is evaluated by the inverse pass with detached parameters."""
    x, log_q = flow.sample_and_log_prob(batch_size)
    log_q_stl = _call_detached(flow, "log_prob", x)
    log_p = target.log_prob(x)
    log_w = (log_p - log_q).detach()
    ok = finite_mask(log_p.detach(), log_q.detach())
    _gate_rows(x, ok)
    surrogate = masked_mean(log_q_stl - log_p, ok)
    loss = with_value(-masked_mean(log_w, ok), surrogate)
    return Estimate(loss=loss, log_weights=log_w, dropped=dropped_counts(log_p.detach(), log_q.detach()))


REINFORCE_BASELINES = ("mean", "loo")


def reinforce_estimator(baseline: str = "loo"):
    """The REINFORCE (score-function) estimator of grad KL(q||p) (Bialas et al. 2023).

    ``baseline``: ``"loo"`` (leave-one-out, b_i = mean_{j != i} f_j: unbiased) or ``"mean"``
    (b = mean_j f_j: biased by a factor (n - 1)/n, harmless in practice). With either, the
    estimator vanishes identically when q = p (then f is constant).

    Sampling and the target run under ``torch.no_grad()``; only ``log q_theta(x)`` (one inverse pass)
    is differentiated. The call may be wrapped in ``torch.autocast``: the log densities, the
    baseline and the loss are then formed in float32.
    """
    if baseline not in REINFORCE_BASELINES:
        raise ValueError(f"unknown REINFORCE baseline {baseline!r}; choose one of {', '.join(REINFORCE_BASELINES)}")

    def reinforce(flow, target, batch_size: int) -> Estimate:
        if baseline == "loo" and batch_size < 2:
            raise ValueError(f"the leave-one-out baseline needs batch_size >= 2, got {batch_size}")
        with torch.no_grad():
            x = flow.sample(batch_size)
            log_p = target.log_prob(x).float()
            keep = torch.isfinite(log_p) & torch.isfinite(x).reshape(len(x), -1).all(-1)
            x = torch.where(keep.view((-1,) + (1,) * (x.dim() - 1)), x, torch.zeros_like(x))  # dropped anyway
        log_q = flow.log_prob(x.detach()).float()
        with torch.autocast(device_type=x.device.type, enabled=False):
            ok = keep & finite_mask(log_p, log_q.detach())
            f = torch.where(ok, log_q.detach() - log_p, torch.zeros_like(log_p))
            n = ok.sum()
            if baseline == "loo":
                b = (f.sum() - f) / (n - 1).clamp(min=1)
            else:
                b = f.sum() / n.clamp(min=1)
            surrogate = masked_mean((f - b) * torch.where(ok, log_q, torch.zeros_like(log_q)), ok)
            log_q_kept = torch.where(keep, log_q.detach(), torch.full_like(log_p, math.nan))
            log_w = torch.where(keep, log_p - log_q.detach(), torch.full_like(log_p, -math.inf))
            loss = with_value(masked_mean(f, ok), surrogate)
        return Estimate(loss=loss, log_weights=log_w, dropped=dropped_counts(log_p, log_q_kept))

    reinforce.__name__ = f"reinforce_{baseline}"
    reinforce.__doc__ = f"REINFORCE estimator of grad KL(q||p) with the {baseline!r} baseline."
    return reinforce


#: estimator name -> function. Each takes (flow, target, batch_size) and returns an Estimate.
#: ``reinforce`` uses the leave-one-out baseline (unbiased); ``reinforce_mean`` the batch mean.
#: reverse-KL gradient estimators by name, each ``(flow, target, batch_size) -> Estimate`` (module docstring);
#: ``fab`` is built by :func:`flowvi.objectives.get_estimator` since it keeps state (the AIS sampler and its replay buffer)
ESTIMATORS = {
    "reparam": reparam,
    "path": path,
    "path_naive": path_naive,
    "reinforce": reinforce_estimator("loo"),
    "reinforce_mean": reinforce_estimator("mean"),
}


# --------------------------------------------------------------------------------------- forward KL


def forward_ml(flow, x: Tensor, target=None) -> Estimate:
    """Maximum likelihood: loss = -mean log q(x) over the batch ``x`` of target samples or data."""
    log_q = flow.log_prob(x)
    if target is None:
        log_w = log_q.detach()
    else:
        with torch.no_grad():
            log_w = target.log_prob(x) - log_q.detach()
    return Estimate(loss=-log_q.mean(), log_weights=log_w)


def forward_path(flow, x: Tensor, target=None) -> Estimate:
    """Path gradient of KL(p||q) through the pullback density (Vaitl et al. 2024, Prop. 4.1).

    z = f^{-1}(x) carries the parameters; the score of the pullback p_theta(z) = p(f(z)) |det J_f(z)|
    is taken with detached parameters (one forward pass from the detached z), and
    loss.grad = mean_i (d log p_theta(z_i)/dz - d log q0(z_i)/dz) . dz_i/dtheta.
    """
    if target is None:
        raise ValueError(
            "the forward-KL path gradient needs the target's log density and its gradient; "
            "pass target=..., or use FORWARD_ESTIMATORS['ml'] for data without a density"
        )
    z, logdet_inv = flow.transform.inverse(x)
    log_q = flow.base.log_prob(z) + logdet_inv
    with torch.enable_grad():
        z_leaf = z.detach().requires_grad_(True)
        x_back, logdet = _call_detached(flow.transform, "forward", z_leaf)
        log_pull = target.log_prob(x_back) + logdet
        (score_pull,) = torch.autograd.grad(log_pull.sum(), z_leaf)
    score_base = flow.base.score(z.detach())
    surrogate = _flat_dot(score_pull - score_base, z).mean()
    with torch.no_grad():
        log_w = target.log_prob(x) - log_q.detach()
    return Estimate(loss=with_value(-log_q.mean(), surrogate), log_weights=log_w)


#: forward-KL estimator name -> function ``(flow, x, target=None) -> Estimate``.
FORWARD_ESTIMATORS = {"ml": forward_ml, "path": forward_path}


def get_forward_estimator(name: str):
    """The forward-KL estimator ``(flow, x, target=None) -> Estimate`` named ``name`` (``ml`` or ``path``)."""
    if name not in FORWARD_ESTIMATORS:
        raise ValueError(f"unknown forward-KL estimator {name!r}; choose one of {', '.join(FORWARD_ESTIMATORS)}")
    return FORWARD_ESTIMATORS[name]


__all__ = [
    "MIN_FINITE_FRACTION",
    "dropped_counts",
    "finite_mask",
    "masked_mean",
    "ESTIMATORS",
    "FORWARD_ESTIMATORS",
    "REINFORCE_BASELINES",
    "Estimate",
    "checked_log_prob",
    "forward_ml",
    "forward_path",
    "get_forward_estimator",
    "path",
    "path_naive",
    "reinforce_estimator",
    "reparam",
]
