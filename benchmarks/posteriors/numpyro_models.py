"""NumPyro models of the reference posteriors, written independently of the flowvi targets.

Used by ``benchmarks/posteriors.py`` (NUTS beside flowvi), ``make_references.py nuts`` (long reference runs)
and ``tests/test_posteriordb_targets.py`` (the flowvi log density against NumPyro's potential energy at the
same unconstrained point). ``SITES[name]`` lists the latent sites in the order of the flowvi target's
coordinates; NumPyro's unconstrained space of each site (``biject_to(support)``) is the flowvi coordinate.
Every model records the reported parameters (posteriordb's names) as sample or deterministic sites.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

jax.config.update("jax_enable_x64", True)
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from flowvi.targets.posteriordb import load_data  # noqa: E402


def _flat(shape=()):
    return dist.ImproperUniform(constraints.real, (), shape)


def ark(data):
    k, y = data["K"], jnp.asarray(data["y"])
    alpha = numpyro.sample("alpha", dist.Normal(0, 10))
    beta = numpyro.sample("beta", dist.Normal(0, 10).expand([k]))
    sigma = numpyro.sample("sigma", dist.HalfCauchy(2.5))
    lags = jnp.stack([y[k - j - 1 : len(y) - j - 1] for j in range(k)], axis=1)
    numpyro.sample("y", dist.Normal(alpha + lags @ beta, sigma), obs=y[k:])


def arma11(data):
    y = jnp.asarray(data["y"])
    mu = numpyro.sample("mu", dist.Normal(0, 10))
    phi = numpyro.sample("phi", dist.Normal(0, 2))
    theta = numpyro.sample("theta", dist.Normal(0, 2))
    sigma = numpyro.sample("sigma", dist.HalfCauchy(2.5))

    def step(err, yy):
        e = yy[1] - mu - phi * yy[0] - theta * err
        return e, e

    err1 = y[0] - mu - phi * mu
    _, errs = jax.lax.scan(step, err1, jnp.stack([y[:-1], y[1:]], axis=1))
    numpyro.sample("err", dist.Normal(0, sigma), obs=jnp.concatenate([err1[None], errs]))


def garch11(data):
    y, s1 = jnp.asarray(data["y"]), data["sigma1"]
    mu = numpyro.sample("mu", _flat())
    alpha0 = numpyro.sample("alpha0", dist.ImproperUniform(constraints.positive, (), ()))
    alpha1 = numpyro.sample("alpha1", dist.Uniform(0, 1))
    beta1 = numpyro.sample("beta1", dist.ImproperUniform(constraints.interval(0.0, 1.0 - alpha1), (), ()))

    def step(var, y_prev):
        v = alpha0 + alpha1 * (y_prev - mu) ** 2 + beta1 * var
        return v, v

    _, var = jax.lax.scan(step, jnp.asarray(s1**2, dtype=jnp.result_type(float)), y[:-1])
    sd = jnp.concatenate([jnp.asarray([s1]), jnp.sqrt(var)])
    numpyro.sample("y", dist.Normal(mu, sd), obs=y)


def eight_schools_noncentered(data):
    j = data["J"]
    theta_trans = numpyro.sample("theta_trans", dist.Normal(0, 1).expand([j]))
    mu = numpyro.sample("mu", dist.Normal(0, 5))
    tau = numpyro.sample("tau", dist.HalfCauchy(5))
    theta = numpyro.deterministic("theta", mu + tau * theta_trans)
    numpyro.sample("y", dist.Normal(theta, jnp.asarray(data["sigma"])), obs=jnp.asarray(data["y"]))


def eight_schools_centered(data):
    mu = numpyro.sample("mu", dist.Normal(0, 5))
    tau = numpyro.sample("tau", dist.HalfCauchy(5))
    theta = numpyro.sample("theta", dist.Normal(mu, tau).expand([data["J"]]))
    numpyro.sample("y", dist.Normal(theta, jnp.asarray(data["sigma"])), obs=jnp.asarray(data["y"]))


def gp_pois_regr(data):
    x, k, n = jnp.asarray(data["x"], float), jnp.asarray(data["k"]), data["N"]
    rho = numpyro.sample("rho", dist.Gamma(25, 4))
    alpha = numpyro.sample("alpha", dist.HalfNormal(2))
    f_tilde = numpyro.sample("f_tilde", dist.Normal(0, 1).expand([n]))
    cov = alpha**2 * jnp.exp(-((x[:, None] - x[None, :]) ** 2) / (2 * rho**2)) + 1e-10 * jnp.eye(n)
    f = numpyro.deterministic("f", jnp.linalg.cholesky(cov) @ f_tilde)
    numpyro.sample("k", dist.Poisson(jnp.exp(f)), obs=k)


def low_dim_gauss_mix(data):
    y = jnp.asarray(data["y"])
    mu = numpyro.sample("mu", dist.ImproperUniform(constraints.ordered_vector, (), (2,)))
    numpyro.factor("mu_prior", dist.Normal(0, 2).log_prob(mu).sum())
    sigma = numpyro.sample("sigma", dist.HalfNormal(2).expand([2]))
    theta = numpyro.sample("theta", dist.Beta(5, 5))
    mix = dist.MixtureSameFamily(dist.Categorical(probs=jnp.stack([theta, 1 - theta])), dist.Normal(mu, sigma))
    numpyro.sample("y", mix, obs=y)


def _regression(design, y, beta_prior, sigma_prior):
    beta = numpyro.sample("beta", beta_prior)
    sigma = numpyro.sample("sigma", sigma_prior)
    numpyro.sample("y", dist.Normal(design @ beta, sigma), obs=y)


def kidscore_momhsiq(data):
    design = jnp.stack([jnp.ones(data["N"]), jnp.asarray(data["mom_hs"]), jnp.asarray(data["mom_iq"])], axis=1)
    _regression(design, jnp.asarray(data["kid_score"]), _flat((3,)), dist.HalfCauchy(2.5))


def blr(data):
    _regression(
        jnp.asarray(data["X"]), jnp.asarray(data["y"]), dist.Normal(0, 10).expand([data["D"]]), dist.HalfNormal(10)
    )


def logmesquite_logvash(data):
    d = {k: jnp.asarray(v, float) for k, v in data.items() if k != "N"}
    area = d["diam1"] * d["diam2"]
    cols = [jnp.ones_like(area), jnp.log(area * d["canopy_height"]), jnp.log(area)]
    cols += [jnp.log(d["diam1"] / d["diam2"]), jnp.log(d["total_height"]), d["group"]]
    positive = dist.ImproperUniform(constraints.positive, (), ())
    _regression(jnp.stack(cols, axis=1), jnp.log(d["weight"]), _flat((6,)), positive)


def funnel(data, dim=10, sigma=3.0):
    v = numpyro.sample("v", dist.Normal(0, sigma))
    numpyro.sample("x", dist.Normal(0, jnp.exp(v / 2)).expand([dim - 1]))


def gauss_mix_separated(data, dim=5):
    x = numpyro.sample("x", _flat((dim,)))
    loc = jnp.broadcast_to(jnp.array([-6.0, 0.0, 6.0])[:, None], (3, dim))
    comps = dist.Normal(loc, jnp.array([1.0, 0.7, 1.3])[:, None]).to_event(1)
    numpyro.factor("mix", dist.MixtureSameFamily(dist.Categorical(probs=jnp.array([0.2, 0.3, 0.5])), comps).log_prob(x))


def stochastic_volatility(data):
    y, t = jnp.asarray(data["y"]), data["T"]
    mu = numpyro.sample("mu", dist.Normal(0, 1))
    phi = numpyro.deterministic("phi", 2 * numpyro.sample("phi_raw", dist.Beta(20, 1.5)) - 1)
    sigma = numpyro.sample("sigma", dist.HalfNormal(1))
    z = numpyro.sample("z", dist.Normal(0, 1).expand([t]))
    h1 = mu + sigma * z[0] / jnp.sqrt(1 - phi**2)

    def step(h_prev, zt):
        h_t = mu + phi * (h_prev - mu) + sigma * zt
        return h_t, h_t

    _, rest = jax.lax.scan(step, h1, z[1:])
    h = numpyro.deterministic("h", jnp.concatenate([h1[None], rest]))
    numpyro.sample("y", dist.Normal(0, jnp.exp(h / 2)), obs=y)


def hierarchical_logistic(data):
    mu = numpyro.sample("mu", dist.Normal(0, 2))
    tau = numpyro.sample("tau", dist.HalfNormal(1))
    beta = numpyro.sample("beta", dist.Normal(0, 1).expand([2]))
    z = numpyro.sample("z", dist.Normal(0, 1).expand([data["J"]]))
    alpha = numpyro.deterministic("alpha", mu + tau * z)
    logits = alpha[jnp.asarray(data["group"])] + jnp.asarray(data["X"]) @ beta
    numpyro.sample("y", dist.Bernoulli(logits=logits), obs=jnp.asarray(data["y"]))


#: flowvi target name -> (model, data set name or None, latent sites in flowvi coordinate order)
MODELS = {
    "arK-arK": (ark, "arK", [("alpha", 1), ("beta", 5), ("sigma", 1)]),
    "arma-arma11": (arma11, "arma", [("mu", 1), ("phi", 1), ("theta", 1), ("sigma", 1)]),
    "garch-garch11": (garch11, "garch", [("mu", 1), ("alpha0", 1), ("alpha1", 1), ("beta1", 1)]),
    "eight_schools-eight_schools_noncentered": (
        eight_schools_noncentered,
        "eight_schools",
        [("theta_trans", 8), ("mu", 1), ("tau", 1)],
    ),
    "eight_schools-eight_schools_centered": (
        eight_schools_centered,
        "eight_schools",
        [("theta", 8), ("mu", 1), ("tau", 1)],
    ),
    "gp_pois_regr-gp_pois_regr": (gp_pois_regr, "gp_pois_regr", [("rho", 1), ("alpha", 1), ("f_tilde", 11)]),
    "low_dim_gauss_mix-low_dim_gauss_mix": (
        low_dim_gauss_mix,
        "low_dim_gauss_mix",
        [("mu", 2), ("sigma", 2), ("theta", 1)],
    ),
    "kidiq-kidscore_momhsiq": (kidscore_momhsiq, "kidiq", [("beta", 3), ("sigma", 1)]),
    "sblrc-blr": (blr, "sblrc", [("beta", 5), ("sigma", 1)]),
    "mesquite-logmesquite_logvash": (logmesquite_logvash, "mesquite", [("beta", 6), ("sigma", 1)]),
    "funnel": (funnel, None, [("v", 1), ("x", 9)]),
    "gauss_mix_separated": (gauss_mix_separated, None, [("x", 5)]),
    "stochastic_volatility": (
        stochastic_volatility,
        "stochastic_volatility",
        [("mu", 1), ("phi_raw", 1), ("sigma", 1), ("z", 100)],
    ),
    "hierarchical_logistic": (
        hierarchical_logistic,
        "hierarchical_logistic",
        [("mu", 1), ("tau", 1), ("beta", 2), ("z", 100)],
    ),
}
_SCALAR = {"alpha", "sigma", "mu", "phi", "theta", "tau", "rho", "alpha0", "alpha1", "beta1", "v", "phi_raw"}


def model_and_data(name: str):
    model, data_name, _ = MODELS[name]
    return model, (load_data(data_name) if data_name else {})


def unflatten(name: str, x: np.ndarray) -> dict:
    """A flowvi coordinate vector ``(d,)`` as NumPyro's dict of unconstrained site values."""
    out, i = {}, 0
    for site, size in MODELS[name][2]:
        value = jnp.asarray(x[i : i + size])
        out[site] = value[0] if size == 1 and site in _SCALAR else value
        i += size
    return out


