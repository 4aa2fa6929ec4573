"""Reference-posterior benchmark: flowvi as a user runs it against NumPyro NUTS, on posteriors with references.

    PYTHONPATH=src python benchmarks/posteriors.py [--only NAME,NAME] [--quick] [--json PATH]
        [--fit-args "--steps 500"] [--fit-timeout S] [--skip-nuts] [--skip-logz]

For every posterior (references in benchmarks/posteriors/references/, made by make_references.py):

* flowvi: ``python -m flowvi fit NAME --out DIR`` with the defaults of the day (plus ``--fit-args``); when
  summary.json carries a ``verdict`` that is not trustworthy and ``flowvi refine`` exists, ``python -m flowvi
  refine DIR`` (a mixture of flows where the fit missed modes; else independence MH, then NeuTra-HMC if needed).
  The final draws (refined draws when written, else samples.npy) are mapped to the reference's parameters by the
  target's ``constrain``; IS log Z and k-hat are the mixture's when refine built one.
* NumPyro NUTS (``--nuts-chains`` x (``--nuts-warmup`` + ``--nuts-draws``), chains one after another),
  with divergences and the largest rank-normalized split R-hat (ArviZ, Vehtari et al. 2021).
* where the reference has an exact log Z: pocoMC (Karamanis et al. 2022) with prior ``N(0, s^2 I)`` and
  likelihood ``p / prior``, and flowvi's tempered SMC (``python -m flowvi baseline smc``).

Scores: the share of parameters whose mean is within 0.1 reference sd of the reference mean, the share whose
sd ratio is in [0.9, 1.1], IS log Z against the exact value, wall time (process start to draws).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE / "posteriors"))

REFS = HERE / "posteriors" / "references"
SUITE = [
    "kidiq-kidscore_momhsiq",
    "sblrc-blr",
    "mesquite-logmesquite_logvash",
    "arK-arK",
    "arma-arma11",
    "garch-garch11",
    "eight_schools-eight_schools_noncentered",
    "eight_schools-eight_schools_centered",
    "gp_pois_regr-gp_pois_regr",
    "low_dim_gauss_mix-low_dim_gauss_mix",
    "funnel",
    "gauss_mix_separated",
    "stochastic_volatility",
    "hierarchical_logistic",
]
QUICK = ["kidiq-kidscore_momhsiq", "sblrc-blr", "gauss_mix_separated"]


@dataclass
class Options:
    fit_args: str = ""
    fit_timeout: float = 1800.0
    nuts_chains: int = 4
    nuts_warmup: int = 1000
    nuts_draws: int = 1000
    smc_args: str = "--ref-scale 5"
    pocomc_scale: float = 5.0
    pocomc_effective: int = 512
    pocomc_total: int = 4096
    skip_nuts: bool = False
    skip_logz: bool = False
    workdir: str = ""
    threads: int = 1


def load_reference(name: str) -> dict:
    path = REFS / f"{name}.json"
    if not path.exists():
        raise SystemExit(f"no reference for {name!r}: {path} does not exist (see make_references.py)")
    return json.loads(path.read_text())


def score(draws: np.ndarray, ref: dict) -> dict:
    """Shares of means within 0.1 reference sd and of sd ratios within [0.9, 1.1]; draws ``(n, k)`` in the
    reference's parameter space."""
    mean, sd = np.asarray(ref["mean"]), np.asarray(ref["sd"])
    draws = np.asarray(draws, dtype=np.float64)
    finite = np.isfinite(draws).all(axis=1)
    if finite.sum() < 2:
        return {"means_ok": 0.0, "sds_ok": 0.0, "max_mean_err_sd": math.inf, "sd_ratio_range": [math.nan] * 2}
    draws = draws[finite]
    z = np.abs(draws.mean(0) - mean) / sd
    ratio = draws.std(0, ddof=1) / sd
    return {
        "means_ok": float(np.mean(z <= 0.1)),
        "sds_ok": float(np.mean((ratio >= 0.9) & (ratio <= 1.1))),
        "max_mean_err_sd": float(z.max()),
        "sd_ratio_range": [float(ratio.min()), float(ratio.max())],
        "nonfinite_draws": int((~finite).sum()),
    }


