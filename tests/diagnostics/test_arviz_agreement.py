"""flowvi's one set of diagnostics equals ArviZ's on the same arrays: split, bulk, tail and rank R-hat; mean, bulk
and tail ESS (odd and even chains, tied draws, a constant indicator, NumPy and torch input); PSIS k-hat and the
smoothed log weights of ``arviz.psislw``."""

import arviz as az
import numpy as np
import pytest
import torch

from flowvi.diagnostics import mcmc
from flowvi.diagnostics.importance import pareto_k, psis_log_weights

RHAT = {"split": mcmc.split_rhat, "z_scale": mcmc.bulk_rhat, "folded": mcmc.tail_rhat, "rank": mcmc.rank_rhat}
ESS = {"mean": mcmc.effective_sample_size, "bulk": mcmc.bulk_ess, "tail": mcmc.tail_ess}


def chains(n: int, seed: int) -> np.ndarray:
    """(4, n, 6): random walks plus Cauchy noise (ESS from a few to ~n), one chain 3x wider, tied draws in the
    last coordinate, a near-constant one (its tail indicators are constant)."""
    rng = np.random.default_rng(seed)
    x = np.cumsum(rng.standard_normal((4, n, 6)), axis=1) * 0.1 + rng.standard_cauchy((4, n, 6))
    x[1] *= 3.0
    x[:, :, 5] = np.round(x[:, :, 5])
    x[:, :, 4] = np.where(rng.random((4, n)) < 0.97, 0.0, 1.0)
    return x


@pytest.mark.parametrize("n", [9, 40, 301, 1000])
def test_rhat_and_ess_equal_arviz(n):
    x = chains(n, seed=n)
    data = az.convert_to_dataset({"x": x})
    for method, fn in RHAT.items():
        np.testing.assert_allclose(fn(x), az.rhat(data, method=method)["x"].values, rtol=1e-12, err_msg=method)
    for method, fn in ESS.items():
        np.testing.assert_allclose(fn(x), az.ess(data, method=method)["x"].values, rtol=1e-10, err_msg=method)
    torch_out = mcmc.bulk_ess(torch.as_tensor(x))  # a tensor in, a tensor out: the same numbers
    assert isinstance(torch_out, torch.Tensor)
    np.testing.assert_array_equal(torch_out.numpy(), mcmc.bulk_ess(x))


def test_rank_diagnostics_of_float32_draws_follow_their_rounding():
    x = chains(200, seed=3).astype(np.float32)
    data = az.convert_to_dataset({"x": x.astype(np.float64)})
    np.testing.assert_allclose(mcmc.rank_rhat(x), az.rhat(data)["x"].values, rtol=1e-12)
    np.testing.assert_allclose(mcmc.tail_ess(x), az.ess(data, method="tail")["x"].values, rtol=1e-10)


@pytest.mark.parametrize("n,df", [(10_000, 3.0), (4_000, 1.0), (1_000, 10.0), (257, 2.0)])
def test_pareto_k_and_smoothed_weights_equal_arviz_psislw(n, df):
    log_w = np.random.default_rng(n).standard_t(df, size=n)
    smoothed, k = psis_log_weights(log_w)
    az_smoothed, az_k = az.psislw(log_w.copy(), normalize=False)
    assert k == pytest.approx(float(az_k), rel=1e-12) and pareto_k(log_w) == k
    np.testing.assert_allclose(smoothed, az_smoothed, rtol=0, atol=1e-12)
    assert pareto_k(torch.as_tensor(log_w)) == k
