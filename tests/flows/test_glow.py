"""Glow pieces in float64: invertibility and log|det| against dense autograd Jacobians."""

import pytest
import torch

from flowvi.flows.glow import flat_glow, glow
from flowvi.flows.multiscale import Split, standard_normal_log_prob
from flowvi.transforms.actnorm import ActNorm
from flowvi.transforms.conv_coupling import ConvAffineCoupling
from flowvi.transforms.invconv import InvertibleConv1x1
from tests.conftest import dense_jacobian


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny convolutions run far faster on one thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _perturb(module, scale=0.1):
    """Move every parameter away from its (often identity) initialisation."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module


@pytest.mark.parametrize("shape", [(3, 4, 2, 2), (5, 4)])
def test_invconv_lu_inverse_and_logdet(shape):
    layer = _perturb(InvertibleConv1x1(4).double())
    z = torch.randn(*shape, dtype=torch.float64)
    x, logdet = layer(z)
    z_back, logdet_inv = layer.inverse(x)
    assert torch.allclose(z_back, z, atol=1e-12)
    assert torch.allclose(logdet, -logdet_inv)
    jac = dense_jacobian(lambda v: layer(v)[0], z)
    assert torch.allclose(logdet, torch.linalg.slogdet(jac)[1], atol=1e-10)
    w = layer.weight()
    assert torch.allclose(torch.linalg.slogdet(w)[1], layer.log_s.sum())


def test_invconv_score_step_matches_autograd():
    layer = _perturb(InvertibleConv1x1(3).double())
    z = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    score = torch.randn_like(z)
    x, _, score_x = layer.forward_with_score(z, score)
    jac = dense_jacobian(lambda v: layer(v)[0], z)
    expected = torch.linalg.solve(jac.transpose(1, 2), score.reshape(2, -1))
    assert torch.allclose(score_x.reshape(2, -1), expected, atol=1e-10)


@pytest.mark.parametrize("clamp", ["asymmetric", "symmetric", "none"])
def test_conv_coupling_inverse_and_logdet(clamp):
    layer = _perturb(ConvAffineCoupling(3, hidden=4, clamp=clamp).double(), scale=0.3)
    z = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    x, logdet = layer(z)
    z_back, logdet_inv = layer.inverse(x)
    assert torch.allclose(z_back, z, atol=1e-12)
    assert torch.allclose(logdet, -logdet_inv)
    assert not torch.allclose(x, z)
    jac = dense_jacobian(lambda v: layer(v)[0], z)
    assert torch.allclose(logdet, torch.linalg.slogdet(jac)[1], atol=1e-10)


def test_actnorm_initialises_from_data_in_the_normalizing_direction():
    x = 3 * torch.randn(500, 2, 3, 3, dtype=torch.float64) - 1
    layer = ActNorm(2).double()
    z, _ = layer.inverse(x)
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(2, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(z.std(dim=(0, 2, 3), unbiased=False), torch.ones(2, dtype=torch.float64), atol=1e-5)


def _latents(model, x):
    """The bijection behind a multi-scale flow: x -> (standardised factored-out latents, final latent)."""
    parts, h = [], x
    for layer in model.layers:
        if isinstance(layer, Split):
            h1, z2 = h[:, : layer.keep], h[:, layer.keep :]
            mean, log_std = layer._prior(h1)
            parts.append(((z2 - mean) * torch.exp(-log_std)).flatten(1))
            h = h1
        else:
            h = layer.inverse(h)[0]
    return torch.cat([*parts, h.flatten(1)], dim=1)


def _generate(model, eps):
    """The inverse of :func:`_latents`, running the layers backwards with the given noise."""
    n, offset, chunks = eps.shape[0], 0, []
    # the shape of each factored-out latent, from a probe through the layers
    probe = torch.zeros(1, *model.event_shape, dtype=eps.dtype)
    for layer in model.layers:
        if isinstance(layer, Split):
            numel = probe[:, layer.keep :].numel()
            chunks.append((layer, probe[:, layer.keep :].shape[1:], offset, numel))
            offset += numel
            probe = probe[:, : layer.keep]
        else:
            probe = layer.inverse(probe)[0]
    split_eps = {id(layer): eps[:, o : o + k].reshape(n, *shape) for layer, shape, o, k in chunks}
    h = eps[:, offset:].reshape(n, *model.latent_shape)
    for layer in reversed(model.layers):
        if isinstance(layer, Split):
            mean, log_std = layer._prior(h)
            h = torch.cat((h, mean + torch.exp(log_std) * split_eps[id(layer)]), dim=1)
        else:
            h = layer(h)[0]
    return h


@pytest.mark.parametrize(
    "build, shape",
    [
        (lambda: glow((2, 4, 4), levels=2, steps=2, hidden=8), (2, 4, 4)),
        (lambda: flat_glow(6, blocks=2, steps=2, hidden=8), (6,)),
    ],
)
def test_whole_glow_log_prob_is_change_of_variables(build, shape):
    model = build().double()
    model.log_prob(torch.rand(64, *shape, dtype=torch.float64))  # ActNorm data-dependent init
    _perturb(model, scale=0.2)
    x = torch.rand(2, *shape, dtype=torch.float64)
    eps = _latents(model, x)
    assert eps.shape == (2, x[0].numel())
    assert torch.allclose(_generate(model, eps), x, atol=1e-10)
    jac = dense_jacobian(lambda v: _latents(model, v), x)
    expected = standard_normal_log_prob(eps) + torch.linalg.slogdet(jac)[1]
    assert torch.allclose(model.log_prob(x), expected, atol=1e-9)


def test_glow_samples_have_the_data_shape_and_bad_shapes_are_rejected():
    model = glow((1, 8, 8), levels=3, steps=1, hidden=8)
    model.log_prob(torch.rand(16, 1, 8, 8))
    assert model.sample(5).shape == (5, 1, 8, 8)
    with pytest.raises(ValueError, match="divisible"):
        glow((1, 6, 6), levels=2)
    with pytest.raises(ValueError, match="expected data of shape"):
        model.log_prob(torch.rand(4, 2, 8, 8))
    with pytest.raises(ValueError, match="unknown clamp"):
        glow((1, 8, 8), clamp="bogus")
