"""Error analysis for Monte Carlo estimates: jackknife, bootstrap, integrated autocorrelation time."""

from __future__ import annotations

import numpy as np


def jackknife(x, fn=np.mean, bins: int = 20) -> tuple[float, float]:
    """Binned jackknife estimate and standard error of ``fn`` over the first axis of ``x``.

    se^2 = (n - 1)/n * sum_i (theta_i - mean theta)^2 over leave-one-bin-out estimates theta_i.
    """
    x = np.asarray(x)
    n = min(bins, len(x))
    if n < 2:
        raise ValueError(f"jackknife needs at least 2 samples, got {len(x)}")
    blocks = np.array_split(x, n)
    est = fn(x)
    thetas = np.array([fn(np.concatenate(blocks[:i] + blocks[i + 1 :])) for i in range(n)])
    se = np.sqrt((n - 1) / n * np.sum((thetas - thetas.mean()) ** 2))
    return float(est), float(se)


def bootstrap(x, fn=np.mean, n_boot: int = 200, seed: int = 0) -> tuple[float, float]:
    """Bootstrap estimate and standard error of ``fn`` over the first axis of ``x``."""
    x = np.asarray(x)
    rng = np.random.default_rng(seed)
    thetas = np.array([fn(x[rng.integers(0, len(x), len(x))]) for _ in range(n_boot)])
    return float(fn(x)), float(thetas.std(ddof=1))


def tau_int(x, c: float = 5.0) -> float:
    """Integrated autocorrelation time tau = 1/2 + sum_t rho(t), Sokal's automatic window (W >= c tau)."""
    x = np.asarray(x, dtype=float)
    x = x - x.mean()
    n = len(x)
    var = x.var()
    if var == 0:
        return 0.5
    f = np.fft.rfft(x, 2 * n)
    acf = np.fft.irfft(f * np.conj(f))[:n] / (var * n)
    tau = 0.5
    for w in range(1, n):
        tau += acf[w]
        if w >= c * tau:
            break
    return float(tau)
