import math

import numpy as np
import pytest
import torch
from scipy import stats

from flowvi.diagnostics import gpd_fit, log_evidence, normalized_ess, pareto_k, summarize


def test_log_evidence_and_se_match_direct_computation():
    rng = np.random.default_rng(0)
    log_w = rng.normal(3.0, 1.0, size=5000)
    w = np.exp(log_w)
    est, se = log_evidence(log_w)
    assert est == pytest.approx(math.log(w.mean()), rel=1e-12)
    assert se == pytest.approx(w.std(ddof=1) / math.sqrt(len(w)) / w.mean(), rel=1e-9)
    # lognormal weights: E[w] = exp(mu + s^2/2)
    assert abs(est - 3.5) < 4 * se


def test_log_space_is_stable_for_huge_weights():
    log_w = torch.tensor([1e4, 1e4 + math.log(3.0)], dtype=torch.float64)
    est, _ = log_evidence(log_w)
    assert est == pytest.approx(1e4 + math.log(2.0), rel=1e-12)
    assert normalized_ess(log_w) == pytest.approx(16 / 20)


@pytest.mark.parametrize("k", [0.2, 0.5, 0.9])
def test_gpd_fit_recovers_shape(k):
    x = stats.genpareto(c=k, scale=2.0).rvs(size=4000, random_state=1)
    k_hat, sigma = gpd_fit(x)
    assert abs(k_hat - k) < 0.08
    assert abs(sigma - 2.0) < 0.25


def test_pareto_k_separates_good_and_bad_proposals():
    rng = np.random.default_rng(2)
    # q = N(0, 1) for p = N(0, 0.8^2): bounded weights, small k
    x = rng.normal(size=20000)
    good = stats.norm(0, 0.8).logpdf(x) - stats.norm.logpdf(x)
    # q = N(0, 1) for p = N(0, 3^2): w ~ exp(4 x^2 / 9) has a Pareto tail with k = 8/9
    bad = stats.norm(0, 3.0).logpdf(x) - stats.norm.logpdf(x)
    assert pareto_k(good) < 0.5
    assert pareto_k(bad) > 0.7


def test_summarize_keys():
    s = summarize(np.zeros(100))
    assert s["ess"] == pytest.approx(1.0) and s["log_z"] == pytest.approx(0.0) and s["log_z_se"] == 0.0
    assert set(s) == {"n", "elbo", "elbo_se", "log_z", "log_z_se", "ess", "pareto_k"}
