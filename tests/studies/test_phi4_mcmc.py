"""phi^4 observables, HMC and neural MCMC against exact values and against each other."""

import json
import math

import numpy as np
import pytest
import torch

from flowvi.diagnostics.errors import jackknife
from flowvi.flows.phi4 import phi4_flow, z2_proposal
from flowvi.physics.phi4_observables import ESTIMATE_NAMES, measurements, phi4_estimates
from flowvi.samplers.nmcmc import imh_indices
from flowvi.studies.phi4_mcmc import hmc_phi4, nmcmc_phi4
from flowvi.targets.phi4 import Phi4
from flowvi.training.loop import fit


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny tensors: intra-op threads only add synchronisation (and stall badly on a loaded CPU).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _close(a, b, n_se=3.0):
    """|a - b| < n_se combined standard errors; a, b are {"mean", "se"} or b a float (exact)."""
    if isinstance(b, float):
        return abs(a["mean"] - b) < n_se * a["se"]
    return abs(a["mean"] - b["mean"]) < n_se * math.hypot(a["se"], b["se"])


def test_free_field_hmc_matches_exact_propagator():
    # lam = 0: S = phi^T K phi / 2, K~(p) = 2 - 4 kappa (cos p1 + cos p2); G(y) = FT^{-1} 1/K~,
    # chi_2 = 1/K~(0), xi_2^2 = kappa / (1 - 4 kappa). eps * n_leapfrog = 2 makes one Fourier mode of this
    # lattice (omega T = 3.10) nearly periodic: without step-size jitter HMC misses <phi^2> by ~10 SE.
    L, kappa = 6, 0.2
    t = Phi4(L=L, kappa=kappa, lam=0.0).double()
    r = hmc_phi4(t, torch.zeros(32, L, L, dtype=torch.float64), 300, step_size=0.25, n_leapfrog=8, seed=0)
    est = r["estimates"]
    p = 2 * math.pi * np.fft.fftfreq(L)
    K = 2 - 4 * kappa * (np.cos(p)[:, None] + np.cos(p)[None, :])
    G = np.fft.ifft2(1 / K).real
    assert r["acceptance"] > 0.9
    assert _close(est["chi_2"], float(1 / K[0, 0]))
    assert _close(est["xi_2nd_moment"], math.sqrt(kappa / (1 - 4 * kappa)))
    g, g_se = np.array(est["two_point"]["mean"]), np.array(est["two_point"]["se"])
    for y in [(0, 0), (0, 1), (1, 1), (0, 3)]:
        assert abs(g[y] - G[y]) < 3.5 * g_se[y], (y, g[y], G[y], g_se[y])


def _quadrature_L2(kappa, lam, n=41, R=6.0):
    """<|M|>/V and <M^2>/V on the 2 x 2 lattice by a 4-dimensional midpoint rule (exact to ~1e-5)."""
    t = Phi4(L=2, kappa=kappa, lam=lam).double()
    g = torch.linspace(-R, R, n, dtype=torch.float64)
    a, b, c = torch.meshgrid(g, g, g, indexing="ij")
    z = abs_m = m2 = 0.0
    for v in g:
        phi = torch.stack([torch.full_like(a, v), a, b, c], -1).reshape(-1, 2, 2)
        w = torch.exp(t.log_prob(phi) - 20)
        m = phi.sum((1, 2))
        z, abs_m, m2 = z + w.sum(), abs_m + (w * m.abs()).sum(), m2 + (w * m * m).sum()
    return (abs_m / z / 4).item(), (m2 / z / 4).item()


