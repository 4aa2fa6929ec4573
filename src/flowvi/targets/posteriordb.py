"""Posteriors of posteriordb (Magnusson et al. 2024, arXiv 2407.04967), ported by hand from their Stan models.

Each target is the posterior density in unconstrained coordinates, with the log-Jacobian of the map to the
constrained parameters (Stan's: ``exp`` for ``<lower=0>``, logistic for ``<lower=0, upper=1>``, ``x_1, x_1 +
exp(x_2)`` for ``ordered[2]``); additive constants differ from Stan's. ``target.param_names`` and
``target.constrain(x) -> (batch, k)`` give the parameters as posteriordb's reference draws report them (for
example ``theta``, not ``theta_trans``, for the non-centered eight schools). The small data sets are shipped in
``flowvi/data/posteriordb/`` (BSD-3-Clause, stan-dev/posteriordb; see the README there).
"""

from __future__ import annotations

import json
import math
from functools import cache
from importlib import resources

import torch
import torch.nn.functional as F
from torch import Tensor

from flowvi.targets.base import Target

LOG_2PI = math.log(2 * math.pi)


@cache
def load_data(name: str) -> dict:
    """The data set ``name`` shipped in ``flowvi/data/posteriordb/NAME.json``."""
    return json.loads(resources.files("flowvi.data").joinpath("posteriordb", f"{name}.json").read_text())


def normal_lpdf(x: Tensor, loc, scale) -> Tensor:
    """``log N(x | loc, scale^2)``, elementwise."""
    z = (x - loc) / scale
    return -0.5 * z * z - torch.log(torch.as_tensor(scale, dtype=x.dtype)) - 0.5 * LOG_2PI


def half_cauchy_lpdf(x: Tensor, scale: float) -> Tensor:
    """``log 2 / (pi s (1 + (x/s)^2))`` for x > 0."""
    return math.log(2 / (math.pi * scale)) - torch.log1p((x / scale) ** 2)


def positive(u: Tensor) -> tuple[Tensor, Tensor]:
    """``x = exp(u)`` and ``log |dx/du| = u``."""
    return torch.exp(u), u


def unit_interval(u: Tensor) -> tuple[Tensor, Tensor]:
    """``x = sigmoid(u)`` and ``log |dx/du| = log sigmoid(u) + log sigmoid(-u)``."""
    return torch.sigmoid(u), F.logsigmoid(u) + F.logsigmoid(-u)


class PosteriorTarget(Target):
    """A posterior over unconstrained ``(batch, d)`` coordinates that reports constrained parameters.

    Subclasses set ``event_shape`` and ``param_names`` and define ``log_prob`` and ``constrain``.
    """

    param_names: list[str] = []

    def constrain(self, x: Tensor) -> Tensor:  # pragma: no cover - interface
        raise TypeError(f"{type(self).__name__} must define constrain")

    def _buffer(self, name: str, values) -> Tensor:
        self.register_buffer(name, torch.as_tensor(values, dtype=torch.get_default_dtype()))
        return getattr(self, name)


def indexed(name: str, n: int) -> list[str]:
    return [f"{name}[{i}]" for i in range(1, n + 1)]


class ArK(PosteriorTarget):
    """arK-arK: AR(K) regression ``y_t ~ N(alpha + sum_k beta_k y_{t-k}, sigma)``, t > K; ``alpha, beta ~ N(0,
    10)``, ``sigma ~ half-Cauchy(2.5)``. Coordinates ``(alpha, beta_1..K, log sigma)``."""

    def __init__(self):
        super().__init__()
        data = load_data("arK")
        k, y = data["K"], torch.tensor(data["y"], dtype=torch.get_default_dtype())
        self.k, self.event_shape = k, (k + 2,)
        self._buffer("y", y[k:])
        self._buffer("lags", torch.stack([y[k - j - 1 : len(y) - j - 1] for j in range(k)], dim=1))  # (T-K, K)
        self.param_names = ["alpha", *indexed("beta", k), "sigma"]

    def log_prob(self, x):
        alpha, beta, (sigma, log_jac) = x[:, :1], x[:, 1:-1], positive(x[:, -1])
        prior = normal_lpdf(x[:, :-1], 0.0, 10.0).sum(-1) + half_cauchy_lpdf(sigma, 2.5) + log_jac
        mu = alpha + beta @ self.lags.T
        return prior + normal_lpdf(self.y, mu, sigma[:, None]).sum(-1)

    def constrain(self, x):
        return torch.cat([x[:, :-1], torch.exp(x[:, -1:])], dim=1)


