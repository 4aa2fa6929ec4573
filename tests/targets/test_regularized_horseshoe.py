"""Regularized horseshoe logistic regression (Piironen & Vehtari 2017): the density against an independent scipy
computation, prior draws against the prior density, the slab's bound, the plain-horseshoe limit, bad input."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from flowvi.targets import (
    HorseshoeLogisticRegression,
    RegularizedHorseshoeLogisticRegression,
    RegularizedHorseshoeSynthetic,
    TargetError,
    make_target,
)
from tests.conftest import load_benchmark


def scipy_log_density(theta, X, y, t):
    """log p(theta) from the constrained parameters with scipy densities, plus the exp-transform Jacobians
    (log lambda_j, log tau and log c^2: the density of log x is x p(x))."""
    p = X.shape[1]
    z, log_lam, log_tau, b0, log_c2 = theta[:p], theta[p : 2 * p], theta[2 * p], theta[2 * p + 1], theta[2 * p + 2]
    lam, tau, c2 = np.exp(log_lam), np.exp(log_tau), np.exp(log_c2)
    a, b = t.slab_df / 2, t.slab_df * t.slab_scale**2 / 2
    prior = (
        stats.norm.logpdf(z).sum()
        + (math.log(2) + stats.t.logpdf(lam, t.local_df) + log_lam).sum()  # half-t: twice the t density on lambda > 0
        + stats.halfcauchy.logpdf(tau, scale=t.tau_scale)
        + log_tau
        + stats.t.logpdf(b0, t.intercept_df, scale=t.intercept_scale)
        + stats.invgamma.logpdf(c2, a, scale=b)
        + log_c2
    )
    lam_tilde = np.sqrt(c2 * lam**2 / (c2 + tau**2 * lam**2))
    eta = X @ (z * tau * lam_tilde) + b0
    return prior + np.sum(-y * np.logaddexp(0.0, -eta) - (1 - y) * np.logaddexp(0.0, eta))


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"local_df": 3.0, "slab_scale": 1.0, "slab_df": 2.0, "intercept_df": 1.0, "intercept_scale": 10.0},
        {"tau_scale": 0.3, "pseudo_sd": 2.88},
    ],
)
def test_log_prob_matches_scipy(options):
    t = RegularizedHorseshoeSynthetic(p=6, n=25, data_seed=2, **options).double()
    assert t.dim == 2 * 6 + 3
    theta = 0.8 * torch.randn(6, t.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    theta[:, 12] += math.log(t.tau_scale)  # log tau near its prior scale
    got = t.log_prob(theta).numpy()
    want = [scipy_log_density(th, t.X.numpy(), t.y.numpy(), t) for th in theta.numpy()]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-8)
    torch.testing.assert_close(t.log_prob(theta), t.prior_log_prob(theta) + t.log_likelihood(theta))


def test_real_data_target_dimension_tau0_and_density():
    t = make_target("regularized_horseshoe_nci60", p=40).double()
    assert t.dim == 83 and t.X.shape == (64, 40) and int(t.y.sum()) == 9
    # tau0 = p0 / (p - p0) * pseudo_sd / sqrt(n) (Piironen & Vehtari 2017, Sec. 3)
    assert t.tau_scale == pytest.approx(3 / 37 * 2 / 8)
    assert make_target("regularized_horseshoe_nci60", p=40, tau_scale=0.7).tau_scale == 0.7
    # same genes, same standardised design as the plain horseshoe target
    np.testing.assert_array_equal(t.X.numpy(), make_target("horseshoe_nci60", p=40).X.numpy())
    theta = 0.5 * torch.randn(3, t.dim, dtype=torch.float64)
    want = [scipy_log_density(th, t.X.numpy(), t.y.numpy(), t) for th in theta.numpy()]
    np.testing.assert_allclose(t.log_prob(theta).numpy(), want, rtol=1e-10)
    assert make_target("regularized_horseshoe_nci60").dim == 4003


def test_prior_sample_is_distributed_as_prior_log_prob():
    t = RegularizedHorseshoeSynthetic(p=2, n=10, local_df=3.0, tau_scale=0.5, slab_scale=1.0).double()
    torch.manual_seed(0)
    x = t.prior_sample(20_000).numpy()
    p = t.p
    a, b = t.slab_df / 2, t.slab_df * t.slab_scale**2 / 2
    cdfs = {
        "z": (x[:, 0], stats.norm.cdf),
        "log lambda (half-t_3)": (x[:, p], lambda u: 2 * stats.t.cdf(np.exp(u), 3.0) - 1),
        "log tau": (x[:, 2 * p], lambda s: 2 / np.pi * np.arctan(np.exp(s) / t.tau_scale)),
        "beta0": (x[:, 2 * p + 1], lambda v: stats.t.cdf(v, t.intercept_df, scale=t.intercept_scale)),
        "log c^2": (x[:, 2 * p + 2], lambda v: stats.invgamma.cdf(np.exp(v), a, scale=b)),
    }
    for name, (draws, cdf) in cdfs.items():
        assert stats.kstest(draws, cdf).pvalue > 1e-3, name
    # prior_log_prob is a normalized density of theta: its importance-sampling integral under Cauchy(0, 3) is ~1
    q = torch.distributions.Cauchy(0.0, 3.0)
    y = q.sample((200_000, t.dim)).double()
    log_w = t.prior_log_prob(y) - q.log_prob(y).sum(-1)
    assert abs(float(torch.logsumexp(log_w, 0) - math.log(len(y)))) < 0.1


def test_prior_of_beta_matches_the_scale_mixture():
    """beta_j drawn through prior_sample has the marginal of the hierarchy: P(|beta| <= 1) computed independently
    by drawing (lambda, tau, c^2) with numpy and averaging the Gaussian probability 2 Phi(1 / scale) - 1."""
    t = RegularizedHorseshoeSynthetic(p=1, n=5, tau_scale=1.0, slab_scale=1.5).double()
    torch.manual_seed(1)
    beta = t.coefficients(t.prior_sample(100_000)).numpy()[:, 0]
    rng = np.random.default_rng(0)
    m = 400_000
    lam, tau = np.abs(rng.standard_cauchy(m)), np.abs(rng.standard_cauchy(m))
    c2 = stats.invgamma.rvs(t.slab_df / 2, scale=t.slab_df * t.slab_scale**2 / 2, size=m, random_state=rng)
    scale = tau * np.sqrt(c2 * lam**2 / (c2 + tau**2 * lam**2))
    want = np.mean(2 * stats.norm.cdf(1 / scale) - 1)
    assert np.mean(np.abs(beta) <= 1) == pytest.approx(want, abs=0.01)
    assert np.abs(beta).max() < 100  # the slab: no Cauchy-sized draws (a plain horseshoe gives |beta| ~ 1e4)


def test_slab_bounds_the_coefficient_scale():
    t = RegularizedHorseshoeSynthetic(p=3, n=10, p0=1).double()
    theta = torch.zeros(4, t.dim, dtype=torch.float64)
    theta[:, 3:6] = torch.tensor([0.0, 10.0, 40.0])  # log lambda: 1, e^10, e^40
    theta[:, 6] = torch.tensor([-2.0, 0.0, 1.0, 3.0])  # log tau
    theta[:, 8] = torch.tensor([0.0, 1.0, 2.0, -1.0])  # log c^2
    scale = torch.exp(t.log_scales(theta))
    c = torch.exp(theta[:, 8] / 2)
    tau_lam = torch.exp(theta[:, 3:6] + theta[:, 6:7])
    # tau * lambda_tilde <= min(c, tau * lambda), and -> c as lambda -> inf
    assert (scale <= torch.minimum(c[:, None], tau_lam) * (1 + 1e-12)).all()
    torch.testing.assert_close(scale[:, 2], c, rtol=1e-12, atol=0)
    # and equals the formula c tau lambda / sqrt(c^2 + tau^2 lambda^2)
    torch.testing.assert_close(scale, c[:, None] * tau_lam / torch.sqrt(c[:, None] ** 2 + tau_lam**2))
    theta[:, :3] = 1.5
    torch.testing.assert_close(t.coefficients(theta), 1.5 * scale)


def test_infinite_slab_is_the_plain_horseshoe():
    """c -> inf: the coefficients and the log likelihood are those of the plain horseshoe target on the first
    2p + 2 coordinates, and (Cauchy(0, 10) intercept, tau_scale 1) the prior differs by the c^2 density only."""
    rhs = RegularizedHorseshoeSynthetic(p=5, n=30, data_seed=4, tau_scale=1.0, intercept_df=1.0, intercept_scale=10.0)
    rhs = rhs.double()
    hs = HorseshoeLogisticRegression(rhs.X, rhs.y, tau_scale=1.0, intercept_scale=10.0).double()
    theta = torch.randn(6, rhs.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    theta[:, -1] = 60.0  # c^2 = e^60
    torch.testing.assert_close(rhs.coefficients(theta), hs.coefficients(theta[:, :-1]), rtol=1e-12, atol=0)
    torch.testing.assert_close(rhs.log_likelihood(theta), hs.log_likelihood(theta[:, :-1]), rtol=1e-12, atol=1e-12)
    a, b = rhs.slab_df / 2, rhs.slab_df * rhs.slab_scale**2 / 2
    log_p_c2 = stats.invgamma.logpdf(math.exp(60.0), a, scale=b) + 60.0
    diff = (rhs.prior_log_prob(theta) - hs.prior_log_prob(theta[:, :-1])).numpy()
    np.testing.assert_allclose(diff, log_p_c2, rtol=1e-10)
    # a finite slab shrinks: with lambda large, |beta| is bounded by |z| c, not |z| tau lambda
    theta[:, -1] = 0.0
    theta[:, 5:10] = 30.0
    assert (rhs.coefficients(theta).abs() <= theta[:, :5].abs() * (1 + 1e-12)).all()


def test_gradient_finite_at_extreme_scales():
    t = RegularizedHorseshoeSynthetic(p=4, n=20).double()
    theta = torch.randn(3, t.dim, dtype=torch.float64)
    theta[1, 4:8] = 40.0  # huge local scales
    theta[2, -1] = -30.0  # tiny slab
    theta[2, 8] = 20.0  # huge global scale
    theta.requires_grad_(True)
    lp = t.log_prob(theta)
    (g,) = torch.autograd.grad(lp.sum(), theta)
    assert torch.isfinite(lp).all() and torch.isfinite(g).all()
    x0 = theta[0].detach()
    for j in range(t.dim):
        e = torch.zeros_like(x0)
        e[j] = 1e-6
        fd = (t.log_prob((x0 + e)[None]) - t.log_prob((x0 - e)[None])) / 2e-6
        assert abs(float(fd) - float(g[0, j])) < 1e-5 * (1 + abs(float(fd)))


@pytest.mark.parametrize(
    "params, match",
    [
        ({"slab_scale": -1.0}, "slab_scale=-1.0 must be positive"),
        ({"slab_df": 0}, "slab_df=0 must be positive"),
        ({"intercept_scale": float("inf")}, "must be positive and finite"),
        ({"local_df": -2.0}, "local_df"),
        ({"tau_scale": 0.0}, "tau_scale=0.0 must be positive"),
        ({"p0": 0}, r"p0 .* must be in \(0, p=10\)"),
        ({"p0": 10}, r"must be in \(0, p=10\)"),
        ({"p": 0}, "p must be between"),
        ({"positive": "LUNG"}, "unknown cancer type"),
    ],
)
def test_bad_parameters(params, match):
    with pytest.raises(ValueError, match=match):
        make_target("regularized_horseshoe_nci60", **{"p": 10, **params})


def test_bad_data_shapes_and_options():
    with pytest.raises(TargetError, match="no parameter slab"):
        make_target("regularized_horseshoe_nci60", p=10, slab=2.0)
    with pytest.raises(ValueError, match=r"needs X of shape \(n, p\)"):
        RegularizedHorseshoeLogisticRegression(np.zeros((5, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="y must be 0/1"):
        RegularizedHorseshoeLogisticRegression(np.zeros((5, 2)), np.full(5, 2.0), p0=1)
    t = RegularizedHorseshoeSynthetic(p=3, n=10, p0=1)
    with pytest.raises(ValueError, match=r"theta must have shape \(batch, 9\)"):
        t.log_prob(torch.zeros(2, 8))
    with pytest.raises(ValueError, match="regularized_horseshoe_synthetic needs p >= 1"):
        make_target("regularized_horseshoe_synthetic", p=3, n_nonzero=4)


def test_benchmark_quick_mode(tmp_path):
    """benchmarks/regularized_horseshoe.py --quick: HMC, two flows and SMC on p = 10 write a complete JSON whose
    shares are those of flowvi.studies.stability's scorers."""
    import json

    bench = load_benchmark("regularized_horseshoe")
    out = tmp_path / "rhs.json"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["dim"] == 23 and [r["sampler"] for r in result["rows"]][:3] == ["HMC", "flow realnvp", "flow spline"]
    hmc, flow = result["rows"][0], result["rows"][1]
    assert "beta_rank_rhat_max" in hmc["convergence"] and set(hmc["convergence"]["rank_rhat_global"]) == {
        "log_tau",
        "beta0",
        "log_c2",
    }
    assert math.isfinite(flow["elbo"]) and 0 <= flow["scores"]["within_0.1_sd"] <= 1
    assert 0 <= result["zero_guess"]["within_0.1_sd"] <= 1 and math.isfinite(result["rows"][-1]["log_z"])
    # the regimes read log tau, beta0 and log c from the right coordinates
    target = make_target("regularized_horseshoe_nci60", p=3, p0=1).double()
    x = torch.zeros(5, target.dim, dtype=torch.float64)
    x[:, 6], x[:, 7], x[:, 8] = -3.0, -40.0, 2.0
    r = bench.regimes(target, x)
    assert r["log_tau_q05_q50_q95"] == pytest.approx([-3.0] * 3)
    assert r["beta0_q05_q50_q95"] == pytest.approx([-40.0] * 3)
    assert r["log_c_q05_q50_q95"] == pytest.approx([1.0] * 3)