def to_reference_space(name: str, x: np.ndarray) -> np.ndarray:
    """Flow draws (unconstrained coordinates) as the reference's parameters."""
    import torch

    from flowvi.targets import make_target

    target = make_target(name).double()
    if not hasattr(target, "constrain"):  # funnel: the coordinates are the parameters
        return np.asarray(x, dtype=np.float64)
    with torch.no_grad():
        return target.constrain(torch.as_tensor(np.asarray(x), dtype=torch.float64)).numpy()


def trustworthy(verdict) -> bool | None:
    """The verdict of summary.json as a bool (None when there is none): a string starting 'trustworthy' or
    'refined', or a dict with a 'trustworthy' entry."""
    if verdict is None:
        return None
    if isinstance(verdict, dict):
        return bool(verdict.get("trustworthy"))
    text = str(verdict).strip().lower()
    return text.startswith("trustworthy") or text.startswith("refined")


def verdict_consistent(verdict, scores: dict, share: float = 0.95) -> bool | None:
    """False when the verdict says trustworthy but the draws miss the accuracy criterion (>= ``share`` of means
    within 0.1 sd and of sd ratios in [0.9, 1.1]); None without a verdict."""
    trusted = trustworthy(verdict)
    if trusted is None:
        return None
    return not (trusted and (scores["means_ok"] < share or scores["sds_ok"] < share))


def final_draws(run_dir: Path) -> Path:
    """The refined draws of ``flowvi refine`` when present (the newest .npy naming refine/neutra/imh), else
    samples.npy."""
    refined = [p for p in run_dir.glob("*.npy") if any(k in p.name for k in ("refine", "neutra", "imh"))]
    if refined:
        return max(refined, key=lambda p: p.stat().st_mtime)
    return run_dir / "samples.npy"


def _cli(args: list[str], timeout: float) -> tuple[int, float, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("OMP_NUM_THREADS", os.environ.get("FLOWVI_BENCH_THREADS", ""))
    if not env["OMP_NUM_THREADS"]:
        del env["OMP_NUM_THREADS"]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "flowvi", *args], capture_output=True, text=True, env=env, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return 124, time.perf_counter() - t0, f"timed out after {timeout:.0f} s"
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    errors = [ln for ln in lines if "error" in ln.lower() and "warning" not in ln.lower()]
    return proc.returncode, time.perf_counter() - t0, errors[-1] if errors else " | ".join(lines[-3:])


def set_threads(n: int):
    """The same thread count for flowvi (its subprocesses and torch here), pocoMC and NumPyro (XLA); before
    JAX is imported."""
    if n <= 0:
        return
    import torch

    os.environ["FLOWVI_BENCH_THREADS"] = str(n)
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads={n}"
    )
    torch.set_num_threads(n)


def has_refine() -> bool:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run([sys.executable, "-m", "flowvi", "refine", "--help"], capture_output=True, env=env)
    return proc.returncode == 0


def run_flowvi(name: str, ref: dict, opts: Options, refine_ok: bool) -> dict:
    """``flowvi fit`` (then ``flowvi refine`` when the verdict asks for it), scored."""
    out = Path(opts.workdir) / f"flowvi-{name}"
    rc, seconds, tail = _cli(
        ["fit", name, "--out", str(out), "--force", "--quiet", *shlex.split(opts.fit_args)], opts.fit_timeout
    )
    res = {"seconds": round(seconds, 1), "fit_rc": rc}
    if rc != 0 or not (out / "summary.json").exists():
        return {**res, "error": tail}
    summary = json.loads((out / "summary.json").read_text())
    res.update(
        log_z=summary.get("log_z"),
        log_z_se=summary.get("log_z_se"),
        pareto_k=summary.get("pareto_k"),
        verdict=summary.get("verdict"),
        fit_seconds=round(seconds, 1),
    )
    if trustworthy(res["verdict"]) is False and refine_ok:
        rc, t_ref, tail = _cli(["refine", str(out)], opts.fit_timeout)
        res.update(refine_rc=rc, refine_seconds=round(t_ref, 1), seconds=round(seconds + t_ref, 1))
        if rc != 0:
            res["refine_error"] = tail
        if (out / "refine.json").exists():
            record = json.loads((out / "refine.json").read_text())
            res.update(verdict_after_refine=record.get("verdict"), refine_method=record.get("method"))
            if record.get("log_z") is not None:  # refine's mode mixture: its IS log Z and k-hat replace the flow's
                res.update(fit_log_z=res["log_z"], fit_pareto_k=res["pareto_k"])
                res.update(log_z=record["log_z"], log_z_se=record.get("log_z_se"), pareto_k=record.get("pareto_k"))
    draws_path = final_draws(out)
    res["draws_file"] = draws_path.name
    draws = np.load(draws_path)
    res.update(score(to_reference_space(name, draws.reshape(-1, draws.shape[-1])), ref))
    res["verdict_consistent"] = verdict_consistent(res.get("verdict_after_refine", res["verdict"]), res)
    if ref.get("log_z") is not None and res["log_z"] is not None:
        res["log_z_error"] = res["log_z"] - ref["log_z"]
    return res


