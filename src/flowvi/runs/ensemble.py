"""An MCMC-corrected ensemble of configurations on disk (``flowvi nmcmc --save-configs PATH``).

Format. ``PATH.npy``: the chain's states, an array (n_steps, *event_shape) in the run's dtype (phi^4:
(n, L, L) fields; U(1) and Schwinger: (n, 2, L, L) link angles in (-pi, pi]); row i is the state after step i,
so a rejected proposal repeats the previous row, and plain averages over the rows are the Markov-chain
estimates. ``PATH.npz`` holds the same array as ``configs`` with:

* ``accepted`` (n_steps,) bool: step i moved to a new configuration (row 0, the start, is True);
* ``log_weight`` (n_steps,) float64: ``log p(x) - log q(x)`` of each state (unnormalized p);
* ``acceptance`` (): the chain's acceptance rate;
* ``run`` (): the run's configuration (target, flow, training) as a JSON string.

``configs[accepted]`` are the distinct accepted configurations; their multiplicities are the run lengths
between consecutive ``accepted`` entries. Read with :func:`load_configs`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

FORMATS = (".npy", ".npz")


def check_configs_path(path) -> Path:
    """The output path, refused before any work if its suffix is not .npy or .npz or its folder is missing."""
    path = Path(path)
    if path.suffix not in FORMATS:
        raise ValueError(f"--save-configs {path}: give a .npy or .npz file name")
    if not path.parent.exists():
        raise FileNotFoundError(f"--save-configs {path}: folder {path.parent} does not exist")
    return path


def chain_record(chain: torch.Tensor, idx: torch.Tensor, logw: torch.Tensor) -> dict:
    """The chain's states with, per step, whether the proposal was accepted and the state's log weight."""
    idx = idx.cpu()
    accepted = torch.ones(len(idx), dtype=torch.bool)
    accepted[1:] = idx[1:] != idx[:-1]
    return {"chain_states": chain, "accepted": accepted, "log_weight": logw.detach().cpu()[idx]}


def save_configs(path, chain: torch.Tensor, accepted, log_weight, acceptance: float, run_config: dict) -> Path:
    """Write the chain to ``path`` (.npy: the states only; .npz: with the per-step records), atomically."""
    path = check_configs_path(path)
    configs = chain.detach().cpu().numpy()
    tmp = path.with_name(path.name + ".tmp" + path.suffix)
    if path.suffix == ".npy":
        np.save(tmp, configs)
    else:
        np.savez(
            tmp,
            configs=configs,
            accepted=np.asarray(accepted, dtype=bool),
            log_weight=np.asarray(log_weight, dtype=np.float64),
            acceptance=np.float64(acceptance),
            run=json.dumps(run_config),
        )
    tmp.replace(path)
    return path


def load_configs(path) -> dict:
    """``{"configs": (n, *event_shape) array, ...}``: the arrays of a .npz written by :func:`save_configs`, or
    ``{"configs": array}`` for a .npy; ``run`` comes back as a dict."""
    path = Path(path)
    if path.suffix == ".npy":
        return {"configs": np.load(path)}
    with np.load(path) as f:
        out = {k: f[k] for k in f.files}
    out["run"] = json.loads(str(out["run"]))
    out["acceptance"] = float(out["acceptance"])
    return out
