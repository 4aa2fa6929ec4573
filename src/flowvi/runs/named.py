"""Named draws: ``samples.npz`` next to ``samples.npy``, one array per variable in the target's own space.

A target with ``constrain(x) -> {name: (n, *shape)}`` (a Pyro model, :class:`flowvi.targets.PyroTarget`)
names its sites, in constrained space with their shapes (``pyro.deterministic`` sites too); one whose
``constrain(x)`` gives an (n, p) tensor (the reference posteriors) one array per ``param_names`` entry; a target with
``coordinate_names()`` (a list of d names) gets one array per coordinate; any other target one array ``x``
of shape (n, d).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def named_draws(target, x, batch_size: int = 10_000) -> dict[str, np.ndarray]:
    """Flow draws ``x`` (n, d) in the flow's coordinates -> ``{name: array}`` (module docstring)."""
    x = torch.as_tensor(x)
    constrain = getattr(target, "constrain", None)
    if constrain is not None:
        anchor = next(iter(target.buffers()), None)
        if anchor is not None and anchor.is_floating_point():
            x = x.to(anchor.device, anchor.dtype)
        parts = [constrain(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        if not parts:
            return {}
        if isinstance(parts[0], dict):  # a Pyro model: one array per site
            return {k: torch.cat([p[k] for p in parts]).cpu().numpy() for k in parts[0]}
        arrays = torch.cat(parts).cpu().numpy()  # a reference posterior: its parameters, named by param_names
        names = getattr(target, "param_names", None)
        names = names() if callable(names) else names
        return {name: arrays[:, j] for j, name in enumerate(names)} if names else {"x": arrays}
    names = getattr(target, "coordinate_names", None)
    arrays = x.cpu().numpy()
    if names is not None:
        return {name: arrays[:, j] for j, name in enumerate(names())}
    return {"x": arrays}


def write_named_samples(target, samples, path) -> Path:
    """``samples.npz``: :func:`named_draws` of ``samples`` (n, d), written atomically."""
    path = Path(path)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **named_draws(target, samples))
    tmp.replace(path)
    return path
