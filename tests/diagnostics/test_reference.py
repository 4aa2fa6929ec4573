"""Reference summaries of MCMC draws: split R-hat and ESS against known values and Pyro's estimators, the
rank-normalized R-hat, bulk- and tail-ESS (Vehtari et al. 2021) on Gaussian and Cauchy chains, and the .npz round
trip through the stability study's reader (old files without the new keys included)."""

import json

import numpy as np
import pytest
import torch

from flowvi.diagnostics.mcmc import (
    QUANTILES,
    bulk_ess,
    bulk_rhat,
    convergence_info,
    effective_sample_size,
    rank_normalize,
    rank_rhat,
    split_chains,
    split_rhat,
    summarize_chains,
    tail_ess,
    tail_rhat,
    write_reference,
)
from flowvi.studies.stability import reference_stats
from flowvi.targets import HorseshoeSynthetic


def ar1(chains, n, d, phi, seed=0):
    rng = np.random.default_rng(seed)
    x = np.empty((chains, n, d))
    x[:, 0] = rng.standard_normal((chains, d)) / np.sqrt(1 - phi**2)
    for t in range(1, n):
        x[:, t] = phi * x[:, t - 1] + rng.standard_normal((chains, d))
    return x


def test_iid_chains_have_rhat_one_and_full_ess():
    x = np.random.default_rng(1).standard_normal((4, 2000, 50))
    assert np.abs(split_rhat(x) - 1).max() < 0.01
    ess = effective_sample_size(x)
    assert 0.8 * 8000 < np.median(ess) < 1.2 * 8000


def test_ar1_ess_matches_theory():
    phi = 0.8
    x = ar1(4, 4000, 40, phi)
    expected = 4 * 4000 * (1 - phi) / (1 + phi)  # integrated autocorrelation time (1 + phi) / (1 - phi)
    assert 0.8 * expected < np.median(effective_sample_size(x)) < 1.2 * expected


def test_disagreeing_chains_have_large_rhat():
    x = np.random.default_rng(2).standard_normal((2, 500, 10))
    x[1] += 2.0
    assert split_rhat(x).min() > 1.3


def test_agrees_with_pyro():
    from pyro.ops import stats

    x = ar1(3, 600, 20, 0.6, seed=3)
    t = torch.as_tensor(x)
    np.testing.assert_allclose(split_rhat(x), stats.split_gelman_rubin(t, 0, 1).numpy(), rtol=1e-6)
    # Pyro does not split the chains (give it the split ones), divides lag-k autocovariances by n - k instead of n
    # and clamps negative pair sums instead of stopping at the first: a few per cent apart
    pyro_ess = stats.effective_sample_size(torch.as_tensor(split_chains(x)), 0, 1).numpy()
    np.testing.assert_allclose(effective_sample_size(x), pyro_ess, rtol=0.03)


def test_npz_round_trip_feeds_the_study(tmp_path):
    target = HorseshoeSynthetic(p=5, n=20).double()
    chains = np.random.default_rng(4).standard_normal((2, 100, target.dim))
    summary = summarize_chains(target, chains)
    beta = target.coefficients(torch.as_tensor(chains.reshape(200, -1))).numpy()
    np.testing.assert_allclose(summary["mean"], beta.mean(0))
    np.testing.assert_allclose(summary["sd"], beta.std(0))
    write_reference(tmp_path / "ref.npz", summary, {"sampler": "test"})
    ref = reference_stats(target, tmp_path / "ref.npz")
    np.testing.assert_allclose(ref["mean"], summary["mean"])
    np.testing.assert_array_equal(ref["plot"], summary["plot"])
    assert ref["draws"].shape == (200, 4)
    assert json.loads(str(np.load(tmp_path / "ref.npz")["info"]))["sampler"] == "test"
    with pytest.raises(ValueError, match="summarises 5 coordinates"):
        reference_stats(HorseshoeSynthetic(p=6, n=20).double(), tmp_path / "ref.npz")


def test_rank_normalize_gives_normal_scores_of_average_ranks():
    x = np.array([[3.0, 1.0, 7.0], [7.0, 0.5, 2.0]])[:, :, None]  # (2 chains, 3 draws, 1): 7 is tied
    z = rank_normalize(x)[:, :, 0]
    ranks = np.array([[4, 2, 5.5], [5.5, 1, 3]])
    np.testing.assert_allclose(z, scipy_ndtri((ranks - 0.375) / 6.25), rtol=1e-14)
    # invariant to monotone transformations: bulk R-hat and bulk-ESS of exp(x) are those of x (not the tail
    # R-hat: folding at the median does not commute with exp)
    y = ar1(3, 200, 4, 0.5, seed=7)
    np.testing.assert_allclose(bulk_rhat(np.exp(y)), bulk_rhat(y), rtol=1e-12)
    np.testing.assert_allclose(bulk_ess(np.exp(y)), bulk_ess(y), rtol=1e-12)


