"""Warm start from a sampler's draws (flowvi.training.pretrain): maximum likelihood recovers the draws' distribution, the
CLI records it and does not repeat it on --resume, and bad draws give one-line errors."""

import json
import math

import numpy as np
import pytest
import torch

import flowvi
from flowvi.cli import main
from flowvi.training.pretrain import check_draws, load_draws, standardize_affine
from tests.conftest import load_benchmark

MEAN = torch.tensor([3.0, -2.0, 0.5, 10.0], dtype=torch.float64)
SD = torch.tensor([2.0, 0.5, 1.0, 4.0], dtype=torch.float64)
CORR = torch.tensor(
    [[1.0, 0.8, 0.0, 0.0], [0.8, 1.0, 0.3, 0.0], [0.0, 0.3, 1.0, -0.6], [0.0, 0.0, -0.6, 1.0]], dtype=torch.float64
)
COV = SD[:, None] * CORR * SD[None, :]


def gaussian_draws(n, seed):
    g = torch.Generator().manual_seed(seed)
    return MEAN + torch.randn(n, 4, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(COV).T


def moments(flow, n=20_000):
    with torch.no_grad():
        x = flow.sample(n).double()
    cov = torch.cov(x.T)
    sd = cov.diagonal().sqrt()
    return x.mean(0), sd, cov / sd[:, None] / sd[None, :]


@pytest.mark.parametrize("standardize, steps", [(True, 300), (False, 600)])
def test_pretraining_recovers_a_correlated_gaussian(standardize, steps):
    """Maximum likelihood on N(m, S) draws: the flow's mean, sds and correlations match (S has correlations
    0.8, 0.3, -0.6, which the standardisation alone cannot give), and its mean -log q on held-out draws is the
    Gaussian's entropy 0.5 log det(2 pi e S), the minimum of the cross-entropy, to 0.1 nats."""
    draws, held_out = gaussian_draws(4000, 1), gaussian_draws(4000, 2)
    flow = flowvi.realnvp(4, layers=4, hidden=32)
    rng = torch.get_rng_state()
    info = flowvi.pretrain_on_draws(flow, draws, steps=steps, batch_size=256, lr=3e-3, standardize=standardize)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG stream of a following fit is untouched
    assert info["steps"] == steps and info["standardized"] is standardize and info["n_draws"] == 4000
    assert info["nll_end"] < info["nll_start"]
    mean, sd, corr = moments(flow)
    assert ((mean - MEAN) / SD).abs().max() < 0.05
    assert ((sd / SD) - 1).abs().max() < 0.05
    assert (corr - CORR).abs().max() < 0.05
    entropy = 0.5 * float(torch.logdet(2 * math.pi * math.e * COV))
    with torch.no_grad():
        nll = -float(flow.log_prob(held_out.float()).double().mean())
    assert abs(nll - entropy) < 0.1, (nll, entropy)


def test_standardize_sets_the_ml_diagonal_gaussian():
    """A fresh flow (couplings at the identity) after standardisation alone is N(mean, diag sd^2) of the draws:
    its log density is that Gaussian's exactly."""
    draws = gaussian_draws(500, 3)
    flow = flowvi.realnvp(4, layers=2, hidden=8).double()
    assert standardize_affine(flow, draws)
    m, s = draws.mean(0), draws.std(0)
    expected = torch.distributions.Normal(m, s).log_prob(draws).sum(-1)
    with torch.no_grad():
        assert torch.allclose(flow.log_prob(draws), expected, atol=1e-9)
    assert not standardize_affine(flowvi.realnvp(4, layers=2, hidden=8, affine=False), draws)


def test_path_estimator_pretrains_towards_the_target():
    from flowvi.targets import CallableTarget

    prec = torch.linalg.inv(COV).float()

    def log_p(x):
        d = x - MEAN.float()
        return -0.5 * ((d @ prec) * d).sum(-1)

    flow = flowvi.realnvp(4, layers=2, hidden=16)
    info = flowvi.pretrain_on_draws(
        flow, gaussian_draws(2000, 4), steps=100, lr=3e-3, estimator="path", target=CallableTarget(log_p, dim=4)
    )
    assert info["nll_end"] < info["nll_start"] and info["estimator"] == "path"


def test_bad_draws_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        check_draws(np.zeros((10, 3)), 4)
    with pytest.raises(ValueError, match="at least 2 draws"):
        check_draws(np.zeros((1, 4)), 4)
    x = np.zeros((10, 4))
    x[7, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite values in 1 of 10 rows.*row 7"):
        check_draws(x, 4)
    with pytest.raises(ValueError, match="real-valued"):
        check_draws(np.zeros((10, 4), dtype=complex), 4)
    with pytest.raises(ValueError, match="unknown forward-KL estimator"):
        flowvi.pretrain_on_draws(flowvi.realnvp(4, layers=2, hidden=8), np.zeros((10, 4)), estimator="nope")
    far = np.full((10, 4), 500.0)  # LOFT(tau = 1): log q(500) = -inf in float32
    with pytest.raises(ValueError, match="not finite at 10 of 10 draws.*larger tau"):
        flowvi.pretrain_on_draws(flowvi.realnvp(4, layers=2, hidden=8, tau=1.0), far)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_draws(tmp_path / "missing.npy")
    with pytest.raises(FileNotFoundError, match="without samples.npy"):
        load_draws(tmp_path)
    np.savez(tmp_path / "two.npz", a=np.zeros((5, 4)), b=np.ones((5, 4)))
    with pytest.raises(ValueError, match="several arrays.*--init-key"):
        load_draws(tmp_path / "two.npz")
    with pytest.raises(ValueError, match="no array 'c'.*it holds a, b"):
        load_draws(tmp_path / "two.npz", key="c")
    assert load_draws(tmp_path / "two.npz", key="b", dim=4).sum() == 20
    np.savez(tmp_path / "ref.npz", info=np.array("{}"), mean=np.zeros(3), draws=np.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"shape \(N, 4\).*reference summary"):
        load_draws(tmp_path / "ref.npz", key="draws", dim=4)
    (tmp_path / "smc").mkdir()
    np.save(tmp_path / "smc" / "samples.npy", np.ones((6, 4), dtype=np.float32))
    assert load_draws(tmp_path / "smc", dim=4).shape == (6, 4)


# --------------------------------------------------------------------------------------- command line

SMALL = ["--batch-size", "64", "--layers", "2", "--hidden", "16", "--eval-samples", "2000", "--n-samples", "10"]
SMALL += ["--quiet", "--checkpoint-every", "10"]


@pytest.fixture
def target_draws(tmp_path):
    """Exact draws of the built-in 3-d correlated Gaussian (scales 1 to 10, log Z = 0)."""
    from flowvi.targets import make_target

    path = tmp_path / "draws.npy"
    np.save(path, make_target("gaussian", dim=3).sample(3000).numpy())
    return path


def fit(out, capsys, *extra):
    rc = main(["fit", "gaussian", "--dim", "3", "--out", str(out), *SMALL, *extra])
    return rc, capsys.readouterr()


def test_cli_warm_start_end_to_end_and_resume(tmp_path, capsys, target_draws, monkeypatch):
    warm = ["--init-draws", str(target_draws), "--init-steps", "300", "--init-lr", "3e-3"]
    rc, cap = fit(tmp_path / "warm", capsys, "--steps", "20", *warm)
    assert rc == 0, cap.err
    assert "pre-trained on 3000 draws" in cap.out
    config = json.loads((tmp_path / "warm" / "config.json").read_text())
    assert config["init"] == {
        "draws": str(target_draws),
        "key": None,
        "steps": 300,
        "batch_size": 64,
        "lr": 3e-3,
        "estimator": "ml",
        "standardize": True,
    }
    summary = json.loads((tmp_path / "warm" / "summary.json").read_text())
    assert summary["pretrain"]["nll_end"] < summary["pretrain"]["nll_start"]
    # 20 reverse-KL steps from the identity leave the ELBO far below log Z = 0; from the warm start it is within 0.5 nats
    rc, cap = fit(tmp_path / "cold", capsys, "--steps", "20", "--init", "none")  # from the identity
    cold = json.loads((tmp_path / "cold" / "summary.json").read_text())
    assert summary["elbo"] > -0.5 and cold["elbo"] < -1.5, (summary["elbo"], cold["elbo"])

    # --resume never repeats the pre-training: from checkpoint.pt, or from pretrain.pt when killed before it
    def no_pretraining(*args, **kwargs):
        raise AssertionError("pre-training repeated on --resume")

    monkeypatch.setattr("flowvi.cli.cmd_fit.pretrain_on_draws", no_pretraining)
    rc, cap = fit(tmp_path / "warm", capsys, "--steps", "20", *warm, "--resume")
    assert rc == 0, cap.err
    first = torch.load(tmp_path / "warm" / "flow.pt")
    (tmp_path / "warm" / "checkpoint.pt").unlink()
    (tmp_path / "warm" / "flow.pt").unlink()
    rc, cap = fit(tmp_path / "warm", capsys, "--steps", "20", *warm, "--resume")
    assert rc == 0, cap.err
    assert "pre-training not repeated" in cap.out
    again = torch.load(tmp_path / "warm" / "flow.pt")
    assert all(torch.equal(first[k], again[k]) for k in first)  # the same parameters as without the kill
    rc, cap = fit(tmp_path / "warm", capsys, "--steps", "20", *warm[:-2], "--resume")
    assert rc == 2 and "options differ" in cap.err and "init" in cap.err


def test_cli_bad_init_draws(tmp_path, capsys):
    x = np.zeros((20, 3))
    x[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", x)
    np.save(tmp_path / "d4.npy", np.zeros((20, 4)))
    np.savez(tmp_path / "z.npz", draws=np.zeros((20, 3)))
    cases = [
        (["--init-draws", str(tmp_path / "none.npy")], "no such file"),
        (["--init-draws", str(tmp_path / "nan.npy")], "NaN or infinite"),
        (["--init-draws", str(tmp_path / "d4.npy")], r"shape (N, 3) for this target, got (20, 4)"),
        (["--init-draws", str(tmp_path / "z.npz"), "--init-key", "x"], "no array 'x' (--init-key); it holds draws"),
        (["--init-draws", str(tmp_path / "z.npz"), "--init-steps", "0"], "--init-steps must be positive"),
    ]
    for i, (extra, message) in enumerate(cases):
        rc, cap = fit(tmp_path / f"run{i}", capsys, "--steps", "5", *extra)
        assert rc == 2 and message in cap.err, (extra, cap.err)
        assert not (tmp_path / f"run{i}" / "config.json").exists()  # checked before the run directory is written


def test_cli_init_flow_starts_from_another_runs_flow(tmp_path, capsys):
    """--init-flow: reverse KL first, then FAB from that flow; the flow is loaded before the first step (a step at
    lr 1e-12 leaves it unchanged), other flow options are refused before the run directory is written, and
    --resume without a checkpoint starts over from the same flow."""
    rc, cap = fit(tmp_path / "rkl", capsys, "--steps", "20")
    assert rc == 0, cap.err
    tiny = ["--steps", "1", "--lr", "1e-12", "--schedule", "constant", "--init-flow", str(tmp_path / "rkl")]
    rc, cap = fit(tmp_path / "fab", capsys, *tiny, "--estimator", "fab", "--fab-stages", "2", "--fab-leapfrog", "2")
    assert rc == 0, cap.err
    start, after = torch.load(tmp_path / "rkl" / "flow.pt"), torch.load(tmp_path / "fab" / "flow.pt")
    assert all(torch.allclose(start[k], after[k], rtol=0, atol=1e-9) for k in start)
    assert json.loads((tmp_path / "fab" / "config.json").read_text())["init_flow"] == str(tmp_path / "rkl")
    (tmp_path / "fab" / "checkpoint.pt").unlink()
    fab = ["--estimator", "fab", "--fab-stages", "2", "--fab-leapfrog", "2"]
    rc, cap = fit(tmp_path / "fab", capsys, *tiny, *fab, "--resume")
    assert rc == 0, cap.err
    again = torch.load(tmp_path / "fab" / "flow.pt")
    assert all(torch.allclose(start[k], again[k], rtol=0, atol=1e-9) for k in start)
    rc, cap = fit(tmp_path / "wide", capsys, *tiny, "--hidden", "8")
    assert rc == 2 and "this run's flow settings differ from that run's" in cap.err
    assert not (tmp_path / "wide" / "config.json").exists()
    rc, cap = fit(tmp_path / "both", capsys, *tiny, "--init-draws", str(tmp_path / "x.npy"))
    assert rc == 2 and "choose one" in cap.err
    rc, cap = fit(tmp_path / "none", capsys, "--steps", "1", "--init-flow", str(tmp_path / "nothing"))
    assert rc == 2 and "nothing" in cap.err


def test_warm_start_benchmark_runs_at_tiny_size(tmp_path):
    """benchmarks/warm_start.py end to end (p = 5, a few steps): every variant reports at the requested steps,
    with the zero guess and the warm-start draws scored against the HMC reference."""

    bench = load_benchmark("warm_start")
    out = tmp_path / "warm.json"
    tiny = ["--p", "5", "--steps", "20", "--init-steps", "20", "--chains", "4", "--hmc-iterations", "30"]
    tiny += [
        "--smc-particles",
        "64",
        "--smc-moves",
        "2",
        "--eval-samples",
        "500",
        "--flow-draws",
        "500",
        "--at",
        "0,0.5,1",
    ]
    bench.main([*tiny, "--out", str(out)])
    result = json.loads(out.read_text())
    assert [r["sampler"] for r in result["samplers"]] == [
        "HMC reference",
        "zero guess",
        "SMC particles",
        "HMC, independent run",
    ]
    flows = result["flows"]
    assert [(r["variant"], r["step"]) for r in flows] == [
        (v, s) for v in ("plain", "warm-smc", "warm-hmc") for s in (0, 10, 20)
    ]
    for r in flows:
        assert 0 <= r["within_0.1_sd"] <= 1 and np.isfinite(r["elbo"]) and len(r["beta0_q05_q50_q95"]) == 3
    assert "pretrain" in flows[3] and "pretrain" not in flows[0]
    assert flows[3]["pretrain"]["nll_end"] < flows[3]["pretrain"]["nll_start"]
