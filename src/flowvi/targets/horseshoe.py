"""Horseshoe-prior logistic regression, non-centred, on unconstrained parameters (Andrade 2024, Sec. 5).

Model for n observations ``y_i in {0, 1}`` with p predictors ``x_i`` (columns standardised):

    tau ~ HalfCauchy(tau_scale),   lambda_j ~ HalfCauchy(1),   z_j ~ N(0, 1),   beta0 ~ Cauchy(0, intercept_scale)
    beta_j = tau * lambda_j * z_j                                   (non-centred horseshoe, Carvalho et al. 2010)
    y_i ~ Bernoulli(sigmoid(beta0 + x_i . beta))

The target is over the unconstrained ``theta = (z_1..z_p, log lambda_1..log lambda_p, log tau, beta0)``,
dimension ``d = 2p + 2``, laid out in that order. The positive scales enter through ``exp``, so the density
includes the log-Jacobians ``log lambda_j`` and ``log tau``:

    log p(theta) = sum_j [-z_j^2/2 - log(2 pi)/2]
                 + sum_j [log(2/pi) - log(1 + lambda_j^2) + log lambda_j]
                 + [log(2/(pi s)) - log(1 + (tau/s)^2) + log tau]
                 + [-log(pi c) - log(1 + (beta0/c)^2)]
                 + sum_i [y_i eta_i - softplus(eta_i)],    eta = beta0 + X beta.

This is the same model as Andrade's ``HorseshoePriorLogisticRegression`` (HalfCauchy(1) scales, Cauchy(0, 10)
intercept, Bernoulli-logit likelihood); his parameter order is (lambda, tau, z, beta0) and his positive
parameters are mapped by the flow, ours by ``exp`` inside the target. The log evidence is unknown.

Targets:
    ``horseshoe_nci60``     real data: NCI-60 microarray (64 cell lines, up to 6830 genes), one cancer type
                            against the rest; ``p`` keeps the p genes of largest variance (d = 2p + 2;
                            the default p = 2000 gives d = 4002, as the paper's colon data).
    ``horseshoe_colon``     real data: the paper's colon cancer microarray (Alon et al. 1999; 62 tissues x 2000
                            genes, 40 tumours), d = 4002, preprocessed as in Andrade's code; the data file is
                            not shipped (``path=`` or FLOWVI_COLON_DATA, see flowvi/data/README.md).
    ``horseshoe_breast_cancer`` real data: UCI Breast Cancer Wisconsin (569 tumours, 30 features), malignant
                            against benign; d = 62 (small enough for long NUTS runs on a CPU).
    ``horseshoe_synthetic`` simulated data as in the paper's synthetic experiments: n observations,
                            p standard-normal predictors, a sparse true beta.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from flowvi.targets.base import Target


class HorseshoeLogisticRegression(Target):
    """Non-centred horseshoe logistic regression for given data ``X`` (n, p) and binary ``y`` (n,)."""

    def __init__(self, X, y, tau_scale: float = 1.0, intercept_scale: float = 10.0):
        super().__init__()
        X, y = logistic_data(X, y, "horseshoe regression")
        if tau_scale <= 0 or intercept_scale <= 0:
            raise ValueError(f"tau_scale and intercept_scale must be positive; got {tau_scale}, {intercept_scale}")
        self.n, self.p = X.shape
        self.tau_scale, self.intercept_scale = float(tau_scale), float(intercept_scale)
        self.event_shape = (2 * self.p + 2,)
        self.register_buffer("X", X)
        self.register_buffer("y", y)

    def split(self, theta):
        """``(z, log_lambda, log_tau, beta0)`` views of ``theta`` (batch, 2p + 2)."""
        p = self.p
        return theta[:, :p], theta[:, p : 2 * p], theta[:, 2 * p], theta[:, 2 * p + 1]

    def hierarchy(self):
        """``(children, parents)`` index pairs for :class:`flowvi.transforms.HierarchicalAffine`:
        ``z_j`` given ``(log lambda_j, log tau)``, then ``log lambda_j`` given ``(z_j, log tau)``."""
        return scale_mixture_hierarchy(self.p, [2 * self.p])

    def coefficients(self, theta):
        """The regression coefficients ``beta = tau * lambda * z``, shape (batch, p)."""
        z, log_lam, log_tau, _ = self.split(theta)
        return z * torch.exp(log_lam + log_tau[:, None])

    def prior_log_prob(self, theta):
        """Log prior density of ``theta`` including the log-Jacobians of the exp transforms."""
        z, log_lam, log_tau, beta0 = self.split(theta)
        s, c = self.tau_scale, self.intercept_scale
        log_p_z = -0.5 * (z * z).sum(-1) - 0.5 * self.p * math.log(2 * math.pi)
        # log HalfCauchy(lambda; 1) + log lambda, with log(1 + lambda^2) = softplus(2 log lambda)
        log_p_lam = (math.log(2 / math.pi) - F.softplus(2 * log_lam) + log_lam).sum(-1)
        log_p_tau = math.log(2 / (math.pi * s)) - F.softplus(2 * (log_tau - math.log(s))) + log_tau
        log_p_b0 = -math.log(math.pi * c) - torch.log1p((beta0 / c) ** 2)
        return log_p_z + log_p_lam + log_p_tau + log_p_b0

    def prior_sample(self, n: int):
        """``n`` exact draws of ``theta`` from the prior (used by SMC as its starting distribution)."""
        X = self.X
        half_cauchy = lambda *shape: torch.tan(0.5 * math.pi * torch.rand(*shape, dtype=X.dtype, device=X.device))  # noqa: E731
        z = torch.randn(n, self.p, dtype=X.dtype, device=X.device)
        log_lam = torch.log(half_cauchy(n, self.p))
        log_tau = torch.log(self.tau_scale * half_cauchy(n, 1))
        beta0 = self.intercept_scale * torch.tan(math.pi * (torch.rand(n, 1, dtype=X.dtype, device=X.device) - 0.5))
        return torch.cat([z, log_lam, log_tau, beta0], dim=1)

    def log_likelihood(self, theta):
        """Bernoulli-logit log likelihood ``sum_i y_i eta_i - softplus(eta_i)``."""
        _, _, _, beta0 = self.split(theta)
        X, y = self.X.to(theta.dtype), self.y.to(theta.dtype)
        eta = self.coefficients(theta) @ X.T + beta0[:, None]
        return (y * eta - F.softplus(eta)).sum(-1)

    def log_prob(self, theta):
        return self.prior_log_prob(theta) + self.log_likelihood(theta)


def scale_mixture_hierarchy(p: int, global_scales: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The two per-coefficient couplings of a non-centred scale mixture over ``(z_1..z_p, log lambda_1..log
    lambda_p, ...)``: ``z_j`` given ``(log lambda_j, *global_scales)`` (how far to centre ``beta_j``), then ``log
    lambda_j`` given ``(z_j, *global_scales)`` (a relevant coefficient's local scale follows its size)."""
    z, log_lam = torch.arange(p), torch.arange(p, 2 * p)
    g = torch.tensor(global_scales, dtype=torch.long).expand(p, len(global_scales))
    return [(z, torch.cat([log_lam[:, None], g], 1)), (log_lam, torch.cat([z[:, None], g], 1))]


