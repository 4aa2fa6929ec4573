"""Posteriors of the reference-posterior benchmark that posteriordb lacks: two with d >= 100 and a
well-separated multimodal mixture (see benchmarks/posteriors.py). Neal's funnel is ``flowvi.targets.Funnel``.

Data of the two d >= 100 models were simulated once with fixed seeds and are shipped in
``flowvi/data/posteriordb/`` (``benchmarks/posteriors/make_references.py simulate``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from flowvi.targets.posteriordb import PosteriorTarget, indexed, load_data, normal_lpdf, positive, unit_interval


class SeparatedGaussianMixture(PosteriorTarget):
    """``p(x) = sum_k w_k N(x | m_k 1, s_k^2 I)`` in d dimensions, three modes far apart (weights 0.2, 0.3, 0.5;
    centres -6, 0, 6 along the diagonal; scales 1, 0.7, 1.3). Normalized: log Z = 0. Moments are exact:
    ``E[x_i] = sum_k w_k m_k``, ``E[x_i^2] = sum_k w_k (s_k^2 + m_k^2)``."""

    log_evidence = 0.0
    WEIGHTS, CENTRES, SCALES = (0.2, 0.3, 0.5), (-6.0, 0.0, 6.0), (1.0, 0.7, 1.3)

    def __init__(self, dim: int = 5):
        super().__init__()
        self.event_shape = (int(dim),)
        self.param_names = indexed("x", self.dim)
        self._buffer("weights", self.WEIGHTS)
        self._buffer("centres", self.CENTRES)
        self._buffer("scales", self.SCALES)

    def log_prob(self, x):
        z = (x[:, None, :] - self.centres[:, None]) / self.scales[:, None]  # (batch, K, d)
        comp = -0.5 * (z * z).sum(-1) - self.dim * (torch.log(self.scales) + 0.5 * math.log(2 * math.pi))
        return torch.logsumexp(torch.log(self.weights) + comp, dim=-1)

    def constrain(self, x):
        return x

    def exact_moments(self) -> tuple[list[float], list[float]]:
        terms = list(zip(self.WEIGHTS, self.CENTRES, self.SCALES, strict=True))
        mean = sum(w * m for w, m, _ in terms)
        sd = math.sqrt(sum(w * (s**2 + m**2) for w, m, s in terms) - mean**2)
        return [mean] * self.dim, [sd] * self.dim

    def sample(self, n):
        k = torch.multinomial(self.weights, n, replacement=True)
        return self.centres[k, None] + self.scales[k, None] * torch.randn(n, self.dim)


class StochasticVolatility(PosteriorTarget):
    """Stochastic volatility (Kim, Shephard & Chib 1998), non-centered as in the Stan user's guide:
    ``y_t ~ N(0, exp(h_t / 2))``, ``h_1 = mu + sigma z_1 / sqrt(1 - phi^2)``, ``h_t = mu + phi (h_{t-1} - mu) +
    sigma z_t``, ``z ~ N(0, 1)``; ``mu ~ N(0, 1)``, ``(phi + 1) / 2 ~ Beta(20, 1.5)``, ``sigma ~ half-N(0, 1)``.
    T = 100 simulated returns; d = T + 3. Coordinates ``(mu, logit((phi + 1) / 2), log sigma, z_1..T)``;
    reports ``mu, phi, sigma, h``."""

    def __init__(self):
        super().__init__()
        data = load_data("stochastic_volatility")
        self.t = data["T"]
        self.event_shape = (self.t + 3,)
        self._buffer("y", data["y"])
        self.param_names = ["mu", "phi", "sigma", *indexed("h", self.t)]

    def _latent(self, x):
        mu, phi = x[:, 0], 2 * torch.sigmoid(x[:, 1]) - 1
        sigma, z = torch.exp(x[:, 2]), x[:, 3:]
        h = [mu + sigma * z[:, 0] / torch.sqrt(1 - phi**2)]
        for t in range(1, self.t):
            h.append(mu + phi * (h[-1] - mu) + sigma * z[:, t])
        return mu, phi, sigma, torch.stack(h, dim=1)

    def log_prob(self, x):
        mu, _, sigma, h = self._latent(x)
        raw, log_jac_phi = unit_interval(x[:, 1])
        prior = normal_lpdf(mu, 0.0, 1.0) + 19 * F.logsigmoid(x[:, 1]) + 0.5 * F.logsigmoid(-x[:, 1]) + log_jac_phi
        prior = prior + normal_lpdf(sigma, 0.0, 1.0) + x[:, 2] + normal_lpdf(x[:, 3:], 0.0, 1.0).sum(-1)
        lik = normal_lpdf(self.y, 0.0, torch.exp(h / 2)).sum(-1)
        return prior + lik

    def constrain(self, x):
        mu, phi, sigma, h = self._latent(x)
        return torch.cat([torch.stack([mu, phi, sigma], 1), h], dim=1)


class HierarchicalLogistic(PosteriorTarget):
    """Hierarchical logistic regression with J = 100 group intercepts (non-centered): ``y_n ~
    Bernoulli(logit^-1(alpha_{g(n)} + x_n^T beta))``, ``alpha_j = mu + tau z_j``, ``z ~ N(0, 1)``, ``mu ~ N(0,
    2)``, ``tau ~ half-N(0, 1)``, ``beta ~ N(0, 1)``; 10 simulated observations per group, two covariates; d =
    104. Coordinates ``(mu, log tau, beta_1, beta_2, z_1..J)``; reports ``mu, tau, beta, alpha``."""

    def __init__(self):
        super().__init__()
        data = load_data("hierarchical_logistic")
        self.j = data["J"]
        self.event_shape = (self.j + 4,)
        self.register_buffer("group", torch.tensor(data["group"], dtype=torch.long))
        self._buffer("X", data["X"])
        self._buffer("y", data["y"])
        self.param_names = ["mu", "tau", *indexed("beta", 2), *indexed("alpha", self.j)]

    def log_prob(self, x):
        mu, (tau, log_jac), beta, z = x[:, 0], positive(x[:, 1]), x[:, 2:4], x[:, 4:]
        alpha = mu[:, None] + tau[:, None] * z
        logits = alpha[:, self.group] + beta @ self.X.T
        lik = (self.y * logits - F.softplus(logits)).sum(-1)
        prior = normal_lpdf(mu, 0.0, 2.0) + normal_lpdf(tau, 0.0, 1.0) + log_jac
        return prior + normal_lpdf(beta, 0.0, 1.0).sum(-1) + normal_lpdf(z, 0.0, 1.0).sum(-1) + lik

    def constrain(self, x):
        tau = torch.exp(x[:, 1:2])
        return torch.cat([x[:, :1], tau, x[:, 2:4], x[:, :1] + tau * x[:, 4:]], dim=1)


SUITE_TARGETS = {
    "gauss_mix_separated": (
        SeparatedGaussianMixture,
        "three well-separated Gaussian modes (weights 0.2/0.3/0.5); exact moments, log Z = 0",
    ),
    "stochastic_volatility": (StochasticVolatility, "stochastic volatility, 100 simulated returns; d = 103"),
    "hierarchical_logistic": (
        HierarchicalLogistic,
        "hierarchical logistic regression, 100 group intercepts, simulated; d = 104",
    ),
}
