"""U(1) gauge theory: action, observables, exact plaquette, circular splines and gauge-equivariant flows."""

import math

import pytest
import torch

from flowvi.flows.gauge import PlaquetteCoupling, UniformTorus, u1_gauge_flow
from flowvi.physics.gauge_observables import gauge_observables
from flowvi.physics.u1 import (
    average_plaquette,
    exact_average_plaquette,
    exact_log_partition_function,
    exact_topological_susceptibility,
    gauge_transform,
    plaquette_angles,
    topological_charge,
    topological_susceptibility,
    wilson_action,
    wrap,
)
from flowvi.targets import make_target
from flowvi.transforms.rational_quadratic import circular_spline, circular_spline_inverse, spline_params

TWO_PI = 2 * math.pi


def angle_diff(a, b):
    return wrap(a - b).abs().max().item()


def random_flow(L=4, layers=8, seed=0, std=0.3):
    torch.manual_seed(seed)
    flow = u1_gauge_flow(L, layers=layers, channels=4, bins=4).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.normal_(0, std)
    return flow


# --- lattice pieces -----------------------------------------------------------------------------------------


def test_plaquette_by_hand():
    torch.manual_seed(1)
    links = TWO_PI * torch.rand(2, 2, 4, 4, dtype=torch.float64)
    P = plaquette_angles(links)
    L = 4
    for x0 in range(L):
        for x1 in range(L):
            ref = (
                links[:, 0, x0, x1]
                + links[:, 1, (x0 + 1) % L, x1]
                - links[:, 0, x0, (x1 + 1) % L]
                - links[:, 1, x0, x1]
            )
            assert torch.allclose(P[:, x0, x1], ref)


def test_action_and_observables_gauge_invariant():
    torch.manual_seed(2)
    links = TWO_PI * torch.rand(3, 2, 6, 6, dtype=torch.float64)
    alpha = TWO_PI * torch.rand(3, 6, 6, dtype=torch.float64)
    g = gauge_transform(links, alpha)
    assert angle_diff(plaquette_angles(g), plaquette_angles(links)) < 1e-12
    assert torch.allclose(wilson_action(g, 1.5), wilson_action(links, 1.5))
    assert torch.allclose(topological_charge(g), topological_charge(links))
    assert not torch.allclose(g, links)


def test_topological_charge_is_integer_and_counts_a_vortex():
    torch.manual_seed(3)
    q = topological_charge(TWO_PI * torch.rand(200, 2, 4, 4, dtype=torch.float64))
    assert torch.allclose(q, q.round(), atol=1e-9)
    assert (q.round() != 0).any()
    # A configuration of uniform field strength 2pi/V per plaquette has charge 1.
    L = 4
    x0 = torch.arange(L, dtype=torch.float64)[:, None].expand(L, L)
    x1 = torch.arange(L, dtype=torch.float64)[None, :].expand(L, L)
    theta1 = TWO_PI * x0 / (L * L)  # theta_1(x) = 2pi x0 / V  ->  P = 2pi/V except at the x0 boundary...
    theta0 = torch.where(x0 == L - 1, -TWO_PI * x1 / L, torch.zeros_like(x1))  # ...which this twist fixes
    links = torch.stack([theta0, theta1])[None]
    assert torch.allclose(wrap(plaquette_angles(links)), torch.full((1, L, L), TWO_PI / (L * L), dtype=torch.float64))
    assert topological_charge(links).item() == pytest.approx(1.0)
    assert topological_susceptibility(torch.tensor([1.0, -1.0, 0.0, 0.0]), volume=16).item() == pytest.approx(0.5 / 16)


def test_bad_links_raise():
    with pytest.raises(ValueError, match="shape"):
        wilson_action(torch.zeros(3, 4, 4), 1.0)
    with pytest.raises(ValueError, match="floating"):
        wilson_action(torch.zeros(1, 2, 4, 4, dtype=torch.int64), 1.0)


