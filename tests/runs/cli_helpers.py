"""Running the CLI in-process and checking its one-line errors (shared by tests/runs and tests/cli)."""

from __future__ import annotations

import shutil
from pathlib import Path

from flowvi.cli import main

SMALL = ["--steps", "20", "--batch-size", "16", "--layers", "2", "--hidden", "8", "--eval-samples", "200",
         "--n-samples", "10", "--checkpoint-every", "10", "--init", "none", "--quiet"]  # fmt: skip


def cli(argv, capsys):
    """``flowvi ARGV`` in this process: (exit code, stdout, stderr); argparse's exit counts as an exit code."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def fit_argv(out, *extra, target=("conjugate_regression", "--dim", "3")):
    return ["fit", *target, "--out", str(out), *SMALL, *extra]


def assert_one_line_error(rc, err, *words):
    """Exit code 2 and exactly one line on stderr, no traceback, naming every word."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, (rc, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert str(word) in lines[0], (word, lines[0])
    return lines[0]


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def snapshot(directory: Path) -> dict:
    """File name -> bytes of every file under ``directory``."""
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}
