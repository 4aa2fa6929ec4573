"""``flowvi fit-data``: a small run with its outputs and exact resume, vectors, and one-line errors."""

import json

import numpy as np
import pytest
import torch

from flowvi.cli import main

TINY = ["--flow-steps", "1", "--hidden", "8", "--batch-size", "32", "--eval-every", "10", "--quiet", "--threads", "1"]


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run(argv, capsys):
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_digits_by_parts_writes_the_run_directory(tmp_path, capsys):
    common = ["fit-data", "digits", "--parts-schedule", "alternate_then_finetune", "--checkpoint-every", "10", *TINY]
    full = tmp_path / "full"
    rc, stdout, _ = run([*common, "--steps", "20", "--out", str(full)], capsys)
    assert rc == 0, stdout
    for name in ("config.json", "metrics.jsonl", "summary.json", "flow.pt", "checkpoint.pt", "learning_curve.png"):
        assert (full / name).exists(), name
    assert (full / "samples.png").exists() and np.load(full / "samples.npy").shape == (64, 1, 8, 8)
    summary = json.loads((full / "summary.json").read_text())
    assert summary["unit"] == "bits/dim" and summary["parts"] == 2 and summary["steps"] == 20
    rows = [json.loads(r) for r in (full / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 10, 20] and all("test_loss" in r and "train_loss" in r for r in rows)

    # the same options give the same parameters (seeded data order, dequantization noise and initialisation)
    again = tmp_path / "again"
    assert run([*common, "--steps", "20", "--out", str(again)], capsys)[0] == 0
    a = torch.load(full / "flow.pt", weights_only=False)
    b = torch.load(again / "flow.pt", weights_only=False)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # an existing run is not overwritten without --force
    rc, _, err = run([*common, "--steps", "20", "--out", str(full)], capsys)
    assert rc == 2 and "already holds a run" in err


def test_resume_continues_from_the_checkpoint(tmp_path, capsys, monkeypatch):
    import flowvi.training.parts as parts

    out = tmp_path / "run"
    common = ["fit-data", "digits", "--parts-schedule", "alternate", "--steps", "20", "--checkpoint-every", "10", *TINY]
    original = parts.PartsTrainer.step
    calls = {"n": 0}

    def interrupted(self):
        calls["n"] += 1
        if calls["n"] > 12:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(parts.PartsTrainer, "step", interrupted)
    assert run([*common, "--out", str(out)], capsys)[0] == 130
    assert torch.load(out / "checkpoint.pt", weights_only=False)["state"]["step"] == 10
    monkeypatch.setattr(parts.PartsTrainer, "step", original)
    assert run([*common, "--out", str(out), "--resume"], capsys)[0] == 0
    straight = tmp_path / "straight"
    assert run([*common, "--out", str(straight)], capsys)[0] == 0
    a = torch.load(out / "flow.pt", weights_only=False)
    b = torch.load(straight / "flow.pt", weights_only=False)
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(r)["step"] for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows == [0, 10, 20]


def test_vectors_from_a_user_file_report_nats_per_dim(tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=(200, 4)) * [1.0, 10.0, 0.1, 3.0]
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "run"
    rc, stdout, _ = run(["fit-data", str(tmp_path / "x.npy"), "--steps", "10", "--out", str(out), *TINY], capsys)
    assert rc == 0, stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["unit"] == "nats/dim" and summary["dim"] == 4
    # an untrained-ish flow on standardised data is close to N(0, I); in original units the Gaussian entropy
    # per dimension is 0.5 log(2 pi e) + mean log sigma
    gauss = 0.5 * np.log(2 * np.pi * np.e) + np.mean(np.log([1.0, 10.0, 0.1, 3.0]))
    assert abs(summary["test_loss"] - gauss) < 0.3
    assert np.load(out / "samples.npy").shape == (64, 4)


@pytest.mark.parametrize(
    "make, extra, message",
    [
        (None, [], "not found"),
        (lambda p: np.save(p / "a.npy", np.zeros((5, 2, 3))), [], "expected images (N, C, H, W) or vectors (N, D)"),
        (lambda p: np.save(p / "a.npy", np.zeros((5, 1, 8, 8), np.float32)), [], "must have an integer dtype"),
        (lambda p: np.save(p / "a.npy", np.full((5, 3), np.nan)), [], "NaN"),
        (lambda p: np.savez(p / "a.npz", a=np.zeros((5, 2)), b=np.zeros(3)), [], "choose one with --key"),
        (
            lambda p: np.save(p / "a.npy", np.zeros((9, 1, 8, 8), np.uint8)),
            ["--parts-schedule", "greedy"],
            "unknown schedule",
        ),
        (lambda p: np.save(p / "a.npy", np.zeros((9, 1, 8, 8), np.uint8)), ["--estimator", "path"], "target density"),
        (
            lambda p: np.save(p / "a.npy", np.zeros((9, 1, 8, 8), np.uint8)),
            ["--parts-schedule", "alternate", "--part-devices", "cpu,cpu,cpu"],
            "names 3 devices for 2 parts",
        ),
    ],
)
def test_bad_input_gives_a_one_line_error(tmp_path, capsys, make, extra, message):
    path = tmp_path / ("a.npz" if make and "savez" in str(make.__code__.co_names) else "a.npy")
    if make is not None:
        make(tmp_path)
    rc, _, err = run(["fit-data", str(path), "--out", str(tmp_path / "run"), "--steps", "1", *extra, *TINY], capsys)
    assert rc == 2
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_image_runs_report_the_histogram_baseline_and_presets_set_the_size(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["fit-data", "digits", "--preset", "glow-cpu", "--flow-steps", "1", "--hidden", "8", "--steps", "4"]
    rc, stdout, _ = run([*argv, "--eval-every", "2", "--quiet", "--threads", "1", "--out", str(out)], capsys)
    assert rc == 0, stdout
    config = json.loads((out / "config.json").read_text())
    assert (config["flow"]["scales"], config["flow"]["steps"], config["flow"]["hidden"]) == (2, 1, 8)
    summary = json.loads((out / "summary.json").read_text())
    # independent per-pixel histograms of the 17 digit levels: well below uniform log2(17) = 4.09 bits/dim
    assert 1.0 < summary["baseline_test_loss"] < 4.09 and "baseline" in stdout
