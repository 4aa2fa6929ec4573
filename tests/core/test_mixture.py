"""FlowMixture (issue 20, modes reverse KL drops): its density is the weighted sum of its components', its draws
pick components in proportion to the weights, and with the exact components and weights of a Gaussian mixture
every importance weight equals Z."""

import math

import pytest
import torch

from flowvi.core import Flow, StandardNormal
from flowvi.core.mixture import FlowMixture, weights_from_log_evidence
from flowvi.diagnostics.evaluate import evaluate
from flowvi.targets import CallableTarget
from flowvi.transforms import ElementwiseAffine

WEIGHTS, CENTRES, SCALES = (0.2, 0.3, 0.5), (-6.0, 0.0, 6.0), (1.0, 0.7, 1.3)


def gaussian_flow(centre: float, scale: float, dim: int = 2) -> Flow:
    """``N(centre 1, scale^2 I)`` as a flow: a standard normal through one affine layer."""
    affine = ElementwiseAffine(dim)
    with torch.no_grad():
        affine.loc.fill_(centre)
        affine.log_scale.fill_(math.log(scale))
    return Flow(StandardNormal(dim), [affine]).double()


def mixture_log_prob(x, log_z: float = 0.0):
    """``log Z + log sum_k w_k N(x | m_k 1, s_k^2 I)``, written out independently of the flows."""
    d = x.shape[-1]
    terms = [
        math.log(w) - 0.5 * (((x - m) / s) ** 2).sum(-1) - d * (math.log(s) + 0.5 * math.log(2 * math.pi))
        for w, m, s in zip(WEIGHTS, CENTRES, SCALES, strict=True)
    ]
    return log_z + torch.logsumexp(torch.stack(terms, -1), -1)


def exact_mixture() -> FlowMixture:
    flows = [gaussian_flow(m, s) for m, s in zip(CENTRES, SCALES, strict=True)]
    return FlowMixture(flows, torch.tensor(WEIGHTS, dtype=torch.float64).log())


def test_log_prob_is_the_weighted_sum_of_the_components():
    x = torch.randn(50, 2, dtype=torch.float64) * 5
    assert torch.allclose(exact_mixture().log_prob(x), mixture_log_prob(x), atol=1e-10)


def test_draws_pick_components_by_their_weights():
    torch.manual_seed(0)
    x, log_q = exact_mixture().sample_and_log_prob(40_000)
    nearest = torch.stack([(x - m).norm(dim=1) for m in CENTRES], 1).argmin(1)
    share = torch.bincount(nearest, minlength=3).double() / len(x)
    se = (torch.tensor(WEIGHTS) * (1 - torch.tensor(WEIGHTS)) / len(x)).sqrt()
    assert ((share - torch.tensor(WEIGHTS, dtype=torch.float64)).abs() < 4 * se).all()
    assert torch.allclose(log_q, mixture_log_prob(x), atol=1e-10)


def test_exact_mixture_gives_constant_weights_and_log_z():
    """q = p / Z exactly: every log weight is log Z, so IS log Z is exact with any number of draws and k-hat is
    -inf or undefined (no tail)."""
    torch.manual_seed(1)
    target = CallableTarget(lambda x: mixture_log_prob(x, log_z=1.7), dim=2)
    stats = evaluate(exact_mixture(), target, n=2000)
    assert stats["log_z"] == pytest.approx(1.7, abs=1e-9) and stats["ess"] == pytest.approx(1.0)


def test_weights_from_component_evidence_recover_the_mode_masses():
    """Z_k = E_{q_k}[p / q_k] is mode k's mass when q_k is that mode's Gaussian and the modes are separated:
    pi_k = Z_k / sum_j Z_j are the mixture's weights, up to the IS error."""
    torch.manual_seed(2)
    target = CallableTarget(lambda x: mixture_log_prob(x, log_z=-3.0), dim=2)
    log_z = [evaluate(gaussian_flow(m, s), target, n=4000)["log_z"] for m, s in zip(CENTRES, SCALES, strict=True)]
    assert torch.allclose(torch.tensor(log_z), torch.tensor(WEIGHTS).log() - 3.0, atol=1e-6)
    assert torch.allclose(weights_from_log_evidence(log_z).exp(), torch.tensor(WEIGHTS, dtype=torch.float64))


def test_bad_weights_are_refused():
    with pytest.raises(ValueError, match="sum to 1"):
        FlowMixture([gaussian_flow(0, 1), gaussian_flow(1, 1)], torch.tensor([0.5, 0.6]).log())
    with pytest.raises(ValueError, match="finite log evidence"):
        weights_from_log_evidence([-math.inf, math.nan])
    assert weights_from_log_evidence([0.0, -math.inf]).exp().tolist() == [1.0, 0.0]
