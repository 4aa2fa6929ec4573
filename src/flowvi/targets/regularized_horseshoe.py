"""Regularized horseshoe logistic regression (Piironen & Vehtari 2017), non-centred, on unconstrained parameters.

Piironen & Vehtari (2017), "Sparsity information and regularization in the horseshoe and other shrinkage
priors", Electronic Journal of Statistics 11, 5018-5051 (Sec. 2.3; brms's ``horseshoe()``, rstanarm's ``hs()``).
For n observations ``y_i in {0, 1}`` with p standardised predictors ``x_i``:

    lambda_j ~ half-t_nu(0, 1)   (nu = local_df; 1 = HalfCauchy(1))       z_j ~ N(0, 1)
    tau ~ HalfCauchy(tau0)       c^2 ~ InvGamma(nu_s / 2, nu_s s^2 / 2)   (nu_s = slab_df, s = slab_scale)
    beta0 ~ Student-t(intercept_df, 0, intercept_scale)
    lambda_tilde_j^2 = c^2 lambda_j^2 / (c^2 + tau^2 lambda_j^2),   beta_j = z_j * tau * lambda_tilde_j
    y_i ~ Bernoulli(sigmoid(beta0 + x_i . beta))

The slab bounds every coefficient's prior scale: ``tau * lambda_tilde_j -> c`` as ``lambda_j -> inf``, so a
coefficient that escapes the global shrinkage sees (conditionally) a N(0, c^2) prior, and with c^2 integrated
out a Student-t_{nu_s}(0, s) slab. As ``c -> inf`` the plain horseshoe (:mod:`flowvi.targets.horseshoe`) is
recovered. With separable data (p > n) the plain horseshoe lets coefficients and intercept run off to infinity
along the separating directions; the slab gives that regime finite extent.

Global scale from the expected number of relevant coefficients ``p0`` (P&V 2017, Sec. 3: the prior guess
for tau from the effective number of nonzero coefficients, with a pseudo-variance for non-Gaussian likelihoods):

    tau0 = p0 / (p - p0) * pseudo_sd / sqrt(n),

with ``pseudo_sd`` the observation model's (pseudo-)standard deviation. For the Bernoulli-logit model P&V use
the pseudo-variance ``1 / (mu (1 - mu))``; flowvi's default ``pseudo_sd = 2`` is its value at mu = 1/2, the
smallest it can be (the plug-in ``1 / sqrt(ybar (1 - ybar))`` is larger when the classes are unbalanced, 2.88
for NCI-60's 9 of 64; pass it as ``pseudo_sd`` to use it). ``tau_scale=`` sets ``tau0`` directly (``p0`` and ``pseudo_sd`` are then ignored).

Defaults: ``p0 = 3`` (a handful of genes expected to matter), ``slab_scale = 2.5`` and ``slab_df = 4`` (rstanarm's
``hs()``: on standardised predictors a log-odds change of 2.5 per sd is already large; brms uses 2), intercept
Student-t(3, 0, 2.5) (brms's default intercept prior; ``intercept_df=1, intercept_scale=10`` gives the plain
horseshoe target's Cauchy(0, 10)), ``local_df = 1`` (the horseshoe).

The target is over ``theta = (z_1..z_p, log lambda_1..log lambda_p, log tau, beta0, log c^2)``, dimension
``d = 2p + 3``, in that order: the first 2p + 2 coordinates mean what they mean in the plain horseshoe target,
``log c^2`` is appended. With ``u = log lambda``, ``s = log tau``, ``v = log c^2`` and ``a = u + s``:

    log(tau lambda_tilde) = a - softplus(2a - v) / 2            (-> v/2 = log c as a -> inf; -> a as v -> inf)
    log p(theta) = sum_j [-z_j^2/2 - log(2 pi)/2]
                 + sum_j [log half-t_nu(e^u_j) + u_j]                      (log-Jacobian u_j)
                 + [log(2/(pi tau0)) - softplus(2(s - log tau0)) + s]    (log-Jacobian s)
                 + log Student-t(beta0)
                 + [A log B - lgamma(A) - A v - B e^-v]                    (InvGamma(A, B) of e^v, Jacobian e^v;
                                                                            A = nu_s/2, B = nu_s s^2/2)
                 + sum_i [y_i eta_i - softplus(eta_i)],   eta = beta0 + X beta.

The log evidence is unknown.

Targets: ``regularized_horseshoe_nci60`` (the NCI-60 data of ``horseshoe_nci60``: p genes of largest variance,
standardised, one cancer type against the rest) and ``regularized_horseshoe_synthetic`` (the simulated data of
``horseshoe_synthetic``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from flowvi.targets.base import Target
from flowvi.targets.horseshoe import logistic_data, nci60_design, scale_mixture_hierarchy, synthetic_design


def _student_t_const(df: float, scale: float) -> float:
    """log of the Student-t(df, 0, scale) normalising constant."""
    return math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi) - math.log(scale)


class RegularizedHorseshoeLogisticRegression(Target):
    """Non-centred regularized horseshoe logistic regression for data ``X`` (n, p), binary ``y`` (n,); d = 2p + 3.

    Model, parameterization and defaults: see the module docstring (Piironen & Vehtari 2017, EJS 11:5018)."""

    def __init__(
        self,
        X,
        y,
        p0: float = 3.0,
        slab_scale: float = 2.5,
        slab_df: float = 4.0,
        intercept_scale: float = 2.5,
        intercept_df: float = 3.0,
        local_df: float = 1.0,
        pseudo_sd: float = 2.0,
        tau_scale: float | None = None,
        name: str = "regularized horseshoe",
    ):
        super().__init__()
        X, y = logistic_data(X, y, name)
        self.n, self.p = X.shape
        positive = {
            "slab_scale": slab_scale,
            "slab_df": slab_df,
            "intercept_scale": intercept_scale,
            "intercept_df": intercept_df,
            "local_df": local_df,
            "pseudo_sd": pseudo_sd,
        }
        if tau_scale is not None:
            positive["tau_scale"] = tau_scale
        bad = {k: v for k, v in positive.items() if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0)}
        if bad:
            raise ValueError(f"{name}: {', '.join(f'{k}={v!r}' for k, v in bad.items())} must be positive and finite")
        if tau_scale is None:
            if not (isinstance(p0, (int, float)) and 0 < p0 < self.p):
                raise ValueError(
                    f"{name}: p0 (expected number of relevant coefficients) must be in (0, p={self.p}); got {p0!r}"
                )
            tau_scale = p0 / (self.p - p0) * pseudo_sd / math.sqrt(self.n)
        self.p0 = float(p0)
        self.tau_scale = float(tau_scale)
        self.slab_scale, self.slab_df = float(slab_scale), float(slab_df)
        self.intercept_scale, self.intercept_df = float(intercept_scale), float(intercept_df)
        self.local_df, self.pseudo_sd = float(local_df), float(pseudo_sd)
        self.event_shape = (2 * self.p + 3,)
        self.register_buffer("X", X)
        self.register_buffer("y", y)

    def split(self, theta):
        """``(z, log_lambda, log_tau, beta0, log_c2)`` views of ``theta`` (batch, 2p + 3)."""
        p = self.p
        if theta.ndim != 2 or theta.shape[1] != 2 * p + 3:
            raise ValueError(f"theta must have shape (batch, {2 * p + 3}); got {tuple(theta.shape)}")
        return theta[:, :p], theta[:, p : 2 * p], theta[:, 2 * p], theta[:, 2 * p + 1], theta[:, 2 * p + 2]

    def log_scales(self, theta):
        """``log(tau * lambda_tilde_j) = a - softplus(2a - log c^2) / 2`` with ``a = log tau + log lambda_j``,
        shape (batch, p): the prior sd of beta_j given the scales, at most c."""
        _, log_lam, log_tau, _, log_c2 = self.split(theta)
        a = log_lam + log_tau[:, None]
        return a - 0.5 * F.softplus(2 * a - log_c2[:, None])

    def hierarchy(self):
        """``(children, parents)`` index pairs for :class:`flowvi.transforms.HierarchicalAffine`: ``z_j`` given
        ``(log lambda_j, log tau, log c^2)``, then ``log lambda_j`` given ``(z_j, log tau, log c^2)``."""
        return scale_mixture_hierarchy(self.p, [2 * self.p, 2 * self.p + 2])

    def coefficients(self, theta):
        """The regression coefficients ``beta_j = z_j * tau * lambda_tilde_j``, shape (batch, p)."""
        return theta[:, : self.p] * torch.exp(self.log_scales(theta))

    def prior_log_prob(self, theta):
        """Log prior density of ``theta`` including the log-Jacobians of the exp transforms."""
        z, log_lam, log_tau, beta0, log_c2 = self.split(theta)
        nu, t0 = self.local_df, self.tau_scale
        log_p_z = -0.5 * (z * z).sum(-1) - 0.5 * self.p * math.log(2 * math.pi)
        # half-t_nu(lambda) = 2 t_nu(lambda); log(1 + lambda^2 / nu) = softplus(2 log lambda - log nu)
        log_p_lam = (
            math.log(2) + _student_t_const(nu, 1.0) - 0.5 * (nu + 1) * F.softplus(2 * log_lam - math.log(nu)) + log_lam
        ).sum(-1)
        log_p_tau = math.log(2 / (math.pi * t0)) - F.softplus(2 * (log_tau - math.log(t0))) + log_tau
        df0, s0 = self.intercept_df, self.intercept_scale
        log_p_b0 = _student_t_const(df0, s0) - 0.5 * (df0 + 1) * torch.log1p((beta0 / s0) ** 2 / df0)
        a, b = self.slab_df / 2, self.slab_df * self.slab_scale**2 / 2
        log_p_c2 = a * math.log(b) - math.lgamma(a) - a * log_c2 - b * torch.exp(-log_c2)
        return log_p_z + log_p_lam + log_p_tau + log_p_b0 + log_p_c2

    def prior_sample(self, n: int):
        """``n`` exact draws of ``theta`` from the prior (SMC's starting distribution)."""
        X = self.X
        kw = {"dtype": X.dtype, "device": X.device}
        z = torch.randn(n, self.p, **kw)
        lam = torch.distributions.StudentT(torch.tensor(self.local_df, **kw)).sample((n, self.p)).abs()
        tau = self.tau_scale * torch.tan(0.5 * math.pi * torch.rand(n, 1, **kw))
        beta0 = torch.distributions.StudentT(
            torch.tensor(self.intercept_df, **kw), torch.tensor(0.0, **kw), torch.tensor(self.intercept_scale, **kw)
        ).sample((n, 1))
        # c^2 ~ InvGamma(A, B)  <=>  1 / c^2 ~ Gamma(A, rate B)
        a, b = self.slab_df / 2, self.slab_df * self.slab_scale**2 / 2
        inv_c2 = torch.distributions.Gamma(torch.tensor(a, **kw), torch.tensor(b, **kw)).sample((n, 1))
        return torch.cat([z, torch.log(lam), torch.log(tau), beta0, -torch.log(inv_c2)], dim=1)

    def log_likelihood(self, theta):
        """Bernoulli-logit log likelihood ``sum_i y_i eta_i - softplus(eta_i)``, ``eta = beta0 + X beta``."""
        beta0 = self.split(theta)[3]
        X, y = self.X.to(theta.dtype), self.y.to(theta.dtype)
        eta = self.coefficients(theta) @ X.T + beta0[:, None]
        return (y * eta - F.softplus(eta)).sum(-1)

    def log_prob(self, theta):
        return self.prior_log_prob(theta) + self.log_likelihood(theta)


class RegularizedHorseshoeNCI60(RegularizedHorseshoeLogisticRegression):
    """Regularized horseshoe logistic regression on NCI-60 (the data of ``horseshoe_nci60``), d = 2p + 3.

    ``p`` (1..6830, default 2000 -> d = 4003) keeps the p genes of largest variance, standardised; ``y = 1`` for
    the cell lines of cancer type ``positive`` (default RENAL: 9 of 64). Prior options as
    :class:`RegularizedHorseshoeLogisticRegression`; with the defaults (p0 = 3, pseudo_sd = 2, n = 64)
    tau0 = 3/(p - 3) * 2/8, e.g. 0.0038 at p = 200."""

    def __init__(
        self,
        p: int = 2000,
        positive: str = "RENAL",
        p0: float = 3.0,
        slab_scale: float = 2.5,
        slab_df: float = 4.0,
        intercept_scale: float = 2.5,
        intercept_df: float = 3.0,
        local_df: float = 1.0,
        pseudo_sd: float = 2.0,
        tau_scale: float | None = None,
    ):
        name = "regularized_horseshoe_nci60"
        X, y, keep = nci60_design(p, positive, name)
        super().__init__(
            X, y, p0, slab_scale, slab_df, intercept_scale, intercept_df, local_df, pseudo_sd, tau_scale, name
        )
        self.genes = keep


class RegularizedHorseshoeSynthetic(RegularizedHorseshoeLogisticRegression):
    """Regularized horseshoe logistic regression on the simulated data of ``horseshoe_synthetic``, d = 2p + 3
    (``p``, ``n``, ``n_nonzero``, ``signal``, ``data_seed`` as there; prior options as
    :class:`RegularizedHorseshoeLogisticRegression`)."""

    def __init__(
        self,
        p: int = 100,
        n: int = 100,
        n_nonzero: int | None = None,
        signal: float = 2.0,
        data_seed: int = 0,
        p0: float = 3.0,
        slab_scale: float = 2.5,
        slab_df: float = 4.0,
        intercept_scale: float = 2.5,
        intercept_df: float = 3.0,
        local_df: float = 1.0,
        pseudo_sd: float = 2.0,
        tau_scale: float | None = None,
    ):
        name = "regularized_horseshoe_synthetic"
        X, y, beta = synthetic_design(p, n, n_nonzero, signal, data_seed, name)
        super().__init__(
            X, y, p0, slab_scale, slab_df, intercept_scale, intercept_df, local_df, pseudo_sd, tau_scale, name
        )
        self.true_beta = beta
