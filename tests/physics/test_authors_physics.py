"""flowvi's lattice actions against the REINFORCE authors' own code (neumc, arXiv 2308.13294), float64.

neumc is not a dependency of flowvi: it sits in ``shared/ext/neumc`` beside the clone (``../shared`` from the
repository root; the environment variable ``FLOWVI_NEUMC`` overrides the location) and is put on ``sys.path``
here. Its absence is an error, not a skip.
"""

import math
import os
import sys
from pathlib import Path

import pytest
import torch

from flowvi.physics.u1 import exact_log_partition_function, topological_charge, wilson_action
from flowvi.targets import make_target
from flowvi.targets.phi4 import phi4_action

NEUMC = Path(os.environ.get("FLOWVI_NEUMC") or Path(__file__).resolve().parents[3] / "shared" / "ext" / "neumc")
if not (NEUMC / "neumc" / "__init__.py").is_file():
    raise ImportError(
        f"the authors' package neumc is missing: expected it at {NEUMC} (shared/ beside the clone, or set FLOWVI_NEUMC)"
    )
sys.path.insert(0, str(NEUMC))

from neumc.physics import phi4 as neumc_phi4  # noqa: E402
from neumc.physics import schwinger as neumc_schwinger  # noqa: E402
from neumc.physics import u1 as neumc_u1  # noqa: E402

TWO_PI = 2 * math.pi


def random_links(B, L, seed):
    g = torch.Generator().manual_seed(seed)
    return TWO_PI * torch.rand(B, 2, L, L, generator=g, dtype=torch.float64)


def neumc_qed_action(links, beta, kappa):
    """neumc's ``QEDAction`` (gauge action - 2 Re log det D) with its Dirac matrix built in complex128:
    ``U1FermionAction`` itself fixes complex64, which would limit the comparison to single precision."""
    D = neumc_schwinger.Dirac(links, kappa, device=links.device, float_dtype=torch.complex128)
    return neumc_u1.U1GaugeAction(beta)(links) - 2 * torch.real(torch.logdet(D))


@pytest.mark.parametrize("L", [4, 8])
@pytest.mark.parametrize("beta,kappa", [(2.0, 0.276), (1.0, 0.2)])
def test_schwinger_action_equals_neumc(L, beta, kappa):
    links = random_links(4, L, seed=L)
    target = make_target("schwinger", L=L, beta=beta, kappa=kappa).double()
    ours = -target.log_prob(links)
    theirs = neumc_qed_action(links, beta, kappa)
    assert ours.dtype == theirs.dtype == torch.float64
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-10), (ours - theirs).abs().max()
    # a smooth field near the identity, where the determinant is largest
    smooth = 0.05 * random_links(2, L, seed=99)
    assert torch.allclose(-target.log_prob(smooth), neumc_qed_action(smooth, beta, kappa), rtol=0, atol=1e-10)


@pytest.mark.parametrize("L,beta", [(4, 1.0), (8, 3.0)])
def test_u1_action_and_charge_equal_neumc(L, beta):
    links = random_links(5, L, seed=L + 1)
    theirs = neumc_u1.U1GaugeAction(beta)(links)
    assert torch.allclose(wilson_action(links, beta), theirs, rtol=0, atol=1e-10)
    assert torch.allclose(-make_target("u1", L=L, beta=beta).double().log_prob(links), theirs, rtol=0, atol=1e-10)
    assert torch.allclose(topological_charge(links), neumc_u1.topo_charge(links), rtol=0, atol=1e-10)


def test_u1_log_partition_function_equals_neumc():
    """neumc's ``logZ`` truncates log(1 + x) at second order in x = 2 sum_n (I_n/I_0)^V, which is exact to
    far below 1e-10 once x is tiny (here x < 1e-6). neumc normalizes the Haar measure to one, flowvi takes
    Lebesgue measure on ``[0, 2pi)^(2V)``: the two differ by ``2V log 2pi``."""
    for L, beta in [(8, 2.0), (16, 3.0)]:
        haar = 2 * L * L * math.log(TWO_PI)
        assert exact_log_partition_function(beta, L) - haar == pytest.approx(neumc_u1.logZ(L, beta, n=5), abs=1e-10)


@pytest.mark.parametrize("L,kappa,lam", [(4, 0.3, 0.022), (8, 0.21, 1.0)])
def test_phi4_action_equals_neumc(L, kappa, lam):
    """flowvi's hopping form S(phi) equals neumc's (m^2, lambda) form at phi_neumc = sqrt(2 kappa) phi with
    m^2 = (1 - 2 lambda) / kappa - 4 and lambda_neumc = 6 lambda / kappa^2 (expand both actions)."""
    g = torch.Generator().manual_seed(L)
    phi = 1.5 * torch.randn(6, L, L, generator=g, dtype=torch.float64)
    m2, lam_n = (1 - 2 * lam) / kappa - 4, 6 * lam / kappa**2
    theirs = neumc_phi4.ScalarPhi4Action(m2, lam_n)(math.sqrt(2 * kappa) * phi)
    assert torch.allclose(phi4_action(phi, kappa, lam), theirs, rtol=0, atol=1e-10)
    target = make_target("phi4", L=L, kappa=kappa, lam=lam)
    assert torch.allclose(-target.log_prob(phi), theirs, rtol=0, atol=1e-10)
