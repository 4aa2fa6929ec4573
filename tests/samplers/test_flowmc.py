"""Hybrid NF-MCMC (FlowMC-style): the global move leaves the target invariant and is always accepted when q = p,
the hybrid hops between well-separated modes that local HMC never leaves, its draws have a Gaussian's exact
moments, bad input is refused, and the command line writes a run directory with a reloadable flow."""

import json
import math

import numpy as np
import pytest
import torch

from flowvi.cli import main
from flowvi.diagnostics.mcmc import summarize_chains
from flowvi.flows.realnvp import realnvp
from flowvi.runs.flowmc_baseline import load_flowmc_flow
from flowvi.samplers.adaptive_hmc import adaptive_hmc
from flowvi.samplers.flowmc import StandardizedFlow, flowmc, global_move
from flowvi.targets import CorrelatedGaussian
from flowvi.targets.base import Target


class DiagonalGaussian(Target):
    """N(mean, diag(sd^2)), normalized."""

    def __init__(self, mean, sd):
        super().__init__()
        self.event_shape = (len(mean),)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float64))
        self.register_buffer("sd", torch.as_tensor(sd, dtype=torch.float64))

    def log_prob(self, x):
        z = (x - self.mean) / self.sd
        return -0.5 * (z * z).sum(1) - self.sd.log().sum() - 0.5 * self.dim * math.log(2 * math.pi)


class ShiftedGaussian(Target):
    """A correlated Gaussian (AR(1) correlation, unequal scales) moved to mean ``mean``."""

    def __init__(self, mean, rho=0.7, condition=16.0):
        super().__init__()
        self.base = CorrelatedGaussian(dim=len(mean), rho=rho, condition=condition)
        self.event_shape = self.base.event_shape
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float64))

    def log_prob(self, x):
        return self.base.log_prob(x - self.mean)


class TwoModes(Target):
    """Equal mixture of N(+-a e_1, I): modes 2a apart, a barrier of a^2 / 2 nats between them."""

    def __init__(self, dim=2, a=5.0):
        super().__init__()
        self.event_shape, self.a = (dim,), a

    def log_prob(self, x):
        rest = (x[:, 1:] ** 2).sum(1)
        up, down = -0.5 * ((x[:, 0] - self.a) ** 2 + rest), -0.5 * ((x[:, 0] + self.a) ** 2 + rest)
        return torch.logaddexp(up, down) - math.log(2) - 0.5 * self.dim * math.log(2 * math.pi)


class SameAs(Target):
    """log p = log q + 3: the proposal is the target up to its normalizing constant."""

    def __init__(self, q):
        super().__init__()
        self.q, self.event_shape = q, (q.dim,)

    def log_prob(self, x):
        return self.q.log_prob(x) + 3.0


def gaussian_proposal(loc, scale, inner_loc, inner_log_scale, dtype=torch.float64):
    """A fixed Gaussian q: a flow with one elementwise affine layer (no couplings, no LOFT), standardized."""
    flow = realnvp(len(loc), layers=0, loft=False).to(dtype)
    affine = flow.transform.transforms[0]
    with torch.no_grad():
        affine.loc.copy_(torch.as_tensor(inner_loc))
        affine.log_scale.copy_(torch.as_tensor(inner_log_scale))
    return StandardizedFlow(
        flow, torch.as_tensor(loc, dtype=torch.float64), torch.as_tensor(scale, dtype=torch.float64)
    )


def test_global_move_leaves_the_target_invariant():
    # target N(mu, diag(sd^2)); proposal N(mu + 0.4 sd - 0.3, diag((1.6 sd)^2)) in x, built from standardization
    # (loc, scale) and the flow's own affine layer: both parts of q(x) enter the acceptance ratio
    mu, sd = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([1.0, 0.5, 2.0])
    target = DiagonalGaussian(mu, sd)
    q = gaussian_proposal(mu - 0.3, sd, [0.4, 0.4, 0.4], [math.log(1.6)] * 3)
    n = 20_000  # chains, started from exact draws of the target
    gen = torch.Generator().manual_seed(0)
    x = mu + sd * torch.randn(n, 3, generator=gen, dtype=torch.float64)
    lp, log_q = target.log_prob(x), q.log_prob(x)
    accepted = torch.zeros(n)
    for _ in range(5):
        x, lp, log_q, a, acc = global_move(q, target, x, lp, log_q, gen)
        accepted += acc
    torch.testing.assert_close(lp, target.log_prob(x))  # the carried log densities are those of the states
    torch.testing.assert_close(log_q, q.log_prob(x))
    # the states after 5 moves are (dependent over moves, independent over chains) exact draws: mean and variance
    # within 4.5 standard errors over the n chains
    z_mean = (x.mean(0) - mu) / (sd / math.sqrt(n))
    z_var = (x.var(0) - sd**2) / (sd**2 * math.sqrt(2 / n))
    assert z_mean.abs().max() < 4.5 and z_var.abs().max() < 4.5, (z_mean, z_var)
    rate = float(accepted.mean()) / 5
    assert 0.2 < rate < 0.8, rate  # q differs from p: moves are both taken and rejected
    # the same chain without the log q(x) - log q(x') correction (plain Metropolis on p) is visibly biased
    x_wrong = mu + sd * torch.randn(n, 3, generator=gen, dtype=torch.float64)
    for _ in range(5):
        xp, _ = q.sample_and_log_prob(n, generator=gen)
        take = torch.rand(n, generator=gen, dtype=torch.float64).log() < target.log_prob(xp) - target.log_prob(x_wrong)
        x_wrong = torch.where(take[:, None], xp, x_wrong)
    z_wrong = (x_wrong.var(0) - sd**2) / (sd**2 * math.sqrt(2 / n))
    assert z_wrong.abs().max() > 10, z_wrong


