"""Stochastic volatility (Kim, Shephard & Chib 1998; the Stan user's guide's version), non-centred:
y_t ~ Normal(0, exp(h_t / 2)), h_t - mu = phi (h_{t-1} - mu) + sigma eta_t, h_1 - mu = sigma eta_1 / sqrt(1 - phi^2).
With T returns the posterior has T + 3 parameters: mu, phi in (-1, 1), sigma > 0 and eta_1..T."""

import pyro
import pyro.distributions as dist
import torch


def model(y):
    y = torch.as_tensor(y)
    T = len(y)
    mu = pyro.sample("mu", dist.Cauchy(0.0, 10.0))
    phi = pyro.sample("phi", dist.Uniform(-1.0, 1.0))
    sigma = pyro.sample("sigma", dist.HalfCauchy(5.0))
    with pyro.plate("time", T):
        eta = pyro.sample("eta", dist.Normal(0.0, 1.0))
    e = sigma * eta
    h = [mu + e[0] * torch.rsqrt(1 - phi**2)]
    for t in range(1, T):  # the AR(1) recursion, one step per time point (the model is written for one draw)
        h.append(mu + phi * (h[-1] - mu) + e[t])
    h = pyro.deterministic("h", torch.stack(h))
    with pyro.plate("time_obs", T):
        pyro.sample("y", dist.Normal(0.0, torch.exp(h / 2)), obs=y)
