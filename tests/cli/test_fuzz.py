"""Fuzz (hypothesis, derandomized and bounded): over target outputs and over damaged run directories, flowvi either
works or prints one line and exits 2; never a traceback, never a changed user file."""

import json
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.runs.cli_helpers import SMALL, cli, snapshot

FUZZ = settings(
    derandomize=True, max_examples=12, deadline=None, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)  # fmt: skip

TARGET = """
import torch
SPEC = {spec!r}
calls = [0]

def f(x):
    calls[0] += 1
    if SPEC["raise_at"] is not None and calls[0] >= SPEC["raise_at"]:
        raise {error}("fuzzed failure")
    out = -0.5 * (x ** 2).sum(-1)
    if SPEC["bad_at"] is not None and calls[0] >= SPEC["bad_at"]:
        mask = torch.zeros(out.shape[0], dtype=torch.bool)
        mask[SPEC["offset"] % out.shape[0] :: SPEC["stride"]] = True
        out = torch.where(mask, torch.tensor(float(SPEC["value"]), dtype=out.dtype), out)
    shape = SPEC["shape"]
    if shape == "column":
        out = out[:, None]
    elif shape == "scalar":
        out = out.sum()
    elif shape == "short":
        out = out[:-1]
    elif shape == "list":
        out = out.tolist()
    elif shape == "none":
        out = None
    if SPEC["dtype"] is not None and hasattr(out, "to"):
        out = out.to(getattr(torch, SPEC["dtype"]))
    return out
"""

specs = st.fixed_dictionaries(
    {
        "raise_at": st.none() | st.integers(1, 12),  # calls 1-2: the first checks, 3-8: training, 9-: evaluation
        "bad_at": st.none() | st.integers(1, 12),
        "value": st.sampled_from(["nan", "inf", "-inf", "1e30", "-1e30"]),
        "offset": st.integers(0, 7),
        "stride": st.integers(1, 9),
        "shape": st.just("ok") | st.sampled_from(["column", "scalar", "short", "list", "none"]),
        "dtype": st.none() | st.sampled_from(["float64", "float16", "int64", "bool"]),
    }
)
errors = st.sampled_from(["ValueError", "RuntimeError", "ZeroDivisionError", "KeyError", "MemoryError"])


def _check_outcome(rc, err):
    assert "Traceback" not in err, err
    if rc != 0:
        lines = [line for line in err.splitlines() if line.strip() and "warning" not in line]
        assert rc == 2 and len(lines) == 1, (rc, err)


@settings(FUZZ, max_examples=16)
@given(spec=specs, error=errors)
def test_fuzz_target_outputs(tmp_path_factory, capsys, spec, error):
    home = tmp_path_factory.mktemp("target")
    (home / "t.py").write_text(TARGET.format(spec=spec, error=error))
    (home / "notes.txt").write_text("the user's file")
    before = snapshot(home)
    steps = ["--steps", "6", "--checkpoint-every", "3"]
    rc, _, err = cli(["fit", f"{home / 't.py'}:f", "--dim", "2", "--out", home / "run", *SMALL, *steps], capsys)
    _check_outcome(rc, err)
    after = snapshot(home)
    assert {k: after[k] for k in before} == before  # the target file and the user's notes are untouched
    if "first check" in err:
        assert not (home / "run").exists()  # a target refused before training leaves no run directory


def _damage(run, data):
    """One damage to a copy of a run directory: truncate, overwrite with random bytes, or edit config.json."""
    kind = data.draw(st.sampled_from(["truncate", "bytes", "edit", "drop_key", "torn"]))
    name = data.draw(st.sampled_from(["flow.pt", "checkpoint.pt", "config.json", "metrics.jsonl"]))
    path = run / name
    if kind == "truncate":
        raw = path.read_bytes()
        path.write_bytes(raw[: data.draw(st.integers(0, max(0, len(raw) - 1)))])
    elif kind == "bytes":
        path.write_bytes(data.draw(st.binary(min_size=0, max_size=300)))
    elif kind == "torn":
        with open(run / "metrics.jsonl", "a") as f:
            f.write('{"step": 25, "el')
    else:
        config = json.loads((run / "config.json").read_text())
        section = data.draw(st.sampled_from(["target", "flow", "train", "seed", "dtype", "device", "flowvi_run"]))
        if kind == "drop_key":
            config.pop(section, None)
        else:
            value = st.none() | st.booleans() | st.integers(-3, 300) | st.floats(allow_nan=False) | st.text(max_size=8)
            if isinstance(config.get(section), dict) and config[section]:
                key = data.draw(st.sampled_from(sorted(config[section])))
                config[section][key] = data.draw(value | st.lists(st.integers(0, 3), max_size=3))
            else:
                config[section] = data.draw(value)
        (run / "config.json").write_text(json.dumps(config))


@FUZZ
@given(data=st.data())
def test_fuzz_damaged_run_directories(trained_run, tmp_path_factory, capsys, data):
    run = tmp_path_factory.mktemp("damaged") / "run"
    shutil.copytree(trained_run, run)
    (run / "notes.txt").write_text("the user's file")
    _damage(run, data)
    before = snapshot(run)
    command = data.draw(st.sampled_from(["evaluate", "sample", "resume"]))
    if command == "evaluate":
        argv = ["evaluate", run, "-n", "64"]
        written = {"evaluation.json"}
    elif command == "sample":
        argv = ["sample", run, "-n", "5"]
        written = {"samples-5.npy", "samples-5.npz"}  # flowvi sample writes the draws and, by name, their .npz
    else:
        argv = ["fit", "conjugate_regression", "--dim", "3", "--out", run, *SMALL, "--resume"]
        written = {"config.json", "metrics.jsonl", "checkpoint.pt", "flow.pt", "summary.json", "samples.npy",
                   "training_curve.png"}  # fmt: skip
    rc, _, err = cli(argv, capsys)
    _check_outcome(rc, err)
    after = snapshot(run)
    assert after["notes.txt"] == before["notes.txt"]
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert changed <= written, changed
    if rc != 0 and command != "resume":
        assert not changed  # a failed evaluate or sample writes nothing


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
