import math

import pytest
import torch

from flowvi.data.dequantize import bits_per_dim, uniform_dequantize


def test_dequantized_values_stay_in_their_bin():
    x = torch.randint(0, 17, (64, 1, 4, 4))
    y = uniform_dequantize(x, levels=17)
    assert torch.equal(torch.floor(y * 17).long(), x)


def test_uniform_density_gives_log2_levels_bits():
    # the uniform density on [0,1)^D has log p = 0, so bits/dim = log2(levels)
    bpd = bits_per_dim(torch.zeros(3), dim=64, levels=256)
    assert torch.allclose(bpd, torch.full((3,), 8.0))
    assert math.isclose(float(bits_per_dim(torch.tensor([-64 * math.log(2.0)]), 64, 2)), 2.0)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="NaN"):
        uniform_dequantize(torch.tensor([float("nan")]), levels=4)
    with pytest.raises(ValueError, match="lie in"):
        uniform_dequantize(torch.tensor([5.0]), levels=4)