def standardize(X: np.ndarray) -> np.ndarray:
    """Columns to mean 0 and standard deviation 1 (constant columns are only centred)."""
    sd = X.std(0)
    return (X - X.mean(0)) / np.where(sd > 0, sd, 1.0)


def robust_scale(X: np.ndarray) -> np.ndarray:
    """Columns to ``(x - median) / IQR`` (quartiles by linear interpolation; a zero IQR counts as 1), as
    scikit-learn's ``RobustScaler`` with its defaults, which Andrade applies to the colon data."""
    q25, median, q75 = np.percentile(X, [25, 50, 75], axis=0)
    iqr = q75 - q25
    return (X - median) / np.where(iqr > 0, iqr, 1.0)


def libsvm_standardize(X: np.ndarray) -> np.ndarray:
    """LIBSVM's preprocessing of its microarray sets (colon-cancer, leukemia): each tissue (row) to mean 0 and
    standard deviation 1 over its genes, then each gene (column) to mean 0 and sample standard deviation 1."""
    R = (X - X.mean(1, keepdims=True)) / X.std(1, keepdims=True)
    return (R - R.mean(0)) / R.std(0, ddof=1)


def logistic_data(X, y, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``X`` (n, p) and ``y`` (n,) as float64 tensors, checked: finite predictors, 0/1 responses."""
    X = torch.as_tensor(np.asarray(X), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(y), dtype=torch.float64)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"{name} needs X of shape (n, p) and y of shape (n,); got {tuple(X.shape)}, {tuple(y.shape)}")
    if not torch.isfinite(X).all():
        raise ValueError(f"{name}: X contains NaN or inf")
    if not bool(((y == 0) | (y == 1)).all()):
        raise ValueError(f"{name}: y must be 0/1")
    return X, y


def nci60_design(p: int, positive: str, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The NCI-60 design of the ``*_nci60`` targets: the ``p`` genes of largest variance, standardised, and
    ``y = 1`` for the cell lines of cancer type ``positive``. Returns ``(X, y, genes)``, ``genes`` the column
    indices into the 6830 genes; ``name`` prefixes the error messages."""
    from flowvi.data import load_nci60

    X, labels = load_nci60()
    p = int(p)
    if not 1 <= p <= X.shape[1]:
        raise ValueError(f"{name}: p must be between 1 and {X.shape[1]}, got {p}")
    if positive not in set(labels.tolist()):
        raise ValueError(
            f"{name}: unknown cancer type {positive!r}; choose one of {', '.join(sorted(set(labels.tolist())))}"
        )
    X = X.astype(np.float64)
    keep = np.sort(np.argsort(-X.var(0), kind="stable")[:p])
    return standardize(X[:, keep]), (labels == positive).astype(np.float64), keep


def synthetic_design(p: int, n: int, n_nonzero: int | None, signal: float, data_seed: int, name: str):
    """Simulated logistic-regression data of the ``*_synthetic`` targets: ``X`` (n, p) standard normal, a true
    ``beta`` with ``n_nonzero`` (default min(5, p)) entries ``+-signal`` (alternating sign), the rest 0, intercept 0,
    ``y ~ Bernoulli(sigmoid(X beta))``, drawn from ``data_seed``. Returns ``(X, y, beta)``."""
    p, n = int(p), int(n)
    n_nonzero = min(5, p) if n_nonzero is None else int(n_nonzero)
    if p < 1 or n < 1 or not 0 <= n_nonzero <= p:
        raise ValueError(f"{name} needs p >= 1, n >= 1, 0 <= n_nonzero <= p; got p={p}, n={n}, n_nonzero={n_nonzero}")
    rng = np.random.default_rng(data_seed)
    X = rng.standard_normal((n, p))
    beta = np.zeros(p)
    beta[:n_nonzero] = signal * np.where(np.arange(n_nonzero) % 2 == 0, 1.0, -1.0)
    y = (rng.random(n) < 1 / (1 + np.exp(-X @ beta))).astype(np.float64)
    return X, y, beta


class HorseshoeColon(HorseshoeLogisticRegression):
    """Horseshoe logistic regression on the colon cancer microarray data (Alon et al. 1999), d = 4002: the
    real-data experiment of Andrade (2024, Sec. 5).

    ``y = 1`` for the 40 tumour tissues, 0 for the 22 normal ones. Preprocessing as in Andrade's
    ``prepare_colon_data.py``: LIBSVM's ``colon-cancer`` file (rows, then columns standardised; see
    :func:`libsvm_standardize`, applied here when ``path`` holds the raw intensities) followed by
    :func:`robust_scale`. Andrade codes LIBSVM's -1 as 0; flipping all labels maps the posterior of
    ``(z, beta0)`` to that of ``(-z, -beta0)``, which leaves ``log Z`` and all scale parameters unchanged.
    ``path``: the data file (not shipped; see :func:`flowvi.data.load_colon`).
    """

    def __init__(self, path: str | None = None, tau_scale: float = 1.0, intercept_scale: float = 10.0):
        from flowvi.data import load_colon

        X, y, kind = load_colon(path)
        if kind == "raw":
            X = libsvm_standardize(X)
        super().__init__(robust_scale(X), y, tau_scale, intercept_scale)


class HorseshoeNCI60(HorseshoeLogisticRegression):
    """Horseshoe logistic regression on the NCI-60 microarray data (Ross et al. 2000), d = 2p + 2.

    ``y = 1`` for the cell lines of cancer type ``positive`` (default RENAL: 9 of 64), 0 otherwise.
    ``p`` (1..6830, default 2000 -> d = 4002) keeps the p genes of largest variance, then standardises them.
    Data: ``flowvi/data/nci60.npz`` (as shipped by the Python package ISLP, BSD; see flowvi/data/README.md).
    """

    def __init__(self, p: int = 2000, positive: str = "RENAL", tau_scale: float = 1.0, intercept_scale: float = 10.0):
        X, y, keep = nci60_design(p, positive, "horseshoe_nci60")
        super().__init__(X, y, tau_scale, intercept_scale)
        self.genes = keep  # column indices into the 6830 genes


class HorseshoeBreastCancer(HorseshoeLogisticRegression):
    """Horseshoe logistic regression on UCI Breast Cancer Wisconsin (Diagnostic), d = 2p + 2 = 62.

    ``y = 1`` for malignant tumours (212 of 569); the 30 features are standardised. ``p`` keeps the first p
    features (default all 30). Data: ``flowvi/data/breast_cancer.npz`` (CC BY 4.0; see flowvi/data/README.md).
    """

    def __init__(self, p: int = 30, tau_scale: float = 1.0, intercept_scale: float = 10.0):
        from flowvi.data import load_breast_cancer

        X, y = load_breast_cancer()
        p = int(p)
        if not 1 <= p <= X.shape[1]:
            raise ValueError(f"horseshoe_breast_cancer: p must be between 1 and {X.shape[1]}, got {p}")
        super().__init__(standardize(X[:, :p]), (y == 0).astype(np.float64), tau_scale, intercept_scale)


class HorseshoeSynthetic(HorseshoeLogisticRegression):
    """Horseshoe logistic regression on simulated data, d = 2p + 2.

    ``X`` (n, p) standard normal; the true ``beta`` has ``n_nonzero`` (default min(5, p)) entries equal to ``signal`` (alternating
    sign), the rest 0; intercept 0; ``y ~ Bernoulli(sigmoid(X beta))``; drawn from ``data_seed``.
    """

    def __init__(
        self,
        p: int = 100,
        n: int = 100,
        n_nonzero: int | None = None,
        signal: float = 2.0,
        data_seed: int = 0,
        tau_scale: float = 1.0,
        intercept_scale: float = 10.0,
    ):
        X, y, beta = synthetic_design(p, n, n_nonzero, signal, data_seed, "horseshoe_synthetic")
        super().__init__(X, y, tau_scale, intercept_scale)
        self.true_beta = beta
