"""Gradient estimators checked against exact gradients (Gaussian flow / Gaussian target) and against
each other (fast path == naive path on deep stacks of every transform)."""

from __future__ import annotations

import math

import pytest
import torch

from flowvi.core.bases import StandardNormal, StudentT
from flowvi.core.flow import Flow
from flowvi.objectives import get_estimator
from flowvi.objectives.estimators import ESTIMATORS, FORWARD_ESTIMATORS, Estimate, reinforce_estimator
from flowvi.targets.base import Target
from flowvi.targets.funnel import Funnel
from flowvi.transforms import LOFT, AffineCoupling, ElementwiseAffine, Permutation, Transform
from flowvi.transforms.base import PathGradientUnsupported

DIM = 3
MEAN = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
STD = torch.tensor([1.5, 0.7, 1.0], dtype=torch.float64)


class DiagGaussian(Target):
    """N(MEAN, diag(STD^2)), normalized (log Z = 0)."""

    def __init__(self, mean=MEAN, std=STD):
        super().__init__()
        self.event_shape = (len(mean),)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def log_prob(self, x):
        u = (x - self.mean) / self.std
        return (-0.5 * u * u - torch.log(self.std) - 0.5 * math.log(2 * math.pi)).sum(-1)


def affine_flow(loc=(0.2, 0.3, -0.4), log_scale=(0.1, -0.2, 0.3)):
    layer = ElementwiseAffine(DIM).double()
    with torch.no_grad():
        layer.loc.copy_(torch.as_tensor(loc, dtype=torch.float64))
        layer.log_scale.copy_(torch.as_tensor(log_scale, dtype=torch.float64))
    return Flow(StandardNormal(DIM), [layer]).double()


def exact_kl_grad(flow):
    """d KL(q||p) / d(loc, log_scale) for q = N(loc, e^{2 log_scale}), p = N(MEAN, STD^2):
    KL = sum log(STD/sigma) + (sigma^2 + (loc - MEAN)^2) / (2 STD^2) - 1/2."""
    layer = flow.transform[0]
    loc, sigma = layer.loc.detach(), layer.log_scale.detach().exp()
    return torch.cat([(loc - MEAN) / STD**2, sigma**2 / STD**2 - 1])


def grad_of(flow, loss):
    grads = torch.autograd.grad(loss, list(flow.parameters()))
    return torch.cat([g.reshape(-1) for g in grads])


def draws(estimator, flow, target, reps, batch):
    return torch.stack([grad_of(flow, estimator(flow, target, batch).loss) for _ in range(reps)])


@pytest.mark.parametrize("name", ["reparam", "path", "path_naive", "reinforce", "reinforce_mean"])
def test_reverse_kl_estimators_are_unbiased(name):
    torch.manual_seed(1)
    flow, target = affine_flow(), DiagGaussian()
    batch = 32
    g = draws(ESTIMATORS[name], flow, target, reps=300, batch=batch)
    exact = exact_kl_grad(flow)
    if name == "reinforce_mean":  # the batch-mean baseline shrinks the gradient by (n - 1) / n
        exact = exact * (batch - 1) / batch
    z = (g.mean(0) - exact) / (g.std(0) / math.sqrt(len(g)))
    assert z.abs().max() < 4.5, (name, z)
    # the test has power: a wrong gradient (e.g. the sign of the log-scale part) is rejected
    assert ((g.mean(0) + exact) / (g.std(0) / math.sqrt(len(g)))).abs().max() > 4.5


@pytest.mark.parametrize("name", ["reparam", "path", "path_naive", "reinforce", "reinforce_mean"])
def test_variance_vanishes_at_the_optimum_except_reparam(name):
    torch.manual_seed(2)
    flow, target = affine_flow(loc=MEAN, log_scale=STD.log()), DiagGaussian()
    g = draws(ESTIMATORS[name], flow, target, reps=20, batch=16)
    var = g.var(0).max().item()
    if name == "reparam":
        assert var > 1e-3
    else:
        assert var < 1e-24
        assert g.abs().max() < 1e-12


def test_estimates_carry_log_weights():
    torch.manual_seed(3)
    flow, target = affine_flow(), DiagGaussian()
    for name, est in ESTIMATORS.items():
        torch.manual_seed(4)
        out = est(flow, target, 64)
        assert isinstance(out, Estimate)
        assert out.log_weights.shape == (64,) and not out.log_weights.requires_grad
        # the logged loss is the negative ELBO estimate for every estimator
        torch.testing.assert_close(out.loss.detach(), -out.log_weights.mean(), msg=name)