class Arma11(PosteriorTarget):
    """arma-arma11: ARMA(1, 1), ``err_t = y_t - mu - phi y_{t-1} - theta err_{t-1}`` (err_0 = 0, y_0 = mu),
    ``err ~ N(0, sigma)``; ``mu ~ N(0, 10)``, ``phi, theta ~ N(0, 2)``, ``sigma ~ half-Cauchy(2.5)``.
    Coordinates ``(mu, phi, theta, log sigma)``."""

    param_names = ["mu", "phi", "theta", "sigma"]

    def __init__(self):
        super().__init__()
        self.event_shape = (4,)
        self._buffer("y", load_data("arma")["y"])

    def log_prob(self, x):
        lp = self._log_prob(x.double())  # |theta| > 1 makes err grow like theta^T: float64, then -inf
        return torch.where(torch.isfinite(lp), lp, torch.full_like(lp, -math.inf)).to(x.dtype)

    def _log_prob(self, x):
        mu, phi, theta = x[:, 0], x[:, 1], x[:, 2]
        sigma, log_jac = positive(x[:, 3])
        prior = normal_lpdf(mu, 0.0, 10.0) + normal_lpdf(x[:, 1:3], 0.0, 2.0).sum(-1)
        prior = prior + half_cauchy_lpdf(sigma, 2.5) + log_jac
        y = self.y.double()
        err = y[0] - mu - phi * mu
        sq = err * err
        for t in range(1, len(y)):
            err = y[t] - mu - phi * y[t - 1] - theta * err
            sq = sq + err * err
        n = len(self.y)
        return prior - 0.5 * sq / sigma**2 - n * torch.log(sigma) - 0.5 * n * LOG_2PI

    def constrain(self, x):
        return torch.cat([x[:, :3], torch.exp(x[:, 3:])], dim=1)


class Garch11(PosteriorTarget):
    """garch-garch11: ``y_t ~ N(mu, sigma_t)``, ``sigma_t^2 = alpha0 + alpha1 (y_{t-1} - mu)^2 + beta1
    sigma_{t-1}^2``, sigma_1 given; flat priors on ``mu``, ``alpha0 > 0``, ``alpha1 in (0, 1)``, ``beta1 in (0,
    1 - alpha1)``. Coordinates ``(mu, log alpha0, logit alpha1, logit(beta1 / (1 - alpha1)))``."""

    param_names = ["mu", "alpha0", "alpha1", "beta1"]

    def __init__(self):
        super().__init__()
        data = load_data("garch")
        self.event_shape, self.sigma1 = (4,), float(data["sigma1"])
        self._buffer("y", data["y"])

    def _params(self, x):
        alpha0, j0 = positive(x[:, 1])
        alpha1, j1 = unit_interval(x[:, 2])
        b, j2 = unit_interval(x[:, 3])
        return x[:, 0], alpha0, alpha1, (1 - alpha1) * b, j0 + j1 + j2 + torch.log1p(-alpha1)

    def log_prob(self, x):
        mu, alpha0, alpha1, beta1, log_jac = self._params(x)
        var = torch.full_like(mu, self.sigma1**2)
        lp = normal_lpdf(self.y[0], mu, self.sigma1)
        for t in range(1, len(self.y)):
            var = alpha0 + alpha1 * (self.y[t - 1] - mu) ** 2 + beta1 * var
            lp = lp - 0.5 * (self.y[t] - mu) ** 2 / var - 0.5 * torch.log(var)
        return lp + log_jac - 0.5 * (len(self.y) - 1) * LOG_2PI

    def constrain(self, x):
        return torch.stack(self._params(x)[:4], dim=1)


