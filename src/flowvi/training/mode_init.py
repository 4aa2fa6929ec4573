"""Start where the posterior is: a Laplace-style start for the flow's location-scale layer.

A flow built at the identity starts as its base, N(0, I). A posterior far from that (a mean of 50 with sd 0.01,
or latent log-rates whose likelihood overflows a few sds away) throws the first reverse-KL steps into regions
where the log density is -inf or overflows. :func:`init_at_mode` moves the start first:

1. **Mode search**: L-BFGS (``torch.optim.LBFGS``, strong-Wolfe line search; Nocedal & Wright 2006, Alg. 7.5)
   on ``-log p(x)`` in the target's (unconstrained) space, from ``restarts`` over-dispersed draws of the flow's
   base (scaled by 1 to 10), each at most ``max_iter`` iterations; the best finite end point wins. The stationary
   end points are kept: :func:`mode_coverage` later asks whether the trained flow covers each of them.
2. **Scales from the curvature**: the Hessian diagonal ``H_ii = d^2(-log p)/dx_i^2`` at the mode by central
   differences of the gradient, ``(g_i(x + h e_i) - g_i(x - h e_i)) / 2h``, all ``2d`` points evaluated as one
   batch (chunked), and ``s_i = 1 / sqrt(H_ii)`` (the Laplace approximation's marginal sds when the Hessian is
   diagonal; Gelman et al. 2013, BDA3 Sec. 4.1). Coordinates with a non-positive or non-finite ``H_ii`` keep
   ``s_i = 1``.
3. **Accept or fall back**: the flow's last :class:`~flowvi.transforms.ElementwiseAffine` is set to loc = mode,
   scale = s (through the inverse of the layers after it, as in
   :func:`flowvi.training.pretrain.standardize_affine`), and kept only if the ELBO of ``check_draws`` draws
   improves on the untouched flow's (a mode can be a poor centre: Neal's funnel has its mode at the neck).

Whatever happens, the result says what was done and why (``InitReport``); the flow is left untouched on failure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch

from flowvi.training.pretrain import last_affine


@dataclass
class InitReport:
    used: bool
    reason: str
    log_p_mode: float | None = None
    elbo_before: float | None = None
    elbo_after: float | None = None
    scale_min: float | None = None
    scale_max: float | None = None
    seconds: float = 0.0
    ends: list = field(default_factory=list, repr=False, compare=False)  # (log p, end point) of the search

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "ends"}


def _neg_log_p(target, x):
    return -target.log_prob(x.unsqueeze(0)).squeeze(0)


def find_mode(target, starts: torch.Tensor, max_iter: int = 200, ends: list | None = None):
    """The best end point of L-BFGS on ``-log p`` from each row of ``starts`` (module docstring), with its log p;
    ``(None, nan)`` when no run ends finite. ``ends`` collects every finite ``(log p, end point)``."""
    best, best_lp = None, -math.inf
    for x0 in starts:
        x = _lbfgs(target, x0, max_iter)
        if x is None:
            continue
        with torch.no_grad():
            lp = float(-_neg_log_p(target, x))
        if not math.isfinite(lp):
            continue
        if ends is not None and _stationary(target, x):
            ends.append((lp, x))
        if lp > best_lp:
            best, best_lp = x, lp
    return best, (best_lp if best is not None else math.nan)


def _stationary(target, x: torch.Tensor, tol: float = 1e-3) -> bool:
    """Is ``x`` a stationary point of log p (the largest |gradient| at most ``tol`` (1 + max |x|))? Only these
    count as modes: a run that stopped on its iteration limit, or ran off along an unbounded direction, is none."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(-_neg_log_p(target, x), x)
    return bool(torch.isfinite(g).all() and g.abs().max() <= tol * (1 + float(x.detach().abs().max())))


#: end points of the mode search within this many nats of the best count as modes the posterior has mass at
MODE_WINDOW = 10.0
#: a mode whose importance log weight log p - log q is this many nats above the best-covered one is uncovered
UNCOVERED = 5.0