def test_exact_plaquette_limits():
    assert exact_average_plaquette(0.0, 4) == pytest.approx(0.0, abs=1e-14)
    assert exact_log_partition_function(0.0, 3) == pytest.approx(18 * math.log(TWO_PI))
    # at beta = 0 only the trivial representation contributes: <Q^2>/V = Var(P/2pi) of a uniform angle = 1/12
    assert exact_topological_susceptibility(0.0, 3) == pytest.approx(1 / 12, rel=1e-9)
    assert exact_topological_susceptibility(1.0, 2) < 0.03
    from scipy.special import i0, i1

    # large volume: only the trivial representation survives
    assert exact_average_plaquette(2.0, 64) == pytest.approx(i1(2.0) / i0(2.0), rel=1e-10)
    # small volume differs measurably from the infinite-volume value
    assert abs(exact_average_plaquette(1.0, 2) - i1(1.0) / i0(1.0)) > 0.05


@pytest.mark.parametrize("L,beta", [(2, 1.0), (3, 0.7)])
def test_exact_plaquette_matches_direct_numerics(L, beta):
    """Self-normalized importance sampling with the uniform (Haar) proposal on a tiny lattice."""
    gen = torch.Generator().manual_seed(4)
    links = TWO_PI * torch.rand(400_000, 2, L, L, generator=gen, dtype=torch.float64)
    log_w = -wilson_action(links, beta)
    w = torch.softmax(log_w, 0)
    plaq = average_plaquette(links)
    est = (w * plaq).sum().item()
    se = torch.sqrt((w * w * (plaq - est) ** 2).sum()).item()
    exact = exact_average_plaquette(beta, L)
    assert abs(est - exact) < 4 * se + 1e-4, (est, exact, se)
    assert se < 2e-3
    # log Z = log((2pi)^(2V) E_uniform[exp(-S)])
    n = len(log_w)
    log_z = (torch.logsumexp(log_w, 0) - math.log(n)).item() + 2 * L * L * math.log(TWO_PI)
    rel_se = (torch.exp(log_w - log_w.max()).std() / torch.exp(log_w - log_w.max()).mean()).item() / math.sqrt(n)
    assert abs(log_z - exact_log_partition_function(beta, L)) < 4 * rel_se
    q2 = topological_charge(links).round() ** 2 / (L * L)
    chi = (w * q2).sum().item()
    chi_se = torch.sqrt((w * w * (q2 - chi) ** 2).sum()).item()
    assert abs(chi - exact_topological_susceptibility(beta, L)) < 4 * chi_se, (chi, chi_se)


# --- circular splines ---------------------------------------------------------------------------------------


def random_spline(shape, K=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    raw = torch.randn(*shape, 3 * K, generator=gen, dtype=torch.float64)
    return spline_params(raw)


def test_spline_is_a_circle_diffeomorphism():
    params = random_spline((500,))
    x = TWO_PI * torch.rand(500, dtype=torch.float64)
    y, log_dy, _ = circular_spline(x, *params)
    assert ((y >= 0) & (y <= TWO_PI)).all()
    x2, log_dx = circular_spline_inverse(y, *params)
    assert torch.allclose(x2, x, atol=1e-10)
    assert torch.allclose(log_dx, -log_dy, atol=1e-10)
    y0, ld0, _ = circular_spline(torch.zeros(500, dtype=torch.float64), *params)
    y1, ld1, _ = circular_spline(torch.full((500,), TWO_PI, dtype=torch.float64), *params)
    assert torch.allclose(y0, torch.zeros(500, dtype=torch.float64))
    assert torch.allclose(y1, torch.full((500,), TWO_PI, dtype=torch.float64))
    assert torch.allclose(ld0, ld1)  # the slope matches across 0 == 2pi


def test_spline_derivatives_match_autograd():
    params = random_spline((300,), seed=1)
    x = (TWO_PI * torch.rand(300, dtype=torch.float64)).requires_grad_(True)
    y, log_dy, dlog_dy = circular_spline(x, *params)
    (dy,) = torch.autograd.grad(y.sum(), x, retain_graph=True)
    (dl,) = torch.autograd.grad(log_dy.sum(), x)
    assert torch.allclose(torch.log(dy), log_dy, atol=1e-10)
    assert torch.allclose(dl, dlog_dy, atol=1e-8)


def test_spline_zero_parameters_are_identity():
    params = spline_params(torch.zeros(10, 24, dtype=torch.float64))
    x = TWO_PI * torch.rand(10, dtype=torch.float64)
    y, log_dy, _ = circular_spline(x, *params)
    assert torch.allclose(y, x, atol=1e-6) and log_dy.abs().max() < 1e-6


# --- gauge-equivariant flow ---------------------------------------------------------------------------------


def test_coupling_changes_only_active_links_and_frozen_plaquettes_stay():
    torch.manual_seed(5)
    layer = PlaquetteCoupling(8, mu=1, offset=2, bins=4, channels=4).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.5)
    z = TWO_PI * torch.rand(2, 2, 8, 8, dtype=torch.float64)
    x, _ = layer(z)
    changed = wrap(x - z).abs() > 1e-12
    assert changed[:, 0].sum() == 0  # mu = 1 layer leaves direction 0 alone
    assert changed[:, 1].any(-1).sum() == 2 * 2  # one stripe of 8 links (x0 = 2 mod 4) per configuration
    frozen_rows = [3, 4, 7, 0]  # plaquette rows x0 = offset + 1, offset + 2 (mod 4)
    dp = wrap(plaquette_angles(x) - plaquette_angles(z)).abs()
    assert dp[:, frozen_rows, :].max() < 1e-12