def test_hmc_matches_quadrature_in_broken_phase():
    # kappa = 0.3 is in the broken phase: chains rarely change the sign of M, but |M| and M^2 are Z2 even.
    exact_abs_m, exact_chi2 = _quadrature_L2(0.3, 0.022)
    t = Phi4(L=2, kappa=0.3, lam=0.022).double()
    x0 = torch.randn(32, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    r = hmc_phi4(t, x0, 400, step_size=0.2, n_leapfrog=8, seed=1)
    assert r["acceptance"] > 0.8
    assert _close(r["estimates"]["abs_magnetization"], exact_abs_m, 3.5)
    assert _close(r["estimates"]["chi_2"], exact_chi2, 3.5)


@pytest.mark.parametrize(
    "kappa, steps, layers, hidden",
    [(0.3, 150, 6, 16), (0.2, 60, 4, 8)],
    ids=["broken-phase", "symmetric-phase"],
)
def test_nmcmc_and_reweighting_agree_with_hmc(kappa, steps, layers, hidden):
    # The test: observables from the flow (IMH chain and reweighted proposals) against the HMC
    # baseline on the same target, within 3 combined standard errors, on a 4 x 4 lattice; kappa = 0.3,
    # lam = 0.022 is the broken phase (Z2-symmetrized flow, see flows_phi4).
    torch.manual_seed(0)
    L = 4
    t = Phi4(L=L, kappa=kappa, lam=0.022)
    f = phi4_flow(L, layers=layers, hidden=hidden, depth=1)
    fit(f, t, steps=steps, batch_size=128, lr=5e-3, estimator="path", warmup=0, progress=False)
    nm = nmcmc_phi4(f, t, 10_000, seed=1)
    hm = hmc_phi4(t, z2_proposal(f).sample(16).detach(), 300, step_size=0.15, n_leapfrog=10, seed=2)
    assert nm["reweighted"]["pareto_k"] < 0.7 and nm["acceptance"] > 0.3 and hm["acceptance"] > 0.8
    for name in ("abs_magnetization", "chi_2", "susceptibility", "xi_2nd_moment"):
        assert _close(nm["chain"][name], hm["estimates"][name]), name
        assert _close(nm["reweighted"][name], hm["estimates"][name]), name
    g_nm, g_hm = (np.array(r["two_point"]["mean"]) for r in (nm["chain"], hm["estimates"]))
    se = np.hypot(np.array(nm["chain"]["two_point"]["se"]), np.array(hm["estimates"]["two_point"]["se"]))
    assert np.all(np.abs(g_nm - g_hm) < 3.5 * se)


def test_reweighted_estimates_are_weighted_means_with_jackknife_errors():
    rng = np.random.default_rng(0)
    phi = torch.from_numpy(rng.normal(size=(600, 4, 4)))
    meas = measurements(phi)
    plain = phi4_estimates(meas, bins=20)
    mean, se = jackknife(meas["abs_m"], bins=20)
    assert np.isclose(plain["abs_magnetization"]["mean"], mean) and np.isclose(plain["abs_magnetization"]["se"], se)
    log_w = rng.normal(size=600)
    w = np.exp(log_w) / np.exp(log_w).sum()
    rew = phi4_estimates(meas, log_w=log_w, bins=20)
    m2 = (w * meas["m2"]).sum()
    abs_m = (w * meas["abs_m"]).sum()
    assert np.isclose(rew["abs_magnetization"]["mean"], abs_m)
    assert np.isclose(rew["chi_2"]["mean"], 16 * m2)
    assert np.isclose(rew["susceptibility"]["mean"], 16 * (m2 - abs_m**2))
    assert np.allclose(np.array(rew["two_point"]["mean"]), np.einsum("i,ixy->xy", w, meas["G"]))
    boot = phi4_estimates(meas, log_w=log_w, method="bootstrap")
    assert 0.5 < boot["abs_magnetization"]["se"] / rew["abs_magnetization"]["se"] < 2


def test_imh_indices_follow_the_acceptance_rule():
    logw = torch.tensor([0.0, -50.0, 0.0, 50.0, -50.0, 49.0])
    idx, acc = imh_indices(logw)
    # -50 is rejected from 0 (prob e^-50), 0 from 0 always accepted, 50 always, -50 rejected, 49 from 50: e^-1
    assert idx[:5].tolist() == [0, 0, 2, 3, 3]
    assert idx[5].item() in (3, 5)
    assert 0.4 <= acc <= 0.6


def test_cli_fit_and_nmcmc_write_all_estimates(tmp_path, capsys):
    from flowvi.cli import main

    out = tmp_path / "run"
    argv = ["fit", "phi4", "--lattice", "4", "--steps", "10", "--batch-size", "32", "--hidden", "4", "--layers", "2"]
    assert main([*argv, "--eval-samples", "500", "--n-samples", "10", "--quiet", "--out", str(out)]) == 0
    assert main(["nmcmc", str(out), "--steps", "400", "--bins", "10", "--hmc", "20", "--hmc-chains", "4"]) == 0
    printed = capsys.readouterr().out
    assert "IMH acceptance" in printed and "susceptibility" in printed
    res = json.loads((out / "nmcmc.json").read_text())
    for part in (res["chain"], res["reweighted"], res["hmc"]["estimates"]):
        assert set(ESTIMATE_NAMES) <= set(part) and np.array(part["two_point"]["mean"]).shape == (4, 4)
    assert 0 <= res["acceptance"] <= 1 and res["reweighted"]["ess"] > 0 and "tau_int" in res["chain"]["chi_2"]
    assert main(["nmcmc", str(out), "--steps", "1"]) == 2
    assert "--steps must be >= 2" in capsys.readouterr().err
