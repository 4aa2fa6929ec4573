"""Weights files load without running code, are tied to their config, and get the user's umask (issue 23)."""

import json
import os

import numpy as np
import pytest
import torch

from flowvi.runs import checkpoint as ckpt
from flowvi.runs.convert import main as convert_main
from tests.runs.cli_helpers import SMALL, assert_one_line_error, cli, copy_run, fit_argv


class _Evil:
    """Unpickling this calls ``open(marker, "w")``: a file appears if the loader runs code from the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_every_file_flowvi_writes_loads_with_weights_only(trained_run, tmp_path, capsys):
    draws = tmp_path / "draws.npy"
    np.save(draws, np.random.default_rng(0).normal(size=(64, 3)))
    warm = tmp_path / "warm"
    rc, _, err = cli(fit_argv(warm, "--init-draws", draws, "--init-steps", "3"), capsys)
    assert rc == 0, err
    for path in (trained_run / "flow.pt", trained_run / "checkpoint.pt", warm / "pretrain.pt", warm / "flow.pt"):
        torch.load(path, weights_only=True)  # no pickled Python objects in any of them


def test_save_stores_numpy_values_as_plain_data(tmp_path):
    ckpt.save_atomic({"a": np.float64(1.5), "b": np.arange(3), "c": [np.int64(2)], "t": (1, "x")}, tmp_path / "x.pt")
    loaded = torch.load(tmp_path / "x.pt", weights_only=True)
    assert loaded["a"] == 1.5 and loaded["c"] == [2] and torch.equal(loaded["b"], torch.arange(3))
    with pytest.raises(TypeError, match="object"):
        ckpt.save_atomic({"f": object()}, tmp_path / "y.pt")


@pytest.mark.parametrize("name", ["flow.pt", "checkpoint.pt"])
def test_crafted_pickle_is_refused_without_running_code(trained_run, tmp_path, capsys, name):
    run = copy_run(trained_run, tmp_path / "run")
    marker = tmp_path / "pwned"
    payload = torch.load(run / name, weights_only=True)
    payload["evil"] = _Evil(marker)
    torch.save(payload, run / name)
    if name == "checkpoint.pt":
        (run / "flow.pt").unlink()  # evaluate falls back to the checkpoint
    for argv in (
        ["evaluate", run, "-n", "100"],
        ["sample", run, "-n", "5"],
        fit_argv(tmp_path / "w", "--init-flow", run),
    ):
        rc, _, err = cli(argv, capsys)
        assert_one_line_error(rc, err, name, "io.open", "refused")
        assert not marker.exists()
    rc, _, err = cli(fit_argv(run, "--resume"), capsys)
    if name == "checkpoint.pt":
        assert_one_line_error(rc, err, name, "refused")
    assert not marker.exists()


def test_old_pickled_checkpoint_is_refused_then_converted(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path / "run")
    old = torch.load(run / "checkpoint.pt", weights_only=True)
    old.pop(ckpt.META_KEY)
    old["state"]["history"][0]["ess"] = np.float64(old["state"]["history"][0]["ess"])  # an older flowvi's numpy
    torch.save(old, run / "checkpoint.pt")
    rc, _, err = cli(fit_argv(run, "--resume"), capsys)
    line = assert_one_line_error(rc, err, "checkpoint.pt", "python -m flowvi.runs.convert")
    command = line.split("convert it with: ")[1].split()
    assert command[:3] == ["python", "-m", "flowvi.runs.convert"]
    assert convert_main(command[3:]) == 0  # in this process: the same as the command line, without the start-up
    assert "converted" in capsys.readouterr().out
    assert (run / "checkpoint.pt.orig").exists()
    torch.load(run / "checkpoint.pt", weights_only=True)
    rc, _, err = cli(fit_argv(run, "--resume"), capsys)
    assert rc == 0, err


@pytest.mark.parametrize("command", ["evaluate", "sample"])
def test_edited_config_is_refused_naming_the_keys(trained_run, tmp_path, capsys, command):
    run = copy_run(trained_run, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    config["flow"]["clamp"] = "none"
    config["train"]["lr"] = 0.5  # training options do not change what the weights compute
    (run / "config.json").write_text(json.dumps(config))
    argv = [command, run, "-n", "50"]
    rc, _, err = cli(argv, capsys)
    assert_one_line_error(rc, err, "flow.pt", "flow.clamp", "asymmetric", "none")
    assert "train.lr" not in err
    config["flow"]["clamp"] = "asymmetric"
    (run / "config.json").write_text(json.dumps(config))
    rc, _, err = cli(argv, capsys)
    assert rc == 0, err


def test_resume_refuses_a_checkpoint_of_another_config(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    config["flow"]["tau"] = 50.0
    (run / "config.json").write_text(json.dumps(config))
    rc, _, err = cli(fit_argv(run, "--resume", "--tau", "50"), capsys)  # the options agree with the edited file
    assert_one_line_error(rc, err, "checkpoint.pt", "flow.tau")


def test_run_files_get_the_users_umask(tmp_path, capsys):
    old = os.umask(0o027)
    try:
        rc, _, err = cli(fit_argv(tmp_path / "run"), capsys)
    finally:
        os.umask(old)
    assert rc == 0, err
    for name in ("config.json", "checkpoint.pt", "flow.pt", "summary.json", "samples.npy", "metrics.jsonl"):
        assert (tmp_path / "run" / name).stat().st_mode & 0o777 == 0o640, name
    ckpt.write_json_atomic({"a": 1}, tmp_path / "x.json")
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o666 & ~old


def test_torn_metrics_line_is_dropped_on_resume(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path / "run")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 30, "elb')  # killed during the append
    rc, _, err = cli(fit_argv(run, "--resume"), capsys)
    assert rc == 0, err
    assert err.count("dropped its torn last line") == 1 and "metrics.jsonl" in err
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 20 and len({r["step"] for r in rows}) == len(rows)


def test_corrupt_metrics_line_in_the_middle_is_an_error(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path / "run")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[0] = lines[0][:5]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    rc, _, err = cli(fit_argv(run, "--resume"), capsys)
    assert_one_line_error(rc, err, "metrics.jsonl", "line 1")


__all__ = ["SMALL"]