def test_flow_invertible_and_logdet_matches_autograd_jacobian():
    flow = random_flow()
    z = flow.base.sample(2)
    x, logdet = flow.transform(z)
    z2, logdet_inv = flow.transform.inverse(x)
    assert angle_diff(z2, z) < 1e-10
    assert torch.allclose(logdet, -logdet_inv, atol=1e-10)
    for i in range(2):
        jac = torch.autograd.functional.jacobian(lambda t: flow.transform(t[None])[0][0], z[i])
        jac = jac.reshape(32, 32)
        assert torch.allclose(torch.linalg.slogdet(jac).logabsdet, logdet[i], atol=1e-9)
    assert logdet.abs().min() > 1e-2  # the random flow is far from the identity


def test_flow_is_gauge_equivariant():
    flow = random_flow(seed=6)
    z = flow.base.sample(3)
    alpha = TWO_PI * torch.rand(3, 4, 4, dtype=torch.float64)
    x, ld = flow.transform(z)
    xg, ldg = flow.transform(gauge_transform(z, alpha))
    assert angle_diff(xg, gauge_transform(x, alpha)) < 1e-10
    assert torch.allclose(ld, ldg, atol=1e-10)
    log_q = flow.log_prob(x)
    assert torch.allclose(flow.log_prob(gauge_transform(x, alpha)), log_q, atol=1e-9)


def test_fast_path_score_equals_naive_autograd():
    flow = random_flow(seed=7)
    torch.manual_seed(8)
    x, log_q, score = flow.sample_with_score(4)
    x_ref = x.detach().requires_grad_(True)
    log_q_ref = flow.log_prob(x_ref)
    (score_ref,) = torch.autograd.grad(log_q_ref.sum(), x_ref)
    assert torch.allclose(log_q, log_q_ref, atol=1e-9)
    assert torch.allclose(score, score_ref, atol=1e-8)
    assert score.abs().max() > 1e-2
    # the sample keeps its graph to the parameters
    assert x.requires_grad and x.grad_fn is not None


def test_base_and_dtypes_and_errors():
    base = UniformTorus((2, 4, 4))
    z = base.sample(5)
    assert z.shape == (5, 2, 4, 4) and ((z >= 0) & (z < TWO_PI)).all()
    assert torch.allclose(base.log_prob(z), torch.full((5,), -32 * math.log(TWO_PI)))
    flow = u1_gauge_flow(4, layers=2, channels=4)
    x, log_q = flow.sample_and_log_prob(3)
    assert x.dtype == torch.float32 and log_q.shape == (3,)
    with pytest.raises(ValueError, match="divisible by 4"):
        u1_gauge_flow(6)


