import torch

from flowvi.transforms.actnorm import ActNorm


def test_data_init_gives_zero_mean_unit_variance():
    torch.manual_seed(0)
    z = torch.randn(256, 3, 4, 4, dtype=torch.float64) * 3 + 2
    layer = ActNorm(3).double()
    x, _ = layer(z)
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(x.std(dim=(0, 2, 3), unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-5)


def test_inverse_and_logdet_match_autograd_jacobian():
    torch.manual_seed(1)
    layer = ActNorm(2).double()
    layer(torch.randn(8, 2, 2, 2, dtype=torch.float64) * 2)
    z = torch.randn(1, 2, 2, 2, dtype=torch.float64)
    x, logdet = layer(z)
    z_back, logdet_inv = layer.inverse(x)
    assert torch.allclose(z_back, z)
    assert torch.allclose(logdet, -logdet_inv)
    jac = torch.autograd.functional.jacobian(lambda v: layer(v.view(1, 2, 2, 2))[0].flatten(), z.flatten())
    assert torch.allclose(logdet, torch.linalg.slogdet(jac)[1])
