"""``python -m flowvi.runs.convert FILE...``: rewrite ``.pt`` files of an earlier flowvi that hold pickled Python
objects (numpy scalars, for one) as tensors and plain data, so that flowvi loads them with ``weights_only=True``.

Converting unpickles the file, which can run code stored in it: convert only files you trust. The original is
kept as ``FILE.orig``; the converted file records the config beside it (``config.json``), as new files do.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

from flowvi.runs.checkpoint import META_KEY, RunFileError, error_cause, plain, save_atomic


def convert(path) -> Path:
    """Convert one trusted file in place (original kept as ``FILE.orig``); returns the backup's path."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)  # trusted by the user, see above
    except Exception as e:  # noqa: BLE001 - any failure is reported as one line
        raise RunFileError(f"{path}: cannot read ({error_cause(e)})") from None
    if isinstance(payload, dict):
        payload.pop(META_KEY, None)
    try:
        payload = plain(payload)
    except TypeError as e:
        raise RunFileError(f"{path}: {e}; not a flowvi file") from None
    backup = path.with_name(path.name + ".orig")
    shutil.copy2(path, backup)
    save_atomic(payload, path)
    return backup


def main(argv=None) -> int:
    files = sys.argv[1:] if argv is None else argv
    if not files or any(f.startswith("-") for f in files):
        print("usage: python -m flowvi.runs.convert FILE.pt ... (only files you trust: this unpickles them)")
        return 2
    for name in files:
        try:
            backup = convert(name)
        except (RunFileError, OSError) as e:
            print(f"flowvi convert: error: {e}", file=sys.stderr)
            return 2
        print(f"converted {name} (the original is kept as {backup})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