@torch.no_grad()
def mode_coverage(flow, target, ends: list) -> dict:
    """Does the trained flow put mass at every mode the search found? For the end points within
    :data:`MODE_WINDOW` nats of the highest, the log weights ``w_i = log p(m_i) - log q(m_i)``: a mode the flow
    covers as well as the others has ``w_i`` close to theirs; one with ``w_i - min_j w_j > UNCOVERED`` gets
    ``e^UNCOVERED`` times less of q's mass than of p's, relative to the best-covered mode (reverse KL drops
    separated modes: Bishop 2006, Sec. 10.1.2). Returns ``{"found", "uncovered", "gap"}``."""
    if not ends:
        return {"found": 0, "uncovered": 0, "gap": 0.0}
    points = modes_in_window(ends)
    gaps = mode_gaps(flow, target, points)
    return {"found": len(points), "uncovered": int((gaps > UNCOVERED).sum()), "gap": float(gaps.max())}


def modes_in_window(ends: list) -> torch.Tensor:
    """The end points ``(log p, x)`` of the search within :data:`MODE_WINDOW` nats of the highest, stacked (k, d),
    highest first."""
    top = max(lp for lp, _ in ends)
    return torch.stack([x for lp, x in sorted(ends, key=lambda e: -e[0]) if lp >= top - MODE_WINDOW])


@torch.no_grad()
def mode_gaps(flow, target, points: torch.Tensor) -> torch.Tensor:
    """``w_i - min_j w_j`` (k,) with ``w_i = log p(m_i) - log q(m_i)`` at the points ``m_i`` (k, d), for any
    ``flow`` with ``log_prob`` (a flow or a :class:`flowvi.core.mixture.FlowMixture`); a non-finite ``w_i`` counts
    as infinitely uncovered (:func:`mode_coverage`)."""
    anchor = next(flow.parameters())
    xs = points.to(anchor.device, anchor.dtype)
    w = (target.log_prob(xs).double() - flow.log_prob(xs).double()).cpu()
    w = torch.where(torch.isfinite(w), w, torch.full_like(w, math.inf))
    return w - w[torch.isfinite(w)].min() if torch.isfinite(w).any() else w


def _lbfgs(target, x0: torch.Tensor, max_iter: int) -> torch.Tensor | None:
    """One L-BFGS run on ``-log p`` from ``x0``; None when it fails."""
    x = x0.detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = _neg_log_p(target, x)
        if torch.isfinite(loss):
            loss.backward()
        return loss.detach()

    try:
        opt.step(closure)
    except (RuntimeError, ValueError, IndexError):  # IndexError: torch's strong-Wolfe search on a degenerate bracket
        pass  # keep the last point reached; it is checked below
    x = x.detach().clone()
    return x if torch.isfinite(x).all() else None


