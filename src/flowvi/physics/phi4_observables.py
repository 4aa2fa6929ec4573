"""phi^4 observables: per-configuration measurements and (reweighted) ensemble estimates with errors.

Per configuration phi of shape (L, L), V = L^2, M = sum_x phi_x:

* magnetization M; the estimates report <|M|>/V and <M^2>/V;
* two-point function G(y) = (1/V) sum_x phi_x phi_{x+y} (translation averaged, via FFT);
* |phi~(p)|^2 / V at the smallest non-zero momentum p = (2 pi / L, 0) (averaged over both axes),
  for the second-moment correlation length.

Ensemble quantities (Albergo et al. 2019, PRD 100, 034515; Nicoli et al. 2021, PRL 126, 032001):

* susceptibility chi = V (<m^2> - <|m|>^2) with m = M/V, i.e. (<M^2> - <|M|>^2)/V: the connected
  susceptibility of the broken phase (on a finite lattice <m> = 0 by Z2 symmetry, so |m| is the order
  parameter). ``chi_2 = <M^2>/V = sum_y G(y)`` is reported as well.
* second-moment correlation length xi^2 = (G~(0) / G~(p_1) - 1) / (4 sin^2(pi / L)) with
  G~(p) = <|phi~(p)|^2>/V, so G~(0) = chi_2 (Albergo et al. 2019, eq. 20). This is the symmetric-phase
  definition (<phi> = 0); for a free field (lam = 0) it equals kappa / (1 - 4 kappa) exactly. In the
  broken phase G~(0) is dominated by the order parameter and xi_2 is not a physical length.

Every ensemble quantity is a smooth function of averages <O>_w = sum_i w_i O_i / sum_i w_i, so one
function (:func:`phi4_estimates`) serves plain Markov chains (w = 1) and self-normalised importance
sampling from a flow (w = p/q). Errors come from a binned jackknife over the configurations (bins longer
than the autocorrelation time for chains) or from the bootstrap.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def magnetization(phi):
    """M = sum_x phi_x, shape (batch,)."""
    return phi.sum(dim=(-2, -1))


def two_point(phi):
    """G(y) = (1/V) sum_x phi_x phi_{x+y} per configuration (batch, L, L), via FFT."""
    f = torch.fft.fft2(phi)
    return torch.fft.ifft2(f * f.conj()).real / (phi.shape[-1] * phi.shape[-2])


def lowest_momentum_power(phi):
    """|phi~(p_1)|^2 / V at p_1 = 2 pi / L along either axis (the two averaged), shape (batch,)."""
    f = torch.fft.fft2(phi)
    v = phi.shape[-1] * phi.shape[-2]
    return 0.5 * (f[..., 1, 0].abs() ** 2 + f[..., 0, 1].abs() ** 2) / v


def measurements(phi) -> dict:
    """Per-configuration measurements (numpy float64) that :func:`phi4_estimates` combines."""
    if phi.dim() != 3 or phi.shape[-1] != phi.shape[-2]:
        raise ValueError(f"phi^4 observables need fields of shape (batch, L, L), got {tuple(phi.shape)}")
    phi = phi.detach().to("cpu", torch.float64)
    v = phi.shape[-1] * phi.shape[-2]
    m = magnetization(phi)

    def np_(t):
        return t.numpy()

    return {
        "abs_m": np_(m.abs() / v),
        "m2": np_(m * m / v**2),
        "p1": np_(lowest_momentum_power(phi)),
        "G": np_(two_point(phi)),
        "V": v,
    }


def _estimates_from_sums(sums: np.ndarray, v: int, L: int) -> np.ndarray:
    """[<|m|>, chi_2, chi, xi_2, G(y)...] from the weighted sums [sum w, sum w|m|, sum w m^2, sum w P(p_1),
    sum w G(y)...] of a set of configurations."""
    mean = sums[1:] / sums[0]
    abs_m, m2, p1 = mean[:3]
    chi = v * (m2 - abs_m**2)
    xi2 = (v * m2 / p1 - 1.0) / (4.0 * math.sin(math.pi / L) ** 2)
    xi = math.sqrt(xi2) if xi2 > 0 else float("nan")
    return np.concatenate([[abs_m, v * m2, chi, xi], mean[3:]])


ESTIMATE_NAMES = ("abs_magnetization", "chi_2", "susceptibility", "xi_2nd_moment")


def phi4_estimates(meas: dict, log_w=None, method: str = "jackknife", bins: int = 50, seed: int = 0) -> dict:
    """Estimates and standard errors of <|M|>/V, chi_2 = <M^2>/V, chi = (<M^2> - <|M|>^2)/V, xi_2 and
    G(y) from :func:`measurements`, reweighted by ``exp(log_w)`` if given (self-normalised IS).

    ``method``: ``jackknife`` (``bins`` contiguous bins: for a Markov chain each bin must be much longer
    than the integrated autocorrelation time) or ``bootstrap`` (200 resamples of single configurations:
    for independent draws only). Every quantity is a function of weighted sums, so leave-one-bin-out and
    resampled estimates come from bin sums and resampling counts. Returns {name: {"mean", "se"}} and
    "two_point": {"mean": (L, L) list, "se": (L, L) list}.
    """
    if method not in ("jackknife", "bootstrap"):
        raise ValueError(f"unknown error method {method!r}; use 'jackknife' or 'bootstrap'")
    n = len(meas["abs_m"])
    if n < 2:
        raise ValueError(f"error estimates need at least 2 configurations, got {n}")
    if log_w is None:
        w = np.ones(n)
    else:
        lw = np.asarray(log_w.detach().cpu().double() if isinstance(log_w, torch.Tensor) else log_w, float)
        if lw.shape != (n,):
            raise ValueError(f"log_w must have shape ({n},), got {lw.shape}")
        if not np.all(np.isfinite(lw)):
            raise ValueError("log_w contains NaN or inf")
        w = np.exp(lw - lw.max())
    v = meas["V"]
    L = int(round(math.sqrt(v)))
    wx = w[:, None] * np.column_stack([np.ones(n), meas["abs_m"], meas["m2"], meas["p1"], meas["G"].reshape(n, -1)])
    total = wx.sum(0)
    est = _estimates_from_sums(total, v, L)
    if method == "jackknife":
        k = min(bins, n)
        edges = np.linspace(0, n, k + 1).astype(int)
        block_sums = np.add.reduceat(wx, edges[:-1], axis=0)
        thetas = np.array([_estimates_from_sums(total - b, v, L) for b in block_sums])
        se = np.sqrt((k - 1) / k * np.sum((thetas - thetas.mean(0)) ** 2, axis=0))
    else:
        rng = np.random.default_rng(seed)
        counts = np.array([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(200)], dtype=float)
        thetas = np.array([_estimates_from_sums(c, v, L) for c in counts @ wx])
        se = thetas.std(0, ddof=1)
    out = {name: {"mean": float(est[i]), "se": float(se[i])} for i, name in enumerate(ESTIMATE_NAMES)}
    out["two_point"] = {"mean": est[4:].reshape(L, L).tolist(), "se": se[4:].reshape(L, L).tolist()}
    return out


__all__ = [
    "ESTIMATE_NAMES",
    "lowest_momentum_power",
    "magnetization",
    "measurements",
    "phi4_estimates",
    "two_point",
]
