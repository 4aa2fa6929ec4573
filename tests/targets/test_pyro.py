"""Pyro models as targets: the unconstrained log density against hand-written ones (bijections and their
log-Jacobians written out) on positive, bounded, simplex and correlation-Cholesky sites; supports, plate shapes,
deterministic sites, float32, gradients, and one-line errors."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.nn.functional import logsigmoid

from flowvi.targets import TargetError, from_pyro, make_target

LOG_2PI = math.log(2 * math.pi)


def normal_lpdf(x, mu, sigma):
    return -0.5 * ((x - mu) / sigma) ** 2 - math.log(sigma) - 0.5 * LOG_2PI


# -- positive, interval, unit interval and real sites, a plate and a deterministic site ------------------------
def scalar_model(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    tau = pyro.sample("tau", dist.LogNormal(0.0, 1.0))
    p = pyro.sample("p", dist.Uniform(-1.0, 3.0))
    q = pyro.sample("q", dist.Beta(2.0, 3.0))
    with pyro.plate("n", 3):
        eta = pyro.sample("eta", dist.Normal(mu, tau))
        pyro.deterministic("shifted", eta + p)
        pyro.sample("y", dist.Normal(eta + p, q), obs=y)


Y = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)


def scalar_hand(u):
    mu, tau, p, q, eta = u[0], u[1].exp(), -1 + 4 * torch.sigmoid(u[2]), torch.sigmoid(u[3]), u[4:7]
    log_jac = u[1] + (math.log(4) + logsigmoid(u[2]) + logsigmoid(-u[2])) + (logsigmoid(u[3]) + logsigmoid(-u[3]))
    lp = normal_lpdf(mu, 0, 2)
    lp = lp + normal_lpdf(tau.log(), 0, 1) - tau.log()  # log-normal
    lp = lp - math.log(4)  # uniform on (-1, 3)
    lp = lp + math.log(12) + q.log() + 2 * torch.log1p(-q)  # Beta(2, 3): 1 / B(2, 3) = 12
    lp = lp + (-0.5 * ((eta - mu) / tau) ** 2 - tau.log() - 0.5 * LOG_2PI).sum()
    lp = lp + (-0.5 * ((Y - eta - p) / q) ** 2 - q.log() - 0.5 * LOG_2PI).sum()
    return lp + log_jac


# -- a simplex site -----------------------------------------------------------------------------------------------
ALPHA = torch.tensor([1.5, 2.0, 3.0, 0.7], dtype=torch.float64)
COUNTS = torch.tensor([0, 2, 2, 1, 3, 2, 2], dtype=torch.long)


def simplex_model(counts):
    w = pyro.sample("w", dist.Dirichlet(ALPHA))
    with pyro.plate("obs", len(counts)):
        pyro.sample("c", dist.Categorical(w), obs=counts)


def simplex_hand(u):
    """Stick breaking: z_k = sigmoid(u_k - log(K - 1 - k)), w_k = z_k prod_{j<k} (1 - z_j), w_K = prod_j (1 - z_j);
    the Jacobian is triangular, log|J| = sum_k [log z_k + log(1 - z_k) + sum_{j<k} log(1 - z_j)]."""
    K = len(ALPHA)
    v = u - torch.log(torch.arange(K - 1, 0, -1, dtype=u.dtype))
    log_z, log_1mz = logsigmoid(v), logsigmoid(-v)
    log_rest = torch.cat([u.new_zeros(1), torch.cumsum(log_1mz, 0)])  # log prod_{j<k} (1 - z_j), k = 0..K-1
    log_w = torch.cat([log_z + log_rest[:-1], log_rest[-1:]])
    log_jac = (log_z + log_1mz + log_rest[:-1]).sum()
    lp = torch.lgamma(ALPHA.sum()) - torch.lgamma(ALPHA).sum() + ((ALPHA - 1) * log_w).sum()
    return lp + log_w[COUNTS].sum() + log_jac


# -- a correlation-Cholesky site ----------------------------------------------------------------------------------
ETA = 1.5
X = torch.tensor([[0.5, -0.2, 1.0], [1.1, 0.9, -0.4], [-0.3, 0.2, 0.1], [0.0, -1.5, 0.7]], dtype=torch.float64)


def lkj_model(x):
    L = pyro.sample("L", dist.LKJCholesky(3, ETA))
    with pyro.plate("obs", len(x)):
        pyro.sample("x", dist.MultivariateNormal(torch.zeros(3), scale_tril=L), obs=x)


def lkj_hand(u):
    """r = tanh(u) fills the strict lower triangle row by row; L_ij = r_ij sqrt(1 - sum_{k<j} L_ik^2),
    L_ii = sqrt(1 - sum_{k<i} L_ik^2); log|J| = sum log(1 - r^2) + sum_{i>j} log sqrt(1 - sum_{k<j} L_ik^2).
    LKJ(eta) on the Cholesky factor: log p(L) = sum_i (K - i + 2 eta - 2) log L_ii - log Z (i = 1..K),
    log Z = sum_{k=1}^{K-1} [(2 eta - 2 + K - k)(K - k) log 2 + (K - k) log B(b_k, b_k)], b_k = eta + (K - k - 1)/2
    (Lewandowski, Kurowicka & Joe 2009, eq. 16)."""
    K, r = 3, torch.tanh(u)
    rows, log_jac, i_r = [torch.cat([u.new_ones(1), u.new_zeros(2)])], torch.log1p(-(r**2)).sum(), 0
    for i in range(1, K):
        row, rest = [], u.new_ones(())
        for _ in range(i):
            log_jac = log_jac + 0.5 * rest.log()
            row.append(r[i_r] * rest.sqrt())
            rest = rest - row[-1] ** 2
            i_r += 1
        rows.append(torch.stack(row + [rest.sqrt()] + [u.new_zeros(())] * (K - 1 - i)))
    L = torch.stack(rows)
    diag = torch.diagonal(L)
    lp = sum((K - i + 2 * ETA - 2) * diag[i - 1].log() for i in range(1, K + 1))
    for k in range(1, K):
        b = ETA + (K - k - 1) / 2
        log_beta = 2 * math.lgamma(b) - math.lgamma(2 * b)
        lp = lp - ((2 * ETA - 2 + K - k) * (K - k) * math.log(2) + (K - k) * log_beta)
    z = torch.linalg.solve_triangular(L, X.T, upper=False)  # (K, n)
    lp = lp + (-0.5 * (z**2).sum(0) - diag.log().sum() - 1.5 * LOG_2PI).sum()
    return lp + log_jac


CASES = {
    "positive_interval": (scalar_model, {"y": Y}, scalar_hand, 7),
    "simplex": (simplex_model, {"counts": COUNTS}, simplex_hand, 3),
    "corr_cholesky": (lkj_model, {"x": X}, lkj_hand, 3),
}


@pytest.mark.parametrize("case", list(CASES))
def test_log_density_equals_hand_written_with_jacobians(case):
    model, data, hand, dim = CASES[case]
    target = from_pyro(model, **data).double()
    assert target.dim == dim
    u = torch.randn(32, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = torch.stack([hand(v) for v in u])
    np.testing.assert_allclose(target.log_prob(u).numpy(), expected.numpy(), rtol=0, atol=1e-10)


def test_constrained_draws_respect_supports_and_plate_shapes():
    u = 3 * torch.randn(500, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    target = from_pyro(scalar_model, y=Y).double()
    c = target.constrain(u)
    assert list(c) == ["mu", "tau", "p", "q", "eta", "shifted"]
    assert {k: v.shape for k, v in c.items()} == {
        "mu": (500,),
        "tau": (500,),
        "p": (500,),
        "q": (500,),
        "eta": (500, 3),
        "shifted": (500, 3),
    }
    assert (c["tau"] > 0).all() and ((c["p"] > -1) & (c["p"] < 3)).all() and ((c["q"] > 0) & (c["q"] < 1)).all()
    torch.testing.assert_close(c["shifted"], c["eta"] + c["p"][:, None], rtol=0, atol=0)
    torch.testing.assert_close(target.unconstrain(c), u, rtol=1e-10, atol=1e-10)
    assert target.shapes == {"mu": (), "tau": (), "p": (), "q": (), "eta": (3,), "shifted": (3,)}

    w = from_pyro(simplex_model, counts=COUNTS).double().constrain(u[:, :3])["w"]
    assert w.shape == (500, 4) and (w > 0).all()
    torch.testing.assert_close(w.sum(1), torch.ones(500, dtype=torch.float64))
    L = from_pyro(lkj_model, x=X).double().constrain(u[:, :3])["L"]
    assert L.shape == (500, 3, 3) and (torch.diagonal(L, dim1=1, dim2=2) > 0).all()
    assert (torch.triu(L, 1) == 0).all()
    torch.testing.assert_close((L**2).sum(2), torch.ones(500, 3, dtype=torch.float64))  # unit-norm rows


def test_float32_follows_the_draws_and_gradients_flow():
    target = from_pyro(lkj_model, x=X.numpy())  # NumPy data become buffers; their dtype follows the draws
    u = torch.randn(16, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64, requires_grad=True)
    lp = target.float().log_prob(u.float())
    assert lp.dtype == torch.float32 and lp.shape == (16,)
    lp64 = target.double().log_prob(u)
    np.testing.assert_allclose(lp.detach().numpy(), lp64.detach().numpy(), rtol=1e-5)
    (grad,) = torch.autograd.grad(lp64.sum(), u)  # through vmap: each draw's gradient, as for that draw alone
    for i in (0, 7):
        expected = torch.autograd.functional.jacobian(lkj_hand, u.detach()[i])
        torch.testing.assert_close(grad[i], expected, rtol=1e-10, atol=1e-10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    target = from_pyro(scalar_model, y=Y)
    u = torch.randn(8, 7, dtype=torch.float64)
    cpu = target.double().log_prob(u)
    torch.testing.assert_close(target.to("cuda").log_prob(u.cuda()).cpu(), cpu)


def discrete_model():
    pyro.sample("k", dist.Poisson(3.0))


def test_errors_name_the_site_or_argument(tmp_path):
    with pytest.raises(TargetError, match="site 'k' is a discrete latent"):
        from_pyro(discrete_model)
    with pytest.raises(TargetError, match="missing a required argument: 'y'"):
        from_pyro(scalar_model)
    with pytest.raises(TargetError, match="unexpected keyword argument 'z'"):
        from_pyro(scalar_model, y=Y, z=1)
    file = tmp_path / "m.py"
    file.write_text(
        "import pyro, pyro.distributions as dist\n"
        "def model(sigma, y):\n"
        "    mu = pyro.sample('mu', dist.Normal(0., 1.))\n"
        "    with pyro.plate('n', len(y)):\n"
        "        pyro.sample('y', dist.Normal(mu, sigma), obs=y)\n"
    )
    (tmp_path / "d.json").write_text('{"sigma": 2.0}')
    with pytest.raises(TargetError, match=r"needs argument 'y', which the data file .*d\.json' \(its keys: sigma\)"):
        make_target(f"{file}:model", data=str(tmp_path / "d.json"))
    np.savez(tmp_path / "d.npz", y=np.array([0.5, 1.0]))
    target = make_target(f"{file}:model", data=str(tmp_path / "d.npz"), sigma=2.0)  # -p sigma=2 completes it
    u = torch.tensor([[0.25]])
    expected = normal_lpdf(0.25, 0, 1) + normal_lpdf(0.5, 0.25, 2.0) + normal_lpdf(1.0, 0.25, 2.0)
    assert target.log_prob(u).item() == pytest.approx(expected, rel=1e-6)