def hessian_diagonal(target, x: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """``d^2 (-log p) / dx_i^2`` at ``x`` (d,) by central differences of the gradient (module docstring): a first
    pass with ``h = 1e-3 max(|x_i|, 1)``, a second with ``h_i`` a tenth of the first pass's ``1 / sqrt(H_ii)``."""
    h = 1e-3 * x.abs().clamp(min=1.0)
    first = _central_differences(target, x, h, chunk)
    ok = torch.isfinite(first) & (first > 0)
    h = torch.where(ok, 0.1 / first.clamp(min=1e-30).sqrt(), h).clamp(min=1e-6 * x.abs().clamp(min=1.0))
    return _central_differences(target, x, h, chunk)


def _central_differences(target, x, h, chunk):
    d = x.shape[0]
    out = torch.empty(d, dtype=x.dtype, device=x.device)
    for start in range(0, d, chunk):
        idx = torch.arange(start, min(start + chunk, d), device=x.device)
        n = len(idx)
        shift = torch.zeros(n, d, dtype=x.dtype, device=x.device)
        shift[torch.arange(n), idx] = h[idx]
        pts = torch.cat([x + shift, x - shift]).requires_grad_(True)
        (g,) = torch.autograd.grad(target.log_prob(pts).sum(), pts)
        g = g.detach()
        out[idx] = -(g[torch.arange(n), idx] - g[n + torch.arange(n), idx]) / (2 * h[idx])
    return out


@torch.no_grad()
def _elbo(flow, target, n: int) -> float:
    x, log_q = flow.sample_and_log_prob(n)
    log_w = (target.log_prob(x) - log_q).double()
    log_w = torch.nan_to_num(log_w, nan=-math.inf)
    return float(log_w.mean()) if torch.isfinite(log_w).all() else -math.inf


def _set_affine(flow, mode: torch.Tensor, scale: torch.Tensor) -> bool:
    found = last_affine(flow)
    if found is None:
        return False
    i, affine = found
    after = list(flow.transform)[i + 1 :]
    pts = torch.stack([mode, mode - scale, mode + scale])
    for layer in reversed(after):
        pts, _ = layer.inverse(pts)
    if not torch.isfinite(pts).all():
        return False
    u_scale = (pts[2] - pts[1]).abs() / 2
    affine.loc.copy_(pts[0])
    affine.log_scale.copy_(torch.log(torch.where(u_scale > 0, u_scale, torch.ones_like(u_scale))))
    return True


def place_at_mode(flow, target, mode: torch.Tensor) -> tuple[bool, torch.Tensor]:
    """Set the flow's last elementwise affine layer to loc = ``mode``, scale = ``1 / sqrt(H_ii)`` (module docstring,
    steps 2 and 3, without the ELBO check); returns ``(placed, scales)``. The start of a flow fitted to one given
    mode (:mod:`flowvi.training.mode_mixture`)."""
    scale = 1 / hessian_diagonal(target, mode).sqrt()
    scale = torch.where(torch.isfinite(scale) & (scale > 0), scale, torch.ones_like(scale))
    with torch.no_grad():
        return _set_affine(flow, mode, scale), scale


def init_at_mode(flow, target, restarts: int = 6, max_iter: int = 200, check_draws: int = 512, seed: int = 0):
    """Set the flow's location-scale layer from the mode and curvature of ``target`` (module docstring); returns
    an :class:`InitReport`. Draws its start points and check draws under a forked RNG (the caller's stream is
    untouched)."""
    import time

    t0 = time.perf_counter()
    found = last_affine(flow)
    if found is None:
        return InitReport(False, "the flow has no elementwise affine layer to place")
    device = found[1].loc.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        with torch.no_grad():  # over-dispersed starts (Gelman & Rubin 1992): base draws at scales 1 to 10
            starts = flow.base.sample(restarts) * torch.logspace(0, 1, restarts).to(device)[:, None]
        ends = []
        mode, lp = find_mode(target, starts, max_iter, ends)
        if mode is None:
            why = "the mode search (L-BFGS) ended at no point with a finite log density (unbounded, or -inf); flow left at its start"
            return InitReport(False, why, seconds=_dt(t0))
        torch.manual_seed(seed + 1)
        before = _elbo(flow, target, check_draws)
        saved = {k: v.detach().clone() for k, v in found[1].state_dict().items()}
        placed, scale = place_at_mode(flow, target, mode)
        torch.manual_seed(seed + 1)
        after = _elbo(flow, target, check_draws) if placed else -math.inf
    report = InitReport(False, "", lp, before, after, float(scale.min()), float(scale.max()), _dt(t0), ends)
    if not placed:
        found[1].load_state_dict(saved)
        report.reason = "the mode lies beyond the last layer's range (LOFT threshold); flow left at its start"
    elif not after > before:
        found[1].load_state_dict(saved)
        report.reason = (
            f"the mode's Laplace start has a lower ELBO ({after:.4g} <= {before:.4g}); flow left at its start"
        )
    else:
        report.used, report.reason = True, f"started at the mode (log p {lp:.4g}), ELBO {before:.4g} -> {after:.4g}"
    return report


def _dt(t0) -> float:
    import time

    return time.perf_counter() - t0


__all__ = [
    "MODE_WINDOW",
    "UNCOVERED",
    "InitReport",
    "find_mode",
    "hessian_diagonal",
    "init_at_mode",
    "mode_coverage",
    "mode_gaps",
    "modes_in_window",
    "place_at_mode",
]
