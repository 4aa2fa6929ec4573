import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def dense_jacobian(fn, z):
    """Per-sample Jacobian d fn(z)_i / d z_j for fn acting on (batch, ...) -> (batch, ...)."""
    flat = z.reshape(z.shape[0], -1)

    def single(v):
        out = fn(v.reshape(1, *z.shape[1:]))
        return out.reshape(-1)

    return torch.stack([torch.autograd.functional.jacobian(single, flat[i]) for i in range(flat.shape[0])])
