"""Wilson–Dirac operator and the Schwinger-model target against a dense loop-based reference."""

import math

import pytest
import torch

from flowvi.physics.dirac import free_dirac_eigenvalues, gamma_matrices, log_abs_det_dirac, wilson_dirac
from flowvi.physics.u1 import gauge_transform, wilson_action, wrap
from flowvi.targets import TARGETS, make_target
from flowvi.targets.gauge import SCHWINGER_PRESETS

TWO_PI = 2 * math.pi


def dense_reference(links, kappa, antiperiodic=True):
    """Explicit loops over sites and directions (one configuration)."""
    _, L0, L1 = links.shape
    V = L0 * L1
    g0, g1, _ = gamma_matrices()
    gam = (g0, g1)
    eye = torch.eye(2, dtype=torch.complex128)
    D = torch.eye(2 * V, dtype=torch.complex128)

    def idx(x0, x1):
        return (x0 % L0) * L1 + (x1 % L1)

    for x0 in range(L0):
        for x1 in range(L1):
            s = idx(x0, x1)
            for mu in (0, 1):
                e = (1, 0) if mu == 0 else (0, 1)
                # forward hop x -> x + mu
                y0, y1 = x0 + e[0], x1 + e[1]
                sign = -1.0 if (antiperiodic and mu == 0 and y0 == L0) else 1.0
                u = sign * torch.exp(1j * links[mu, x0, x1].to(torch.complex128))
                t = idx(y0, y1)
                D[2 * s : 2 * s + 2, 2 * t : 2 * t + 2] -= kappa * (eye - gam[mu]) * u
                # backward hop x -> x - mu uses U_mu(x - mu)^*
                y0, y1 = x0 - e[0], x1 - e[1]
                sign = -1.0 if (antiperiodic and mu == 0 and y0 == -1) else 1.0
                u = sign * torch.exp(-1j * links[mu, y0 % L0, y1 % L1].to(torch.complex128))
                t = idx(y0, y1)
                D[2 * s : 2 * s + 2, 2 * t : 2 * t + 2] -= kappa * (eye + gam[mu]) * u
    return D


@pytest.mark.parametrize("antiperiodic", [True, False])
def test_matches_dense_reference(antiperiodic):
    torch.manual_seed(0)
    links = TWO_PI * torch.rand(2, 2, 4, 3, dtype=torch.float64)
    D = wilson_dirac(links, 0.23, antiperiodic)
    assert D.shape == (2, 24, 24) and D.dtype == torch.complex128
    for b in range(2):
        assert torch.allclose(D[b], dense_reference(links[b], 0.23, antiperiodic), atol=1e-13)


def test_gamma5_hermiticity():
    torch.manual_seed(1)
    links = TWO_PI * torch.rand(3, 2, 4, 4, dtype=torch.float64)
    D = wilson_dirac(links, 0.27)
    g5 = torch.kron(torch.eye(16, dtype=torch.complex128), gamma_matrices()[2])
    assert torch.allclose(g5 @ D @ g5, D.conj().transpose(-2, -1), atol=1e-13)
    assert not torch.allclose(D, D.conj().transpose(-2, -1))  # D itself is not hermitian


@pytest.mark.parametrize("antiperiodic", [True, False])
@pytest.mark.parametrize("L0,L1,kappa", [(4, 4, 0.2), (6, 4, 0.276)])
def test_free_field_spectrum(antiperiodic, L0, L1, kappa):
    D = wilson_dirac(torch.zeros(1, 2, L0, L1, dtype=torch.float64), kappa, antiperiodic)[0]
    ev = torch.linalg.eigvals(D)
    ref = free_dirac_eigenvalues(L0, L1, kappa, antiperiodic)
    # match the two multisets: every computed eigenvalue has an analytic partner and vice versa
    dist = (ev[:, None] - ref[None, :]).abs()
    assert dist.min(1).values.max() < 1e-10 and dist.min(0).values.max() < 1e-10
    logdet = log_abs_det_dirac(torch.zeros(1, 2, L0, L1, dtype=torch.float64), kappa, antiperiodic)
    assert logdet.item() == pytest.approx(torch.log(ref.abs()).sum().item(), abs=1e-10)


