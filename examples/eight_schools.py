"""Eight schools (Rubin 1981), non-centred: the treatment effect of school j is theta_j = mu + tau eta_j."""

import pyro
import pyro.distributions as dist
import torch


def model(sigma, y=None):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("school", len(sigma)):
        eta = pyro.sample("eta", dist.Normal(0.0, 1.0))
        theta = pyro.deterministic("theta", mu + tau * eta)
        pyro.sample("y", dist.Normal(theta, torch.as_tensor(sigma)), obs=y)
