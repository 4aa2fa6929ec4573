"""The stability study (Andrade 2024, arXiv 2402.16408, Sec. 6): which stabilizers let Real NVP train on a target.

A grid over scale clamp (none / symmetric / asymmetric) x LOFT (on / off) x base (gaussian / student_t) x
gradient estimator, each configuration trained from several seeds with :func:`flowvi.training.loop.fit` and scored
with :func:`flowvi.diagnostics.evaluate.evaluate`. A run counts as *diverged* when training stops with
``TrainingDiverged`` (most steps non-finite), when the target cannot be evaluated on its draws, or when the
trained flow's draws explode (non-finite or ``|x| > explode_at``) or give a non-finite ELBO.

Outputs in ``out``: ``runs.csv`` (one row per run), ``table.csv`` and ``table.md`` (one row per
configuration: fraction diverged, ELBO, IS log Z with its mean standard error and its spread over seeds,
Pareto k-hat, wall time (runs whose estimator the flow does not support are listed in runs.csv only), and with a NUTS reference the fraction of coordinates whose posterior mean is
within 0.1 NUTS posterior standard deviations), ``elbo_curves.png`` and, with a reference,
``marginals.png`` (marginals of a few coefficients, flow against NUTS).
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from flowvi.diagnostics.evaluate import evaluate
from flowvi.runs.checkpoint import write_json_atomic
from flowvi.runs.run_dir import build, resolve_device
from flowvi.targets import TargetError, make_target
from flowvi.targets.base import coordinates
from flowvi.training.loop import TrainConfig, TrainingDiverged, fit
from flowvi.transforms import PathGradientUnsupported

CLAMP_CHOICES = ("none", "symmetric", "asymmetric")
BASE_CHOICES = ("gaussian", "student_t")


def config_name(
    clamp: str, loft: bool, base: str, estimator: str, spline: bool = False, hierarchical: bool = False
) -> str:
    name = f"{clamp}/{'loft' if loft else 'no-loft'}/{base}/{estimator}"
    return name + ("/spline" if spline else "") + ("/hierarchical" if hierarchical else "")


def grid(clamps, lofts, bases, estimators, splines=(False,), hierarchicals=(False,)) -> list[dict]:
    """All combinations, as dicts with keys clamp, loft, base, estimator, spline (an elementwise spline layer
    after the couplings, :class:`flowvi.transforms.ElementwiseSpline`) and hierarchical (the target's hierarchical
    couplings, :class:`flowvi.transforms.HierarchicalAffine`)."""
    return [
        {"clamp": c, "loft": bool(lo), "base": b, "estimator": e, "spline": bool(sp), "hierarchical": bool(h)}
        for h, sp, c, lo, b, e in itertools.product(hierarchicals, splines, clamps, lofts, bases, estimators)
    ]


def reference_stats(target, reference, n_plot: int = 4) -> dict:
    """Mean and standard deviation of NUTS draws in the coordinates of :func:`coordinates`, and the ``n_plot``
    coordinates of largest |mean| / sd to plot, with their draws.

    ``reference`` is a ``flowvi baseline nuts`` run directory (its ``samples.npy``) or a summary file ``.npz``
    written by :func:`flowvi.diagnostics.mcmc.write_reference` (arrays ``mean``, ``sd``, ``plot``, ``draws``)."""
    reference = Path(reference)
    if reference.suffix == ".npz":
        if not reference.exists():
            raise FileNotFoundError(f"--reference {reference}: no such file")
        with np.load(reference, allow_pickle=False) as f:
            out = {key: f[key] for key in ("mean", "sd", "plot", "draws")}
            # quantiles for the robust comparison (reference files written since 2026-11-23)
            out |= {key: f[key] for key in ("median", "q25", "q75") if key in f.files}
        if out["mean"].shape != out["sd"].shape or out["draws"].shape[1] != len(out["plot"]):
            raise ValueError(f"--reference {reference}: inconsistent arrays mean/sd/plot/draws")
        with torch.no_grad():
            width = coordinates(target, torch.zeros(1, target.dim, dtype=torch.float64, device=target_device(target)))
        if out["mean"].shape != (width.shape[1],):
            raise ValueError(
                f"--reference {reference} summarises {out['mean'].shape[0]} coordinates; the target has {width.shape[1]}"
            )
        return out
    path = reference / "samples.npy"
    if not path.exists():
        raise FileNotFoundError(f"--reference {reference}: no samples.npy (run 'flowvi baseline nuts' first)")
    draws = np.load(path)
    if draws.ndim != 2 or draws.shape[1] != target.dim:
        raise ValueError(f"--reference draws have shape {draws.shape}; the target has dimension {target.dim}")
    with torch.no_grad():
        c = coordinates(target, torch.as_tensor(draws, dtype=torch.float64, device=target_device(target))).cpu().numpy()
    mean, sd = c.mean(0), c.std(0)
    q25, median, q75 = np.quantile(c, [0.25, 0.5, 0.75], axis=0)
    plot = np.argsort(-np.abs(mean) / np.maximum(sd, 1e-12), kind="stable")[:n_plot]
    return {"mean": mean, "sd": sd, "plot": plot, "draws": c[:, plot], "median": median, "q25": q25, "q75": q75}


def target_device(target):
    buf = next(iter(target.buffers()), None)
    return buf.device if buf is not None else torch.device("cpu")


def _evaluate(row: dict, flow, target, eval_samples: int, explode_at: float, reference: dict | None) -> dict:
    """The trained flow's statistics (:func:`flowvi.diagnostics.evaluate.evaluate`), its coordinates' means and
    medians in ``row`` (scored against ``reference`` when given); exploded draws, a non-finite ELBO or a target error
    mark the row diverged."""
    stats = {}
    try:
        with torch.no_grad():
            x = flow.sample(min(eval_samples, 10_000))
        exploded = ~torch.isfinite(x).all(-1) | (x.abs() > explode_at).any(-1)
        if exploded.any():
            row.update(
                diverged=True, reason=f"{int(exploded.sum())} of {len(x)} draws non-finite or beyond {explode_at:g}"
            )
        else:
            stats = evaluate(flow, target, n=eval_samples)
            if not math.isfinite(stats["elbo"]):
                row.update(diverged=True, reason="non-finite ELBO")
            else:
                with torch.no_grad():
                    c = coordinates(target, x.double()).cpu().numpy()
                # kept so that a reference made later can score this run (see score_against_reference)
                row["coord_mean"], row["coord_median"] = c.mean(0), np.median(c, 0)
                if reference is not None:
                    row["within_0.1_sd"] = share_within(row["coord_mean"], reference)
                    if "median" in reference:
                        row[ROBUST] = share_within_robust(row["coord_median"], reference)
                    row["plot_draws"] = c[:, reference["plot"]]
    except TargetError as e:
        row.update(diverged=True, reason=f"evaluation: {e}")
    return stats


def run_one(
    target_spec: dict,
    setting: dict,
    seed: int,
    flow_options: dict,
    train: TrainConfig,
    device: str,
    dtype: str,
    eval_samples: int,
    explode_at: float = 1e6,
    reference: dict | None = None,
) -> dict:
    """Train and evaluate one configuration from one seed; returns a row of results (and the ELBO curve)."""
    config = {
        "target": target_spec,
        "flow": {
            **flow_options,
            "clamp": setting["clamp"],
            "loft": setting["loft"],
            "base": setting["base"],
            "spline": setting.get("spline", False),
            "hierarchical": setting.get("hierarchical", False),
            "seed": seed,
        },
        "train": asdict(TrainConfig(**{**asdict(train), "estimator": setting["estimator"]})),
        "seed": seed,
        "device": device,
        "dtype": dtype,
    }
    flow, target = build(config)
    row = {
        "config": config_name(**setting),
        **setting,
        "seed": seed,
        "diverged": False,
        "unsupported": False,
        "reason": "",
    }
    start = time.perf_counter()
    curve, skipped = [], [0]

    def record(state, metrics):
        curve.append((metrics["step"], metrics["elbo"]))
        skipped[0] = state.skipped

    try:
        state = fit(flow, target, TrainConfig(**config["train"]), progress=False, callback=record)
        skipped[0] = state.skipped
    except TrainingDiverged as e:
        row.update(diverged=True, reason=f"training: {e}")
    except PathGradientUnsupported as e:  # an estimator this flow cannot run: not a divergence
        row.update(unsupported=True, reason=f"unsupported: {e or type(e).__name__}")
    row["train_seconds"] = time.perf_counter() - start
    row["curve"] = curve
    row["skipped_steps"] = skipped[0]
    stats = (
        {}
        if row["diverged"] or row["unsupported"]
        else _evaluate(row, flow, target, eval_samples, explode_at, reference)
    )
    row["seconds"] = time.perf_counter() - start
    for key in ("elbo", "elbo_se", "log_z", "log_z_se", "ess", "pareto_k"):
        row[key] = stats.get(key, float("nan"))
    return row


def _numpy(v) -> np.ndarray:
    """A reference's statistics may come as tensors (:func:`flowvi.diagnostics.mcmc.summarize_chains` of torch
    draws): NumPy for the scores."""
    return v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)


def share_within(mean: np.ndarray, reference: dict, tol: float = 0.1) -> float:
    """Share of coordinates whose mean lies within ``tol`` reference posterior sds of the reference mean."""
    mean, ref_mean, ref_sd = (_numpy(v) for v in (mean, reference["mean"], reference["sd"]))
    z = np.abs(mean - ref_mean) / np.maximum(ref_sd, 1e-12)
    return float((z < tol).mean())


ROBUST = "median_within_0.1_iqr"


def share_within_robust(median: np.ndarray, reference: dict, tol: float = 0.1) -> float:
    """Share of coordinates whose median lies within ``tol`` robust sds of the reference median.

    The robust sd is the interquartile range over 1.349 (= the sd for a Gaussian). Unlike the mean and the sd, the
    median and the quartiles exist and are estimated at the usual rate for any posterior, including the
    heavy-tailed coefficients of a horseshoe, whose sample sd is dominated by rare excursions into the tails."""
    median, ref_median, q25, q75 = (
        _numpy(v) for v in (median, reference["median"], reference["q25"], reference["q75"])
    )
    z = np.abs(median - ref_median) / np.maximum((q75 - q25) / 1.349, 1e-12)
    return float((z < tol).mean())


def zero_guess_scores(reference: dict) -> dict:
    """The scores of the guess "every coefficient is 0", with no flow at all: what a flow collapsed onto
    beta = 0 (the horseshoe's spike at a small global scale) gets. A configuration's share means something only
    above this line."""
    out = {"within_0.1_sd": share_within(np.zeros_like(_numpy(reference["mean"])), reference)}
    if "median" in reference:
        out[ROBUST] = share_within_robust(np.zeros_like(_numpy(reference["median"])), reference)
    return out


def score_against_reference(out, reference, target_spec: dict | None = None, device: str = "cpu") -> list[dict]:
    """Score a finished study (its ``runs.csv`` and ``coordinates.npz``) against a NUTS reference made
    afterwards: adds ``within_0.1_sd`` to every run, rewrites runs.csv, table.csv and table.md, and returns
    the per-configuration summary. The target is the one in the study's ``study.json`` unless given."""
    out = Path(out)
    for name in ("runs.csv", "coordinates.npz"):
        if not (out / name).exists():
            raise FileNotFoundError(f"{out} is not a finished stability study (no {name})")
    if target_spec is None:
        target_spec = json.loads((out / "study.json").read_text())["target"]
    target = make_target(target_spec["name"], **target_spec.get("params", {}))
    ref = reference_stats(target.to(resolve_device(device), torch.float64), reference)
    rows = read_csv(out / "runs.csv")
    with np.load(out / "coordinates.npz", allow_pickle=False) as f:
        means = {key: f[key] for key in f.files}
    for row in rows:
        key = run_key(row)
        if key in means and not row["diverged"]:
            row["within_0.1_sd"] = share_within(means[key], ref)
            if key + "#median" in means and "median" in ref:  # studies run since 2026-11-23 keep medians
                row[ROBUST] = share_within_robust(means[key + "#median"], ref)
    write_study_tables(rows, out, target_spec, sorted({r["seed"] for r in rows}), zero_guess=zero_guess_scores(ref))
    return aggregate(rows)


def run_key(row: dict) -> str:
    """A run's name in coordinates.npz."""
    return f"{row['config']}/seed{row['seed']}"


def read_csv(path) -> list[dict]:
    """runs.csv back into rows with numbers and booleans."""

    def value(v):
        if v in ("True", "False"):
            return v == "True"
        try:
            return int(v)
        except ValueError:
            try:
                return float(v)
            except ValueError:
                return v

    with open(path, newline="") as f:
        return [{k: value(v) for k, v in r.items()} for r in csv.DictReader(f)]


def aggregate(rows: list[dict]) -> list[dict]:
    """One summary per configuration (means over the seeds that did not diverge)."""
    out = []
    for name in dict.fromkeys(r["config"] for r in rows):
        rs = [r for r in rows if r["config"] == name and not r.get("unsupported")]
        if not rs:
            continue
        ok = [r for r in rs if not r["diverged"]]

        def mean(key, rs=ok):
            v = [r[key] for r in rs if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
            return float(np.mean(v)) if v else float("nan")

        log_z = [r["log_z"] for r in ok if math.isfinite(r["log_z"])]
        elbo = [r["elbo"] for r in ok if math.isfinite(r["elbo"])]
        summary = {
            "config": name,
            "runs": len(rs),
            "diverged": sum(r["diverged"] for r in rs),
            "frac_diverged": sum(r["diverged"] for r in rs) / len(rs),
            "elbo": mean("elbo"),
            "elbo_sd": float(np.std(elbo, ddof=1)) if len(elbo) > 1 else float("nan"),
            "log_z": mean("log_z"),
            "log_z_se": mean("log_z_se"),
            "log_z_sd": float(np.std(log_z, ddof=1)) if len(log_z) > 1 else float("nan"),
            "pareto_k": mean("pareto_k"),
            "skipped_steps": mean("skipped_steps", rs),
            "seconds": mean("seconds", rs),
        }
        for key in ("within_0.1_sd", ROBUST):
            if any(isinstance(r.get(key), (int, float)) for r in ok):
                summary[key] = mean(key)
        out.append(summary)
    return out


def fmt(v, digits=3):
    return "–" if isinstance(v, float) and not math.isfinite(v) else f"{v:.{digits}f}"


def markdown_table(summary: list[dict], title: str, zero_guess: dict | None = None) -> str:
    """The per-configuration table; with ``zero_guess`` (:func:`zero_guess_scores`) a last row with the scores
    of the guess "every coefficient is 0"."""
    ref = any("within_0.1_sd" in s for s in summary)
    robust = any(ROBUST in s for s in summary)
    head = "| configuration | diverged | ELBO (sd over seeds) | IS log Z ± SE | log Z sd over seeds | Pareto k | skipped steps | wall s |"
    head += " mean within 0.1 sd of the reference |" if ref else ""
    head += " median within 0.1 IQR/1.349 |" if robust else ""
    lines = [f"## {title}", "", head, "|" + "---|" * (head.count("|") - 1)]
    for s in summary:
        line = (
            f"| {s['config']} | {s['diverged']}/{s['runs']} | {fmt(s['elbo'], 2)} ({fmt(s['elbo_sd'], 2)}) | "
            f"{fmt(s['log_z'], 2)} ± {fmt(s['log_z_se'], 2)} | {fmt(s['log_z_sd'], 2)} | {fmt(s['pareto_k'], 2)} | "
            f"{fmt(s['skipped_steps'], 1)} | {fmt(s['seconds'], 1)} |"
        )
        if ref:
            line += f" {fmt(s.get('within_0.1_sd', float('nan')), 3)} |"
        if robust:
            line += f" {fmt(s.get(ROBUST, float('nan')), 3)} |"
        lines.append(line)
    if zero_guess and ref:
        line = "| every coefficient 0 (no flow) |" + " – |" * 7
        line += f" {fmt(zero_guess['within_0.1_sd'], 3)} |"
        if robust:
            line += f" {fmt(zero_guess.get(ROBUST, float('nan')), 3)} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], path: Path, keys: list[str]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def plot_curves(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["config"] for r in rows))
    ncol = min(4, len(names))
    nrow = math.ceil(len(names) / ncol)
    fig, axes = plt.subplots(
        nrow, ncol, figsize=(max(3.6 * ncol, 5.0), 2.6 * nrow + 0.6), squeeze=False, sharey=True, layout="constrained"
    )
    finite = [e for r in rows for _, e in r["curve"] if math.isfinite(e)]
    lo, hi = np.percentile(finite, [10, 100]) if finite else (0, 1)
    for ax, name in zip(axes.flat, names, strict=False):
        for r in rows:
            if r["config"] == name and r["curve"]:
                s, e = zip(*r["curve"], strict=True)
                ax.plot(s, e, lw=0.8, color="C3" if r["diverged"] else "C0", alpha=0.7)
        ax.set_title(name, fontsize=8)
        ax.set_ylim(lo - 0.1 * (hi - lo + 1e-9), hi + 0.05 * (hi - lo + 1e-9))
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    fig.supxlabel("step")
    fig.supylabel("batch ELBO (red: diverged run)")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_marginals(rows: list[dict], reference: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(reference["plot"])
    fig, axes = plt.subplots(1, k, figsize=(3.6 * k, 3), squeeze=False)
    first = {}
    for r in rows:
        if "plot_draws" in r and r["config"] not in first:
            first[r["config"]] = r["plot_draws"]
    for j, ax in enumerate(axes[0]):
        ref = reference["draws"][:, j]
        bins = np.linspace(*np.percentile(ref, [0.5, 99.5]), 40)
        ax.hist(ref, bins=bins, density=True, color="0.7", label="NUTS")
        for i, (name, d) in enumerate(first.items()):
            ax.hist(d[:, j], bins=bins, density=True, histtype="step", lw=1, color=f"C{i % 10}", label=name)
        ax.set_title(f"coordinate {int(reference['plot'][j])}", fontsize=9)
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_study(
    target_spec: dict,
    out,
    settings: list[dict],
    seeds: list[int],
    flow_options: dict,
    train: TrainConfig,
    device: str = "auto",
    dtype: str = "float32",
    eval_samples: int = 10_000,
    reference_dir=None,
    progress: bool = True,
) -> list[dict]:
    """Run every setting from every seed; write runs.csv, table.csv, table.md, elbo_curves.png (and
    marginals.png with a reference) into ``out``; return the per-configuration summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    study = {
        "target": target_spec,
        "settings": settings,
        "seeds": list(seeds),
        "flow": flow_options,
        "train": asdict(train),
        "device": device,
        "dtype": dtype,
        "eval_samples": eval_samples,
    }
    write_json_atomic(study, out / "study.json")
    reference = None
    if reference_dir is not None:
        target = make_target(target_spec["name"], **target_spec.get("params", {}))
        reference = reference_stats(target.to(resolve_device(device), torch.float64), reference_dir)
    rows = []
    for setting in settings:
        for seed in seeds:
            row = run_one(
                target_spec, setting, seed, flow_options, train, device, dtype, eval_samples, reference=reference
            )
            rows.append(row)
            if progress:
                status = (
                    f"DIVERGED ({row['reason'][:60]})"
                    if row["diverged"]
                    else f"ELBO {row['elbo']:.3f}, log Z {row['log_z']:.3f} ± {row['log_z_se']:.3f}, k {row['pareto_k']:.2f}"
                )
                print(f"  {row['config']:<44} seed {seed}: {status}  [{row['seconds']:.1f} s]", flush=True)
    coords = {run_key(r): r["coord_mean"] for r in rows if "coord_mean" in r}
    coords |= {run_key(r) + "#median": r["coord_median"] for r in rows if "coord_median" in r}
    np.savez_compressed(out / "coordinates.npz", **coords)
    zero_guess = zero_guess_scores(reference) if reference is not None else None
    summary = write_study_tables(rows, out, target_spec, seeds, zero_guess=zero_guess)
    plot_curves(rows, out / "elbo_curves.png")
    if reference is not None:
        plot_marginals(rows, reference, out / "marginals.png")
    return summary


def write_study_tables(rows: list[dict], out: Path, target_spec: dict, seeds, zero_guess: dict | None) -> list[dict]:
    """runs.csv, table.csv and table.md of a study; returns the per-configuration summary. ``zero_guess``: for
    runs scored against a reference, its :func:`zero_guess_scores` (the last row of table.md); else None."""
    summary = aggregate(rows)
    if not summary:
        raise ValueError(f"no configuration could run: {rows[0]['reason']}")
    keys = [
        "config",
        "clamp",
        "loft",
        "base",
        "estimator",
        "spline",
        "hierarchical",
        "seed",
        "diverged",
        "unsupported",
        "reason",
        "elbo",
        "elbo_se",
        "log_z",
        "log_z_se",
        "ess",
        "pareto_k",
        "skipped_steps",
        "train_seconds",
        "seconds",
    ] + (["within_0.1_sd"] if zero_guess is not None else [])
    keys += [ROBUST] if any(ROBUST in r for r in rows) else []
    write_csv(rows, out / "runs.csv", keys)
    write_csv(summary, out / "table.csv", list(summary[0]))
    title = f"Stability study: {target_spec['name']} {json.dumps(target_spec.get('params', {}))}, seeds {seeds}"
    (out / "table.md").write_text(markdown_table(summary, title, zero_guess))
    return summary
