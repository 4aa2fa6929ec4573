import numpy as np
import pytest
import torch

from flowvi.diagnostics.errors import jackknife, tau_int
from flowvi.flows.phi4 import Z2Symmetrized, phi4_flow, z2_proposal
from flowvi.targets.phi4 import Phi4


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny tensors: intra-op threads only add synchronisation (and stall badly on a loaded CPU).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_action_matches_loop():
    torch.manual_seed(0)
    L, k, lam = 5, 0.27, 0.03
    phi = torch.randn(3, L, L, dtype=torch.float64)
    ref = torch.zeros(3, dtype=torch.float64)
    for b in range(3):
        for i in range(L):
            for j in range(L):
                p = phi[b, i, j]
                hop = p * phi[b, (i + 1) % L, j] + p * phi[b, i, (j + 1) % L]
                ref[b] += -2 * k * hop + (1 - 2 * lam) * p**2 + lam * p**4
    t = Phi4(L=L, kappa=k, lam=lam)
    assert torch.allclose(t.log_prob(phi), -ref)


def _flow(z2="equivariant"):
    torch.manual_seed(1)
    f = phi4_flow(4, layers=4, hidden=4, depth=1, z2=z2).double()
    for p in f.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return f


@pytest.mark.parametrize("z2", ["equivariant", "symmetrize"])
def test_invertible_and_logdet_vs_autograd(z2):
    f = _flow(z2)
    z = torch.randn(2, 4, 4, dtype=torch.float64)
    x, ld = f.transform(z)
    z2, ldi = f.transform.inverse(x)
    assert torch.allclose(z, z2, atol=1e-10) and torch.allclose(ld, -ldi, atol=1e-10)
    for b in range(2):
        J = torch.autograd.functional.jacobian(lambda v: f.transform(v.view(1, 4, 4))[0].reshape(-1), z[b].reshape(-1))
        assert torch.allclose(torch.linalg.slogdet(J)[1], ld[b], atol=1e-10)


@pytest.mark.parametrize("z2", ["equivariant", "symmetrize"])
def test_fast_score_equals_naive_and_z2(z2):
    f = _flow(z2)
    torch.manual_seed(2)
    x, log_q, score = f.sample_with_score(5)
    xd = x.detach().requires_grad_(True)
    naive = torch.autograd.grad(f.log_prob(xd).sum(), xd)[0]
    assert torch.allclose(score, naive, atol=1e-8)
    symmetric = torch.allclose(f.log_prob(-x.detach()), f.log_prob(x.detach()), atol=1e-10)
    assert symmetric == (z2 == "equivariant")


def test_z2_symmetrized_mixture_is_symmetric_and_normalised():
    f = _flow("symmetrize")
    mix = Z2Symmetrized(f)
    torch.manual_seed(3)
    x, log_q = mix.sample_and_log_prob(7)
    assert torch.allclose(log_q, mix.log_prob(x), atol=1e-10)
    assert torch.allclose(mix.log_prob(-x), mix.log_prob(x), atol=1e-10)
    expected = torch.log(0.5 * (f.log_prob(x).exp() + f.log_prob(-x).exp()))
    assert torch.allclose(mix.log_prob(x), expected, atol=1e-10)
    # E_mix[q_base / q_mix] over the mixture's own samples is the base's total mass, 1
    y, lq = mix.sample_and_log_prob(4000)
    ratio = (f.log_prob(y) - lq).exp().mean().item()
    assert abs(ratio - 1) < 0.06
    assert z2_proposal(f) is not f and z2_proposal(_flow("equivariant")).__class__.__name__ == "Flow"


def test_jackknife_and_tau_int():
    rng = np.random.default_rng(0)
    x = rng.normal(size=20000)
    m, se = jackknife(x)
    assert abs(se - 1 / np.sqrt(len(x))) < 0.2 / np.sqrt(len(x))
    assert abs(tau_int(x) - 0.5) < 0.1
