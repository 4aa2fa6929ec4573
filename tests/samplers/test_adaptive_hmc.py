"""Many-chain adaptive HMC: moments of an anisotropic Gaussian within Monte Carlo error, the adapted mass matrix
and step size, a horseshoe against importance sampling from the prior, divergences, bad input, and the CLI's run
directory and reference file."""

import json

import numpy as np
import pytest
import torch

from flowvi.cli import main
from flowvi.diagnostics.mcmc import summarize_chains
from flowvi.samplers.adaptive_hmc import DualAveraging, adaptive_hmc, warmup_windows
from flowvi.studies.stability import reference_stats
from flowvi.targets import CorrelatedGaussian, Funnel, HorseshoeSynthetic


@pytest.fixture(scope="module")
def gaussian_run():
    # AR(1) correlation 0.9, marginal sds log-spaced from 1 to 100
    target = CorrelatedGaussian(dim=8, rho=0.9, condition=1e4).double()
    result = adaptive_hmc(target, chains=64, warmup=300, draws=300, max_leapfrog=16, seed=0)
    return target, result


def test_gaussian_moments_within_monte_carlo_error(gaussian_run):
    target, r = gaussian_run
    x = r["draws"].numpy()
    assert x.shape == (64, 300, 8)
    s = summarize_chains(target, x)
    var = target.cov.diagonal().numpy()
    # mean: z-scores from the sampler's own ESS
    z_mean = np.abs(s["mean"]) / np.sqrt(var / s["ess"])
    assert z_mean.max() < 4.5, z_mean
    # variance of a Gaussian coordinate: se(var_hat) ~ var * sqrt(2 / ESS) (ESS of x as a proxy for that of x^2)
    z_var = np.abs(s["sd"] ** 2 - var) / (var * np.sqrt(2 / s["ess"]))
    assert z_var.max() < 4.5, z_var
    assert np.abs(s["rhat"] - 1).max() < 0.02
    assert s["ess"].min() > 1000
    # the adapted inverse mass matrix estimates the marginal variances (spread 1e4) up to Stan's shrinkage
    ratio = r["inverse_metric"].numpy() / var
    assert np.all((ratio > 0.7) & (ratio < 1.3)), ratio


def test_step_size_adaptation_reaches_target_acceptance(gaussian_run):
    _, r = gaussian_run
    assert abs(r["accept_prob"].mean().item() - 0.8) < 0.07
    assert int(r["divergences"].sum()) == 0
    high = adaptive_hmc(
        CorrelatedGaussian(dim=8, rho=0.9, condition=1e4).double(),
        chains=32,
        warmup=200,
        draws=100,
        max_leapfrog=8,
        target_accept=0.95,
        seed=1,
    )
    assert abs(high["accept_prob"].mean().item() - 0.95) < 0.04
    assert high["step_size"] < r["step_size"]  # a higher target needs smaller steps


def test_dual_averaging_converges_on_a_known_acceptance_curve():
    # acceptance exp(-eps) reaches 0.8 at eps = -log 0.8
    da = DualAveraging(1.0, 0.8)
    eps = 1.0
    for _ in range(2000):
        eps = da.update(float(np.exp(-eps)))
    assert da.final == pytest.approx(-np.log(0.8), rel=0.02)


def test_warmup_windows_follow_stan():
    assert warmup_windows(1000) == (150, [175, 225, 325, 900])
    init, ends = warmup_windows(137)
    assert init == 20 and ends[-1] == 137 - 13 and all(b > a for a, b in zip([init] + ends[:-1], ends, strict=True))
    assert warmup_windows(10) == (10, [])


