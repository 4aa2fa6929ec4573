"""Conjugate Bayesian linear regression with unknown noise variance, with its exact evidence.

Model (normal-inverse-gamma prior), for n observations and p predictors:

    sigma^2 ~ InvGamma(a0, b0),   beta | sigma^2 ~ N(0, sigma^2 / lam * I_p),
    y | beta, sigma^2 ~ N(X beta, sigma^2 I_n).

The target is over the unconstrained ``theta = (beta, log sigma^2)``, d = p + 1, including the
log-Jacobian ``log sigma^2`` of the exp transform. Its exact log evidence is the log density of the
marginal ``y ~ t_{2 a0}(0, (b0 / a0) (I_n + X X^T / lam))`` (multivariate Student-t).
Data are simulated from ``data_seed``.
"""

from __future__ import annotations

import math

import torch

from flowvi.targets.base import Target


class ConjugateLinearRegression(Target):
    """Conjugate Bayesian linear regression (module docstring) over ``theta = (beta, log sigma^2)``,
    ``d = p + 1`` (or give ``dim``), with ``n`` simulated observations; ``log_evidence`` is the exact log
    marginal likelihood. Input (batch, p + 1), output (batch,)."""

    def __init__(
        self,
        p: int = 9,
        n: int = 100,
        a0: float = 2.0,
        b0: float = 2.0,
        lam: float = 1.0,
        noise: float = 1.0,
        data_seed: int = 0,
        dim: int | None = None,
    ):
        super().__init__()
        if dim is not None:
            p = int(dim) - 1
        if p < 1 or n < 1:
            raise ValueError(f"conjugate regression needs p >= 1 and n >= 1; got p={p}, n={n}")
        self.p, self.n, self.a0, self.b0, self.lam = int(p), int(n), float(a0), float(b0), float(lam)
        self.event_shape = (self.p + 1,)
        g = torch.Generator().manual_seed(data_seed)
        X = torch.randn(n, p, generator=g, dtype=torch.float64)
        beta = torch.randn(p, generator=g, dtype=torch.float64)
        y = X @ beta + noise * torch.randn(n, generator=g, dtype=torch.float64)
        self.register_buffer("X", X)
        self.register_buffer("y", y)
        self.log_evidence = self._exact_log_evidence()

    def _exact_log_evidence(self) -> float:
        n, a0, b0 = self.n, self.a0, self.b0
        nu = 2 * a0
        shape = (b0 / a0) * (torch.eye(n, dtype=torch.float64) + self.X @ self.X.T / self.lam)
        chol = torch.linalg.cholesky(shape)
        r = torch.linalg.solve_triangular(chol, self.y[:, None], upper=False).squeeze(-1)
        maha = float(r @ r)
        logdet = 2 * float(torch.log(torch.diagonal(chol)).sum())
        return (
            math.lgamma((nu + n) / 2)
            - math.lgamma(nu / 2)
            - 0.5 * n * math.log(nu * math.pi)
            - 0.5 * logdet
            - 0.5 * (nu + n) * math.log1p(maha / nu)
        )

    def log_prob(self, theta):
        X, y = self.X.to(theta.dtype), self.y.to(theta.dtype)
        beta, log_s2 = theta[:, :-1], theta[:, -1]
        n, p, a0, b0, lam = self.n, self.p, self.a0, self.b0, self.lam
        resid = y - beta @ X.T
        log2pi = math.log(2 * math.pi)
        loglik = -0.5 * (resid * resid).sum(-1) * torch.exp(-log_s2) - 0.5 * n * (log_s2 + log2pi)
        logprior_beta = -0.5 * lam * (beta * beta).sum(-1) * torch.exp(-log_s2) - 0.5 * p * (
            log_s2 - math.log(lam) + log2pi
        )
        # InvGamma on s2 plus the log-Jacobian log s2 of s2 = exp(log_s2)
        logprior_s2 = a0 * math.log(b0) - math.lgamma(a0) - (a0 + 1) * log_s2 - b0 * torch.exp(-log_s2) + log_s2
        return loglik + logprior_beta + logprior_s2
