"""PyMC models as targets (the [pymc] extra; slow: PyTensor compiles each model): on three models, PyMC's
unconstrained log density equals flowvi's from_pyro of the same model (both with their log-Jacobians) up to PyMC's
normalizing constants (its HalfCauchy, Beta and Gamma log densities are 1e-8 to 3e-8 off scipy's; Pyro's agree with
scipy to 1e-15), the gradients equal Pyro's, and constrain names the variables."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from flowvi.targets import from_pyro

pytestmark = pytest.mark.slow

SIGMA = np.array([15.0, 10, 16, 11, 9, 11, 10, 18])
Y = np.array([28.0, 8, -3, 7, -1, 1, 18, 12])


def pyro_schools():
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("school", 8):
        eta = pyro.sample("eta", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(mu + tau * eta, torch.as_tensor(SIGMA)), obs=torch.as_tensor(Y))


def pyro_beta_binomial():
    p = pyro.sample("p", dist.Beta(2.0, 3.0))
    b = pyro.sample("b", dist.Uniform(-1.0, 2.0))
    pyro.sample("k", dist.Binomial(20, p), obs=torch.tensor(7.0))
    pyro.sample("z", dist.Normal(b, 0.5), obs=torch.tensor(0.3))


def pyro_gamma_poisson():
    lam = pyro.sample("lam", dist.Gamma(2.0, 0.5))
    with pyro.plate("obs", 5):
        pyro.sample("c", dist.Poisson(lam), obs=torch.tensor([3.0, 5, 2, 4, 6]))


def pymc_models():
    import pymc as pm

    with pm.Model() as schools:
        mu = pm.Normal("mu", 0, 5)
        tau = pm.HalfCauchy("tau", 5)
        eta = pm.Normal("eta", 0, 1, shape=8)
        pm.Deterministic("theta", mu + tau * eta)
        pm.Normal("y", mu + tau * eta, SIGMA, observed=Y)
    with pm.Model() as beta_binomial:
        p = pm.Beta("p", 2, 3)
        b = pm.Uniform("b", -1, 2)
        pm.Binomial("k", 20, p, observed=7)
        pm.Normal("z", b, 0.5, observed=0.3)
    with pm.Model() as gamma_poisson:
        lam = pm.Gamma("lam", 2.0, 0.5)
        pm.Poisson("c", lam, observed=np.array([3, 5, 2, 4, 6]))
    return {
        "schools": (schools, pyro_schools, 10),
        "beta_binomial": (beta_binomial, pyro_beta_binomial, 2),
        "gamma_poisson": (gamma_poisson, pyro_gamma_poisson, 1),
    }


def test_pymc_log_density_equals_pyro_on_three_models():
    from flowvi.targets.pymc import from_pymc

    for name, (pm_model, pyro_model, dim) in pymc_models().items():
        target, reference = from_pymc(pm_model), from_pyro(pyro_model).double()
        assert target.dim == dim == reference.dim, name
        u = torch.randn(6, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
        lp = target.log_prob(u)
        expected = reference.log_prob(u)
        np.testing.assert_allclose(lp.detach().numpy(), expected.detach().numpy(), rtol=0, atol=2e-7)
        (grad,) = torch.autograd.grad(lp.sum(), u)
        (grad_ref,) = torch.autograd.grad(expected.sum(), u)
        np.testing.assert_allclose(grad.numpy(), grad_ref.numpy(), rtol=1e-8, atol=1e-10)
    named = from_pymc(pymc_models()["schools"][0]).constrain(u.detach()[:, :0].new_zeros(3, 10) + 0.5)
    assert list(named) == ["mu", "tau", "eta", "theta"] and named["theta"].shape == (3, 8)
    np.testing.assert_allclose(named["tau"].numpy(), np.exp(0.5))