def test_benchmark_fab_variants_and_reference_cache(tmp_path):
    """The -fabbuf variant records FAB's course against HMC; --reference-cache writes HMC once, reads it back
    for the same settings and refuses other settings."""
    import json

    bench = load_benchmark("regularized_horseshoe")
    cache, out = tmp_path / "ref.pt", tmp_path / "rhs.json"
    common = ["--quick", "--smc-repeats", "0", "--reference-cache", str(cache), "--out", str(out)]
    assert bench.main([*common, "--variants", "realnvp-fabbuf"]) == 0
    first = json.loads(out.read_text())
    row = first["rows"][1]
    assert row["fab"]["buffer"] == 64 and [t["step"] for t in row["fab_trace"]] == [2, 4, 5]
    assert all(0 <= t["scores"]["within_0.1_sd"] <= 1 and "buffer_ess" in t for t in row["fab_trace"])
    assert bench.main([*common, "--variants", "realnvp"]) == 0
    assert json.loads(out.read_text())["rows"][0] == first["rows"][0]  # HMC's row, read from the cache
    with pytest.raises(ValueError, match="holds HMC with .*'seed': 0.*this run asks for .*'seed': 1"):
        bench.main([*common, "--variants", "realnvp", "--seed", "1"])
    with pytest.raises(ValueError, match="unknown flow variant part"):
        bench.train_flow(3, "realnvp-fob", 1, 0, 2, 8, 8, 10)