def scipy_ndtri(p):
    from scipy.stats import norm

    return norm.ppf(p)


def test_rank_rhat_and_bulk_ess_of_well_mixed_gaussian_chains():
    x = np.random.default_rng(1).standard_normal((4, 1000, 50))
    assert np.abs(rank_rhat(x) - 1).max() < 0.01
    assert np.all((bulk_ess(x) > 0.8 * 4000) & (bulk_ess(x) < 1.2 * 4000))
    assert np.all((tail_ess(x) > 0.7 * 4000) & (tail_ess(x) < 1.2 * 4000))  # the smaller of two estimates
    # for Gaussian draws rank normalization changes little: bulk-ESS of AR(1) chains is the classic ESS
    y = ar1(4, 2000, 20, 0.8, seed=8)
    np.testing.assert_allclose(bulk_ess(y), effective_sample_size(y), rtol=0.05)


def test_rank_rhat_flags_a_shifted_chain():
    x = np.random.default_rng(2).standard_normal((4, 1000, 20))
    x[1] += 2.0  # one chain 2 sds off
    assert rank_rhat(x).min() > 1.1
    assert np.all(rank_rhat(x) == np.maximum(bulk_rhat(x), tail_rhat(x)))


def test_cauchy_chains_rank_rhat_valid_and_tail_rhat_catches_scale():
    rng = np.random.default_rng(3)
    x = rng.standard_cauchy((4, 1000, 20))  # infinite variance: classic R-hat has no population value
    assert np.abs(rank_rhat(x) - 1).max() < 0.02
    assert tail_ess(x).min() > 0.7 * 4000 and bulk_ess(x).min() > 0.8 * 4000
    # one chain with 3 times the scale: same median, so the bulk (and classic) R-hat does not see it, the tail
    # R-hat (of |x - median|) does
    y = rng.standard_cauchy((2, 2000, 20))
    y[0] *= 3
    assert bulk_rhat(y).max() < 1.01
    assert tail_rhat(y).min() > 1.05
    assert rank_rhat(y).min() > 1.05


def test_summary_has_quantiles_and_rank_diagnostics(tmp_path):
    target = HorseshoeSynthetic(p=5, n=20).double()
    chains = np.random.default_rng(4).standard_normal((2, 100, target.dim))
    s = summarize_chains(target, chains)
    beta = target.coefficients(torch.as_tensor(chains.reshape(200, -1))).numpy()
    for key, q in QUANTILES:
        np.testing.assert_allclose(s[key], np.quantile(beta, q, axis=0), rtol=1e-12, err_msg=key)
    coords = beta.reshape(2, 100, -1)
    np.testing.assert_array_equal(s["rank_rhat"], rank_rhat(coords))
    np.testing.assert_array_equal(s["bulk_ess"], bulk_ess(coords))
    np.testing.assert_array_equal(s["tail_ess"], tail_ess(coords))
    np.testing.assert_array_equal(s["rank_rhat_theta"], rank_rhat(chains))
    np.testing.assert_array_equal(s["bulk_ess_theta"], bulk_ess(chains))
    info = convergence_info(s)
    assert info["beta_rank_rhat_max"] == s["rank_rhat"].max()
    assert info["beta_rank_rhat_share_below_1.05"] == np.mean(s["rank_rhat"] < 1.05)
    assert info["beta_bulk_ess_median"] == np.median(s["bulk_ess"]) and info["beta_tail_ess_min"] == s["tail_ess"].min()
    assert info["theta_rank_rhat_max"] == s["rank_rhat_theta"].max()
    # the new file has the new keys; the study's reader takes the quantiles for its robust score
    write_reference(tmp_path / "new.npz", s, info)
    with np.load(tmp_path / "new.npz") as f:
        new_keys = {"q05", "q25", "median", "q75", "q95", "rank_rhat", "bulk_ess", "tail_ess"}
        assert new_keys | {"rank_rhat_theta", "bulk_ess_theta"} <= set(f.files)
        np.testing.assert_array_equal(f["rank_rhat"], s["rank_rhat"])
    ref = reference_stats(target, tmp_path / "new.npz")
    np.testing.assert_array_equal(ref["median"], s["median"])
    np.testing.assert_array_equal(ref["q75"], s["q75"])
    # a file written before the quantiles and rank diagnostics existed still loads, without them
    old = {k: s[k] for k in ("mean", "sd", "rhat", "ess", "rhat_theta", "ess_theta", "plot", "draws")}
    old_info = convergence_info(old)
    assert "beta_rhat_max" in old_info and "beta_rank_rhat_max" not in old_info
    write_reference(tmp_path / "old.npz", old, old_info)
    ref = reference_stats(target, tmp_path / "old.npz")
    assert set(ref) == {"mean", "sd", "plot", "draws"}
    np.testing.assert_array_equal(ref["mean"], s["mean"])
