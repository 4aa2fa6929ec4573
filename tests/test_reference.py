"""Reference summaries of MCMC draws: split R-hat and ESS against known values and Pyro's estimators,
and the .npz round trip through the stability study's reader."""

import json

import numpy as np
import pytest
import torch

from flowvi.reference import effective_sample_size, split_chains, split_rhat, summarize_chains, write_reference
from flowvi.stability import reference_stats
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
    stats = pytest.importorskip("pyro.ops.stats")
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
