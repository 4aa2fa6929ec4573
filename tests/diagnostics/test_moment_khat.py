"""The function-specific k-hat (Vehtari et al. 2024) that the fit's verdict checks for means and sds: the tail
index of ``h w`` where w alone is harmless, and the verdict that follows from it."""

import numpy as np
import pytest

from flowvi.diagnostics.importance import moment_pareto_k
from flowvi.diagnostics.resample import moment_k_hat
from flowvi.diagnostics.verdict import fit_verdict


@pytest.mark.parametrize("df", [2.5, 5.0])
def test_moment_khat_is_the_tail_index_of_the_moments(df):
    """q = p = Student-t(df): every weight is 1 (k-hat of w undefined), but ``|x|`` has a Pareto tail of index
    1/df and ``x^2`` of index 2/df under q: the sd of draws is unreliable for df < 2 / 0.7 ~ 2.9."""
    x = np.random.default_rng(0).standard_t(df, size=(200_000, 1))
    k = moment_pareto_k(np.zeros(len(x)), x)
    assert k.shape == (2, 1)
    assert k[0, 0] == pytest.approx(1 / df, abs=0.08) and k[1, 0] == pytest.approx(2 / df, abs=0.08)


def test_moment_khat_names_the_worst_parameter():
    rng = np.random.default_rng(1)
    y = np.column_stack([rng.normal(size=100_000), rng.standard_t(2.2, size=100_000)])
    info = moment_k_hat(y, np.zeros(len(y)), names=["mu", "tau"])
    assert info["moment_k_hat_param"] == "tau" and info["moment_k_hat"] > 0.7


def test_verdict_is_not_trustworthy_when_the_moments_are_heavy_tailed():
    summary = {"pareto_k": 0.6, "ess": 0.1, "n": 100_000}
    assert fit_verdict(summary)["trustworthy"]
    heavy = {**summary, "samples": {"moment_k_hat": 0.9, "moment_k_hat_param": "tau"}}
    verdict = fit_verdict(heavy)
    assert not verdict["trustworthy"] and "tau" in verdict["reason"] and "refine" in verdict["action"]
    assert fit_verdict({**summary, "samples": {"moment_k_hat": float("nan")}})["trustworthy"]


def test_reported_parameters_of_a_pyro_model_are_its_sites_flattened():
    import torch

    from flowvi.diagnostics.resample import reported

    y, names = reported({"mu": torch.zeros(5), "theta": torch.arange(15.0).reshape(5, 3)})
    assert y.shape == (5, 4) and names == ["mu", "theta[0]", "theta[1]", "theta[2]"]
    assert (y[:, 1:] == torch.arange(15.0).reshape(5, 3).numpy()).all()
    y, names = reported(torch.ones(5, 2))
    assert y.shape == (5, 2) and names is None
