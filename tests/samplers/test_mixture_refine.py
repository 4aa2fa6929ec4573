"""Independence MH with a mixture of flows as proposal (flowvi refine --method mixture): the target is its
stationary distribution whatever the mixture's weights, chains started in different modes agree, and the
mixture's importance-sampling log Z is right."""

import math

import numpy as np
import pytest
import torch

from flowvi.core.mixture import FlowMixture
from flowvi.samplers.neutra import RefineOptions, imh_chains, mixture_refine
from flowvi.targets import CallableTarget
from tests.core.test_mixture import CENTRES, SCALES, WEIGHTS, gaussian_flow, mixture_log_prob

LOG_Z = 0.8


def target():
    return CallableTarget(lambda x: mixture_log_prob(x, log_z=LOG_Z), dim=2)


def wrong_mixture():
    """Equal weights (not 0.2/0.3/0.5), scales 30 % too wide: a covering but poor proposal."""
    flows = [gaussian_flow(m, 1.3 * s) for m, s in zip(CENTRES, SCALES, strict=True)]
    return FlowMixture(flows, torch.full((3,), -math.log(3), dtype=torch.float64))


def test_imh_with_a_wrong_mixture_has_the_target_as_stationary_distribution():
    """The accept ratio w(x')/w(x) corrects weights and scales: mode shares and E[x_1^2] within Monte Carlo
    error of the exact ones, from chains that start in the two outer modes."""
    torch.manual_seed(0)
    starts = torch.tensor([[-6.0, -6.0], [6.0, 6.0]], dtype=torch.float64)
    x, info = imh_chains(wrong_mixture(), target(), chains=4, draws=20_000, seed=3, starts=starts)
    x = x.reshape(-1, 2)
    share = np.bincount(np.abs(x[:, :1] - np.array(CENTRES)).argmin(1), minlength=3) / len(x)
    assert np.abs(share - WEIGHTS).max() < 0.02  # IMH at acceptance ~0.7: effective n ~ 3e4, se of a share <= 0.003
    second = sum(w * (s**2 + m**2) for w, m, s in zip(WEIGHTS, CENTRES, SCALES, strict=True))
    assert abs((x[:, 0] ** 2).mean() / second - 1) < 0.03
    assert 0.3 < info["accept"] < 1


def test_mixture_refine_records_exact_log_z_and_a_trustworthy_verdict():
    torch.manual_seed(1)
    starts = torch.tensor([[-6.0, -6.0], [0.0, 0.0], [6.0, 6.0]], dtype=torch.float64)
    options = RefineOptions(chains=4, draws=5000)
    x, record = mixture_refine(wrong_mixture(), target(), options, log=lambda *_: None, starts=starts, n_eval=40_000)
    assert x.shape == (4, 5000, 2)
    assert record["method"] == "mixture" and record["components"] == 3
    assert record["log_z"] == pytest.approx(LOG_Z, abs=4 * record["log_z_se"] + 1e-3)
    assert record["pareto_k"] < 0.7 and record["rhat_max"] < 1.01
    assert record["verdict"]["trustworthy"] and "mode mixture" in record["verdict"]["reason"]


def test_a_mixture_missing_a_mode_is_caught_by_rhat():
    """Two components only: the chain started in the third mode never leaves it (its weight p/q is enormous),
    the others never reach it, and R-hat says so."""
    torch.manual_seed(2)
    flows = [gaussian_flow(m, s) for m, s in zip(CENTRES[:2], SCALES[:2], strict=True)]
    mixture = FlowMixture(flows, torch.tensor([0.4, 0.6], dtype=torch.float64).log())
    starts = torch.tensor([[6.0, 6.0]], dtype=torch.float64)
    _, record = mixture_refine(
        mixture, target(), RefineOptions(chains=4, draws=2000), log=lambda *_: None, starts=starts, n_eval=4000
    )
    assert record["rhat_max"] > 1.1 and not record["verdict"]["trustworthy"]
