import importlib.util
from pathlib import Path

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


def load_benchmark(name: str):
    """The module of ``benchmarks/<name>.py`` (the benchmarks are scripts, not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