def run_nuts(name: str, ref: dict, opts: Options, seed: int = 0) -> dict:
    """NumPyro NUTS on the same machine (compilation included in the time)."""
    import arviz as az
    import numpyro_models

    r = numpyro_models.run_nuts(name, opts.nuts_chains, opts.nuts_warmup, opts.nuts_draws, seed=seed)
    _, draws = numpyro_models.reported_draws(name, r["samples"], ref["params"])  # (chains, n, k)
    rhat = [float(az.rhat(draws[:, :, j], method="rank")) for j in range(draws.shape[2])]
    res = {"seconds": round(r["seconds"], 1), "divergences": r["divergences"], "max_rank_rhat": max(rhat)}
    return {**res, **score(draws.reshape(-1, draws.shape[2]), ref)}


def run_pocomc(name: str, opts: Options, seed: int = 0) -> dict:
    """pocoMC's log Z of the target: prior N(0, s^2 I), log-likelihood log p(x) - log prior(x)."""
    import pocomc
    import torch
    from scipy import stats

    from flowvi.targets import make_target

    target = make_target(name).double()
    s, d = opts.pocomc_scale, target.dim

    def log_like(x):
        with torch.no_grad():
            lp = target.log_prob(torch.as_tensor(np.atleast_2d(x), dtype=torch.float64)).numpy()
        return lp - stats.norm(0, s).logpdf(np.atleast_2d(x)).sum(-1)

    t0 = time.perf_counter()
    prior = pocomc.Prior([stats.norm(0, s)] * d)
    sampler = pocomc.Sampler(
        prior, log_like, n_dim=d, vectorize=True, n_effective=opts.pocomc_effective, random_state=seed
    )
    sampler.run(n_total=opts.pocomc_total, n_evidence=opts.pocomc_total, progress=False)
    log_z, log_z_err = sampler.evidence()
    return {"log_z": float(log_z), "log_z_se": float(log_z_err), "seconds": round(time.perf_counter() - t0, 1)}


def run_smc(name: str, opts: Options) -> dict:
    out = Path(opts.workdir) / f"smc-{name}"
    rc, seconds, tail = _cli(
        ["baseline", "smc", name, "--out", str(out), "--force", "--quiet", *shlex.split(opts.smc_args)],
        opts.fit_timeout,
    )
    if rc != 0:
        return {"seconds": round(seconds, 1), "error": tail}
    summary = json.loads((out / "summary.json").read_text())
    return {"log_z": summary["log_z"], "log_z_sd": summary.get("log_z_sd"), "seconds": round(seconds, 1)}


def run_one(name: str, opts: Options, refine_ok: bool) -> dict:
    from flowvi.targets import make_target

    ref = load_reference(name)
    row = {"name": name, "dim": make_target(name).dim, "ref_log_z": ref.get("log_z")}
    row["flowvi"] = run_flowvi(name, ref, opts, refine_ok)
    if not opts.skip_nuts:
        row["nuts"] = run_nuts(name, ref, opts)
    if ref.get("log_z") is not None and not opts.skip_logz:
        row["pocomc"] = run_pocomc(name, opts)
        row["smc"] = run_smc(name, opts)
    return row


def _pct(r: dict, key: str) -> str:
    return f"{100 * r[key]:.0f}" if key in r else "–"


def _num(v, fmt=".2f") -> str:
    return "–" if v is None else format(v, fmt)


