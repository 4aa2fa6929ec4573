"""Every file fault is a one-line error naming the file and the cause, exit code 2, and nothing computed is lost."""

import errno
import os

import pytest

from flowvi.runs import checkpoint as ckpt
from tests.runs.cli_helpers import assert_one_line_error, cli, copy_run, fit_argv


@pytest.fixture
def run(trained_run, tmp_path):
    return copy_run(trained_run, tmp_path / "run")


@pytest.mark.parametrize(
    "damage, cause",
    [
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "corrupt or truncated"),
        (lambda p: p.write_bytes(os.urandom(256)), "corrupt or truncated"),
        (lambda p: p.write_bytes(b""), "corrupt or truncated"),
        (lambda p: p.unlink(), "no trained parameters"),
    ],
)
def test_damaged_weights(run, capsys, damage, cause):
    damage(run / "flow.pt")
    damage(run / "checkpoint.pt")
    for argv in (["evaluate", run, "-n", "50"], ["sample", run, "-n", "5"]):
        rc, _, err = cli(argv, capsys)
        assert_one_line_error(rc, err, str(run), cause)


@pytest.mark.parametrize(
    "text, cause", [("{not json", "not valid JSON"), ("[1, 2]", "not a JSON object"), (None, "no config.json")]
)
def test_damaged_config(run, capsys, text, cause):
    if text is None:
        (run / "config.json").unlink()
    else:
        (run / "config.json").write_text(text)
    rc, _, err = cli(["evaluate", run, "-n", "50"], capsys)
    assert_one_line_error(rc, err, str(run), cause)


@pytest.mark.parametrize("error", [errno.EACCES, errno.ENOSPC, errno.EROFS])
def test_evaluate_prints_its_table_before_a_failed_write(run, capsys, monkeypatch, error):
    def fail(*args, **kwargs):
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(ckpt.tempfile, "mkstemp", fail)  # root ignores chmod, so the fault is simulated
    rc, out, err = cli(["evaluate", run, "-n", "50"], capsys)
    assert "IS log Z" in out  # the results were printed before the failed write
    assert_one_line_error(rc, err, "evaluation.json", os.strerror(error))


def test_disk_full_during_a_checkpoint_leaves_no_partial_file(tmp_path, capsys, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckpt.os, "fsync", full)
    out = tmp_path / "run"
    rc, _, err = cli(fit_argv(out), capsys)
    assert_one_line_error(rc, err, "No space left on device", str(out))
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_out_under_sys(capsys):
    rc, _, err = cli(fit_argv("/sys/flowvi-run"), capsys)
    assert_one_line_error(rc, err, "/sys/flowvi-run")


def test_sample_output_in_a_missing_directory(run, tmp_path, capsys):
    rc, _, err = cli(["sample", run, "-n", "5", "-o", tmp_path / "no" / "such" / "dir" / "x.npy"], capsys)
    assert_one_line_error(rc, err, "x.npy")


def test_resume_in_a_directory_without_a_run(tmp_path, capsys):
    rc, _, err = cli(fit_argv(tmp_path / "none", "--resume"), capsys)
    assert_one_line_error(rc, err, str(tmp_path / "none"))
