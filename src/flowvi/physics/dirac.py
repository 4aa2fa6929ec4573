"""The Wilson–Dirac operator of 2D U(1) gauge theory as a dense batched complex matrix.

With hopping parameter ``kappa`` and two-component spinors,

    D(x, y) = delta_xy - kappa sum_mu [ (1 - gamma_mu) U_mu(x) delta_{x+e_mu, y}
                                      + (1 + gamma_mu) U_mu(x - e_mu)^* delta_{x-e_mu, y} ],

with ``gamma_0 = sigma_1``, ``gamma_1 = sigma_2`` and ``gamma_5 = sigma_3`` (``gamma_5 D gamma_5 = D^dagger``,
so ``det D`` is real). Fermions are antiperiodic in direction 0 (time) by default: a hop across that
boundary picks up a factor -1. Rows and columns are ordered ``(site, spin)`` with ``site = x0 * L1 + x1``,
so the matrix is ``2V x 2V``. In the free field (U = 1) with momenta ``p_mu`` the operator is
``1 - 2 kappa sum_mu cos p_mu + 2 i kappa sum_mu gamma_mu sin p_mu``, whose eigenvalues are
``1 - 2 kappa sum cos p_mu +- 2 i kappa sqrt(sum sin^2 p_mu)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowvi.physics.u1 import check_links


def gamma_matrices(dtype=torch.complex128, device=None) -> tuple[Tensor, Tensor, Tensor]:
    """``(gamma_0, gamma_1, gamma_5)`` = Pauli ``(sigma_1, sigma_2, sigma_3)``."""
    g0 = torch.tensor([[0, 1], [1, 0]], dtype=dtype, device=device)
    g1 = torch.tensor([[0, -1j], [1j, 0]], dtype=dtype, device=device)
    g5 = torch.tensor([[1, 0], [0, -1]], dtype=dtype, device=device)
    return g0, g1, g5


def complex_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def hop_indices(L0: int, L1: int, device) -> Tensor:
    """Flat indices into the ``(2V)^2`` matrix of the four hops (``+e0, +e1, -e0, -e1``) of every
    site and spin pair, shape ``(4, V, 2, 2)``."""
    x0, x1 = torch.meshgrid(torch.arange(L0, device=device), torch.arange(L1, device=device), indexing="ij")
    site = (x0 * L1 + x1).reshape(-1)
    targets = [
        ((x0 + 1) % L0) * L1 + x1,
        x0 * L1 + (x1 + 1) % L1,
        ((x0 - 1) % L0) * L1 + x1,
        x0 * L1 + (x1 - 1) % L1,
    ]
    V = L0 * L1
    a = torch.arange(2, device=device)
    rows = 2 * site[:, None, None] + a[None, :, None]  # (V, 2, 1)
    out = []
    for t in targets:
        cols = 2 * t.reshape(-1)[:, None, None] + a[None, None, :]  # (V, 1, 2)
        out.append(rows * (2 * V) + cols)
    return torch.stack(out)


def spin_projectors(dtype=torch.complex128, device=None) -> Tensor:
    """``(1 - gamma_0, 1 - gamma_1, 1 + gamma_0, 1 + gamma_1)``, shape ``(4, 2, 2)``, in hop order."""
    g0, g1, _ = gamma_matrices(dtype, device)
    eye = torch.eye(2, dtype=dtype, device=device)
    return torch.stack([eye - g0, eye - g1, eye + g0, eye + g1])


def time_boundary(L0: int, L1: int, antiperiodic: bool = True, dtype=torch.float64, device=None) -> Tensor:
    """Sign ``(L0, L1)`` multiplying the hop ``x -> x + e0``: -1 on the last time slice when antiperiodic."""
    sign = torch.ones(L0, L1, dtype=dtype, device=device)
    if antiperiodic:
        sign[-1] = -1.0
    return sign


def wilson_dirac(
    links: Tensor,
    kappa: float,
    antiperiodic: bool = True,
    hop_index: Tensor | None = None,
    projectors: Tensor | None = None,
    boundary: Tensor | None = None,
) -> Tensor:
    """Dense Wilson–Dirac matrices ``(batch, 2V, 2V)`` (complex, precision of ``links``).

    ``hop_index`` (:func:`hop_indices`), ``projectors`` (:func:`spin_projectors`, real and imaginary parts
    stacked in a last dim of size 2) and ``boundary`` (:func:`time_boundary`) may be passed precomputed (the
    Schwinger target keeps them as buffers), so a call builds no constant tensors and copies nothing from the
    host.
    """
    links = check_links(links)
    B, _, L0, L1 = links.shape
    V = L0 * L1
    cdtype = complex_dtype(links.dtype)
    if projectors is None:
        projectors = torch.view_as_real(spin_projectors(cdtype, links.device))
    if boundary is None:
        boundary = time_boundary(L0, L1, antiperiodic, links.dtype, links.device)
    if hop_index is None:
        hop_index = hop_indices(L0, L1, links.device)
    spin = torch.view_as_complex(projectors.to(links.dtype).contiguous())
    u = torch.polar(torch.ones_like(links), links)  # (B, 2, L0, L1)
    fwd0 = u[:, 0] * boundary.to(links.dtype)  # the boundary sign multiplies hops leaving the last time slice
    fwd1 = u[:, 1]
    bwd0 = torch.roll(fwd0, 1, dims=-2).conj()  # U_0(x - e0)^* with the same boundary sign
    bwd1 = torch.roll(fwd1, 1, dims=-1).conj()
    hops = torch.stack([fwd0, fwd1, bwd0, bwd1], dim=1).reshape(B, 4, V)
    values = (-kappa) * hops[:, :, :, None, None] * spin[None, :, None]  # (B, 4, V, 2, 2)
    index = hop_index.reshape(1, -1).expand(B, -1)
    # real and imaginary parts are scattered separately (real scatter_add is supported on every device)
    zeros = links.new_zeros(B, (2 * V) ** 2)
    re = zeros.scatter_add(1, index, values.real.reshape(B, -1))
    im = zeros.scatter_add(1, index, values.imag.reshape(B, -1))
    D = torch.complex(re, im).reshape(B, 2 * V, 2 * V)
    return D + torch.eye(2 * V, dtype=cdtype, device=links.device)


def log_abs_det_dirac(links: Tensor, kappa: float, antiperiodic: bool = True, **stencil) -> Tensor:
    """``log|det D|`` per configuration by batched LU (``torch.linalg.slogdet``), real, differentiable.
    ``stencil``: the precomputed ``hop_index``, ``projectors``, ``boundary`` of :func:`wilson_dirac`."""
    return torch.linalg.slogdet(wilson_dirac(links, kappa, antiperiodic, **stencil)).logabsdet


def free_dirac_eigenvalues(L0: int, L1: int, kappa: float, antiperiodic: bool = True) -> Tensor:
    """Analytic eigenvalues (complex128, ``2V`` of them) of the free Wilson–Dirac operator."""
    n0 = torch.arange(L0, dtype=torch.float64) + (0.5 if antiperiodic else 0.0)
    p0 = 2 * torch.pi * n0 / L0
    p1 = 2 * torch.pi * torch.arange(L1, dtype=torch.float64) / L1
    p0, p1 = torch.meshgrid(p0, p1, indexing="ij")
    re = 1 - 2 * kappa * (torch.cos(p0) + torch.cos(p1))
    im = 2 * kappa * torch.sqrt(torch.sin(p0) ** 2 + torch.sin(p1) ** 2)
    return torch.cat([torch.complex(re, im).reshape(-1), torch.complex(re, -im).reshape(-1)])