class EightSchoolsNoncentered(PosteriorTarget):
    """eight_schools-eight_schools_noncentered: ``theta = mu + tau theta_trans``, ``theta_trans ~ N(0, 1)``,
    ``y_j ~ N(theta_j, sigma_j)``, ``mu ~ N(0, 5)``, ``tau ~ half-Cauchy(5)``. Coordinates ``(theta_trans_1..8,
    mu, log tau)``; reports ``theta, mu, tau``."""

    def __init__(self):
        super().__init__()
        data = load_data("eight_schools")
        self.j = data["J"]
        self.event_shape = (self.j + 2,)
        self._buffer("y", data["y"])
        self._buffer("sigma", data["sigma"])
        self.param_names = [*indexed("theta", self.j), "mu", "tau"]

    def log_prob(self, x):
        z, mu = x[:, : self.j], x[:, self.j]
        tau, log_jac = positive(x[:, self.j + 1])
        theta = mu[:, None] + tau[:, None] * z
        lp = normal_lpdf(z, 0.0, 1.0).sum(-1) + normal_lpdf(self.y, theta, self.sigma).sum(-1)
        return lp + normal_lpdf(mu, 0.0, 5.0) + half_cauchy_lpdf(tau, 5.0) + log_jac

    def constrain(self, x):
        mu, tau = x[:, self.j : self.j + 1], torch.exp(x[:, self.j + 1 :])
        return torch.cat([mu + tau * x[:, : self.j], mu, tau], dim=1)


class EightSchoolsCentered(EightSchoolsNoncentered):
    """eight_schools-eight_schools_centered: ``theta_j ~ N(mu, tau)``, ``y_j ~ N(theta_j, sigma_j)``, ``mu ~
    N(0, 5)``, ``tau ~ half-Cauchy(5)`` -- the same posterior as the non-centered model, with the funnel between
    ``theta`` and ``tau`` (NUTS diverges). Coordinates ``(theta_1..8, mu, log tau)``."""

    def log_prob(self, x):
        theta, mu = x[:, : self.j], x[:, self.j]
        tau, log_jac = positive(x[:, self.j + 1])
        lp = normal_lpdf(theta, mu[:, None], tau[:, None]).sum(-1) + normal_lpdf(self.y, theta, self.sigma).sum(-1)
        return lp + normal_lpdf(mu, 0.0, 5.0) + half_cauchy_lpdf(tau, 5.0) + log_jac

    def constrain(self, x):
        return torch.cat([x[:, : self.j + 1], torch.exp(x[:, self.j + 1 :])], dim=1)

    def hierarchy(self):
        """``(children, parents)`` for :class:`flowvi.transforms.HierarchicalAffine`: each ``theta_j`` given
        ``(mu, log tau)`` (``theta_j = mu + tau eps_j`` a priori: the funnel that ``--hierarchical`` un-centres)."""
        parents = torch.tensor([[self.j, self.j + 1]] * self.j)
        return [(torch.arange(self.j), parents)]