# ------------------------------------------------------------------- fast path == naive path


def deep_stack(base, dim, clamp, tau):
    torch.manual_seed(5)
    layers = [ElementwiseAffine(dim)]
    for i in range(4):
        layer = AffineCoupling(dim, flip=bool(i % 2), hidden=16, depth=2, activation="tanh", clamp=clamp)
        with torch.no_grad():  # leave the identity initialisation so the test sees real Jacobians
            layer.net[-1].weight.normal_(0, 0.5)
            layer.net[-1].bias.normal_(0, 0.5)
        layers += [layer, Permutation.random(dim)]
    layers.append(LOFT(tau))
    with torch.no_grad():
        layers[0].log_scale.normal_(0, 0.3)
        layers[0].loc.normal_(0, 0.3)
    return Flow(base, layers).double()


@pytest.mark.parametrize("clamp", ["none", "symmetric", "asymmetric"])
@pytest.mark.parametrize("base_kind", ["gaussian", "student_t"])
def test_fast_path_equals_naive_path(clamp, base_kind):
    dim = 5
    base = StandardNormal(dim) if base_kind == "gaussian" else StudentT(dim, df=4.0)
    flow = deep_stack(base, dim, clamp, tau=0.8)
    target = Funnel(dim, sigma=1.5)
    torch.manual_seed(6)
    fast = ESTIMATORS["path"](flow, target, 64)
    torch.manual_seed(6)
    naive = ESTIMATORS["path_naive"](flow, target, 64)
    torch.testing.assert_close(fast.log_weights, naive.log_weights, rtol=1e-12, atol=1e-12)
    g_fast, g_naive = grad_of(flow, fast.loss), grad_of(flow, naive.loss)
    assert g_naive.abs().max() > 1e-3
    torch.testing.assert_close(g_fast, g_naive, rtol=1e-9, atol=1e-11)
    # LOFT was active: some sample went beyond tau before the last layer
    torch.manual_seed(6)
    z = flow.base.sample(64)
    for t in list(flow.transform)[:-1]:
        z, _ = t(z)
    assert (z.abs() > 0.8).any()


