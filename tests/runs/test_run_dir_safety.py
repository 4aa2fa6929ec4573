"""--out never overwrites a user's files; --force clears only what flowvi wrote; a failed start writes nothing."""

import json

import pytest
import torch

from flowvi.runs.run_files import FLOWVI_FILES, is_run_dir
from tests.runs.cli_helpers import assert_one_line_error, cli, copy_run, fit_argv, snapshot

FIT_DATA = ["fit-data", "wine", "--steps", "4", "--batch-size", "16", "--hidden", "8", "--flow-steps", "1",
            "--eval-every", "2", "--checkpoint-every", "2", "--n-samples", "4", "--quiet"]  # fmt: skip
BASELINE = ["baseline", "smc", "conjugate_regression", "--dim", "2", "--particles", "50", "--repeats", "2", "--quiet"]


def _users_dir(path):
    path.mkdir()
    (path / "samples.npy").write_bytes(b"the user's own draws")
    (path / "summary.json").write_text('{"mine": true}')
    return snapshot(path)


@pytest.mark.parametrize("argv", [fit_argv("{out}"), [*FIT_DATA, "--out", "{out}"], [*BASELINE, "--out", "{out}"]])
@pytest.mark.parametrize("force", [False, True])
def test_out_refuses_a_directory_that_is_not_a_run(tmp_path, capsys, argv, force):
    out = tmp_path / "mine"
    before = _users_dir(out)
    argv = [str(out) if a == "{out}" else a for a in argv] + (["--force"] if force else [])
    rc, _, err = cli(argv, capsys)
    assert_one_line_error(rc, err, str(out), "not a flowvi run directory")
    assert snapshot(out) == before


def test_empty_directory_is_fine_and_recognized_as_run_afterwards(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert not is_run_dir(tmp_path / "empty")
    rc, _, err = cli(fit_argv(tmp_path / "empty"), capsys)
    assert rc == 0, err
    assert is_run_dir(tmp_path / "empty")
    assert json.loads((tmp_path / "empty" / "config.json").read_text())["flowvi_run"]["command"] == "fit"


def test_force_clears_the_old_run_and_only_it(trained_run, tmp_path, capsys, monkeypatch):
    run = copy_run(trained_run, tmp_path / "run")
    (run / "notes.txt").write_text("my notes")
    (run / "samples-7.npy").write_bytes(b"x")  # written by 'flowvi sample'
    (run / "evaluation.json").write_text("{}")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # a kill before the new run's first checkpoint

    monkeypatch.setattr("flowvi.cli.cmd_fit.fit", killed)
    rc, _, _ = cli(fit_argv(run, "--force", "--seed", "5"), capsys)
    assert rc == 130
    left = sorted(p.name for p in run.iterdir())
    assert left == ["config.json", "notes.txt"]  # the old weights, metrics and outputs are gone, the notes kept
    assert json.loads((run / "config.json").read_text())["seed"] == 5
    monkeypatch.undo()
    rc, _, err = cli(fit_argv(run, "--resume", "--seed", "5"), capsys)
    assert_one_line_error(rc, err, "nothing to resume")  # never the old run's weights under the new config


def test_flowvi_file_list_names_what_a_fit_writes(trained_run):
    assert {p.name for p in trained_run.iterdir()} <= set(FLOWVI_FILES)


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--lr", "-1"], ["--lr"]),
        (["--checkpoint-every", "0"], ["--checkpoint-every"]),
        (["--warmup", "-3"], ["--warmup"]),
        (["--device", "cuda:7"], ["cuda"]),
    ],
)
def test_a_failed_start_writes_no_run_directory(tmp_path, capsys, extra, words):
    out = tmp_path / "run"
    rc, _, err = cli(fit_argv(out, *extra), capsys)
    assert_one_line_error(rc, err, *words)
    assert not out.exists()


def test_a_bad_target_output_writes_no_run_directory_and_the_retry_works(tmp_path, capsys):
    target = tmp_path / "t.py"
    target.write_text("def f(x):\n    return -0.5 * (x ** 2)\n")  # (batch, d) instead of (batch,)
    out = tmp_path / "run"
    rc, _, err = cli(fit_argv(out, target=(f"{target}:f", "--dim", "2")), capsys)
    assert_one_line_error(rc, err, "shape")
    assert not out.exists()
    target.write_text("def f(x):\n    return -0.5 * (x ** 2).sum(-1)\n")
    rc, _, err = cli(fit_argv(out, target=(f"{target}:f", "--dim", "2")), capsys)
    assert rc == 0, err


def test_fit_data_force_clears_its_checkpoint(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    rc, _, err = cli([*FIT_DATA, "--out", out], capsys)
    assert rc == 0, err
    torch.load(out / "flow.pt", weights_only=True)
    torch.load(out / "checkpoint.pt", weights_only=True)
    rc, _, err = cli([*FIT_DATA, "--out", out], capsys)
    assert_one_line_error(rc, err, "already holds a run")
    rc, _, err = cli([*FIT_DATA, "--out", out, "--force", "--data-bogus"], capsys)
    assert rc == 2 and (out / "checkpoint.pt").exists()  # refused before anything was cleared
    rc, _, err = cli([*FIT_DATA, "--out", out, "--force", "--lr", "0"], capsys)
    assert_one_line_error(rc, err, "--lr")
    assert (out / "checkpoint.pt").exists()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("flowvi.training.density.PartsTrainer.run", killed)
    rc, _, _ = cli([*FIT_DATA, "--out", out, "--force", "--seed", "3"], capsys)
    assert rc == 130 and sorted(p.name for p in out.iterdir()) == ["config.json"]
