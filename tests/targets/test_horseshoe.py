"""Horseshoe logistic regression targets: density against an independent scipy computation, gradients,
prior draws, shipped data and bad input."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from flowvi.data import load_nci60
from flowvi.targets import HorseshoeNCI60, HorseshoeSynthetic, TargetError, make_target


def scipy_log_density(theta, X, y, tau_scale=1.0, intercept_scale=10.0):
    """log p(theta) computed from the constrained parameters with scipy, plus the exp-transform Jacobians."""
    p = X.shape[1]
    z, log_lam, log_tau, b0 = theta[:p], theta[p : 2 * p], theta[2 * p], theta[2 * p + 1]
    lam, tau = np.exp(log_lam), np.exp(log_tau)
    prior = (
        stats.norm.logpdf(z).sum()
        + (stats.halfcauchy.logpdf(lam) + log_lam).sum()  # density of log lambda
        + stats.halfcauchy.logpdf(tau, scale=tau_scale)
        + log_tau
        + stats.cauchy.logpdf(b0, scale=intercept_scale)
    )
    eta = X @ (tau * lam * z) + b0
    # log sigmoid(eta) = -log(1 + e^-eta), written stably so that the reference does not underflow
    return prior + np.sum(-y * np.logaddexp(0.0, -eta) - (1 - y) * np.logaddexp(0.0, eta))


@pytest.mark.parametrize("tau_scale", [1.0, 0.3])
def test_log_prob_matches_scipy(tau_scale):
    t = HorseshoeSynthetic(p=7, n=30, data_seed=3, tau_scale=tau_scale).double()
    theta = 0.7 * torch.randn(5, t.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    got = t.log_prob(theta).numpy()
    X, y = t.X.numpy(), t.y.numpy()
    want = [scipy_log_density(th, X, y, tau_scale=tau_scale) for th in theta.numpy()]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-8)


def test_real_data_log_prob_matches_scipy_and_dimension():
    t = HorseshoeNCI60(p=50).double()
    assert t.dim == 2 * 50 + 2 and t.X.shape == (64, 50)
    assert int(t.y.sum()) == 9  # RENAL lines
    theta = 0.5 * torch.randn(3, t.dim, dtype=torch.float64)
    want = [scipy_log_density(th, t.X.numpy(), t.y.numpy()) for th in theta.numpy()]
    np.testing.assert_allclose(t.log_prob(theta).numpy(), want, rtol=1e-10)


def test_default_is_d_4002_and_genes_by_variance():
    X, labels = load_nci60()
    assert X.shape == (64, 6830) and labels.shape == (64,) and np.isfinite(X).all()
    t = make_target("horseshoe_nci60")
    assert t.dim == 4002
    var = X.astype(np.float64).var(0)
    assert var[t.genes].min() >= np.sort(var)[-2000]
    np.testing.assert_allclose(t.X.mean(0).numpy(), 0, atol=1e-10)
    np.testing.assert_allclose(t.X.std(0, unbiased=False).numpy(), 1, atol=1e-10)


def test_gradient_finite_and_matches_finite_differences():
    t = HorseshoeSynthetic(p=4, n=20).double()
    theta = torch.randn(2, t.dim, dtype=torch.float64)
    theta[1, 4:8] = 20.0  # huge local scales: softplus keeps the density finite
    theta.requires_grad_(True)
    (g,) = torch.autograd.grad(t.log_prob(theta).sum(), theta)
    assert torch.isfinite(g).all()
    x0 = theta[0].detach()
    eps = 1e-6
    for j in range(t.dim):
        e = torch.zeros_like(x0)
        e[j] = eps
        fd = (t.log_prob((x0 + e)[None]) - t.log_prob((x0 - e)[None])) / (2 * eps)
        assert abs(float(fd) - float(g[0, j])) < 1e-5 * (1 + abs(float(fd)))


def test_prior_sample_and_prior_log_prob_agree():
    t = HorseshoeSynthetic(p=3, n=10).double()
    x = t.prior_sample(100_000)
    # HalfCauchy(1) has median 1, so log lambda has median 0; z ~ N(0, 1)
    assert abs(float(x[:, 3:6].median())) < 0.03
    assert abs(float(x[:, :3].std()) - 1) < 0.01
    # prior_log_prob is a normalized log density: its importance-sampling integral under Cauchy(0, 3) is ~1
    q = torch.distributions.Cauchy(0.0, 3.0)
    y = q.sample((200_000, t.dim)).double()
    log_w = t.prior_log_prob(y) - q.log_prob(y).sum(-1)
    assert abs(float(torch.logsumexp(log_w, 0) - math.log(len(y)))) < 0.1
    # and log_prob = prior + likelihood
    torch.testing.assert_close(t.log_prob(y[:5]), t.prior_log_prob(y[:5]) + t.log_likelihood(y[:5]))


def test_coefficients_are_tau_lambda_z():
    t = HorseshoeSynthetic(p=3, n=10).double()
    theta = torch.randn(4, t.dim, dtype=torch.float64)
    want = theta[:, :3] * torch.exp(theta[:, 3:6]) * torch.exp(theta[:, 6:7])
    torch.testing.assert_close(t.coefficients(theta), want)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"p": 0}, "p must be between"),
        ({"p": 7000}, "p must be between"),
        ({"positive": "LUNG"}, "unknown cancer type"),
        ({"tau_scale": -1.0}, "must be positive"),
    ],
)
def test_nci60_bad_parameters(params, match):
    with pytest.raises(ValueError, match=match):
        make_target("horseshoe_nci60", **params)


def test_unknown_parameter_named():
    with pytest.raises(TargetError, match="no parameter dim"):
        make_target("horseshoe_nci60", dim=10)


def test_breast_cancer_target():
    t = make_target("horseshoe_breast_cancer").double()
    assert t.dim == 62 and t.X.shape == (569, 30) and int(t.y.sum()) == 212  # malignant
    theta = 0.3 * torch.randn(2, t.dim, dtype=torch.float64)
    want = [scipy_log_density(th, t.X.numpy(), t.y.numpy()) for th in theta.numpy()]
    np.testing.assert_allclose(t.log_prob(theta).numpy(), want, rtol=1e-10)
