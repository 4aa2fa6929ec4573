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
    ElementwiseSpline,
    HierarchicalAffine,
    NoClamp,
    Permutation,
    SymmetricClamp,
)
from tests.conftest import dense_jacobian


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
    out["spline"] = randomize(ElementwiseSpline(dim, bins=6, bound=3.0), 1.0)
    # children 0, 1 given (2, 5) and (3, 5): a shared parent, as log tau is for every z_j
    out["hierarchical-linear"] = randomize(HierarchicalAffine(dim, [0, 1], [[2, 5], [3, 5]], hidden=0))
    out["hierarchical"] = randomize(HierarchicalAffine(dim, [4, 0, 1], [[2], [3], [2]], hidden=3), 0.5)
    out["permutation"] = Permutation.random(dim)
    out["stack"] = randomize(realnvp(dim, layers=4, hidden=16, tau=3.0, permute="random").transform, 0.2)
    out["stack-spline"] = randomize(realnvp(dim, layers=2, hidden=16, tau=3.0, spline=True, spline_bound=2.0).transform)
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


@pytest.mark.parametrize(
    "clamp", [NoClamp(), SymmetricClamp(1.5), AsymmetricClamp(0.1, 2.0), AsymmetricClamp(3.0, 0.5)]
)
def test_clamp_derivative_equals_autograd(clamp):
    s = torch.cat([torch.linspace(-30, 30, 601, dtype=torch.float64), torch.tensor([0.0, 1e-9, -1e-9])])
    s.requires_grad_(True)
    (ds,) = torch.autograd.grad(clamp(s).sum(), s)
    torch.testing.assert_close(clamp.derivative(s.detach()), ds, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("clamp", ["none", "symmetric", "asymmetric"])
@pytest.mark.parametrize("flip", [False, True])
def test_coupling_gradients_and_second_derivatives(clamp, flip):
    # The forward pass is one custom autograd node (_ClampedAffine): its gradients, and the gradients
    # of its gradients, against finite differences, with respect to the input and the parameters.
    layer = randomize(AffineCoupling(5, flip=flip, hidden=6, clamp=clamp), 0.8)
    z = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    params = list(layer.parameters())

    def fn(z, *ps):
        out = torch.func.functional_call(
            layer, dict(zip([n for n, _ in layer.named_parameters()], ps, strict=True)), (z,)
        )
        return out[0], out[1]

    assert torch.autograd.gradcheck(fn, (z, *params))
    assert torch.autograd.gradgradcheck(fn, (z, *params))


def test_coupling_keeps_only_input_hidden_and_raw_log_scale_for_backward():
    # Saved for the backward pass of one coupling layer (parameters aside): its input z (B x d; the
    # conditioning and transformed halves are views of it), the two hidden activations (B x h each)
    # and a copy of the raw log-scale s (B x n_trans), nothing else. Before _ClampedAffine the whole
    # network output (B x 2 n_trans, held by the view s) and exp(c) (B x n_trans) were kept instead.
    B, d, h = 8, 10, 7
    layer = AffineCoupling(d, hidden=h)
    randomize(layer).float()
    params = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    z = torch.randn(B, d, requires_grad=True)
    kept = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            kept[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        x, logdet = layer(z)
    assert sorted(kept.values()) == sorted([4 * B * d, 4 * B * h, 4 * B * h, 4 * B * (d - d // 2)])
    (x.sum() + logdet.sum()).backward()  # and the backward pass runs from what was kept
    assert torch.isfinite(z.grad).all()


def test_coupling_starts_at_identity():
    t = AffineCoupling(8)
    z = torch.randn(3, 8)  # float32: the default
    x, logdet = t(z)
    torch.testing.assert_close(x, z)
    torch.testing.assert_close(logdet, torch.zeros(3))


@pytest.mark.parametrize(
    "base,spline,hierarchy",
    [("gaussian", False, None), ("student_t", False, None), ("gaussian", True, None), ("gaussian", True, "funnel")],
)
def test_fast_path_score_matches_autograd(base, spline, hierarchy):
    """score from the per-layer recursion equals d log q(x)/dx by autograd through the inverse."""
    pairs = [([1, 2, 3], [[0, 4], [0, 5], [0, 4]]), ([0], [[1]])] if hierarchy else None
    flow = realnvp(6, layers=4, hidden=16, tau=2.0, base=base, spline=spline, spline_bound=1.5, hierarchy=pairs)
    flow = flow.double()
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


def test_compose_passes_blocks_along_runs_of_couplings():
    # Compose hands consecutive coupling layers the two blocks of the last dimension and joins them once
    # per run (halves_split); the result, log-determinant and gradients are those of the layers applied
    # one at a time, through a run broken by other transforms. Odd dim: the blocks differ in size.
    dim = 7
    layers = [randomize(AffineCoupling(dim, flip=bool(i % 2), hidden=8)) for i in range(5)]
    layers.insert(3, randomize(ElementwiseAffine(dim)))
    layers.insert(2, Permutation.random(dim))
    flow = Compose(layers)
    z = torch.randn(4, dim, dtype=torch.float64, requires_grad=True)
    x, ld = flow(z)
    x1, ld1 = z, torch.zeros(4, dtype=torch.float64)
    for t in layers:
        x1, step = t(x1)
        ld1 = ld1 + step
    torch.testing.assert_close(x, x1)
    torch.testing.assert_close(ld, ld1)
    w = torch.randn_like(x)
    grads = torch.autograd.grad((x * w).sum() + ld.sum(), [z, *flow.parameters()])
    grads1 = torch.autograd.grad((x1 * w).sum() + ld1.sum(), [z, *flow.parameters()])
    for g, g1 in zip(grads, grads1, strict=True):
        torch.testing.assert_close(g, g1)
    back, ld_inv = flow.inverse(x)
    torch.testing.assert_close(back, z)
    torch.testing.assert_close(ld_inv, -ld)


def test_spline_starts_at_identity_and_is_identity_outside_its_interval():
    t = ElementwiseSpline(4, bins=5, bound=2.0).double()
    z = torch.linspace(-4, 4, 40, dtype=torch.float64).reshape(10, 4)
    x, logdet = t(z)
    torch.testing.assert_close(x, z)
    torch.testing.assert_close(logdet, torch.zeros(10, dtype=torch.float64))
    randomize(t, 1.0)
    x, _ = t(z)
    outside = z.abs() >= 2.0
    torch.testing.assert_close(x[outside], z[outside])
    assert (x[~outside] - z[~outside]).abs().max() > 1e-3  # the spline moved the inside
    # monotone in every coordinate, and continuous at the ends of the interval
    grid = torch.linspace(-3, 3, 2001, dtype=torch.float64)[:, None].expand(-1, 4).contiguous()
    y, _ = t(grid)
    assert (y.diff(dim=0) > 0).all()
    assert (y.diff(dim=0).abs() < 0.05).all()


def test_spline_fits_the_hyperbolic_secant():
    """A spline on N(0, 1) fits sech(u)/pi (the horseshoe's log local scale) to within 2e-3 nats of
    KL(q || p), where the best Gaussian stays at 0.021 nats."""
    torch.manual_seed(0)
    flow = realnvp(2, layers=0, spline=True, spline_bound=4.0, loft=False).double()
    opt = torch.optim.Adam(flow.parameters(), lr=2e-2)

    def kl(n):
        x, log_q = flow.sample_and_log_prob(n)
        log_p = (-math.log(math.pi) - torch.log(torch.cosh(x))).sum(-1)
        return (log_q - log_p).mean()

    for _ in range(600):
        opt.zero_grad()
        kl(512).backward()
        opt.step()
    with torch.no_grad():
        value = kl(200_000).item() / 2
    assert 0 <= value + 1e-3 and value < 2e-3


def test_spline_rejects_bad_options_and_shapes():
    with pytest.raises(ValueError, match="bins"):
        ElementwiseSpline(3, bins=1)
    with pytest.raises(ValueError, match="bound"):
        ElementwiseSpline(3, bound=0.0)
    with pytest.raises(ValueError, match="shape"):
        ElementwiseSpline(3)(torch.zeros(2, 4))