def potential_energy(name: str, xs: np.ndarray) -> np.ndarray:
    """NumPyro's potential energy (minus the log density, Jacobians included) at flowvi coordinates ``xs``
    ``(n, d)``, one vectorized pass (``jax.vmap``)."""
    from numpyro.infer.util import potential_energy as pe

    model, data = model_and_data(name)
    return np.asarray(jax.jit(jax.vmap(lambda x: pe(model, (data,), {}, unflatten(name, x))))(jnp.asarray(xs)))


def run_nuts(name: str, chains=4, warmup=1000, draws=1000, seed=0, target_accept=0.95) -> dict:
    """NumPyro NUTS, chains one after another (``chain_method="sequential"``): samples grouped by chain,
    divergences, seconds (compilation included)."""
    from numpyro.infer import MCMC, NUTS

    model, data = model_and_data(name)
    kernel = NUTS(model, target_accept_prob=target_accept)
    mcmc = MCMC(
        kernel, num_warmup=warmup, num_samples=draws, num_chains=chains, chain_method="sequential", progress_bar=False
    )
    t0 = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(seed), data, extra_fields=("diverging",))
    samples = jax.tree_util.tree_map(np.asarray, mcmc.get_samples(group_by_chain=True))
    seconds = time.perf_counter() - t0
    divergences = int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum())
    return {"samples": samples, "divergences": divergences, "seconds": seconds}


def reported_draws(name: str, samples: dict, params: list[str] | None = None) -> tuple[list[str], np.ndarray]:
    """The reference parameters (``theta[3]`` is ``samples["theta"][..., 2]``) as an array ``(chains, n, k)``."""
    if params is None:
        from flowvi.targets import make_target

        params = make_target(name).param_names if name != "funnel" else ["v"] + [f"x[{i}]" for i in range(1, 10)]
    cols = []
    for p in params:
        m = re.fullmatch(r"(\w+)\[(\d+)\]", p)
        cols.append(samples[m[1]][..., int(m[2]) - 1] if m else samples[p])
    return params, np.stack(cols, axis=-1)
