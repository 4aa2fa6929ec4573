"""benchmarks/posteriors.py: the scores on known cases, the verdict and draw-file rules, and the harness end
to end on one small posterior (the whole --quick run is marked slow)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import posteriors as bench  # noqa: E402


def standardized(n, k, seed=0):
    z = np.random.default_rng(seed).standard_normal((n, k))
    return (z - z.mean(0)) / z.std(0, ddof=1)  # mean exactly 0, sd exactly 1


def test_score_known_cases():
    ref = {"mean": [1.0, -2.0, 0.0, 5.0], "sd": [0.5, 2.0, 1.0, 3.0]}
    mean, sd = np.array(ref["mean"]), np.array(ref["sd"])
    z = standardized(1000, 4)
    s = bench.score(mean + sd * z, ref)
    assert s["means_ok"] == 1.0 and s["sds_ok"] == 1.0 and s["max_mean_err_sd"] < 1e-12
    shift = np.array([0.05, 0.2, -0.3, 0.0])  # in reference sds: two of four means off by more than 0.1
    scale = np.array([1.0, 1.2, 0.85, 1.09])  # two of four sd ratios outside [0.9, 1.1]
    s = bench.score(mean + sd * (shift + scale * z), ref)
    assert s["means_ok"] == 0.5 and s["sds_ok"] == 0.5
    assert np.isclose(s["max_mean_err_sd"], 0.3) and np.allclose(s["sd_ratio_range"], [0.85, 1.2])
    bad = mean + sd * z
    bad[:10] = np.nan  # non-finite draws are dropped and counted
    assert bench.score(bad, ref)["nonfinite_draws"] == 10


def test_reference_space_verdict_and_draw_file(tmp_path):
    x = torch.randn(5, 10, dtype=torch.float64).numpy()
    theta = bench.to_reference_space("eight_schools-eight_schools_noncentered", x)
    assert np.allclose(theta[:, :8], x[:, 8:9] + np.exp(x[:, 9:10]) * x[:, :8]) and np.allclose(
        theta[:, 9], np.exp(x[:, 9])
    )
    assert np.array_equal(bench.to_reference_space("funnel", x), x)
    assert bench.trustworthy(None) is None
    assert bench.trustworthy("trustworthy: PSIS k̂ 0.41") and bench.trustworthy("refined: NeuTra-HMC, R-hat ≤ 1.01")
    assert bench.trustworthy("not trustworthy: k̂ 1.2") is False and bench.trustworthy({"trustworthy": False}) is False
    good, bad = {"means_ok": 1.0, "sds_ok": 0.96}, {"means_ok": 1.0, "sds_ok": 0.5}
    assert bench.verdict_consistent("trustworthy: k̂ 0.4", good) and not bench.verdict_consistent("trustworthy", bad)
    assert bench.verdict_consistent("not trustworthy: k̂ 1.2", bad) and bench.verdict_consistent(None, bad) is None
    np.save(tmp_path / "samples.npy", x)
    assert bench.final_draws(tmp_path).name == "samples.npy"
    np.save(tmp_path / "refined_neutra.npy", x)
    assert bench.final_draws(tmp_path).name == "refined_neutra.npy"


def check_run(out, tmp_path, names, nuts=True):
    record = json.loads(out.read_text())
    assert [r["name"] for r in record["results"]] == names
    for r in record["results"]:
        ref = bench.load_reference(r["name"])
        f = r["flowvi"]
        draws = np.load(tmp_path / "work" / f"flowvi-{r['name']}" / f["draws_file"])
        draws = draws.reshape(-1, draws.shape[-1])  # refined draws are (chains, draws, d)
        again = bench.score(bench.to_reference_space(r["name"], draws), ref)  # the harness scored these draws
        assert f["means_ok"] == again["means_ok"] and f["sds_ok"] == again["sds_ok"] and f["seconds"] > 0
        if nuts:
            n = r["nuts"]
            assert 0 <= n["means_ok"] <= 1 and n["divergences"] >= 0 and n["max_rank_rhat"] > 0.99
    return record


def test_harness_end_to_end_on_one_posterior(tmp_path, capsys):
    """fit through the CLI, draws scored, table and JSON written (NUTS and log Z runs: the slow test)."""
    out, tiny = tmp_path / "r.json", "--steps 20 --layers 1 --hidden 8 --eval-samples 1000 --n-samples 1000"
    argv = ["--only", "sblrc-blr", "--skip-nuts", "--fit-args", tiny, "--json", str(out)]
    bench.main([*argv, "--workdir", str(tmp_path / "work")])
    record = check_run(out, tmp_path, ["sblrc-blr"], nuts=False)
    assert record["results"][0]["flowvi"]["fit_rc"] == 0 and "nuts" not in record["results"][0]
    assert "| sblrc-blr | 6 |" in capsys.readouterr().out


@pytest.mark.slow
def test_quick_mode_end_to_end(tmp_path):
    out = tmp_path / "r.json"
    bench.main(["--quick", "--json", str(out), "--workdir", str(tmp_path / "work")])
    record = check_run(out, tmp_path, bench.QUICK)
    assert record["results"][1]["nuts"]["means_ok"] >= 0.5  # NUTS, even short, finds the sblrc regression
    mix = record["results"][-1]
    assert mix["ref_log_z"] == 0.0 and np.isfinite(mix["pocomc"]["log_z"]) and np.isfinite(mix["smc"]["log_z"])
