"""Atomic checkpoints: a file is either the old complete one or the new complete one."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_atomic(obj, path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename over it."""
    _atomic_write(path, lambda f: torch.save(obj, f))


def write_json_atomic(obj, path) -> None:
    _atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2, default=float) + "\n").encode()))


def load(path, map_location="cpu"):
    return torch.load(path, map_location=map_location, weights_only=False)
