"""Circular rational-quadratic splines on ``[0, 2pi)`` (Durkan et al. 2019, arXiv 1906.04032;
circular version of Rezende et al. 2020, arXiv 2002.02428).

``K`` bins with widths ``w_k`` and heights ``h_k`` (each summing to ``2pi``) and positive knot derivatives
``d_0..d_{K-1}`` with ``d_K = d_0``, so the map is a diffeomorphism of the circle (value and slope match at
``0 == 2pi``). Inside bin ``k`` with ``xi = (x - x_k)/w_k`` and ``s = h_k / w_k``:

    y  = y_k + h_k (s xi^2 + d_k xi (1 - xi)) / (s + (d_{k+1} + d_k - 2s) xi (1 - xi))
    y' = s^2 (d_{k+1} xi^2 + 2 s xi (1 - xi) + d_k (1 - xi)^2) / (s + (d_{k+1} + d_k - 2s) xi (1 - xi))^2

The functions are elementwise in ``x``; the parameter tensors carry one extra trailing dim of size ``K``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

TWO_PI = 2 * math.pi
MIN_DERIVATIVE = 1e-3
#: raw derivative 0 maps to slope exactly 1, so zero conditioner outputs give the identity
DERIVATIVE_SHIFT = math.log(math.expm1(1 - MIN_DERIVATIVE))


def spline_params(raw: Tensor, min_bin: float = 1e-3):
    """Split ``raw[..., 3K]`` into (widths, heights, derivatives), each ``[..., K]``."""
    K = raw.shape[-1] // 3
    w, h, d = raw[..., :K], raw[..., K : 2 * K], raw[..., 2 * K :]
    widths = TWO_PI * (min_bin + (1 - min_bin * K) * torch.softmax(w, -1))
    heights = TWO_PI * (min_bin + (1 - min_bin * K) * torch.softmax(h, -1))
    derivs = MIN_DERIVATIVE + F.softplus(d + DERIVATIVE_SHIFT)
    return widths, heights, derivs


def _knots(sizes: Tensor) -> Tensor:
    c = torch.cumsum(sizes, -1)
    c = torch.cat([torch.zeros_like(c[..., :1]), c], -1)
    return torch.cat([c[..., :-1], torch.full_like(c[..., -1:], TWO_PI)], -1)  # last knot exactly 2pi


def _gather(t: Tensor, idx: Tensor) -> Tensor:
    return torch.gather(t, -1, idx[..., None])[..., 0]


def _bin(knots: Tensor, v: Tensor) -> Tensor:
    idx = torch.searchsorted(knots[..., 1:-1].contiguous(), v[..., None].contiguous(), right=True)[..., 0]
    return idx.clamp(0, knots.shape[-1] - 2)


def _bin_quantities(x_knots, y_knots, widths, heights, derivs, idx):
    d_ext = torch.cat([derivs, derivs[..., :1]], -1)
    xk, yk = _gather(x_knots, idx), _gather(y_knots, idx)
    wk, hk = _gather(widths, idx), _gather(heights, idx)
    d0, d1 = _gather(d_ext, idx), _gather(d_ext, idx + 1)
    return xk, yk, wk, hk, d0, d1


def circular_spline(x: Tensor, widths: Tensor, heights: Tensor, derivs: Tensor):
    """``(y, log y'(x), d log y'(x) / dx)`` for ``x`` in ``[0, 2pi)`` (the last is the analytic derivative
    used by the fast path gradient)."""
    x_knots, y_knots = _knots(widths), _knots(heights)
    idx = _bin(x_knots, x)
    xk, yk, wk, hk, d0, d1 = _bin_quantities(x_knots, y_knots, widths, heights, derivs, idx)
    s = hk / wk
    xi = ((x - xk) / wk).clamp(0, 1)
    q = xi * (1 - xi)
    den = s + (d1 + d0 - 2 * s) * q
    y = yk + hk * (s * xi * xi + d0 * q) / den
    num = d1 * xi * xi + 2 * s * q + d0 * (1 - xi) ** 2
    log_dy = 2 * torch.log(s) + torch.log(num) - 2 * torch.log(den)
    dnum = 2 * d1 * xi + 2 * s * (1 - 2 * xi) - 2 * d0 * (1 - xi)
    dden = (d1 + d0 - 2 * s) * (1 - 2 * xi)
    dlog_dy = (dnum / num - 2 * dden / den) / wk
    return y, log_dy, dlog_dy


def circular_spline_inverse(y: Tensor, widths: Tensor, heights: Tensor, derivs: Tensor):
    """``(x, log x'(y))`` with ``x`` the preimage of ``y`` in ``[0, 2pi)``."""
    x_knots, y_knots = _knots(widths), _knots(heights)
    idx = _bin(y_knots, y)
    xk, yk, wk, hk, d0, d1 = _bin_quantities(x_knots, y_knots, widths, heights, derivs, idx)
    s = hk / wk
    dy = y - yk
    c_ = d1 + d0 - 2 * s
    a = hk * (s - d0) + dy * c_
    b = hk * d0 - dy * c_
    c = -s * dy
    disc = (b * b - 4 * a * c).clamp_min(0)
    xi = ((2 * c) / (-b - torch.sqrt(disc))).clamp(0, 1)
    x = xk + xi * wk
    q = xi * (1 - xi)
    den = s + c_ * q
    num = d1 * xi * xi + 2 * s * q + d0 * (1 - xi) ** 2
    log_dy = 2 * torch.log(s) + torch.log(num) - 2 * torch.log(den)
    return x, -log_dy
