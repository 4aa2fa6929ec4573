"""The stability study: a reduced study on the real horseshoe target (small p) writes its table and plots;
diverged runs are detected (non-finite training, exploding draws); CLI errors are one line."""

import csv

import pytest

from flowvi.cli import main
from flowvi.objectives.estimators import ESTIMATORS
from flowvi.studies.stability import aggregate, grid, run_one, run_study
from flowvi.training.loop import TrainConfig
from tests.conftest import load_benchmark

TINY_FLOW = {"layers": 2, "hidden": 16, "depth": 1}
TINY_TRAIN = TrainConfig(steps=40, batch_size=32, lr=1e-3, checkpoint_every=10**9)


def test_reduced_study_on_real_horseshoe(tmp_path):
    """The CI version of the GPU study: horseshoe_nci60 with p = 10 (d = 22)."""
    settings = grid(["none", "asymmetric"], [True, False], ["gaussian", "student_t"], ["reparam"])
    summary = run_study(
        {"name": "horseshoe_nci60", "params": {"p": 10}},
        tmp_path,
        settings,
        seeds=[0, 1],
        flow_options=TINY_FLOW,
        train=TINY_TRAIN,
        device="cpu",
        eval_samples=500,
        progress=False,
    )
    assert len(summary) == 8
    for s in summary:
        assert s["runs"] == 2 and 0 <= s["frac_diverged"] <= 1
    stable = next(s for s in summary if s["config"] == "asymmetric/loft/gaussian/reparam")
    assert stable["diverged"] == 0 and stable["elbo"] <= stable["log_z"] + 1e-6  # ELBO <= IS log Z (Jensen, same flow)
    for name in ("table.md", "table.csv", "runs.csv", "elbo_curves.png"):
        assert (tmp_path / name).stat().st_size > 0
    rows = list(csv.DictReader(open(tmp_path / "runs.csv")))
    assert len(rows) == 16 and {r["seed"] for r in rows} == {"0", "1"}
    assert "asymmetric/loft/gaussian/reparam" in (tmp_path / "table.md").read_text()


def test_exploding_draws_count_as_diverged():
    row = run_one(
        {"name": "gaussian", "params": {"dim": 2}},
        {"clamp": "none", "loft": False, "base": "gaussian", "estimator": "reparam"},
        0,
        TINY_FLOW,
        TrainConfig(steps=5, batch_size=16),
        "cpu",
        "float32",
        200,
        explode_at=0.5,
    )
    assert row["diverged"] and "beyond 0.5" in row["reason"]


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_non_finite_training_counts_as_diverged(tmp_path):
    path = tmp_path / "nan_target.py"
    path.write_text(
        "import torch\n"
        "def f(x):\n"
        "    # finite when checked without gradients, NaN inside training\n"
        "    return torch.full_like(x[:, 0], float('nan')) if x.requires_grad else -0.5 * (x * x).sum(-1)\n"
    )
    row = run_one(
        {"name": f"{path}:f", "params": {"dim": 2}},
        {"clamp": "asymmetric", "loft": True, "base": "gaussian", "estimator": "reparam"},
        0,
        TINY_FLOW,
        TrainConfig(steps=40, batch_size=8),
        "cpu",
        "float32",
        100,
    )
    assert row["diverged"] and row["reason"].startswith("training")
    summary = aggregate([row])
    assert summary[0]["frac_diverged"] == 1.0


