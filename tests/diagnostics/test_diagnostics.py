import math

import numpy as np
import pytest
import torch
from scipy import stats

from flowvi.diagnostics.importance import gpd_fit, log_evidence, normalized_ess, pareto_k, summarize


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


def _gauss_log_w(rng, n, mu_p, sd_p, sd_q):
    """Draws x ~ N(0, sd_q^2) and log N(x; mu_p, sd_p^2) - log N(x; 0, sd_q^2)."""
    x = rng.normal(0.0, sd_q, n)
    log_p = -0.5 * ((x - mu_p) / sd_p) ** 2 - np.log(sd_p)
    log_q = -0.5 * (x / sd_q) ** 2 - np.log(sd_q)
    return x, log_p - log_q


def test_psis_keeps_the_bulk_and_estimates_a_mean():
    from flowvi.diagnostics.importance import psis_log_weights

    rng = np.random.default_rng(3)
    x, log_w = _gauss_log_w(rng, 4000, 1.0, 1.0, 1.5)  # wide proposal: k < 0.5
    smoothed, k = psis_log_weights(log_w)
    m = int(np.ceil(min(4000 / 5, 3 * np.sqrt(4000))))  # ceil, as in ArviZ
    changed = np.flatnonzero(smoothed != log_w)
    assert len(changed) <= m and set(changed) <= set(np.argsort(log_w)[-m:])
    assert smoothed.max() <= log_w.max() + 1e-12
    tail = smoothed[np.argsort(log_w)[-m:]]
    assert np.all(np.diff(tail) >= -1e-12)  # expected order statistics, in order
    assert k < 0.5 and abs(k - pareto_k(log_w)) < 1e-12
    w = np.exp(smoothed - smoothed.max())
    assert abs((w * x).sum() / w.sum() - 1.0) < 0.1  # E_p[x] = 1


def test_psis_lowers_the_variance_of_heavy_tailed_estimates():
    """q narrower than p (0.5 < k < 0.7): a few raw self-normalized IS estimates of E_p[x^2] = 1 are far off (one
    huge weight); PSIS caps the tail, so its worst estimate over 200 repetitions is much closer."""
    from flowvi.diagnostics.importance import psis_log_weights

    rng = np.random.default_rng(4)
    raw, smooth, ks = [], [], []
    for _ in range(200):
        x, log_w = _gauss_log_w(rng, 2000, 0.0, 1.0, 0.5)
        for est, lw in ((raw, log_w), (smooth, psis_log_weights(log_w)[0])):
            w = np.exp(lw - lw.max())
            est.append((w * x**2).sum() / w.sum())
        ks.append(pareto_k(log_w))
    assert 0.5 < np.median(ks) < 0.7  # the range where PSIS is reliable and raw IS is not
    worst = lambda e: np.abs(np.asarray(e) - 1.0).max()  # noqa: E731
    assert worst(smooth) < 0.5 * worst(raw)


def test_psis_passes_non_finite_weights_through():
    from flowvi.diagnostics.importance import psis_log_weights

    log_w = np.random.default_rng(5).normal(size=500)
    log_w[:3] = -np.inf
    smoothed, k = psis_log_weights(log_w)
    assert np.all(np.isneginf(smoothed[:3])) and np.all(np.isfinite(smoothed[3:])) and np.isfinite(k)
    same, k_small = psis_log_weights(np.zeros(10))  # too few draws for a tail fit: unchanged
    assert np.isnan(k_small) and np.array_equal(same, np.zeros(10))
