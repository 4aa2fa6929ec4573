"""Invertibility, log|det J| against dense autograd Jacobians, and the fast path-gradient score."""

import math

import pytest
import torch

from flowvi import realnvp
from flowvi.transforms import (
    LOFT,
    AffineCoupling,
    AsymmetricClamp,
    Compose,
    ElementwiseAffine,
    Permutation,
    SymmetricClamp,
)

from .conftest import dense_jacobian


def randomize(module, scale=0.3):
    module.double()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn_like(p))
    return module


def transforms(dim=6):
    """Randomised transforms, built under a fixed seed so collection order cannot change them."""
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        return _build(dim)


def _build(dim):
    out = {
        f"coupling-{clamp}-{flip}": randomize(AffineCoupling(dim, flip=flip, hidden=16, clamp=clamp))
        for clamp in ("none", "symmetric", "asymmetric")
        for flip in (False, True)
    }
    out["coupling-odd-dim"] = randomize(AffineCoupling(5, hidden=8))
    out["loft"] = LOFT(tau=2.0).double()
    out["affine"] = randomize(ElementwiseAffine(dim))
    out["permutation"] = Permutation.random(dim)
    out["stack"] = randomize(realnvp(dim, layers=4, hidden=16, tau=3.0, permute="random").transform, 0.2)
    return out


CASES = transforms()


def _inputs(name, scale):
    dim = 5 if name == "coupling-odd-dim" else 6
    return scale * torch.randn(4, dim, dtype=torch.float64)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_inverse_and_logdet(name, scale):
    t = CASES[name]
    z = _inputs(name, scale)
    x, logdet = t(z)
    z_back, inv_logdet = t.inverse(x)
    # float64 round-off grows with |z| and with exp(s) of an unclamped scale: relative 1e-8.
    torch.testing.assert_close(z_back, z, rtol=1e-8, atol=1e-9 * scale)
    torch.testing.assert_close(inv_logdet, -logdet, rtol=1e-8, atol=1e-9 * scale)
    jac = dense_jacobian(lambda v: t(v)[0], z)
    torch.testing.assert_close(logdet, torch.linalg.slogdet(jac)[1], rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name", ["coupling-symmetric-False", "coupling-asymmetric-True", "loft", "stack"])
def test_extreme_inputs(name):
    """At |z| up to 1e4 the clamps bound the scales and LOFT compresses: all finite and invertible."""
    t = CASES[name]
    z = torch.tensor([[1e4, -1e4, 3e3, -7.0, 1e4, 0.5], [-2e3, 5e3, -1e4, 1e4, 2.0, -3.0]], dtype=torch.float64)
    x, logdet = t(z)
    assert torch.isfinite(x).all() and torch.isfinite(logdet).all()
    z_back, _ = t.inverse(x)
    torch.testing.assert_close(z_back, z, rtol=1e-9, atol=1e-6)
    jac = dense_jacobian(lambda v: t(v)[0], z)
    torch.testing.assert_close(logdet, torch.linalg.slogdet(jac)[1], rtol=1e-8, atol=1e-6)


def test_loft_is_identity_inside_and_logarithmic_outside():
    t = LOFT(tau=100.0)
    z = torch.tensor([[-100.0, 0.0, 50.0, 100.0, 100.0 + math.e - 1, -(100.0 + math.e**2 - 1)]], dtype=torch.float64)
    x, logdet = t(z)
    torch.testing.assert_close(x, torch.tensor([[-100.0, 0.0, 50.0, 100.0, 101.0, -102.0]], dtype=torch.float64))
    torch.testing.assert_close(logdet, torch.tensor([-3.0], dtype=torch.float64))


def test_clamp_bounds():
    s = torch.linspace(-1e4, 1e4, 10001, dtype=torch.float64)
    a = AsymmetricClamp(0.1, 2.0)(s)
    assert a.max() < 0.1 and a.min() > -2.0 and a.max() > 0.0999 and a.min() < -1.999
    torch.testing.assert_close(AsymmetricClamp()(torch.tensor([0.0])), torch.tensor([0.0]))
    # c(s) = (2/pi) alpha arctan(s / alpha) has slope 2/pi at the origin on both sides
    small = torch.tensor([1e-6, -1e-6], dtype=torch.float64)
    torch.testing.assert_close(AsymmetricClamp()(small), 2 / math.pi * small, rtol=1e-6, atol=0)
    assert SymmetricClamp(2.0)(s).abs().max() <= 2.0 and SymmetricClamp(2.0)(torch.tensor([1.0])) < 1.0


def test_coupling_starts_at_identity():
    t = AffineCoupling(8)
    z = torch.randn(3, 8)  # float32: the default
    x, logdet = t(z)
    torch.testing.assert_close(x, z)
    torch.testing.assert_close(logdet, torch.zeros(3))


@pytest.mark.parametrize("base", ["gaussian", "student_t"])
def test_fast_path_score_matches_autograd(base):
    """score from the per-layer recursion equals d log q(x)/dx by autograd through the inverse."""
    flow = realnvp(6, layers=4, hidden=16, tau=2.0, base=base).double()
    randomize(flow.transform, 0.3)
    torch.manual_seed(1)
    x, log_q, score = flow.sample_with_score(5)
    xd = x.detach().requires_grad_(True)
    lq = flow.log_prob(xd)
    (ref,) = torch.autograd.grad(lq.sum(), xd)
    torch.testing.assert_close(score, ref, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(log_q, lq.detach(), rtol=1e-9, atol=1e-9)


def test_compose_is_sequential():
    a, b = randomize(ElementwiseAffine(3)), Permutation.reverse(3)
    z = torch.randn(2, 3, dtype=torch.float64)
    x, ld = Compose([a, b])(z)
    x1, ld1 = a(z)
    torch.testing.assert_close(x, x1.flip(-1))
    torch.testing.assert_close(ld, ld1)