def test_log_det_consistency():
    torch.manual_seed(2)
    links = TWO_PI * torch.rand(3, 2, 4, 4, dtype=torch.float64)
    D = wilson_dirac(links, 0.276)
    det = torch.linalg.det(D)
    assert det.imag.abs().max() < 1e-10 * det.abs().max()  # gamma5-hermiticity makes det D real
    logdet = log_abs_det_dirac(links, 0.276)
    assert torch.allclose(logdet, torch.log(torch.linalg.eigvals(D).abs()).sum(-1), atol=1e-10)
    DdD = D.conj().transpose(-2, -1) @ D
    assert torch.allclose(torch.linalg.slogdet(DdD).logabsdet, 2 * logdet, atol=1e-9)
    alpha = TWO_PI * torch.rand(3, 4, 4, dtype=torch.float64)
    assert torch.allclose(log_abs_det_dirac(gauge_transform(links, alpha), 0.276), logdet, atol=1e-10)


def test_schwinger_target():
    assert "schwinger" in TARGETS and "u1" in TARGETS
    assert SCHWINGER_PRESETS["reinforce_L16"] == {"L": 16, "beta": 2.0, "kappa": 0.276}
    t = make_target("schwinger", L=4, beta=2.0, kappa=0.276).double()
    assert t.event_shape == (2, 4, 4)
    torch.manual_seed(3)
    links = TWO_PI * torch.rand(5, 2, 4, 4, dtype=torch.float64)
    expected = -wilson_action(links, 2.0) + 2 * log_abs_det_dirac(links, 0.276)
    assert torch.allclose(t.log_prob(links), expected)
    alpha = TWO_PI * torch.rand(5, 4, 4, dtype=torch.float64)
    assert torch.allclose(t.log_prob(gauge_transform(links, alpha)), t.log_prob(links), atol=1e-10)
    # float32 and gradients through the determinant (checked against finite differences)
    assert t.float().log_prob(links.float()).dtype == torch.float32
    t = t.double()
    x = links[:1].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda y: t.log_prob(y), (x,))
    with pytest.raises(ValueError, match="shape"):
        t.log_prob(torch.zeros(2, 32, dtype=torch.float64))
    periodic = make_target("schwinger", L=4, antiperiodic="False").double()
    assert periodic.antiperiodic is False  # its precomputed stencil (buffers) matches the plain function
    expected = -wilson_action(links, 2.0) + 2 * log_abs_det_dirac(links, 0.276, antiperiodic=False)
    assert torch.allclose(periodic.log_prob(links), expected)
    assert make_target("schwinger", L=4, antiperiodic=1).antiperiodic is True
    with pytest.raises(ValueError, match="antiperiodic"):
        make_target("schwinger", L=4, antiperiodic="maybe")
    with pytest.raises(ValueError, match="kappa"):
        make_target("schwinger", L=4, kappa=-0.1)


def test_schwinger_default_flow_fast_path():
    t = make_target("schwinger", L=4)
    flow = t.default_flow(layers=4, hidden=4, depth=1, seed=0)
    x, log_q, score = flow.sample_with_score(3)
    assert x.shape == (3, 2, 4, 4) and torch.isfinite(t.log_prob(x)).all() and score.shape == x.shape


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_schwinger_and_flow_on_gpu_match_cpu():
    t = make_target("schwinger", L=4).double()
    flow = t.default_flow(layers=4, hidden=4, depth=1, seed=0).double()
    torch.manual_seed(4)
    z = flow.base.sample(3)
    with torch.no_grad():
        x, logdet = flow.transform(z)
        log_p = t.log_prob(x)
        flow, t = flow.to("cuda"), t.to("cuda")  # in place
        x_gpu, logdet_gpu = flow.transform(z.cuda())
        log_p_gpu = t.log_prob(x_gpu)
    assert wrap(x_gpu.cpu() - x).abs().max() < 1e-9  # angles compared mod 2pi
    assert torch.allclose(logdet_gpu.cpu(), logdet, atol=1e-9)
    assert torch.allclose(log_p_gpu.cpu(), log_p, atol=1e-8)
