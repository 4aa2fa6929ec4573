"""Run files: atomic writes with the user's umask, and weights files that load without running code.

Every ``.pt`` file flowvi writes holds only tensors and plain containers (dict, list, tuple, str, int, float,
bool, None), so it loads with ``torch.load(weights_only=True)``: a crafted file cannot execute anything. A
weights file written inside a run directory also records, under :data:`META_KEY` (a uint8 tensor of JSON),
the part of the ``config.json`` beside it that determines the flow and target (:data:`IDENTITY_KEYS`) and its
SHA-256; loading it beside a ``config.json`` that differs there is refused, naming the changed keys.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

META_KEY = "flowvi_meta"
IDENTITY_KEYS = ("target", "flow", "data", "dtype", "method", "flowmc_flow")
FORMAT = 1


class RunFileError(ValueError):
    """A run file that cannot be read or written; the message names the file and the cause (one line)."""


def error_cause(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = str(e).strip().splitlines()
    first = text[0].split(". ")[0].rstrip(".") if text else ""  # torch's messages go on for sentences
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file beside ``path``, then rename over it (mode ``0o666 & ~umask``, as
    ``open`` gives; ``mkstemp`` alone gives 0600). A fault leaves the old file and no temporary one."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as e:
        raise RunFileError(f"{path}: cannot write ({error_cause(e)})") from e
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise RunFileError(f"{path}: cannot write ({error_cause(e)})") from e
        raise


def plain(obj):
    """``obj`` with numpy values turned into Python numbers and tensors; TypeError for anything that would need
    pickling (and so could not be loaded with ``weights_only=True``)."""
    if isinstance(obj, np.generic):  # before float: np.float64 is a float subclass that pickles as numpy
        return obj.item()
    if isinstance(obj, torch.Tensor) or obj is None or type(obj) in (str, bool, int, float):
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, dict):
        out = OrderedDict() if isinstance(obj, OrderedDict) else {}
        for k, v in obj.items():
            out[plain(k)] = plain(v)
        if hasattr(obj, "_metadata"):  # a module state dict's version record
            out._metadata = obj._metadata
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj) if type(obj) in (list, tuple) else [plain(v) for v in obj]
    raise TypeError(f"cannot save a {type(obj).__name__} object in a flowvi file (tensors and plain data only)")


def identity(config: dict) -> dict:
    """The keys of a run's config that determine its flow and target."""
    return {k: config[k] for k in IDENTITY_KEYS if k in config}


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(identity(config), sort_keys=True).encode()).hexdigest()


def _flatten(obj, prefix=""):
    if isinstance(obj, dict) and obj:
        out = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def changed_keys(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for every dotted key of the identities of two configs that differs."""
    a, b = _flatten(identity(old)), _flatten(identity(new))
    missing = object()
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key, missing), b.get(key, missing)
        if x is missing or y is missing or x != y or (type(x) is bool) != (type(y) is bool):
            show = [("(absent)" if v is missing else json.dumps(v)[:40]) for v in (x, y)]
            out.append(f"{key} {show[0]} -> {show[1]}")
    return out


def _beside_config(path: Path) -> dict | None:
    """The config.json beside ``path`` as a dict, or None when there is none (or it is not one)."""
    try:
        config = json.loads((path.parent / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def _meta(config: dict) -> torch.Tensor:
    text = json.dumps({"format": FORMAT, "config_hash": config_hash(config), "identity": identity(config)})
    return torch.tensor(list(text.encode()), dtype=torch.uint8)


def save_atomic(obj, path) -> None:
    """``torch.save`` of ``obj`` (tensors and plain data) to a temporary file beside ``path``, then rename over
    it; a dict in a run directory also records its config's identity under :data:`META_KEY`."""
    path = Path(path)
    obj = plain(obj)
    config = _beside_config(path)
    if isinstance(obj, dict) and config is not None:
        obj[META_KEY] = _meta(config)
    atomic_write(path, lambda f: torch.save(obj, f))


def write_json_atomic(obj, path) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2, default=float) + "\n").encode()))


def _refused(path: Path, e: Exception) -> RunFileError:
    found = re.findall(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
    if not found:
        return RunFileError(f"{path}: corrupt or truncated, not a file flowvi wrote (pickle data it does not load)")
    return RunFileError(
        f"{path}: refused: loading it would run Python code ({found[0]}), and flowvi files hold only tensors and "
        f"plain data; if it is an older flowvi file you trust, convert it with: python -m flowvi.runs.convert {path}"
    )


def read_meta(path: Path, payload: dict) -> dict | None:
    meta = payload.pop(META_KEY, None)
    if meta is None:
        return None
    try:
        meta = json.loads(bytes(meta.to("cpu", torch.uint8).tolist()).decode())
        if not (isinstance(meta, dict) and isinstance(meta.get("identity"), dict)):
            raise ValueError("not a JSON object with an identity")
    except (AttributeError, TypeError, ValueError, RuntimeError) as e:
        raise RunFileError(f"{path}: corrupt record of its config ({error_cause(e)})") from None
    return meta


def check_config(path: Path, meta: dict | None, config: dict | None) -> None:
    """Refuse weights whose recorded config identity differs from ``config``, naming the changed keys."""
    if meta is None or config is None or meta.get("config_hash") == config_hash(config):
        return
    changed = changed_keys(meta["identity"], config)
    if changed:
        raise RunFileError(
            f"{path} was trained with another config than {path.parent / 'config.json'}: {'; '.join(changed)}; "
            "restore config.json, or train again"
        )


def load(path, map_location="cpu", *, keys=(), config: dict | None = None):
    """Load a flowvi ``.pt`` file with ``weights_only=True``.

    Checks the recorded config identity against ``config`` (default: the ``config.json`` beside the file) and
    that a dict payload has ``keys``; every fault is a :class:`RunFileError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise RunFileError(f"{path}: no such file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as e:
        raise RunFileError(f"{path}: cannot read ({error_cause(e)})") from None
    except Exception as e:  # noqa: BLE001 - any parse failure of a damaged file
        if "Weights only load failed" in str(e):
            raise _refused(path, e) from None
        raise RunFileError(f"{path}: corrupt or truncated, not a file flowvi wrote ({error_cause(e)})") from None
    if not isinstance(payload, dict):
        raise RunFileError(f"{path}: not a file flowvi wrote (it holds a {type(payload).__name__}, not a dict)")
    check_config(path, read_meta(path, payload), config if config is not None else _beside_config(path))
    missing = [k for k in keys if k not in payload]
    if missing:
        raise RunFileError(f"{path}: not a complete flowvi file (no {', '.join(missing)})")
    return payload


def load_state_into(module, state, path) -> None:
    """``module.load_state_dict(state)``, a mismatch as a one-line :class:`RunFileError` naming ``path``."""
    if not isinstance(state, dict):
        raise RunFileError(f"{path}: holds no parameters (a {type(state).__name__})")
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        raise RunFileError(f"{path}: its parameters do not fit this run's flow ({error_cause(e)})") from None