def test_horseshoe_beta_means_agree_with_prior_importance_sampling():
    target = HorseshoeSynthetic(p=3, n=30).double()
    # independent exact method: self-normalised importance sampling with the prior as proposal
    torch.manual_seed(0)
    theta = target.prior_sample(1_000_000)
    w = torch.softmax(target.log_likelihood(theta), 0)
    beta = target.coefficients(theta)
    m_is = (w[:, None] * beta).sum(0).numpy()
    se_is = torch.sqrt((w[:, None] ** 2 * (beta - torch.as_tensor(m_is)) ** 2).sum(0)).numpy()
    assert 1 / (w**2).sum().item() > 100  # enough effective draws for the comparison to mean something
    r = adaptive_hmc(target, chains=64, warmup=300, draws=300, max_leapfrog=16, target_accept=0.9, seed=1)
    s = summarize_chains(target, r["draws"])
    se_hmc = s["sd"] / np.sqrt(s["ess"])
    z = (s["mean"] - m_is) / np.sqrt(se_hmc**2 + se_is**2)
    assert np.abs(z).max() < 4, (s["mean"], m_is, z)
    assert np.abs(m_is).max() > 1.0  # the data move beta far from the prior's 0
    assert s["rhat"].max() < 1.05


def test_divergences_are_counted_and_rejected():
    # Neal's funnel with far too large a step and no warm-up: most trajectories blow up
    target = Funnel(dim=5).double()
    x0 = torch.zeros(16, 5, dtype=torch.float64)
    r = adaptive_hmc(target, chains=16, warmup=0, draws=20, max_leapfrog=20, step_size=50.0, x0=x0, seed=0)
    assert int(r["divergences"].sum()) > 100
    assert r["divergences"].shape == (16,)
    # a divergent proposal is rejected: the chains never leave regions where log_prob is finite
    assert torch.isfinite(target.log_prob(r["draws"].reshape(-1, 5))).all()
    # the same run on a well-adapted step size has none
    ok = adaptive_hmc(CorrelatedGaussian(dim=4).double(), chains=8, warmup=100, draws=50, seed=0)
    assert int(ok["divergences"].sum()) == 0


def test_initial_step_size_search_repairs_a_bad_guess():
    r = adaptive_hmc(Funnel(dim=5).double(), chains=16, warmup=5, draws=20, step_size=50.0, seed=0)
    assert r["step_size"] < 5.0  # the search halves 50 until one leapfrog is accepted often, then dual averaging
    assert r["step_trace"][0] < 5.0


def test_bad_input_raises():
    target = CorrelatedGaussian(dim=4).double()
    with pytest.raises(ValueError, match="x0 must have shape"):
        adaptive_hmc(target, chains=4, x0=torch.zeros(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="chains >= 2"):
        adaptive_hmc(target, chains=1)
    with pytest.raises(ValueError, match="target_accept"):
        adaptive_hmc(target, chains=4, target_accept=1.2)
    x0 = torch.zeros(4, 4, dtype=torch.float64)
    x0[0, 0] = float("nan")
    with pytest.raises(ValueError, match="not finite at the initial point of 1 of 4 chains"):
        adaptive_hmc(target, chains=4, x0=x0)
    with pytest.raises(TypeError):
        adaptive_hmc(target, chains=4, trajectory="chees")


def test_max_seconds_stops_cleanly():
    target = CorrelatedGaussian(dim=4).double()
    r = adaptive_hmc(target, chains=4, warmup=10**6, draws=10**6, max_seconds=1.0, seed=0)
    assert r["stopped_early"]
    assert 0 < r["draws"].shape[1] < 10**6 and r["warmup_iterations"] < 10**6
    assert r["seconds_warmup"] + r["seconds_sampling"] < 3.0


def test_float32_and_thinning_follow_the_inputs():
    target = CorrelatedGaussian(dim=4).float()
    x0 = torch.zeros(4, 4)
    r = adaptive_hmc(target, chains=4, warmup=20, draws=30, thin=3, x0=x0, seed=0)
    assert r["draws"].dtype == torch.float32 and r["draws"].shape == (4, 10, 4)


def test_summarize_chains_blockwise_equals_one_block():
    target = HorseshoeSynthetic(p=5, n=20).double()
    x = np.random.default_rng(0).standard_normal((3, 40, target.dim))
    a = summarize_chains(target, x)
    b = summarize_chains(target, torch.as_tensor(x), max_bytes=3 * 40 * 8 * 2)
    assert set(b) == set(a)
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-10, atol=1e-12, err_msg=key)
    # float32 draws: rounding moves every statistic by ~1e-7 relative, but it can also break or make a near-tie
    # (the two central draws are equally far from an even-count median once folded), shifting a rank by 1/2
    b = summarize_chains(target, x.astype(np.float32), max_bytes=3 * 40 * 8 * 2)
    for key in a:
        ranked = key.startswith(("rank_rhat", "bulk_ess", "tail_ess"))
        np.testing.assert_allclose(b[key], a[key], rtol=1e-2 if ranked else 1e-5, atol=1e-6, err_msg=key)


