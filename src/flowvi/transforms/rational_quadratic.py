"""Circular rational-quadratic splines on ``[0, 2pi)`` (Durkan et al. 2019, arXiv 1906.04032;
circular version of Rezende et al. 2020, arXiv 2002.02428).

``K`` bins with widths ``w_k`` and heights ``h_k`` (each summing to ``2pi``) and positive knot derivatives
``d_0..d_{K-1}`` with ``d_K = d_0``, so the map is a diffeomorphism of the circle (value and slope match at
``0 == 2pi``). Inside bin ``k`` with ``xi = (x - x_k)/w_k`` and ``s = h_k / w_k``:

    y  = y_k + h_k (s xi^2 + d_k xi (1 - xi)) / (s + (d_{k+1} + d_k - 2s) xi (1 - xi))
    y' = s^2 (d_{k+1} xi^2 + 2 s xi (1 - xi) + d_k (1 - xi)^2) / (s + (d_{k+1} + d_k - 2s) xi (1 - xi))^2

The functions are elementwise in ``x``. Their parameters are packed into one *table* of shape ``[..., 6, K]``
(rows: left x knots, left y knots, widths, heights, ``d_k``, ``d_{k+1}``), so that looking up the bin of every
point is a single ``gather`` — the flows call these once per layer for all active links, and on a GPU the
number of kernel launches, not the arithmetic, sets the cost.
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
    table = spline_table(raw, min_bin)
    return table[..., 2, :], table[..., 3, :], table[..., 4, :]


def spline_table(raw: Tensor, min_bin: float = 1e-3) -> Tensor:
    """The parameter table ``[..., 6, K]`` from unconstrained ``raw[..., 3K]`` (widths, heights, derivatives):
    ``w_k = 2pi (min_bin + (1 - K min_bin) softmax(raw_w)_k)``, likewise ``h_k``, and
    ``d_k = 1e-3 + softplus(raw_d + shift)`` (``raw = 0`` is the identity map)."""
    K = raw.shape[-1] // 3
    raw = raw.unflatten(-1, (3, K))
    sizes = TWO_PI * min_bin + (TWO_PI * (1 - min_bin * K)) * torch.softmax(raw[..., :2, :], -1)
    derivs = MIN_DERIVATIVE + F.softplus(raw[..., 2:, :] + DERIVATIVE_SHIFT)
    return _pack(sizes, derivs)


def _pack(sizes: Tensor, derivs: Tensor) -> Tensor:
    """``sizes [..., 2, K]`` (widths, heights) and ``derivs [..., 1, K]`` -> the table ``[..., 6, K]``."""
    knots = torch.cumsum(sizes, -1) - sizes  # left knots, the first exactly 0
    return torch.cat([knots, sizes, derivs, derivs.roll(-1, -1)], -2)


def table_from_params(widths: Tensor, heights: Tensor, derivs: Tensor) -> Tensor:
    """The table ``[..., 6, K]`` from explicit widths, heights (each summing to ``2pi``) and derivatives."""
    return _pack(torch.stack([widths, heights], -2), derivs.unsqueeze(-2))


def _lookup(table: Tensor, v: Tensor, row: int):
    """The six bin quantities of the bin of ``v`` among the knots in ``table[..., row, :]``."""
    idx = (v.unsqueeze(-1) >= table[..., row, 1:]).sum(-1)  # bin index 0..K-1, no host sync
    q = torch.gather(table, -1, idx[..., None, None].expand(*idx.shape, 6, 1)).squeeze(-1)
    return q.unbind(-1)


def _log_slope(s, d0, d1, s2, xi, omx, xi2, den):
    """``log y'`` and the numerator ``d1 xi^2 + 2 s xi (1 - xi) + d0 (1 - xi)^2`` (``s2 = 2 s``, ``omx = 1 - xi``)."""
    num = torch.addcmul(torch.addcmul(d1 * xi2, s2, xi * omx), d0, omx * omx)
    ratio = s / den
    return torch.log(ratio * ratio * num), num


def spline_forward(x: Tensor, table: Tensor, with_score: bool = True):
    """``(y, log y'(x), d log y'(x)/dx)`` for ``x`` in ``[0, 2pi)``; the last (the analytic derivative used by
    the fast path gradient) is ``None`` unless ``with_score``.

    ``xi`` is not clamped: the bin search guarantees ``x >= x_k``, and a rounding excess of ``xi`` over 1 is
    harmless (the rational function is smooth there). Written with few, fused (``addcmul``) operations, as
    each one is a kernel launch in eager mode.
    """
    xk, yk, wk, hk, d0, d1 = _lookup(table, x, 0)
    s = hk / wk
    xi = (x - xk) / wk
    omx = 1 - xi
    q = xi * omx
    s2 = 2 * s
    c = d1 + d0 - s2
    den = torch.addcmul(s, c, q)
    xi2 = xi * xi
    y = torch.addcmul(yk, hk, torch.addcmul(s * xi2, d0, q) / den)
    log_dy, num = _log_slope(s, d0, d1, s2, xi, omx, xi2, den)
    if not with_score:
        return y, log_dy, None
    # d log y'/dx = (num'/num - 2 den'/den) / w_k with num' = 2 (d1 xi + s (1 - 2 xi) - d0 (1 - xi))
    # and den' = c (1 - 2 xi)
    one_m_2xi = omx - xi
    dnum = 2 * (torch.addcmul(d1 * xi, s, one_m_2xi) - d0 * omx)
    dlog_dy = (dnum / num - 2 * c * one_m_2xi / den) / wk
    return y, log_dy, dlog_dy


def spline_inverse(y: Tensor, table: Tensor):
    """``(x, log x'(y))`` with ``x`` the preimage of ``y`` in ``[0, 2pi)`` (root of the bin's quadratic
    ``a xi^2 + b xi + c = 0``, in the cancellation-free form ``xi = 2c / (-b - sqrt(b^2 - 4ac))``)."""
    xk, yk, wk, hk, d0, d1 = _lookup(table, y, 1)
    s = hk / wk
    dy = y - yk
    s2 = 2 * s
    c = d1 + d0 - s2
    dyc = dy * c
    a = torch.addcmul(dyc, hk, s - d0)
    b = hk * d0 - dyc
    cc = -s * dy
    disc = torch.addcmul(b * b, a, cc, value=-4).clamp_min(0)
    xi = ((2 * cc) / (-b - torch.sqrt(disc))).clamp(0, 1)
    x = torch.addcmul(xk, xi, wk)
    omx = 1 - xi
    den = torch.addcmul(s, c, xi * omx)
    log_dy, _ = _log_slope(s, d0, d1, s2, xi, omx, xi * xi, den)
    return x, -log_dy


def circular_spline(x: Tensor, widths: Tensor, heights: Tensor, derivs: Tensor):
    """``(y, log y'(x), d log y'(x) / dx)`` for ``x`` in ``[0, 2pi)`` with parameters ``[..., K]``."""
    return spline_forward(x, table_from_params(widths, heights, derivs))


def circular_spline_inverse(y: Tensor, widths: Tensor, heights: Tensor, derivs: Tensor):
    """``(x, log x'(y))`` with ``x`` the preimage of ``y`` in ``[0, 2pi)``."""
    return spline_inverse(y, table_from_params(widths, heights, derivs))
