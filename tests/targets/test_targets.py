import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from flowvi.targets import (
    ConjugateLinearRegression,
    CorrelatedGaussian,
    Funnel,
    MultivariateStudentT,
    TargetError,
    checked_log_prob,
    make_target,
)


def test_funnel_matches_scipy():
    t = Funnel(dim=4, sigma=3.0)
    x = torch.randn(6, 4, dtype=torch.float64)
    v = x[:, 0].numpy()
    ref = stats.norm(0, 3).logpdf(v) + stats.norm.logpdf(x[:, 1:].numpy(), scale=np.exp(v / 2)[:, None]).sum(-1)
    np.testing.assert_allclose(t.log_prob(x).numpy(), ref, rtol=1e-12)


def test_student_t_matches_scipy():
    t = MultivariateStudentT(dim=3, df=4.0, loc=1.0, scale=2.0)
    x = torch.randn(5, 3, dtype=torch.float64)
    ref = stats.multivariate_t(loc=np.ones(3), shape=4 * np.eye(3), df=4.0).logpdf(x.numpy())
    np.testing.assert_allclose(t.log_prob(x).numpy(), ref, rtol=1e-12)


def test_correlated_gaussian_matches_scipy():
    t = CorrelatedGaussian(dim=5, rho=0.8, condition=50.0)
    x = torch.randn(5, 5, dtype=torch.float64)
    ref = stats.multivariate_normal(cov=t.cov.numpy()).logpdf(x.numpy())
    np.testing.assert_allclose(t.log_prob(x).numpy(), ref, rtol=1e-10)


def test_conjugate_regression_evidence_by_quadrature():
    """For p = 1 the exact log evidence equals the 2-D integral of exp(log_prob)."""
    t = ConjugateLinearRegression(p=1, n=8, data_seed=3)

    def density(log_s2, beta):
        th = torch.tensor([[beta, log_s2]], dtype=torch.float64)
        return math.exp(float(t.log_prob(th)) - t.log_evidence)

    val, _ = integrate.dblquad(density, -8, 8, -12, 8, epsabs=1e-10, epsrel=1e-8)
    assert abs(val - 1.0) < 1e-5


def test_registry_and_errors(tmp_path):
    assert make_target("conjugate_regression", dim=5).dim == 5
    with pytest.raises(TargetError, match="unknown target 'nope'"):
        make_target("nope")
    with pytest.raises(TargetError, match="has no parameter bogus"):
        make_target("funnel", bogus=1)
    with pytest.raises(TargetError, match="does not exist"):
        make_target("some/file.py:f")
    user = tmp_path / "user.py"
    user.write_text("def f(x):\n    return -(x**2).sum(-1)\n")
    with pytest.raises(TargetError, match="--dim"):
        make_target(f"{user}:f")


class _Fn:
    def __init__(self, fn):
        self.log_prob = fn


def test_checked_log_prob_names_the_problem():
    x = torch.zeros(4, 3)
    with pytest.raises(TargetError, match=r"shape \(4, 3\).*expected \(4,\)"):
        checked_log_prob(_Fn(lambda x: x), x)
    with pytest.raises(TargetError, match="dtype torch.int64"):
        checked_log_prob(_Fn(lambda x: torch.zeros(4, dtype=torch.long)), x)
    with pytest.raises(TargetError, match="nan for 1 of 4"):
        checked_log_prob(_Fn(lambda x: torch.tensor([0.0, float("nan"), 1.0, 2.0])), x)
    out = checked_log_prob(_Fn(lambda x: torch.tensor([0.0, -math.inf, 1.0, 2.0])), x)
    assert out.shape == (4,)