def test_summaries_leave_the_callers_target_as_it_was():
    # Module.to converts in place: the summaries work on a float64 copy, not on the caller's target
    target = HorseshoeSynthetic(p=4, n=20).float()
    before = {k: v.dtype for k, v in target.state_dict().items()}
    x = np.random.default_rng(1).standard_normal((2, 8, target.dim))
    summarize_chains(target, x)
    summarize_chains(target, torch.as_tensor(x), max_bytes=2 * 8 * 8)
    assert {k: v.dtype for k, v in target.state_dict().items()} == before
    assert any(dt == torch.float32 for dt in before.values())


def test_cli_hmc_writes_run_directory_and_reference(tmp_path, capsys):
    out, ref = tmp_path / "hmc", tmp_path / "ref.npz"
    args = ["baseline", "hmc", "horseshoe_synthetic", "-p", "p=4", "-p", "n=30", "--chains", "16"]
    args += ["--warmup", "100", "--draws", "60", "--max-leapfrog", "8", "--out", str(out), "--quiet"]
    assert main(args + ["--reference-out", str(ref)]) == 0
    printed = capsys.readouterr().out
    assert "acceptance" in printed and "R-hat max" in printed and "rank-normalized: R-hat max" in printed
    config = json.loads((out / "config.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert {"rank_rhat_max", "bulk_ess_min", "bulk_ess_median", "tail_ess_min", "rank_rhat_theta_max"} <= set(summary)
    assert config["method"] == "hmc" and config["hmc"]["chains"] == 16
    assert summary["chains"] == 16 and summary["num_samples"] == 60 and summary["dim"] == 10
    samples = np.load(out / "samples.npy")
    assert samples.shape == (16 * 60, 10)
    target = HorseshoeSynthetic(p=4, n=30).double()
    beta = target.coefficients(torch.as_tensor(samples)).numpy()
    # the reference file holds the draws' beta moments and is read by the stability study's reader
    refd = reference_stats(target, ref)
    np.testing.assert_allclose(refd["mean"], beta.mean(0), rtol=1e-6)
    np.testing.assert_allclose(refd["sd"], beta.std(0), rtol=1e-6)
    info = json.loads(ref.with_suffix(".json").read_text())
    assert info["sampler"] == "many-chain HMC" and info["chains"] == 16 and info["draws_per_chain"] == 60
    new_info = {"beta_rank_rhat_max", "beta_rank_rhat_share_below_1.01", "beta_rank_rhat_share_below_1.05"}
    new_info |= {"beta_bulk_ess_min", "beta_bulk_ess_median", "beta_tail_ess_min", "beta_tail_ess_median"}
    assert new_info | {"theta_rank_rhat_max", "theta_bulk_ess_min", "beta_rhat_max"} <= set(info)
    with np.load(ref) as f:
        assert f["ess"].shape == (4,) and f["rhat_theta"].shape == (10,)
        for key in ("q05", "q25", "median", "q75", "q95", "rank_rhat", "bulk_ess", "tail_ess"):
            assert f[key].shape == (4,), key
        assert f["rank_rhat_theta"].shape == (10,) and f["bulk_ess_theta"].shape == (10,)
        np.testing.assert_allclose(f["median"], np.median(beta, 0), rtol=1e-6)
        assert info["beta_rank_rhat_max"] == pytest.approx(f["rank_rhat"].max())
    np.testing.assert_allclose(refd["q25"], np.quantile(beta, 0.25, axis=0), rtol=1e-6)
    # bad options give one-line errors
    assert main(args[:2] + ["gaussian", "--chains", "1", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "chains >= 2" in capsys.readouterr().err
    bad = ["baseline", "hmc", "gaussian", "--reference-out", str(tmp_path / "r.txt"), "--out", str(tmp_path / "y")]
    assert main(bad) == 2
    assert "must end in .npz" in capsys.readouterr().err


def test_reference_file_scores_a_finished_study(tmp_path):
    """The --reference-out file is accepted unchanged by score_against_reference (flowvi study score)."""
    from flowvi.studies.stability import grid, run_study, score_against_reference
    from flowvi.training.loop import TrainConfig

    spec = {"name": "horseshoe_synthetic", "params": {"p": 4, "n": 30}}
    ref = tmp_path / "ref.npz"
    args = ["baseline", "hmc", spec["name"], "-p", "p=4", "-p", "n=30", "--chains", "16", "--warmup", "100"]
    args += ["--draws", "60", "--max-leapfrog", "8", "--out", str(tmp_path / "hmc"), "--quiet", "--no-samples"]
    assert main(args + ["--reference-out", str(ref)]) == 0
    assert not (tmp_path / "hmc" / "samples.npy").exists()
    settings = grid(["asymmetric"], [True], ["gaussian"], ["reparam"])
    train = TrainConfig(steps=40, batch_size=32, lr=1e-3, checkpoint_every=10**9)
    flow = {"layers": 2, "hidden": 16, "depth": 1}
    run_study(spec, tmp_path / "study", settings, [0], flow, train, "cpu", eval_samples=300, progress=False)
    scored = score_against_reference(tmp_path / "study", ref)
    with np.load(tmp_path / "study" / "coordinates.npz") as f, np.load(ref) as r:
        (key,) = [k for k in f.files if not k.endswith("#median")]  # means; medians beside them
        expected = np.mean(np.abs(f[key] - r["mean"]) / r["sd"] < 0.1)
    assert scored[0]["within_0.1_sd"] == pytest.approx(expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_graphed_leapfrog_equals_eager_and_samples_the_same_gaussian():
    from flowvi.samplers.hmc import GraphedLeapfrog, leapfrog

    target = HorseshoeSynthetic(n=50, p=30, data_seed=0).double().cuda()
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = 0.5 * torch.randn(64, target.dim, device="cuda", dtype=torch.float64, generator=gen)
    p = torch.randn_like(x)
    m_inv = torch.rand(target.dim, device="cuda", dtype=torch.float64) + 0.5
    from flowvi.samplers.hmc import log_prob_and_grad as _log_prob_and_grad

    lp, g = _log_prob_and_grad(target, x)
    graphed = GraphedLeapfrog(target, x, m_inv)
    for eps, n in [(1e-2, 1), (3e-3, 7), (2e-2, 13)]:
        want = leapfrog(target, x, p, lp, g, eps, m_inv, n)
        got = graphed(target, x, p, lp, g, eps, m_inv, n)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    # a whole adaptive run with the graph samples a Gaussian as the eager one does
    gauss = CorrelatedGaussian(dim=8, rho=0.9, condition=1e4).double().cuda()
    r = adaptive_hmc(gauss, chains=64, warmup=300, draws=300, max_leapfrog=16, seed=0, cuda_graph=True)
    assert r["cuda_graph"]
    x = r["draws"].reshape(-1, 8).cpu().numpy()
    sd = np.sqrt(np.diag(gauss.cov.cpu().numpy()))
    assert np.all(np.abs(x.mean(0)) < 0.2 * sd)
    np.testing.assert_allclose(x.std(0), sd, rtol=0.15)
