"""A Pyro model from the command line, end to end at a tiny size: fit (named draws in samples.npz), evaluate
and sample from the run directory, to_arviz, summary with plots, refined chains; one-line errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import flowvi
from flowvi.cli import main
from flowvi.diagnostics.importance import pareto_k
from flowvi.runs.run_dir import load_run

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TINY = ["--steps", "5", "--layers", "2", "--hidden", "8", "--batch-size", "32", "--eval-samples", "200"]
TINY += ["--n-samples", "100", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("pyro") / "es"
    model, data = f"{EXAMPLES / 'eight_schools.py'}:model", str(EXAMPLES / "eight_schools.json")
    assert main(["fit", model, "--data", data, "--out", str(out), *TINY]) == 0
    return out


def test_fit_writes_named_constrained_draws(run_dir):
    config = json.loads((run_dir / "config.json").read_text())
    assert config["target"]["params"] == {"data": str(EXAMPLES / "eight_schools.json")}
    x = np.load(run_dir / "samples.npy")
    assert x.shape == (100, 10)  # mu, tau, eta[8] unconstrained
    with np.load(run_dir / "samples.npz") as f:
        named = {k: f[k] for k in f.files}
    assert {k: v.shape for k, v in named.items()} == {"mu": (100,), "tau": (100,), "eta": (100, 8), "theta": (100, 8)}
    np.testing.assert_allclose(named["mu"], x[:, 0])
    np.testing.assert_allclose(named["tau"], np.exp(x[:, 1]), rtol=1e-6)
    np.testing.assert_allclose(named["theta"], named["mu"][:, None] + named["tau"][:, None] * named["eta"], rtol=1e-5)


def test_evaluate_and_sample_rebuild_the_model(run_dir, capsys):
    assert main(["evaluate", str(run_dir), "-n", "300", "--device", "cpu"]) == 0
    assert "IS log Z" in capsys.readouterr().out
    assert main(["sample", str(run_dir), "-n", "50", "--device", "cpu"]) == 0
    with np.load(run_dir / "samples-50.npz") as f:
        assert f["eta"].shape == (50, 8) and (f["tau"] > 0).all()


def test_to_arviz_and_summary_with_plots(run_dir, capsys):
    idata = flowvi.to_arviz(run_dir)
    post = idata.posterior
    assert post["theta"].dims == ("chain", "draw", "school") and post.sizes["draw"] == 100
    log_w = idata.sample_stats["log_weight"].values.ravel()
    assert idata.sample_stats.attrs["pareto_k"] == pareto_k(log_w)
    # the log weights are log p - log q of the saved draws
    flow, target, _ = load_run(run_dir, device="cpu")
    x = torch.as_tensor(np.load(run_dir / "samples.npy"))
    with torch.no_grad():
        np.testing.assert_allclose(log_w, (target.log_prob(x) - flow.log_prob(x)).numpy(), rtol=1e-5, atol=1e-4)
    assert main(["summary", str(run_dir), "--plot"]) == 0
    out = capsys.readouterr().out
    assert "Pareto k" in out and "theta[7]" in out and "ess_bulk" in out
    assert (run_dir / "trace.png").stat().st_size > 1000 and (run_dir / "pair.png").stat().st_size > 1000


def test_refined_chains_replace_the_flow_draws(run_dir, tmp_path, capsys):
    import shutil

    refined = tmp_path / "refined"
    shutil.copytree(run_dir, refined)
    chains = np.random.default_rng(0).standard_normal((4, 30, 10)).astype(np.float32)
    np.save(refined / "refined_samples.npy", chains)
    (refined / "refine.json").write_text(json.dumps({"sampler": "test", "accept_prob": 0.8}))
    idata = flowvi.to_arviz(refined)
    assert idata.posterior.sizes["chain"] == 4 and idata.posterior.sizes["draw"] == 30
    np.testing.assert_allclose(idata.posterior["tau"].values, np.exp(chains[:, :, 1]), rtol=1e-6)
    assert idata.sample_stats.attrs["accept_prob"] == 0.8 and idata.sample_stats["lp"].shape == (4, 30)
    assert main(["summary", str(refined), "--var-names", "mu", "tau"]) == 0
    out = capsys.readouterr().out
    assert "4 chains x 30 draws" in out and "nan" not in out.split("tau")[-1].lower()


def test_one_line_errors(tmp_path, capsys):
    model = tmp_path / "m.py"
    model.write_text(
        "import pyro, pyro.distributions as dist\n"
        "def counts():\n"
        "    pyro.sample('k', dist.Poisson(3.0))\n"
        "def model(sigma, y):\n"
        "    mu = pyro.sample('mu', dist.Normal(0., 1.))\n"
        "    pyro.sample('y', dist.Normal(mu, sigma), obs=y)\n"
        "def log_p(x):\n"
        "    return -0.5 * (x**2).sum(-1)\n"
    )
    (tmp_path / "d.json").write_text('{"sigma": 1.0}')
    cases = [
        ([f"{model}:counts"], "site 'k' is a discrete latent variable"),
        ([f"{model}:model", "--data", str(tmp_path / "d.json")], "needs argument 'y', which the data file"),
        ([f"{model}:log_p", "--dim", "2", "--data", str(tmp_path / "d.json")], "--data passes a Pyro model's"),
        ([f"{model}:model", "--data", str(tmp_path / "nope.json")], "nope.json' does not exist"),
    ]
    for argv, message in cases:
        assert main(["fit", *argv, "--out", str(tmp_path / "r"), *TINY]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "r").exists()  # nothing written before the model is checked
