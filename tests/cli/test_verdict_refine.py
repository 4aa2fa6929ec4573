"""Issue 20 on the command line: the verdict line and summary.json keys, PSIS-resampled draws, `flowvi refine`
(NeuTra-HMC and independence MH), and one-line errors for bad input that leave the run directory as it was."""

import hashlib
import json

import numpy as np
import pytest

from flowvi.cli import main

FAST = ["--batch-size", "64", "--eval-samples", "4000", "--n-samples", "500", "--quiet"]


def run(argv, capsys):
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _digests(path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    out = tmp_path_factory.mktemp("fit") / "run"
    rc = main(["fit", "conjugate_regression", "--dim", "4", "--out", str(out), "--max-steps", "400", *FAST])
    assert rc == 0
    return out


def test_fit_records_stop_reason_verdict_and_resampled_draws(fitted):
    s = json.loads((fitted / "summary.json").read_text())
    assert s["stop_reason"] and set(s["verdict"]) == {"trustworthy", "reason", "action"}
    assert s["init"]["used"] and "mode" in s["init"]["reason"]
    assert s["dropped_draws"] == {"target": 0, "flow": 0, "fraction": 0.0}
    assert s["samples"]["resampled"] == (s["samples"]["k_hat"] < 0.7)
    assert np.load(fitted / "samples.npy").shape == (500, 4)
    config = json.loads((fitted / "config.json").read_text())
    assert config["train"]["steps"] == "auto" and config["flow"]["layers"] == 4  # sized from d
    assert s["verdict"]["trustworthy"]  # d = 4 conjugate regression: an easy posterior


def test_evaluate_ends_with_the_verdict(fitted, capsys):
    rc, stdout, _ = run(["evaluate", str(fitted), "-n", "2000"], capsys)
    assert rc == 0 and stdout.strip().splitlines()[-1].startswith(("trustworthy:", "not trustworthy:"))


@pytest.mark.parametrize("method, extra", [("imh", ["--chains", "4", "--draws", "300"]),
                                           ("neutra", ["--chains", "4", "--draws", "40", "--warmup", "40"])])  # fmt: skip
def test_refine_writes_its_own_files_only(fitted, capsys, method, extra):
    before = {k: v for k, v in _digests(fitted).items() if not k.startswith(("refine", "refined", "evaluation"))}
    rc, stdout, err = run(["refine", str(fitted), "--method", method, *extra], capsys)
    assert rc == 0, err
    after = _digests(fitted)
    assert all(after[k] == v for k, v in before.items())  # the fit's files untouched
    chains, draws = int(extra[1]), int(extra[3])
    x = np.load(fitted / "refined_samples.npy")
    assert x.shape == (chains, draws, 4) and np.isfinite(x).all()
    r = json.loads((fitted / "refine.json").read_text())
    assert r["method"] == method and 0 < r["accept"] <= 1 and r["rhat_max"] > 0.9 and r["bulk_ess_min"] > 0
    assert stdout.strip().splitlines()[-1].startswith(("refined:", "not trustworthy:"))
    # the refined draws agree with the fit's posterior (exact conjugate posterior: compare to flow draws)
    flow_draws = np.load(fitted / "samples.npy")
    sd = flow_draws.std(0)
    assert (np.abs(x.reshape(-1, 4).mean(0) - flow_draws.mean(0)) / sd).max() < 0.5


def test_refine_without_a_flow_is_a_one_line_error(tmp_path, capsys):
    d = tmp_path / "half"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"target": {"name": "funnel", "params": {"dim": 3}}}))
    before = _digests(d)
    rc, _, err = run(["refine", str(d)], capsys)
    assert rc == 2 and "no trained flow" in err and len(err.strip().splitlines()) == 1
    assert _digests(d) == before


def test_max_time_zero_is_a_one_line_error(tmp_path, capsys):
    rc, _, err = run(["fit", "funnel", "--dim", "3", "--max-time", "0", "--out", str(tmp_path / "x")], capsys)
    assert rc == 2 and "--max-time must be a positive" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_model_minus_inf_everywhere_is_a_one_line_error(tmp_path, capsys):
    f = tmp_path / "m.py"
    f.write_text(
        "import torch\n\ndef f(x):\n    return torch.where(x[:, 0] > 1e6, -x[:, 0], torch.full_like(x[:, 0], -float('inf')))\n"
    )
    out = tmp_path / "r"
    rc, _, err = run(["fit", f"{f}:f", "--dim", "3", "--out", str(out), *FAST], capsys)
    assert rc == 2 and "-inf at all 8 draws" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # a failed start writes nothing


def test_refine_auto_fits_the_missed_modes_as_a_mixture(tmp_path, capsys):
    """A fit that missed modes of its search (gauss_mix_separated: reverse KL keeps one of three): `refine` with
    its defaults fits a flow at each missed mode, and the mixture's IMH chains and IS log Z (exact: 0) are right."""
    out = tmp_path / "mix"
    fast = ["--layers", "2", "--hidden", "16", *FAST]
    assert main(["fit", "gauss_mix_separated", "--dim", "2", "--out", str(out), "--max-steps", "300", *fast]) == 0
    # the search ends at each mode more than once: several end points per missed mode
    assert json.loads((out / "summary.json").read_text())["modes"]["uncovered"] >= 2
    rc, stdout, err = run(["refine", str(out), "--chains", "4", "--draws", "3000"], capsys)
    assert rc == 0, err
    r = json.loads((out / "refine.json").read_text())
    assert r["method"] == "mixture" and r["components"] == 3 and r["mixture"]["uncovered"] == 0
    assert abs(r["log_z"]) < 0.05 and r["pareto_k"] < 0.7
    x = np.load(out / "refined_samples.npy").reshape(-1, 2)
    assert abs(x.mean() - 1.8) < 0.3  # exact mean 0.2 (-6) + 0.5 (6) = 1.8; one mode alone would give -6, 0 or 6
    assert stdout.strip().splitlines()[-1].startswith("refined: independence MH with a mode mixture")