def test_global_move_is_always_accepted_when_q_is_p():
    torch.manual_seed(1)
    flow = realnvp(4, layers=4, hidden=8).double()
    for p in flow.parameters():  # a non-trivial flow: couplings away from the identity
        torch.nn.init.normal_(p, std=0.3)
    q = StandardizedFlow(flow, torch.tensor([1.0, 2.0, 3.0, 4.0]).double(), torch.tensor([0.5, 1.0, 2.0, 3.0]).double())
    target = SameAs(q)
    gen = torch.Generator().manual_seed(2)
    x, _ = q.sample_and_log_prob(256, generator=gen)
    lp, log_q = target.log_prob(x), q.log_prob(x)
    for _ in range(3):
        x, lp, log_q, a, acc = global_move(q, target, x, lp, log_q, gen)
        assert bool(acc.all()) and float(a.min()) > 1 - 1e-9


def test_global_move_rejects_non_finite_proposals_and_states():
    q = gaussian_proposal([0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0])
    target = DiagonalGaussian([0.0, 0.0], [1.0, 1.0])
    gen = torch.Generator().manual_seed(3)
    x = torch.zeros(64, 2, dtype=torch.float64)
    lp, log_q = target.log_prob(x), q.log_prob(x)
    log_q[:32] = float("nan")  # the flow's inverse overflowed at these states: never moved
    x2, lp2, _, a, acc = global_move(q, target, x, lp, log_q, gen)
    assert not acc[:32].any() and (a[:32] == 0).all() and (x2[:32] == 0).all()
    assert acc[32:].any()
    with torch.no_grad():  # proposals beyond float range are rejected, not passed to the target
        q.scale.fill_(float("inf"))
    x3, lp3, _, a, acc = global_move(q, target, x, lp, target.log_prob(x), gen)
    assert not acc.any() and torch.isfinite(x3).all() and torch.isfinite(lp3).all()