def test_u1_target_flow_training_reproduces_exact_plaquette():
    """Train the default flow briefly (reparam) and check the reweighted plaquette against the exact value."""
    from flowvi.training.loop import TrainConfig, fit

    torch.manual_seed(9)
    target = make_target("u1", L=4, beta=1.0).double()
    flow = target.default_flow(layers=8, hidden=8, depth=1, seed=0).double()
    state = fit(flow, target, TrainConfig(steps=100, batch_size=128, lr=3e-3, log_every=50), progress=False)
    assert state.step == 100
    obs = gauge_observables(flow, target, n=10_000, batch_size=2_000)
    assert obs["ess"] > 0.5, obs
    assert abs(obs["plaquette"] - obs["exact_plaquette"]) < 4 * obs["plaquette_se"], obs
    assert obs["exact_plaquette"] == target.exact_average_plaquette()
    assert abs(obs["log_z"] - obs["exact_log_z"]) < 0.05, obs
    assert abs(obs["chi_t"] - obs["exact_chi_t"]) < 4 * obs["chi_t_se"], obs


def test_cli_fit_and_gauge_observables(tmp_path, capsys):
    from flowvi.cli import main

    run = tmp_path / "u1"
    argv = ["fit", "u1", "-p", "L=4", "-p", "beta=1.0", "--layers", "2", "--hidden", "4", "--steps", "3"]
    argv += ["--batch-size", "16", "--eval-samples", "64", "--n-samples", "8", "--out", str(run), "--quiet"]
    assert main(argv + ["--device", "cpu"]) == 0
    assert main(["gauge-observables", str(run), "-n", "64", "--batch-size", "32", "--device", "cpu"]) == 0
    assert "plaquette" in capsys.readouterr().out
    assert (run / "gauge_observables.json").exists()
    bad = tmp_path / "gauss"
    assert (
        main(
            [
                "fit",
                "gaussian",
                "--dim",
                "2",
                "--steps",
                "2",
                "--eval-samples",
                "16",
                "--n-samples",
                "4",
                "--out",
                str(bad),
                "--quiet",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert main(["gauge-observables", str(bad), "--device", "cpu"]) == 2
    assert "not a 2D gauge-theory run" in capsys.readouterr().err


def _non_view_ops(fn):
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += not func.is_view
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.n


def test_coupling_is_a_short_fixed_kernel_sequence():
    """A layer is a fixed sequence of batched kernels, independent of the lattice size: the eager forward
    dispatches at most 64 non-view operations and the inverse at most 80 (the earlier roll-and-mask version
    with ``F.pad`` dispatched about 130 and 124)."""
    counts = []
    for L in (4, 8, 16):
        layer = PlaquetteCoupling(L, mu=1, offset=1, channels=4, depth=2)
        z = TWO_PI * torch.rand(3, 2, L, L)
        with torch.no_grad():
            counts.append(_non_view_ops(lambda layer=layer, z=z: layer(z)))
            counts.append(_non_view_ops(lambda layer=layer, z=z: layer.inverse(z)))
    assert max(counts[0::2]) <= 64 and max(counts[1::2]) <= 80, counts
    assert len(set(counts[0::2])) == 1 and len(set(counts[1::2])) == 1, counts


@pytest.mark.slow
def test_flow_and_targets_under_torch_compile():
    """torch.compile of sampling, density and both targets reproduces eager mode (float64, same draws)."""
    flow = random_flow(L=4, layers=4, seed=10, std=0.2)
    sample = torch.compile(flow.sample_and_log_prob, options={"fallback_random": True})
    torch.manual_seed(11)
    x_c, lq_c = sample(16)
    torch.manual_seed(11)
    x_e, lq_e = flow.sample_and_log_prob(16)
    assert angle_diff(x_c, x_e) < 1e-10 and torch.allclose(lq_c, lq_e, atol=1e-10)
    assert torch.allclose(torch.compile(flow.log_prob)(x_e.detach()), lq_e, atol=1e-9)
    for name in ("u1", "schwinger"):
        target = make_target(name, L=4).double()
        assert torch.allclose(torch.compile(target.log_prob)(x_e.detach()), target.log_prob(x_e.detach()), atol=1e-9)
