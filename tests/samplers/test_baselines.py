"""Baselines: NUTS (Pyro) recovers a Gaussian's moments; tempered SMC's log Z matches an exact evidence;
the tempering and resampling steps do what they claim; the CLI writes run directories."""

import json
import math

import numpy as np
import pytest
import torch

from flowvi.cli import main
from flowvi.samplers.smc import ess_fraction, next_temperature, run_smc, systematic_resample
from flowvi.targets import make_target


def test_next_temperature_hits_the_ess_target():
    log_ratio = torch.randn(2000, dtype=torch.float64) * 30
    b = next_temperature(0.0, log_ratio, 0.5)
    assert 0 < b < 1
    assert abs(ess_fraction(b * log_ratio) - 0.5) < 1e-3
    assert next_temperature(0.3, torch.zeros(100, dtype=torch.float64), 0.5) == 1.0  # flat weights: jump to 1


def test_systematic_resample_keeps_expected_counts():
    log_w = 2 * torch.randn(200, dtype=torch.float64)
    expected = 200 * torch.softmax(log_w, 0)
    for seed in range(5):
        idx = systematic_resample(log_w, generator=torch.Generator().manual_seed(seed))
        counts = torch.bincount(idx, minlength=200).double()
        # systematic resampling: particle i is copied floor(N W_i) or ceil(N W_i) times
        assert torch.all(counts >= torch.floor(expected)) and torch.all(counts <= torch.ceil(expected))


def test_smc_log_z_matches_exact_evidence():
    target = make_target("conjugate_regression").double()
    runs = [run_smc(target, particles=1000, moves=20, seed=s)["log_z"] for s in range(4)]
    mean, se = np.mean(runs), np.std(runs, ddof=1) / 2
    assert abs(mean - target.log_evidence) < max(4 * se, 0.3), (runs, target.log_evidence)


def test_smc_final_particles_sample_the_target():
    target = make_target("gaussian", dim=3, rho=0.5, condition=4.0).double()
    res = run_smc(target, particles=2000, moves=10, seed=0)
    x = res["samples"]
    exact = target.sample(200_000)
    assert res["temperatures"][-1] == 1.0
    np.testing.assert_allclose(x.var(0).numpy(), exact.var(0).numpy(), rtol=0.2)
    assert abs(res["log_z"]) < 0.2  # exact log Z = 0


def test_nuts_recovers_gaussian_moments():
    from flowvi.samplers.nuts import run_nuts

    target = make_target("gaussian", dim=3, rho=0.8, condition=9.0).double()
    res = run_nuts(target, num_samples=400, warmup=200, chains=1, seed=1)
    x = res["samples"].reshape(-1, 3)
    exact = target.sample(200_000).numpy()
    sd = exact.std(0)
    assert np.all(np.abs(x.mean(0) - exact.mean(0)) < 0.35 * sd)
    np.testing.assert_allclose(x.var(0), exact.var(0), rtol=0.35)
    assert res["summary"]["divergences"] == 0


def test_chain_diagnostics_match_pyro():
    """flowvi reads divergences and acceptance from the chain (Pyro's MCMC.diagnostics() also recomputes ESS
    and R-hat with memory quadratic in the draws); both routes must agree."""
    import pyro
    from pyro.infer import MCMC, NUTS

    from flowvi.samplers.nuts import _chain_diagnostics

    pyro.set_rng_seed(1)
    # a funnel-like potential, so that some transitions diverge
    kernel = NUTS(potential_fn=lambda p: 0.5 * (p["x"][0] ** 2 / 9 + p["x"][1:].pow(2).sum() * torch.exp(-p["x"][0])))
    mcmc = MCMC(kernel, num_samples=60, warmup_steps=30, initial_params={"x": torch.zeros(3)}, disable_progbar=True)
    mcmc.run()
    ours, pyros = _chain_diagnostics(mcmc), mcmc.diagnostics()
    assert ours["divergences"] == pyros["divergences"]
    assert ours["acceptance rate"] == pyros["acceptance rate"]


def test_cli_smc_writes_run_directory(tmp_path, capsys):
    out = tmp_path / "smc"
    rc = main(
        [
            "baseline",
            "smc",
            "conjugate_regression",
            "--particles",
            "200",
            "--moves",
            "3",
            "--repeats",
            "2",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == "smc" and len(summary["log_z_runs"]) == 2 and math.isfinite(summary["log_z_sd"])
    assert np.load(out / "samples.npy").shape == (400, 10)
    assert main(["baseline", "smc", "conjugate_regression", "--out", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_cli_nuts_writes_run_directory(tmp_path):
    out = tmp_path / "nuts"
    rc = main(
        [
            "baseline",
            "nuts",
            "gaussian",
            "--dim",
            "2",
            "--samples",
            "50",
            "--warmup",
            "50",
            "--chains",
            "2",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    assert np.load(out / "samples.npy").shape == (100, 2)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "nuts" and "rhat_max" in summary


@pytest.mark.parametrize(
    "argv, message",
    [
        (["baseline", "smc", "nothere"], "unknown target"),
        (["baseline", "smc", "gaussian", "--particles", "0"], "--particles must be positive"),
        (["baseline", "smc", "gaussian", "--ess-target", "1.5"], "0 < ess_target < 1"),
    ],
)
def test_cli_errors(argv, message, capsys, tmp_path):
    assert main(argv + ["--out", str(tmp_path / "x")]) == 2
    assert message in capsys.readouterr().err


def test_cli_nuts_without_pyro_is_a_one_line_error(monkeypatch, tmp_path, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "pyro", None)  # import pyro now raises ImportError
    assert main(["baseline", "nuts", "gaussian", "--dim", "2", "--out", str(tmp_path / "n")]) == 2
    assert "needs Pyro: pip install 'flowvi[baselines]'" in capsys.readouterr().err