def table(rows: list[dict]) -> str:
    head = (
        "| posterior | d | flowvi means / sds ok % | k̂ | verdict | flowvi s "
        "| NUTS means / sds ok % | div | R-hat | NUTS s |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        f, n = r["flowvi"], r.get("nuts", {})
        verdict = f.get("error") or f.get("verdict_after_refine") or f.get("verdict") or "–"
        verdict = str(verdict).replace("flowvi fit: error: ", "error: ").replace("|", "/")
        lines.append(
            f"| {r['name']} | {r['dim']} | {_pct(f, 'means_ok')} / {_pct(f, 'sds_ok')} | {_num(f.get('pareto_k'))} "
            f"| {verdict[:70]} | {f['seconds']:.0f} | {_pct(n, 'means_ok')} / {_pct(n, 'sds_ok')} "
            f"| {n.get('divergences', '–')} | {_num(n.get('max_rank_rhat'), '.3f')} | {_num(n.get('seconds'), '.0f')} |"
        )
    out = head + "\n".join(lines)
    wrong = [r["name"] for r in rows if r["flowvi"].get("verdict_consistent") is False]
    if wrong:
        out += f"\n\nverdict 'trustworthy' on draws that miss the criterion: {', '.join(wrong)}"
    logz = [r for r in rows if r["ref_log_z"] is not None]
    if logz:
        out += "\n\n| posterior | exact log Z | flowvi IS log Z | s | SMC log Z | s | pocoMC log Z | s |\n"
        out += "|---|---|---|---|---|---|---|---|\n"
        for r in logz:
            f, s, p = r["flowvi"], r.get("smc", {}), r.get("pocomc", {})
            out += (
                f"| {r['name']} | {r['ref_log_z']:.3f} | {_num(f.get('log_z'), '.3f')} | {f['seconds']:.0f} "
                f"| {_num(s.get('log_z'), '.3f')} | {_num(s.get('seconds'), '.0f')} "
                f"| {_num(p.get('log_z'), '.3f')} | {_num(p.get('seconds'), '.0f')} |\n"
            )
    return out


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="comma-separated posterior names (default: the whole suite)")
    ap.add_argument("--quick", action="store_true", help="three small posteriors, short runs (the harness test)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--fit-args", default="", help="extra options of 'flowvi fit', e.g. '--steps 500'")
    ap.add_argument("--fit-timeout", type=float, default=1800.0, help="seconds per flowvi command")
    ap.add_argument("--nuts-chains", type=int, default=4)
    ap.add_argument("--nuts-warmup", type=int, default=1000)
    ap.add_argument("--nuts-draws", type=int, default=1000)
    ap.add_argument("--skip-nuts", action="store_true")
    ap.add_argument("--skip-logz", action="store_true", help="no pocoMC and SMC runs")
    ap.add_argument("--workdir", help="run directories (default: a temporary directory)")
    ap.add_argument(
        "--threads", type=int, default=0, help="CPU threads of every method (OMP_NUM_THREADS, torch, XLA); 0: default"
    )
    return ap.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    names = args.only.split(",") if args.only else (QUICK if args.quick else SUITE)
    unknown = [n for n in names if not (REFS / f"{n}.json").exists()]
    if unknown:
        raise SystemExit(f"no reference posterior named {', '.join(unknown)}; known: {', '.join(SUITE)}")
    opts = Options(
        fit_args=args.fit_args,
        fit_timeout=args.fit_timeout,
        nuts_chains=args.nuts_chains,
        nuts_warmup=args.nuts_warmup,
        nuts_draws=args.nuts_draws,
        skip_nuts=args.skip_nuts,
        skip_logz=args.skip_logz,
    )
    if args.quick:  # short runs: the harness end to end in well under a minute
        opts.fit_args = opts.fit_args or "--steps 150 --layers 2 --hidden 32 --eval-samples 4000 --n-samples 4000"
        opts.nuts_chains, opts.nuts_warmup, opts.nuts_draws = 2, 200, 200
        opts.fit_timeout = min(opts.fit_timeout, 300.0)
        opts.smc_args += " --particles 256 --moves 2"
        opts.pocomc_effective, opts.pocomc_total = 128, 512
    set_threads(args.threads)
    opts.threads = args.threads
    refine_ok = has_refine()
    record = {
        "command": "python benchmarks/posteriors.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "flowvi_refine_available": refine_ok,
        "options": asdict(opts) | {"workdir": None},
        "results": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        opts.workdir = args.workdir or tmp
        for name in names:
            t0 = time.perf_counter()
            record["results"].append(run_one(name, opts, refine_ok))
            print(f"  {name}: done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            if args.json:  # after every posterior: an interrupted run keeps what it measured
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(json.dumps(record, indent=1, default=float) + "\n")
    print(table(record["results"]))
    return record["results"]


if __name__ == "__main__":
    main()
