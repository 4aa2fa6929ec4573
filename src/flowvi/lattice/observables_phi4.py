"""phi^4 observables per configuration: magnetization M = sum_x phi_x, two-point function G(x)."""

from __future__ import annotations

import torch


def magnetization(phi):
    """M = sum_x phi_x, shape (batch,)."""
    return phi.sum(dim=(-2, -1))


def two_point(phi):
    """G(y) = (1/V) sum_x phi_x phi_{x+y} per configuration (batch, L, L), via FFT."""
    f = torch.fft.fft2(phi)
    return torch.fft.ifft2(f * f.conj()).real / (phi.shape[-1] * phi.shape[-2])