def test_cli_study_writes_table(tmp_path, capsys):
    out = tmp_path / "study"
    rc = main(
        [
            "study",
            "stability",
            "horseshoe_synthetic",
            "-p",
            "p=5",
            "--clamps",
            "asymmetric",
            "--loft",
            "on",
            "--bases",
            "gaussian",
            "--seeds",
            "1",
            "--steps",
            "20",
            "--batch-size",
            "16",
            "--layers",
            "2",
            "--hidden",
            "8",
            "--eval-samples",
            "200",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "| asymmetric/loft/gaussian/" in text
    # default estimators: every registered one
    assert sum(1 for _ in csv.DictReader(open(out / "table.csv"))) == len(ESTIMATORS)


def test_cli_study_hierarchical_axis(tmp_path):
    out = tmp_path / "study"
    argv = ["study", "stability", "funnel", "--dim", "4", "--clamps", "asymmetric", "--loft", "on", "--bases",
            "gaussian", "--estimators", "reparam", "--hierarchical", "off,on", "--seeds", "1", "--steps", "10",
            "--batch-size", "16", "--layers", "2", "--hidden", "8", "--eval-samples", "200", "--device", "cpu",
            "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    runs = list(csv.DictReader(open(out / "runs.csv")))
    assert [(r["config"], r["hierarchical"]) for r in runs] == [
        ("asymmetric/loft/gaussian/reparam", "False"),
        ("asymmetric/loft/gaussian/reparam/hierarchical", "True"),
    ]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--estimators", "nope"], "unknown estimator nope"),
        (["--clamps", "tight"], "unknown clamp tight"),
        (["--loft", "maybe"], "unknown loft maybe"),
        (["--seeds", "0"], "--seeds must be positive"),
        (["--reference", "/nonexistent/run"], "no samples.npy"),
        (["--hierarchical", "maybe"], "unknown hierarchical maybe"),
        (["--hierarchical", "on"], "'gaussian' declares no hierarchy"),
    ],
)
def test_cli_study_errors(extra, message, tmp_path, capsys):
    rc = main(
        [
            "study",
            "stability",
            "gaussian",
            "--dim",
            "2",
            "--steps",
            "2",
            "--out",
            str(tmp_path / "s"),
            "--device",
            "cpu",
            "--quiet",
            *extra,
        ]
    )
    assert rc == 2
    assert message in capsys.readouterr().err


def test_unsupported_estimator_is_not_a_divergence(monkeypatch):
    from flowvi.objectives import estimators
    from flowvi.transforms import PathGradientUnsupported

    def needs_path_gradients(flow, target, batch_size):
        raise PathGradientUnsupported("this flow has no fast path")

    monkeypatch.setitem(estimators.ESTIMATORS, "needs_path", needs_path_gradients)
    setting = {"clamp": "none", "loft": False, "base": "gaussian", "estimator": "needs_path"}
    row = run_one(
        {"name": "gaussian", "params": {"dim": 2}}, setting, 0, TINY_FLOW, TrainConfig(steps=3), "cpu", "float32", 100
    )
    assert row["unsupported"] and not row["diverged"] and "no fast path" in row["reason"]
    assert aggregate([row]) == []


def test_reference_made_after_the_study_scores_the_same(tmp_path):
    """A study scored later (score_against_reference, from its saved coordinate moments) gives the same
    "within 0.1 sd" shares as one run with the reference from the start."""
    import numpy as np
    import torch

    from flowvi.studies.stability import score_against_reference
    from flowvi.targets import make_target

    spec = {"name": "horseshoe_synthetic", "params": {"p": 4}}
    target = make_target(spec["name"], **spec["params"])
    ref_dir = tmp_path / "nuts"
    ref_dir.mkdir()
    # any draws in the target's space will do as a reference here: the two scorings must agree
    np.save(
        ref_dir / "samples.npy",
        torch.randn(400, target.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).numpy(),
    )
    settings = grid(["asymmetric"], [True], ["gaussian"], ["reparam"])
    kwargs = dict(
        seeds=[0, 1], flow_options=TINY_FLOW, train=TINY_TRAIN, device="cpu", eval_samples=300, progress=False
    )
    with_ref = run_study(spec, tmp_path / "a", settings, reference_dir=ref_dir, **kwargs)
    run_study(spec, tmp_path / "b", settings, **kwargs)
    assert "within_0.1_sd" not in list(csv.DictReader(open(tmp_path / "b" / "runs.csv")))[0]
    later = score_against_reference(tmp_path / "b", ref_dir)  # the target from the study's study.json
    assert later[0]["within_0.1_sd"] == pytest.approx(with_ref[0]["within_0.1_sd"], abs=1e-12)
    assert 0 <= later[0]["within_0.1_sd"] <= 1
    rows = list(csv.DictReader(open(tmp_path / "b" / "runs.csv")))
    assert all(r["within_0.1_sd"] != "" for r in rows)
    # the robust score (medians against the reference's median and quartiles) is kept and re-scored the same way
    from flowvi.studies.stability import ROBUST

    assert later[0][ROBUST] == pytest.approx(with_ref[0][ROBUST], abs=1e-12)
    assert all(r[ROBUST] != "" for r in rows)
    assert "median within 0.1 IQR/1.349" in (tmp_path / "b" / "table.md").read_text()


def test_robust_share_is_stable_where_the_sd_is_not():
    """Two independent samples of a heavy-tailed posterior (Student-t, 1.5 degrees of freedom: the sd does not
    exist, so "within 0.1 sd" has no fixed yardstick): their medians agree within 0.1 IQR/1.349 for nearly all
    coordinates, and both scores are the hand-computed shares."""
    import numpy as np

    from flowvi.studies.stability import share_within, share_within_robust

    rng = np.random.default_rng(0)
    a, b = rng.standard_t(1.5, size=(2, 20_000, 500))

    def ref(x):
        q25, q50, q75 = np.quantile(x, [0.25, 0.5, 0.75], axis=0)
        return {"mean": x.mean(0), "sd": x.std(0), "median": q50, "q25": q25, "q75": q75}

    robust = share_within_robust(np.median(b, 0), ref(a))
    assert robust > 0.99  # median error ~ 1.2 IQR-sd / sqrt(n) = 0.01, far below 0.1
    r = ref(a)
    z = np.abs(np.median(b, 0) - r["median"]) / ((r["q75"] - r["q25"]) / 1.349)
    assert robust == pytest.approx(float((z < 0.1).mean()))
    assert share_within(b.mean(0), r) == pytest.approx(float((np.abs(b.mean(0) - r["mean"]) / r["sd"] < 0.1).mean()))


def test_benchmark_parts_over_seeds_merge_into_one_study(tmp_path):
    """benchmarks/stability.py: a study split over calls (--first-seed) merges into the same per-configuration
    numbers as its runs, pooled."""
    import json

    bench = load_benchmark("stability")
    common = ["--quick", "--device", "cpu", "--no-nuts", "--p", "5", "--steps", "30", "--seeds", "1"]
    for first in (0, 1):
        out = tmp_path / f"part{first}.json"
        assert bench.main([*common, "--part", "stabilized", "--first-seed", str(first), "--out", str(out)]) == 0
    merged = tmp_path / "merged.json"
    assert (
        bench.main(["--merge", str(tmp_path / "part0.json"), str(tmp_path / "part1.json"), "--out", str(merged)]) == 0
    )
    flows = json.loads(merged.read_text())["flows"]
    assert len(flows) == 1 and flows[0]["runs"] == 2 and flows[0]["seeds"] == 2
    rows = [r for k in (0, 1) for r in csv.DictReader(open(tmp_path / f"part{k}" / "runs.csv"))]
    assert sorted(int(r["seed"]) for r in rows) == [0, 1]
    assert flows[0]["log_z"] == pytest.approx(sum(float(r["log_z"]) for r in rows) / 2)


def test_cli_study_score_later(tmp_path, capsys):
    """`flowvi study score DIR --reference REF` scores a study that ran without a reference; bad input is a
    one-line error."""
    import numpy as np

    from flowvi.targets import make_target

    out = tmp_path / "study"
    argv = ["study", "stability", "horseshoe_synthetic", "-p", "p=3", "--clamps", "asymmetric", "--loft", "on"]
    argv += ["--bases", "gaussian", "--estimators", "reparam", "--seeds", "1", "--steps", "10", "--batch-size", "8"]
    argv += ["--layers", "2", "--hidden", "8", "--eval-samples", "100", "--device", "cpu", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    ref = tmp_path / "nuts"
    ref.mkdir()
    dim = make_target("horseshoe_synthetic", p=3).dim
    np.save(ref / "samples.npy", np.random.default_rng(0).normal(size=(200, dim)))
    capsys.readouterr()
    assert main(["study", "score", str(out), "--reference", str(ref)]) == 0
    assert "share of coordinates within 0.1 reference sd: asymmetric/loft/gaussian/reparam" in capsys.readouterr().out
    assert list(csv.DictReader(open(out / "runs.csv")))[0]["within_0.1_sd"] != ""
    assert main(["study", "score", str(out)]) == 2
    assert "needs --reference" in capsys.readouterr().err
    assert main(["study", "score", str(tmp_path), "--reference", str(ref)]) == 2
    assert "not a finished stability study" in capsys.readouterr().err


def test_horseshoe_regimes_benchmark_tempers_and_describes():
    """benchmarks/horseshoe_regimes.py: the tempered target is the prior at t = 0 and the posterior at t = 1, and
    the description reads log tau, beta0 and beta from the right coordinates."""

    import torch

    from flowvi.targets import make_target

    bench = load_benchmark("horseshoe_regimes")
    target = make_target("horseshoe_nci60", p=5).double()
    x = torch.randn(7, target.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    tempered = bench.TemperedLikelihood(target)
    torch.testing.assert_close(tempered.log_prob(x), target.prior_log_prob(x))
    tempered.t.fill_(1.0)
    torch.testing.assert_close(tempered.log_prob(x), target.log_prob(x))
    x[:, 10], x[:, 11] = -3.0, -40.0  # log tau and beta0 for p = 5
    d = bench.describe(target, x)
    assert d["log_tau_q05_q50_q95"] == pytest.approx([-3.0] * 3)
    assert d["beta0_q05_q50_q95"] == pytest.approx([-40.0] * 3)
    assert d["median_abs_beta"] == pytest.approx(float(target.coefficients(x).abs().median()))
