import torch

from flowvi.transforms.squeeze import Squeeze


def test_squeeze_is_an_invertible_permutation():
    z = torch.randn(3, 2, 4, 6, dtype=torch.float64)
    x, logdet = Squeeze()(z)
    assert x.shape == (3, 8, 2, 3)
    assert torch.equal(Squeeze().inverse(x)[0], z)
    assert torch.equal(torch.sort(x.flatten(1)).values, torch.sort(z.flatten(1)).values)
    assert torch.equal(logdet, torch.zeros(3, dtype=torch.float64))