def test_flow_score_matches_autograd_of_log_prob():
    flow = deep_stack(StudentT(5, df=4.0), 5, "asymmetric", tau=0.8)
    x, log_q, score = flow.sample_with_score(16)
    xl = x.detach().requires_grad_(True)
    (expected,) = torch.autograd.grad(flow.log_prob(xl).sum(), xl)
    torch.testing.assert_close(log_q.detach(), flow.log_prob(x.detach()).detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(score, expected, rtol=1e-9, atol=1e-10)


class NoScore(Transform):
    def forward(self, z):
        return z + 1.0, z.new_zeros(z.shape[0])

    def inverse(self, x):
        return x - 1.0, x.new_zeros(x.shape[0])


def test_path_raises_for_transform_without_score():
    flow = Flow(StandardNormal(DIM), [ElementwiseAffine(DIM), NoScore()]).double()
    with pytest.raises(PathGradientUnsupported, match="NoScore.*forward_with_score"):
        ESTIMATORS["path"](flow, DiagGaussian(), 8)
    # the others still work on it
    for name in ("reparam", "path_naive", "reinforce"):
        assert torch.isfinite(ESTIMATORS[name](flow, DiagGaussian(), 8).loss)


# ------------------------------------------------------------------------------------ REINFORCE


class NoGradTarget(DiagGaussian):
    def log_prob(self, x):
        if x.requires_grad or torch.is_grad_enabled():
            raise RuntimeError("the target was asked for a gradient")
        return super().log_prob(x)


def test_reinforce_never_differentiates_the_target():
    flow, target = affine_flow(), NoGradTarget()
    with pytest.raises(RuntimeError, match="gradient"):
        ESTIMATORS["reparam"](flow, target, 8)  # the guard works
    for name in ("reinforce", "reinforce_mean"):
        est = ESTIMATORS[name](flow, target, 8)
        assert torch.isfinite(grad_of(flow, est.loss)).all()


def test_reinforce_bad_options():
    with pytest.raises(ValueError, match="baseline"):
        reinforce_estimator("median")
    with pytest.raises(ValueError, match="batch_size >= 2"):
        ESTIMATORS["reinforce"](affine_flow(), DiagGaussian(), 1)
    with pytest.raises(ValueError, match="unknown estimator"):
        get_estimator("nope")


def test_reinforce_under_bf16_autocast():
    torch.manual_seed(7)
    dim = 6
    flow = Flow(
        StandardNormal(dim),
        [ElementwiseAffine(dim), AffineCoupling(dim, hidden=32), AffineCoupling(dim, flip=True, hidden=32)],
    )
    for layer in list(flow.transform)[1:]:
        with torch.no_grad():
            layer.net[-1].weight.normal_(0, 0.1)
    target = DiagGaussian(torch.zeros(dim), torch.full((dim,), 1.3))
    torch.manual_seed(8)
    ref = ESTIMATORS["reinforce"](flow, target, 256)
    g_ref = grad_of(flow, ref.loss)
    torch.manual_seed(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = ESTIMATORS["reinforce"](flow, target, 256)
    assert low.loss.dtype == torch.float32 and low.log_weights.dtype == torch.float32
    g_low = grad_of(flow, low.loss)
    assert torch.isfinite(g_low).all()
    # same samples, bf16 matmuls: the gradient agrees to bf16 accuracy
    assert (g_low - g_ref).norm() < 0.1 * g_ref.norm()
    torch.testing.assert_close(low.log_weights, ref.log_weights, rtol=0.05, atol=0.05)


# ------------------------------------------------------------------------------------ forward KL


def exact_forward_kl_grad(flow):
    """d KL(p||q) / d(loc, log_scale) for p = N(MEAN, STD^2), q = N(loc, sigma^2):
    KL = sum log(sigma/STD) + (STD^2 + (MEAN - loc)^2) / (2 sigma^2) - 1/2."""
    layer = flow.transform[0]
    loc, sigma = layer.loc.detach(), layer.log_scale.detach().exp()
    return torch.cat([(loc - MEAN) / sigma**2, 1 - (STD**2 + (MEAN - loc) ** 2) / sigma**2])


@pytest.mark.parametrize("name", ["ml", "path"])
def test_forward_kl_estimators_are_unbiased(name):
    torch.manual_seed(9)
    flow, target = affine_flow(), DiagGaussian()
    exact = exact_forward_kl_grad(flow)
    g = []
    for _ in range(300):
        x = MEAN + STD * torch.randn(32, DIM, dtype=torch.float64)
        g.append(grad_of(flow, FORWARD_ESTIMATORS[name](flow, x, target=target).loss))
    g = torch.stack(g)
    z = (g.mean(0) - exact) / (g.std(0) / math.sqrt(len(g)))
    assert z.abs().max() < 4.5, (name, z)


def test_forward_path_vanishes_at_optimum_and_needs_a_target():
    flow, target = affine_flow(loc=MEAN, log_scale=STD.log()), DiagGaussian()
    x = MEAN + STD * torch.randn(16, DIM, dtype=torch.float64)
    assert grad_of(flow, FORWARD_ESTIMATORS["path"](flow, x, target=target).loss).abs().max() < 1e-12
    assert grad_of(flow, FORWARD_ESTIMATORS["ml"](flow, x).loss).abs().max() > 1e-3
    est = FORWARD_ESTIMATORS["ml"](flow, x)
    torch.testing.assert_close(est.log_weights, flow.log_prob(x).detach())
    with pytest.raises(ValueError, match="needs the target"):
        FORWARD_ESTIMATORS["path"](flow, x)


def test_forward_path_equals_naive_on_deep_stack():
    """Path gradient of KL(p||q): compare with autograd of the pullback KL with the density's parameters
    frozen: mean(log p_theta_frozen(z(theta)) - log q0(z(theta)))."""
    from flowvi.objectives.estimators import _call_detached

    dim = 5
    flow = deep_stack(StudentT(dim, df=4.0), dim, "asymmetric", tau=0.8)
    target = Funnel(dim, sigma=1.5)
    x = target.sample(32).double()
    est = FORWARD_ESTIMATORS["path"](flow, x, target=target)
    z, _ = flow.transform.inverse(x)
    x_back, logdet = _call_detached(flow.transform, "forward", z)
    naive = (target.log_prob(x_back) + logdet - flow.base.log_prob(z)).mean()
    g_naive = grad_of(flow, naive)
    assert g_naive.abs().max() > 1e-3
    torch.testing.assert_close(grad_of(flow, est.loss), g_naive, rtol=1e-9, atol=1e-11)
