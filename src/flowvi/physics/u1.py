"""Compact U(1) lattice gauge theory in two dimensions: plaquettes, Wilson action, observables.

A configuration is a tensor of link angles ``theta`` of shape ``(batch, 2, L, L)``: ``theta[:, mu, x0, x1]``
is the angle of the link ``U_mu(x) = exp(i theta_mu(x))`` leaving site ``x = (x0, x1)`` in direction ``mu``.
Boundaries are periodic. The plaquette angle at ``x`` is

    P(x) = theta_0(x) + theta_1(x + e0) - theta_0(x + e1) - theta_1(x),

the Wilson action is ``S = -beta sum_x cos P(x)`` and the topological charge is
``Q = (1/2pi) sum_x arg exp(i P(x))`` with ``arg`` in ``(-pi, pi]`` (an integer on a periodic lattice).
A gauge transformation ``alpha(x)`` maps ``theta_mu(x) -> alpha(x) + theta_mu(x) - alpha(x + e_mu)`` and leaves
every plaquette unchanged.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.special import ive
from torch import Tensor

TWO_PI = 2 * math.pi


def check_links(links: Tensor) -> Tensor:
    """Raise a clear error unless ``links`` is a floating ``(batch, 2, L0, L1)`` tensor."""
    if not isinstance(links, Tensor) or links.ndim != 4 or links.shape[1] != 2:
        shape = tuple(links.shape) if isinstance(links, Tensor) else type(links).__name__
        raise ValueError(f"U(1) links must have shape (batch, 2, L, L), got {shape}")
    if not links.is_floating_point():
        raise ValueError(f"U(1) link angles must be floating point, got {links.dtype}")
    return links


def shift(field: Tensor, mu: int, step: int = 1) -> Tensor:
    """``field(x + step * e_mu)`` on the periodic lattice (``field`` has the lattice in its last two dims)."""
    return torch.roll(field, shifts=-step, dims=field.ndim - 2 + mu)


def plaquette_angles(links: Tensor) -> Tensor:
    """``P(x)`` of shape ``(batch, L0, L1)``, not reduced mod 2pi."""
    t0, t1 = links[:, 0], links[:, 1]
    return t0 + shift(t1, 0) - shift(t0, 1) - t1


def wrap(angle: Tensor) -> Tensor:
    """The representative of ``angle`` in ``(-pi, pi]``."""
    return math.pi - torch.remainder(math.pi - angle, TWO_PI)


def wilson_action(links: Tensor, beta: float) -> Tensor:
    """``S_g = -beta sum_x cos P(x)`` per configuration, shape ``(batch,)``."""
    return -beta * torch.cos(plaquette_angles(check_links(links))).sum((-2, -1))


def average_plaquette(links: Tensor) -> Tensor:
    """``(1/V) sum_x cos P(x)`` per configuration."""
    return torch.cos(plaquette_angles(check_links(links))).mean((-2, -1))


def topological_charge(links: Tensor) -> Tensor:
    """``Q = (1/2pi) sum_x arg P(x)`` per configuration (integer-valued up to rounding)."""
    return wrap(plaquette_angles(check_links(links))).sum((-2, -1)) / TWO_PI


def topological_susceptibility(charge: Tensor, volume: int, log_weights: Tensor | None = None) -> Tensor:
    """``chi_t = <Q^2> / V``; with ``log_weights`` the self-normalized importance-weighted average."""
    q2 = charge.double() ** 2
    if log_weights is None:
        return q2.mean() / volume
    w = torch.softmax(log_weights.double(), 0)
    return (w * q2).sum() / volume


def gauge_transform(links: Tensor, alpha: Tensor) -> Tensor:
    """``theta_mu(x) -> alpha(x) + theta_mu(x) - alpha(x + e_mu)`` with ``alpha`` of shape ``(batch, L0, L1)``."""
    return torch.stack([links[:, mu] + alpha - shift(alpha, mu) for mu in (0, 1)], dim=1)


def exact_average_plaquette(beta: float, L: int, n_max: int | None = None) -> float:
    """Exact ``<cos P>`` of 2D compact U(1) with the Wilson action on a periodic ``L x L`` lattice.

    On the torus the ``V = L^2`` plaquette angles are independent up to one constraint (their sum is 0 mod
    2pi), which the character expansion ``exp(beta cos P) = sum_n I_n(beta) exp(i n P)`` turns into

        Z = sum_{n in Z} I_n(beta)^V,   <cos P> = (1/V) d log Z / d beta
          = sum_n I_n^{V-1} I_n' / sum_n I_n^V,   I_n' = (I_{n-1} + I_{n+1}) / 2.

    As ``V -> infinity`` only ``n = 0`` survives and ``<cos P> -> I_1(beta) / I_0(beta)``. The exponentially
    scaled Bessel functions ``ive`` are used (the scale cancels in the ratio) and the sum is done in logs.
    """
    if beta < 0 or L < 1:
        raise ValueError(f"need beta >= 0 and L >= 1, got beta={beta}, L={L}")
    V = L * L
    n_max = n_max if n_max is not None else int(20 + 4 * beta)
    n = np.arange(-n_max, n_max + 1)
    i_n = ive(n, beta)
    di_n = 0.5 * (ive(n - 1, beta) + ive(n + 1, beta))
    keep = i_n > 0
    log_terms = V * np.log(i_n[keep])
    w = np.exp(log_terms - log_terms.max())
    return float(np.sum(w * di_n[keep] / i_n[keep]) / np.sum(w))


def exact_log_partition_function(beta: float, L: int, n_max: int | None = None) -> float:
    """Exact ``log Z`` of ``exp(-S_g)`` integrated over the link angles ``[0, 2pi)^(2V)`` (Lebesgue measure):

        Z = (2pi)^(2V) sum_{n in Z} I_n(beta)^V

    (each link sits in two plaquettes with opposite orientation, so the character expansion forces one
    representation ``n`` on every plaquette and every link integral gives ``2pi``).
    """
    if beta < 0 or L < 1:
        raise ValueError(f"need beta >= 0 and L >= 1, got beta={beta}, L={L}")
    V = L * L
    n_max = n_max if n_max is not None else int(20 + 4 * beta)
    i_n = ive(np.arange(-n_max, n_max + 1), beta)
    log_terms = V * (np.log(i_n[i_n > 0]) + beta)
    top = log_terms.max()
    return float(2 * V * math.log(TWO_PI) + top + np.log(np.sum(np.exp(log_terms - top))))


def exact_topological_susceptibility(beta: float, L: int, n_max: int | None = None) -> float:
    """Exact ``chi_t = <Q^2> / V`` of 2D compact U(1) (Wilson action) on a periodic ``L x L`` lattice.

    With a theta term, ``Z(theta) = (2pi)^(2V) sum_n c_n(theta)^V`` where
    ``c_n(theta) = (1/2pi) int_{-pi}^{pi} exp(beta cos P + i theta P / 2pi - i n P) dP`` are the character
    coefficients of one plaquette weight (``c_n(0) = I_n(beta)``). ``<Q> = 0`` by symmetry and

        <Q^2> = -Z''(0)/Z(0) = -sum_n c_n^V [V (V-1) (c_n'/c_n)^2 + V c_n''/c_n] / sum_n c_n^V,

    with ``c_n' = (1/2pi) int (P/2pi) sin(nP) e^{beta cos P} dP`` and
    ``c_n'' = -(1/2pi) int (P/2pi)^2 cos(nP) e^{beta cos P} dP`` (numerical quadrature; ``exp(beta (cos P - 1))``
    is used, the common scale cancels).
    """
    from scipy.integrate import quad

    if beta < 0 or L < 1:
        raise ValueError(f"need beta >= 0 and L >= 1, got beta={beta}, L={L}")
    V = L * L
    n_max = n_max if n_max is not None else int(20 + 4 * beta)
    ns = np.arange(-n_max, n_max + 1)
    c = ive(ns, beta)  # c_n(0) e^{-beta} = I_n(beta) e^{-beta}

    def first(p, n):
        return p / TWO_PI * math.sin(n * p) * math.exp(beta * (math.cos(p) - 1))

    def second(p, n):
        return -((p / TWO_PI) ** 2) * math.cos(n * p) * math.exp(beta * (math.cos(p) - 1))

    opts = {"limit": 400, "epsabs": 1e-13, "epsrel": 1e-10}
    c1 = [quad(first, -math.pi, math.pi, args=(float(n),), **opts)[0] for n in ns]
    c2 = [quad(second, -math.pi, math.pi, args=(float(n),), **opts)[0] for n in ns]
    c1, c2 = np.array(c1) / TWO_PI, np.array(c2) / TWO_PI
    keep = c > 0
    c, c1, c2 = c[keep], c1[keep], c2[keep]
    log_w = V * np.log(c)
    w = np.exp(log_w - log_w.max())
    q2 = -np.sum(w * (V * (V - 1) * (c1 / c) ** 2 + V * c2 / c)) / np.sum(w)
    return float(q2 / V)