def test_hybrid_hops_between_modes_that_local_hmc_never_leaves():
    target = TwoModes(dim=2, a=6.0).double()
    chains = 16
    # plain many-chain HMC from one mode: no chain ever crosses the 18-nat barrier (an HMC trajectory needs an energy
    # 18 nats above the mode's to cross; in 2-D the probability is ~19 exp(-18) = 3e-7 per iteration)
    up = torch.zeros(chains, 2, dtype=torch.float64)
    up[:, 0] = 6.0
    hmc = adaptive_hmc(target, chains=chains, warmup=100, draws=400, max_leapfrog=8, x0=up, seed=0)
    side = (hmc["draws"][..., 0] > 0).double().mean(1)
    assert torch.all((side == 0) | (side == 1)), side
    # the hybrid, half the chains started in each mode so that the buffer sees both
    x0 = up.clone()
    x0[chains // 2 :, 0] = -6.0
    torch.manual_seed(0)
    flow = realnvp(2, layers=4, hidden=32)  # float32 flow, float64 chains
    r = flowmc(
        target,
        flow,
        chains=chains,
        warmup=100,
        rounds=8,
        local_steps=10,
        global_steps=10,
        train_steps=50,
        draws=600,
        max_leapfrog=8,
        x0=x0,
        seed=0,
    )
    assert r["draws"].shape == (chains, 600, 2) and r["draws"].dtype == torch.float64
    up_share = (r["draws"][..., 0] > 0).double().mean(1)
    # every chain visits both modes about equally: 54 blocks of global moves switch a chain's mode ~27 times
    assert torch.all((up_share > 0.2) & (up_share < 0.8)), up_share
    assert abs(float(up_share.mean()) - 0.5) < 0.07
    assert r["global_jumps"].min() > 100  # of 540 global moves per chain
    # training made the proposal better than the standardized Gaussian it started as
    assert r["global_accept"].mean() > 0.6 and r["global_accept_trace"][0] < 0.45, r["global_accept_trace"]
    assert r["nll_trace"][-1] < r["nll_trace"][0] - 0.3
    assert len(r["nll_trace"]) == 8 * 50 and r["training_rounds"] == 8
    assert len(r["local_accept_trace"]) == len(r["global_accept_trace"]) == 8 + 600 // 11  # rounds: 10 local + 1 block


def test_hybrid_draws_have_a_gaussians_moments():
    mean = torch.tensor([3.0, -1.0, 0.0, 2.0, -4.0, 1.0])
    target = ShiftedGaussian(mean).double()
    torch.manual_seed(0)
    r = flowmc(
        target,
        realnvp(6, layers=4, hidden=32),
        chains=16,
        warmup=150,
        rounds=6,
        local_steps=10,
        global_steps=10,
        train_steps=40,
        draws=400,
        max_leapfrog=8,
        seed=1,
    )
    assert r["global_accept"].mean() > 0.3  # the global moves take part in the draws
    s = summarize_chains(target, r["draws"].numpy())
    var = target.base.cov.diagonal().numpy()
    z_mean = (s["mean"] - mean.numpy()) / np.sqrt(var / s["ess"])
    z_var = (s["sd"] ** 2 - var) / (var * np.sqrt(2 / s["ess"]))
    assert np.abs(z_mean).max() < 4.5 and np.abs(z_var).max() < 4.5, (z_mean, z_var)
    assert s["rhat"].max() < 1.05 and s["ess"].min() > 300
    assert r["gradient_evaluations"] > r["log_prob_evaluations"] == 6 * 10 + (400 // 11) * 10


def test_bad_input_raises():
    target = DiagonalGaussian([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    flow = realnvp(3, layers=2, hidden=8)
    with pytest.raises(ValueError, match="chains >= 2"):
        flowmc(target, flow, chains=1)
    for name in ("rounds", "local_steps", "global_steps", "train_steps", "draws", "thin", "max_leapfrog"):
        with pytest.raises(ValueError, match=f"{name}=0"):
            flowmc(target, flow, chains=4, **{name: 0})
    with pytest.raises(ValueError, match="warmup=-1"):
        flowmc(target, flow, chains=4, warmup=-1)
    with pytest.raises(ValueError, match=r"flow's dimension \(4\) is not the target's \(3\)"):
        flowmc(target, realnvp(4, layers=2, hidden=8), chains=4)
    x0 = torch.zeros(4, 3, dtype=torch.float64)
    x0[1, 2] = float("nan")
    with pytest.raises(ValueError, match="not finite at the initial point of 1 of 4 chains"):
        flowmc(target, flow, chains=4, x0=x0)
    with pytest.raises(ValueError, match="x0 must have shape"):
        flowmc(target, flow, chains=4, x0=torch.zeros(3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="lr and clip must be positive"):
        flowmc(target, flow, chains=4, lr=0.0)


def test_cli_flowmc_writes_run_directory_and_flow(tmp_path, capsys):
    out = tmp_path / "fmc"
    args = ["baseline", "flowmc", "gaussian", "--dim", "3", "--chains", "8", "--warmup", "60", "--rounds", "2"]
    args += ["--local-steps", "5", "--global-steps", "5", "--train-steps", "10", "--draws", "40", "--thin", "2"]
    args += ["--max-leapfrog", "4", "--layers", "2", "--hidden", "8", "--device", "cpu", "--seed", "3"]
    assert main(args + ["--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "global acceptance" in printed and "rank-normalized: R-hat max" in printed
    config = json.loads((out / "config.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert config["method"] == "flowmc" and config["flowmc"]["rounds"] == 2 and config["flowmc_flow"]["layers"] == 2
    assert summary["chains"] == 8 and summary["num_samples"] == 20 and summary["training_rounds"] == 2
    assert 0 <= summary["global_accept"] <= 1 and len(summary["global_jumps_per_chain"]) == 8
    assert {"rank_rhat_max", "bulk_ess_min", "gradient_evaluations_per_chain"} <= set(summary)
    assert np.load(out / "samples.npy").shape == (8 * 20, 3)
    q = load_flowmc_flow(out)  # the saved flow is a density over x, standardization included
    x = torch.as_tensor(np.load(out / "samples.npy")[:5])
    assert q.dim == 3 and torch.isfinite(q.log_prob(x)).all()
    scale = q.scale.log().sum()
    torch.testing.assert_close(q.log_prob(x), q.flow.log_prob(q.standardize(x)).double() - scale)
    assert main(args + ["--out", str(out), "--quiet"]) == 2  # the run exists
    assert "already holds a run" in capsys.readouterr().err
    assert main(args[:3] + ["--chains", "1", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "chains >= 2" in capsys.readouterr().err