class GPPoissonRegression(PosteriorTarget):
    """gp_pois_regr-gp_pois_regr: latent GP ``f = L f_tilde``, ``L L^T = alpha^2 exp(-(x_i - x_j)^2 / (2
    rho^2)) + 1e-10 I``, ``k_i ~ Poisson(exp(f_i))``; ``rho ~ Gamma(25, 4)``, ``alpha ~ half-N(0, 2)``,
    ``f_tilde ~ N(0, 1)``. Coordinates ``(log rho, log alpha, f_tilde_1..N)``; reports ``rho, alpha, f``.
    The Cholesky factor is computed in float64 (the kernel matrix is nearly singular); a failed factor gives
    -inf."""

    def __init__(self):
        super().__init__()
        data = load_data("gp_pois_regr")
        self.n = data["N"]
        self.event_shape = (self.n + 2,)
        self._buffer("x", data["x"])
        self._buffer("k", data["k"])
        self.param_names = ["rho", "alpha", *indexed("f", self.n)]

    def _f(self, x):
        rho, alpha = torch.exp(x[:, 0].double()), torch.exp(x[:, 1].double())
        d2 = (self.x[:, None] - self.x[None, :]).double() ** 2
        cov = alpha[:, None, None] ** 2 * torch.exp(-d2 / (2 * rho[:, None, None] ** 2))
        chol, info = torch.linalg.cholesky_ex(cov + 1e-10 * torch.eye(self.n, dtype=cov.dtype))
        f = (chol @ x[:, 2:].double().unsqueeze(-1)).squeeze(-1)
        return f.to(x.dtype), info != 0

    def log_prob(self, x):
        log_rho, log_alpha = x[:, 0], x[:, 1]
        rho, alpha = torch.exp(log_rho), torch.exp(log_alpha)
        prior = 25 * log_rho - 4 * rho + normal_lpdf(alpha, 0.0, 2.0) + log_alpha  # Gamma(25, 4) times rho
        f, failed = self._f(x)
        lik = (self.k * f - torch.exp(f) - torch.lgamma(self.k + 1)).sum(-1)
        lp = prior + normal_lpdf(x[:, 2:], 0.0, 1.0).sum(-1) + lik
        return torch.where(failed, torch.full_like(lp, -math.inf), lp)

    def constrain(self, x):
        return torch.cat([torch.exp(x[:, :2]), self._f(x)[0]], dim=1)


class LowDimGaussMix(PosteriorTarget):
    """low_dim_gauss_mix-low_dim_gauss_mix: ``y_n ~ theta N(mu_1, sigma_1) + (1 - theta) N(mu_2, sigma_2)``,
    ``mu`` ordered, ``mu ~ N(0, 2)``, ``sigma ~ half-N(0, 2)``, ``theta ~ Beta(5, 5)``. Coordinates ``(mu_1,
    log(mu_2 - mu_1), log sigma_1, log sigma_2, logit theta)``."""

    param_names = ["mu[1]", "mu[2]", "sigma[1]", "sigma[2]", "theta"]

    def __init__(self):
        super().__init__()
        self.event_shape = (5,)
        self._buffer("y", load_data("low_dim_gauss_mix")["y"])

    def log_prob(self, x):
        mu1, mu2 = x[:, 0], x[:, 0] + torch.exp(x[:, 1])
        sigma, log_jac_s = positive(x[:, 2:4])
        theta, log_jac_t = unit_interval(x[:, 4])
        prior = normal_lpdf(torch.stack([mu1, mu2], 1), 0.0, 2.0).sum(-1) + normal_lpdf(sigma, 0.0, 2.0).sum(-1)
        prior = prior + 4 * torch.log(theta) + 4 * torch.log1p(-theta)
        a = F.logsigmoid(x[:, 4:5]) + normal_lpdf(self.y, mu1[:, None], sigma[:, :1])
        b = F.logsigmoid(-x[:, 4:5]) + normal_lpdf(self.y, mu2[:, None], sigma[:, 1:])
        lik = torch.logaddexp(a, b).sum(-1)
        return prior + lik + x[:, 1] + log_jac_s.sum(-1) + log_jac_t

    def constrain(self, x):
        mu2 = x[:, :1] + torch.exp(x[:, 1:2])
        return torch.cat([x[:, :1], mu2, torch.exp(x[:, 2:4]), torch.sigmoid(x[:, 4:])], dim=1)


class _LinearRegression(PosteriorTarget):
    """``y ~ N(X beta, sigma)`` with coordinates ``(beta, log sigma)``; subclasses give X, y and the priors."""

    def _setup(self, design, y, beta_name="beta"):
        self._buffer("X", design)
        self._buffer("y", y)
        k = self.X.shape[1]
        self.event_shape = (k + 1,)
        self.param_names = [*indexed(beta_name, k), "sigma"]

    def log_prior(self, beta: Tensor, sigma: Tensor) -> Tensor:
        return torch.zeros_like(sigma)

    def log_prob(self, x):
        beta, (sigma, log_jac) = x[:, :-1], positive(x[:, -1])
        lik = normal_lpdf(self.y, beta @ self.X.T, sigma[:, None]).sum(-1)
        return lik + self.log_prior(beta, sigma) + log_jac

    def constrain(self, x):
        return torch.cat([x[:, :-1], torch.exp(x[:, -1:])], dim=1)


