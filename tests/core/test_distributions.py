import numpy as np
import pytest
import torch
from scipy import stats

from flowvi import StandardNormal, StudentT, make_base


@pytest.mark.parametrize("df", [1.0, 3.0, 7.5])
def test_student_t_log_prob_matches_scipy(df):
    base = StudentT(4, df=df).double()
    z = 3 * torch.randn(10, 4, dtype=torch.float64)
    ref = stats.t(df).logpdf(z.numpy()).sum(-1)
    np.testing.assert_allclose(base.log_prob(z).numpy(), ref, rtol=1e-12)


def test_student_t_samples_follow_the_distribution():
    torch.manual_seed(0)
    x = StudentT(2, df=4.0).sample(20000)
    assert x.dtype == torch.float32 and x.shape == (20000, 2)
    assert stats.kstest(x[:, 0].numpy(), stats.t(4.0).cdf).pvalue > 1e-3


def test_normal_log_prob_and_score():
    base = StandardNormal((2, 3)).double()
    z = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    ref = stats.norm.logpdf(z.detach().numpy()).reshape(5, -1).sum(-1)
    np.testing.assert_allclose(base.log_prob(z).detach().numpy(), ref, rtol=1e-12)
    (g,) = torch.autograd.grad(base.log_prob(z).sum(), z)
    torch.testing.assert_close(base.score(z.detach()), g)


def test_student_t_score_is_gradient():
    base = StudentT(3, df=2.5).double()
    z = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(base.log_prob(z).sum(), z)
    torch.testing.assert_close(base.score(z.detach()), g)


def test_base_follows_dtype():
    base = make_base("student_t", 3).to(torch.float64)
    assert base.sample(2).dtype == torch.float64
    with pytest.raises(ValueError, match="unknown base"):
        make_base("cauchy", 3)
