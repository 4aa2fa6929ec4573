"""Run directories: everything a run writes, and rebuilding a run's flow and target from it.

RUN_DIR/config.json        target, flow and training settings, seed, device, dtype
RUN_DIR/metrics.jsonl      one JSON line per logged step (step, elbo, log_z, ess, lr, skipped, time)
RUN_DIR/checkpoint.pt      latest checkpoint (atomic), used by --resume
RUN_DIR/flow.pt            final flow parameters
RUN_DIR/summary.json       final evaluation: ELBO, log Z with standard errors, ESS, Pareto k-hat
RUN_DIR/samples.npy        draws from the trained flow
RUN_DIR/training_curve.png ELBO (and IS log Z) against the step

The ``.pt`` files hold tensors and plain data only (they load with ``weights_only=True``) and record the
config they were trained with; see :mod:`flowvi.runs.checkpoint` and, for what ``--out`` and ``--force`` may
touch, :mod:`flowvi.runs.run_files`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from flowvi.flows.realnvp import realnvp
from flowvi.runs import checkpoint as ckpt
from flowvi.runs.run_files import MARKER_KEY, read_metrics
from flowvi.targets import make_target

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"unknown device {name!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but this machine has no CUDA GPU; use --device cpu")
    return device


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def build(config: dict):
    """``(flow, target)`` on the config's device and dtype, freshly initialised from its seed."""
    device, dtype = resolve_device(config.get("device")), resolve_dtype(config.get("dtype", "float32"))
    torch.manual_seed(config.get("seed", 0))
    target = make_target(config["target"]["name"], **config["target"].get("params", {}))
    # A target whose variables are not a plain vector (a lattice field, an image) supplies its own
    # flow architecture through ``default_flow(**flow_options)``; every other target gets Real NVP.
    make_flow = getattr(target, "default_flow", None)
    options = dict(config.get("flow", {}))
    hierarchical = options.pop("hierarchical", False)
    if hierarchical == "auto":  # on where the target declares a hierarchy (and gets a Real NVP)
        hierarchical = not make_flow and bool(_declared_hierarchy(target))
        if not hierarchical:
            options.pop("hierarchy_hidden", None)
    if hierarchical:
        options["hierarchy"] = hierarchy_of(target, config["target"]["name"])
    flow = make_flow(**options) if make_flow else realnvp(target.dim, **options)
    return flow.to(device, dtype), target.to(device, dtype)


def _declared_hierarchy(target) -> list | None:
    declared = getattr(target, "hierarchy", None)
    return declared() if callable(declared) and not hasattr(target, "default_flow") else None


def hierarchy_of(target, name: str) -> list:
    """``target.hierarchy()`` for a Real NVP's hierarchical couplings, or a ValueError that names the target."""
    pairs = _declared_hierarchy(target)
    if not pairs:
        raise ValueError(
            f"target {name!r} declares no hierarchy, so --hierarchical cannot be used (targets with one: "
            "horseshoe_*, regularized_horseshoe_*, funnel, and target files whose function has a hierarchy attribute)"
        )
    return pairs


def read_config(run_dir) -> dict:
    """A run's ``config.json`` (without the run-directory marker); a missing or damaged file is a one-line
    :class:`flowvi.runs.checkpoint.RunFileError`."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} is not a flowvi run directory (no config.json)")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ckpt.RunFileError(f"{path}: cannot read ({ckpt.error_cause(e)})") from None
    except ValueError as e:
        raise ckpt.RunFileError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ckpt.RunFileError(f"{path}: not a JSON object (a flowvi config.json maps names to settings)")
    config.pop(MARKER_KEY, None)
    return config


def load_run(run_dir, device: str | None = None):
    """Flow (with trained parameters) and target of a finished or checkpointed run. The weights are read (and
    their recorded config checked against config.json) before anything is built from config.json."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    path, state = read_flow_weights(run_dir, config)
    if device is not None:
        config["device"] = device
    try:
        flow, target = build(config)
    except (KeyError, TypeError, AttributeError) as e:
        raise ckpt.RunFileError(
            f"{run_dir / 'config.json'}: cannot build its flow and target ({ckpt.error_cause(e)})"
        ) from e
    ckpt.load_state_into(flow, state, path)
    return flow, target, config


def read_flow_weights(run_dir, config: dict | None = None):
    """``(path, state dict)`` of a run's trained parameters: its final ``flow.pt``, or else the flow of its
    latest ``checkpoint.pt`` (on the CPU; ``load_state_dict`` copies them to the flow's device)."""
    run_dir = Path(run_dir)
    weights = run_dir / "flow.pt"
    if weights.exists():
        return weights, ckpt.load(weights, config=config)
    if (run_dir / "checkpoint.pt").exists():
        return run_dir / "checkpoint.pt", ckpt.load(run_dir / "checkpoint.pt", keys=("flow",), config=config)["flow"]
    raise FileNotFoundError(f"{run_dir} has no trained parameters (flow.pt or checkpoint.pt)")


def load_flow_weights(flow, run_dir) -> None:
    """Load a run's trained parameters into ``flow`` (built from the same options): its final ``flow.pt``, or
    else the flow of its latest ``checkpoint.pt``."""
    path, state = read_flow_weights(run_dir)
    ckpt.load_state_into(flow, state, path)


@torch.no_grad()
def write_samples(flow, path, n: int, batch_size: int = 10_000) -> np.ndarray:
    chunks = [flow.sample(min(batch_size, n - i)).cpu().numpy() for i in range(0, n, batch_size)]
    samples = np.concatenate(chunks) if chunks else np.zeros((0, flow.dim))
    tmp = Path(path).with_suffix(".tmp.npy")
    try:
        np.save(tmp, samples)
        tmp.replace(path)
    except OSError as e:
        if tmp.exists():
            tmp.unlink()
        raise ckpt.RunFileError(f"{path}: cannot write ({ckpt.error_cause(e)})") from None
    return samples


def plot_training_curve(run_dir, summary: dict | None = None) -> Path:
    """PNG of the per-step ELBO (and its running mean) with the final IS log Z and exact log Z."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / "metrics.jsonl", warn=False)
    fig, ax = plt.subplots(figsize=(7, 4))
    if rows:
        steps = np.array([r["step"] for r in rows])
        elbo = np.array([r["elbo"] for r in rows], dtype=float)
        ax.plot(steps, elbo, lw=0.8, alpha=0.5, label="ELBO (batch)")
        k = max(1, len(rows) // 20)
        smooth = np.convolve(
            np.nan_to_num(elbo, nan=np.nanmin(elbo) if np.isfinite(elbo).any() else 0), np.ones(k) / k, mode="valid"
        )
        ax.plot(steps[k - 1 :], smooth, lw=1.5, label=f"ELBO (running mean of {k})")
        finite = elbo[np.isfinite(elbo)]
        if len(finite):
            lo, hi = np.percentile(finite, [5, 100])
            ax.set_ylim(lo - 0.1 * (hi - lo + 1e-9), hi + 0.3 * (hi - lo + 1e-9))
    if summary:
        ax.axhline(
            summary["log_z"],
            color="C2",
            ls="--",
            label=f"IS log Z = {summary['log_z']:.3f} ± {summary['log_z_se']:.3f}",
        )
        if "log_evidence" in summary:
            ax.axhline(
                summary["log_evidence"], color="C3", ls=":", label=f"exact log Z = {summary['log_evidence']:.3f}"
            )
    ax.set_xlabel("step")
    ax.set_ylabel("nats")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"flowvi fit: {run_dir.name}")
    fig.tight_layout()
    out = run_dir / "training_curve.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