class KidscoreMomhsiq(_LinearRegression):
    """kidiq-kidscore_momhsiq: ``kid_score ~ N(beta_1 + beta_2 mom_hs + beta_3 mom_iq, sigma)``, flat
    ``beta``, ``sigma ~ half-Cauchy(2.5)`` (Gelman & Hill 2006, ch. 3). Coordinates ``(beta_1..3, log
    sigma)``."""

    def __init__(self):
        super().__init__()
        data = load_data("kidiq")
        one = [1.0] * data["N"]
        self._setup(list(zip(one, data["mom_hs"], data["mom_iq"], strict=True)), data["kid_score"])

    def log_prior(self, beta, sigma):
        return half_cauchy_lpdf(sigma, 2.5)


class BLR(_LinearRegression):
    """sblrc-blr: ``y ~ N(X beta, sigma)``, ``beta ~ N(0, 10)``, ``sigma ~ half-N(0, 10)``, on simulated data
    with strongly correlated coefficients. Coordinates ``(beta_1..5, log sigma)``."""

    def __init__(self):
        super().__init__()
        data = load_data("sblrc")
        self._setup(data["X"], data["y"])

    def log_prior(self, beta, sigma):
        return normal_lpdf(beta, 0.0, 10.0).sum(-1) + normal_lpdf(sigma, 0.0, 10.0)


class LogmesquiteLogvash(_LinearRegression):
    """mesquite-logmesquite_logvash: ``log weight ~ N(beta_1 + beta_2 log canopy volume + beta_3 log canopy area
    + beta_4 log canopy shape + beta_5 log total height + beta_6 group, sigma)``, flat priors (Gelman & Hill
    2006, ch. 4). Coordinates ``(beta_1..6, log sigma)``."""

    def __init__(self):
        super().__init__()
        d = {k: torch.tensor(v, dtype=torch.float64) for k, v in load_data("mesquite").items() if k != "N"}
        cols = [
            torch.ones_like(d["weight"]),
            torch.log(d["diam1"] * d["diam2"] * d["canopy_height"]),
            torch.log(d["diam1"] * d["diam2"]),
            torch.log(d["diam1"] / d["diam2"]),
            torch.log(d["total_height"]),
            d["group"],
        ]
        self._setup(torch.stack(cols, 1), torch.log(d["weight"]))


#: posteriordb posterior name -> (constructor, description); merged into flowvi.targets.TARGETS
POSTERIORDB_TARGETS = {
    "arK-arK": (ArK, "posteriordb: AR(5) time series, simulated data; d = 7"),
    "arma-arma11": (Arma11, "posteriordb: ARMA(1,1) time series, simulated data; d = 4"),
    "garch-garch11": (Garch11, "posteriordb: GARCH(1,1) volatility, simulated data; d = 4"),
    "eight_schools-eight_schools_noncentered": (
        EightSchoolsNoncentered,
        "posteriordb: eight schools, non-centered hierarchical; d = 10",
    ),
    "eight_schools-eight_schools_centered": (
        EightSchoolsCentered,
        "posteriordb: eight schools, centered (funnel geometry); d = 10",
    ),
    "gp_pois_regr-gp_pois_regr": (GPPoissonRegression, "posteriordb: latent GP Poisson regression; d = 13"),
    "low_dim_gauss_mix-low_dim_gauss_mix": (LowDimGaussMix, "posteriordb: two-component normal mixture; d = 5"),
    "kidiq-kidscore_momhsiq": (KidscoreMomhsiq, "posteriordb: linear regression, kid IQ data; d = 4"),
    "sblrc-blr": (BLR, "posteriordb: linear regression, correlated coefficients; d = 6"),
    "mesquite-logmesquite_logvash": (LogmesquiteLogvash, "posteriordb: log-log regression, mesquite data; d = 7"),
}
