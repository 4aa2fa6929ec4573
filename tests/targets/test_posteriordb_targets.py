"""The reference posteriors of benchmarks/posteriors.py: each flowvi target against an independent NumPyro
model (same density up to one constant), batched and finite, and consistent with its reference file."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from flowvi.targets import TARGETS, make_target
from flowvi.targets.posteriordb import POSTERIORDB_TARGETS
from flowvi.targets.suite import SUITE_TARGETS

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks" / "posteriors"))

from numpyro_models import MODELS, potential_energy  # noqa: E402

REFS = ROOT / "benchmarks" / "posteriors" / "references"
NAMES = [*POSTERIORDB_TARGETS, *SUITE_TARGETS]


def reference(name):
    return json.loads((REFS / f"{name}.json").read_text())


@pytest.mark.parametrize("name", [*NAMES, "funnel"])
def test_log_density_matches_numpyro_up_to_a_constant(name):
    target = make_target(name).double()
    rng = np.random.default_rng(1)
    xs = rng.normal(size=(3, target.dim)) * 0.3
    lp = target.log_prob(torch.tensor(xs)).numpy()
    consts = lp + potential_energy(name, xs)
    assert np.all(np.isfinite(consts)), consts
    assert np.ptp(consts) < 1e-8 * max(1.0, np.abs(lp).max()), (name, consts)
    if name in ("funnel", "gauss_mix_separated"):  # normalized targets: the constant itself is zero
        assert abs(consts[0]) < 1e-6  # float32 constants of the mixture


@pytest.mark.parametrize("name", NAMES)
def test_batched_finite_and_reports_the_reference_parameters(name):
    assert name in TARGETS
    target = make_target(name)  # no parameters needed: `flowvi fit NAME` works
    x = 0.3 * torch.randn(257, target.dim, generator=torch.Generator().manual_seed(0))
    lp = target.log_prob(x)
    assert lp.shape == (257,) and torch.isfinite(lp).all()
    assert torch.allclose(target.log_prob(x[:5]), lp[:5], rtol=1e-4, atol=1e-3)  # rows are independent
    assert target.constrain(x).shape == (257, len(target.param_names))
    ref = reference(name)
    assert ref["params"] == target.param_names
    assert len(ref["mean"]) == len(ref["sd"]) == len(ref["params"]) and min(ref["sd"]) > 0
    assert ref["source"] and ref["command"]


def test_constrained_parameters_and_jacobians():
    """The garch map respects beta1 < 1 - alpha1; eight schools reports theta = mu + tau theta_trans."""
    g = make_target("garch-garch11").double()
    c = g.constrain(torch.randn(1000, 4, dtype=torch.float64) * 3)
    assert (c[:, 1] > 0).all() and ((c[:, 2] > 0) & (c[:, 2] < 1)).all() and (c[:, 3] < 1 - c[:, 2]).all()
    e = make_target("eight_schools-eight_schools_noncentered").double()
    x = torch.randn(4, 10, dtype=torch.float64)
    theta = e.constrain(x)[:, :8]
    assert torch.allclose(theta, x[:, 8:9] + torch.exp(x[:, 9:10]) * x[:, :8])


def test_centered_eight_schools_declares_its_funnel():
    """Each theta_j's scale is set by (mu, log tau): the hierarchy that --hierarchical auto follows, so that the
    centered and non-centered models fit alike."""
    ((children, parents),) = make_target("eight_schools-eight_schools_centered").hierarchy()
    assert children.tolist() == list(range(8)) and parents.tolist() == [[8, 9]] * 8


def test_exact_references():
    mix = make_target("gauss_mix_separated").double()
    mean, sd = mix.exact_moments()
    ref = reference("gauss_mix_separated")
    assert np.allclose(ref["mean"], mean) and np.allclose(ref["sd"], sd) and ref["log_z"] == 0.0
    torch.manual_seed(0)
    draws = mix.sample(200_000)
    assert np.allclose(draws.mean(0), mean, atol=0.05) and np.allclose(draws.std(0), sd, atol=0.05)
    funnel = reference("funnel")
    assert funnel["sd"][0] == 3.0 and math.isclose(funnel["sd"][1], math.exp(9 / 4))
    assert set(MODELS) == {*NAMES, "funnel"}
