"""Run directories: how flowvi recognizes one, what it may write into or clear, and reading ``metrics.jsonl``.

A run directory is a directory whose ``config.json`` is a JSON object carrying the marker :data:`MARKER_KEY`
(``{"command": "fit", "format": 1}``), which flowvi writes into every ``config.json``; a ``config.json`` of an
earlier flowvi (no marker, but ``seed``, ``dtype`` and a ``target``, ``data`` or ``method`` section) counts too.
``--out`` takes a new or empty directory or a run directory; ``--force`` deletes only the files flowvi writes
(:data:`FLOWVI_FILES`, ``samples-N.npy`` and left-over temporary files) and only once the new run has been
validated, just before its ``config.json`` is written.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from flowvi.runs.checkpoint import RunFileError, atomic_write, error_cause, write_json_atomic

MARKER_KEY = "flowvi_run"
FORMAT = 1
FLOWVI_FILES = (
    "config.json",
    "metrics.jsonl",
    "checkpoint.pt",
    "flow.pt",
    "pretrain.pt",
    "pretrain.json",
    "summary.json",
    "evaluation.json",
    "samples.npy",
    "samples.tmp.npy",
    "samples.png",
    "training_curve.png",
    "learning_curve.png",
    "flowmc_flow.pt",
    "gauge_observables.json",
    "samples.npz",
    "trace.png",
    "pair.png",
    "refined_samples.npy",
    "refine.json",
    "modes.npy",
)
_GENERATED = re.compile(r"samples-\d+(\.tmp)?\.np[yz]|\.(" + "|".join(map(re.escape, FLOWVI_FILES)) + r")\.[^/]+")


def _is_run_config(config) -> bool:
    if not isinstance(config, dict):
        return False
    if isinstance(config.get(MARKER_KEY), dict):
        return True
    return {"seed", "dtype"} <= set(config) and any(k in config for k in ("target", "data", "method"))


def is_run_dir(path) -> bool:
    """Whether ``path`` is a directory holding a flowvi ``config.json``."""
    try:
        return _is_run_config(json.loads((Path(path) / "config.json").read_text()))
    except (OSError, ValueError):
        return False


def check_out(out, *, resume: bool = False, force: bool = False) -> None:
    """Refuse an ``--out`` flowvi must not write into, before anything is computed: a file, a non-empty directory
    that is not a run directory, or (without ``--resume`` or ``--force``) an existing run."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunFileError(f"{out}: not a directory (--out names the run directory)")
    if resume:
        if not out.is_dir():
            raise RunFileError(f"{out}: no such run directory to --resume")
        if not is_run_dir(out):
            raise RunFileError(f"{out} is not a flowvi run directory (no flowvi config.json), nothing to --resume")
        return
    if not out.is_dir():
        return
    try:
        empty = not any(out.iterdir())
    except OSError as e:
        raise RunFileError(f"{out}: cannot read ({error_cause(e)})") from None
    if empty:
        return
    if not is_run_dir(out):
        raise RunFileError(
            f"{out} is not empty and is not a flowvi run directory (no flowvi config.json); flowvi will not write "
            "into it, even with --force: choose a new or empty directory"
        )
    if not force:
        raise FileExistsError(f"{out} already holds a run; use --resume to continue it or --force to overwrite")


def generated_files(out) -> list[Path]:
    """The files in ``out`` that flowvi writes (nothing else: a user's own files are never listed)."""
    out = Path(out)
    return sorted(p for p in out.iterdir() if p.is_file() and (p.name in FLOWVI_FILES or _GENERATED.fullmatch(p.name)))


def write_config(config: dict, out, command: str | None = None) -> None:
    """``out/config.json``: ``config`` plus the run-directory marker."""
    if command is None:
        command = "baseline" if "method" in config else "fit-data" if "data" in config else "fit"
    write_json_atomic({**config, MARKER_KEY: {"command": command, "format": FORMAT}}, Path(out) / "config.json")


def start_run(out, config: dict, command: str, *, resume: bool = False, force: bool = False) -> None:
    """Create the run directory once the target and options are valid: with ``--force``, first delete what the
    old run wrote (its weights, checkpoint, metrics and outputs: a later ``--resume`` cannot pick them up)."""
    out = Path(out)
    check_out(out, resume=resume, force=force)  # again: the directory may have changed while the run was set up
    try:
        if out.is_dir() and force and not resume:
            for path in generated_files(out):
                path.unlink()
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunFileError(f"{e.filename or out}: cannot write ({error_cause(e)})") from None
    write_config(config, out, command)


def read_metrics(path, warn: bool = True) -> list[dict]:
    """The rows of a ``metrics.jsonl``. A torn last line (a kill during the append) is dropped with one warning;
    a damaged line before it is a :class:`RunFileError`."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as e:
        raise RunFileError(f"{path}: cannot read ({error_cause(e)})") from None
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError("not a row with a step")
        except ValueError as e:
            if i == len(lines) - 1:
                if warn:
                    print(f"flowvi: warning: {path}: dropped its torn last line (a write cut short)", file=sys.stderr)
                break
            raise RunFileError(f"{path}: line {i + 1} is damaged ({error_cause(e)})") from None
        rows.append(row)
    return rows


def truncate_metrics(path, step: int) -> None:
    """Keep the rows of ``metrics.jsonl`` up to ``step`` (a resumed run writes the later ones again)."""
    if path is None or not Path(path).exists():
        return
    keep = [row for row in read_metrics(path) if row["step"] <= step]
    write_json_lines(keep, path)


def write_json_lines(rows, path) -> None:
    atomic_write(Path(path), lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows).encode()))
