"""flowvi beside the seeds' authors' own code, on the same problems and the same machine (issue 24).

Parts (``--parts``, each writes ``<out>/authors_<part>.json`` and prints a table):

* ``lattice``: Schwinger model (beta = 2, kappa = 0.276) and U(1) (beta = 2) at ``L`` against neumc (Bialas,
  Korcyl, Stebel, arXiv 2308.13294; ``../shared/ext/neumc`` or ``FLOWVI_NEUMC``). Both sides train the same
  flow (neumc's ``2x1`` circular-spline flow; flowvi's ``NEUMC_ARCH``, resized by ``--lattice-layers`` and
  ``--lattice-channels``) with Adam, no clipping, the same batch and learning rate; neumc steps with its own
  ``train_step`` and losses (``REINFORCE_loss``, ``rt_loss``), flowvi with its estimators (eager). Per run: median
  time per step, peak resident memory above the built model (``ru_maxrss``), and the training time (clock
  stopped while evaluating; ``--lattice-clock cpu``: process CPU time) until the normalized ESS of ``--eval-n``
  fresh draws reaches ``--ess-target``, and when a 5-evaluation mean first reaches a few lower ESS levels.
* ``path``: path gradients against unified-path-gradients' ``fastPathQP`` (Vaitl et al., arXiv 2403.15881;
  an extracted checkout given by ``--upg-dir`` or ``FLOWVI_UPG``) on their Gaussian mixture (6-d, 64 modes at
  +-1, covariance 0.5 I): their RealNVP (``NormAltFCS``) against flowvi's Real NVP of the same depth and width;
  time per step, ESS after equal steps and after equal training time.
* ``realnvp``: stable Real NVP against Andrade's code (arXiv 2402.16408; ``--andrade-dir`` or
  ``FLOWVI_ANDRADE``) on his conjugate linear regression (exact evidence): his ``proposed`` method run by his
  ``core.train`` against flowvi's defaults at his settings (64 couplings of width 100, lr 1e-4, 256 draws,
  float64); ELBO and IS log Z of the running model after equal wall time, and flowvi's time to his final ELBO.
* ``ablation``: the paper's phenomenon on the synthetic horseshoe logistic regression: standard Real NVP at the
  paper's settings (no clamp, no LOFT, no gradient clipping) against the stabilized one, over ``--seeds``;
  runs that diverge (see ``diverged``), ELBO and IS log Z. With ``--andrade-dir`` also his ``standard`` and
  ``proposed`` methods on the same data. ``--vi-lr`` and ``--couplings`` move it off the paper's settings.
* ``evidence``: flowvi's flows (Real NVP defaults, spline, spline + hierarchical couplings, FAB) against flowvi's
  tempered SMC on ``horseshoe_nci60`` (d = 4002) at equal process CPU time: IS log Z, its SE and PSIS k-hat of
  the flows, SMC's log Z.

Each run is a fresh subprocess (peak memory per run; the authors' code may change global torch settings).
All runs use ``--threads`` CPU threads. Times are wall-clock unless a part says process CPU time (one thread:
robust to other jobs' load); the numbers in benchmarks/RESULTS.md say which machine.

    PYTHONPATH=src python benchmarks/authors.py --quick                 # seconds; CI runs this
    PYTHONPATH=src python benchmarks/authors.py --parts lattice --upg-dir ... --andrade-dir ...
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("lattice", "path", "realnvp", "ablation", "evidence")


# --- plumbing --------------------------------------------------------------------------------------------------


def neumc_dir() -> Path:
    return Path(os.environ.get("FLOWVI_NEUMC") or ROOT.parent / "shared" / "ext" / "neumc")


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


#: worker kinds run in this process under --quick (no per-run memory figure is needed there)
IN_PROCESS = set()


def run_worker(kind: str, cfg: dict, timeout: float, cwd=None, paths=()) -> dict:
    """Run ``kind`` in a fresh interpreter; its last stdout line is the JSON result."""
    cfg = {**cfg, "load1": os.getloadavg()[0]}  # the machine's 1-minute load average as the run starts
    if kind in IN_PROCESS:
        return json.loads(json.dumps(WORKERS[kind](cfg)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *map(str, paths)])}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, json.dumps(cfg)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**cfg, "error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode or not lines:
        return {**cfg, "error": (p.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    return json.loads(lines[-1][len("RESULT ") :])


def race(step, evaluate, *, budget_s, max_steps, eval_every, warmup=2, goal=None, clock="wall"):
    """Train with ``step()`` (returns False for a skipped, non-finite step) until ``max_steps`` or ``budget_s``
    seconds of training; every ``eval_every`` steps call ``evaluate()`` with the clock stopped. ``goal``
    ``(key, value)``: also stop, recording the training time, once ``evaluate()[key] >= value``. ``clock``:
    ``wall`` or ``cpu`` (process CPU time: with one thread, robust to other jobs' load) times the budget, the
    steps and the goal; the other is recorded beside it (``train_wall_s``, ``train_cpu_s``)."""
    times, curve, train, other, skipped, reached = [], [], 0.0, 0.0, 0, None
    now, then = (time.process_time, time.perf_counter) if clock == "cpu" else (time.perf_counter, time.process_time)
    n = 0
    while n < max_steps and train < budget_s:
        t0, u0 = now(), then()
        ok = step()
        dt = now() - t0
        other += then() - u0
        times.append(dt)
        train += dt
        skipped += not ok
        n += 1
        if n % eval_every == 0 or n == max_steps:
            m = evaluate()
            curve.append({"steps": n, "train_s": train, **m})
            if goal is not None and m.get(goal[0], -math.inf) >= goal[1]:
                reached = train
                break
    if not curve or curve[-1]["steps"] != n:  # the budget ended between evaluations
        curve.append({"steps": n, "train_s": train, **evaluate()})
    return {
        "clock": clock,
        "step_s": statistics.median(times[warmup:] or times),
        "steps": n,
        "train_s": train,
        "train_cpu_s" if clock == "wall" else "train_wall_s": other,
        "skipped": skipped,
        "reached_s": reached,
        "curve": curve,
    }


def log_weight_stats(log_w) -> dict:
    """ELBO, IS log Z and normalized ESS of log weights (non-finite ones count as zero weight)."""
    import torch

    lw = torch.as_tensor(log_w, dtype=torch.float64).flatten()
    finite = lw[torch.isfinite(lw)]
    n = lw.numel()
    if finite.numel() == 0:
        return {"elbo": -math.inf, "log_z": -math.inf, "ess": 0.0, "nonfinite": n}
    log_z = float(torch.logsumexp(finite, 0) - math.log(n))
    ess = float(torch.exp(2 * torch.logsumexp(finite, 0) - torch.logsumexp(2 * finite, 0)) / n)
    return {"elbo": float(finite.mean()), "log_z": log_z, "ess": ess, "nonfinite": n - finite.numel()}


def set_threads(cfg):
    import torch

    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg.get("seed", 0))
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # its first use imports torch._dynamo (seconds)


# --- part lattice: flowvi and neumc ----------------------------------------------------------------------------


def _neumc_model(cfg):
    from neumc.nf.u1_model_asm import assemble_model_from_dict

    arch = {
        "lattice_shape": (cfg["L"], cfg["L"]),
        "masking": "2x1",
        "coupling": "cs",
        "n_layers": cfg["layers"],
        "n_knots": 9,
        "float_dtype": "float32",
        "nn": {"hidden_channels": [cfg["channels"]] * 2, "kernel_size": 3, "dilation": [1, 2, 3]},
    }
    return assemble_model_from_dict(arch, device="cpu")


def _neumc_side(cfg):
    """neumc's model, action, own training step and a sampler of (log p - log q)."""
    import torch
    from neumc.nf.flow import apply_layers
    from neumc.physics.schwinger import QEDAction
    from neumc.physics.u1 import U1GaugeAction
    from neumc.training import loss as neumc_loss
    from neumc.training.train import train_step

    model = _neumc_model(cfg)
    action = QEDAction(2.0, 0.276) if cfg["target"] == "schwinger" else U1GaugeAction(2.0)
    loss_fn = {"reinforce": neumc_loss.REINFORCE_loss, "reparam": neumc_loss.rt_loss}[cfg["estimator"]]
    optimizer = torch.optim.Adam(model["layers"].parameters(), lr=cfg["lr"])

    def step():
        out = train_step(
            model=model, action=action, loss_fn=loss_fn, batch_size=cfg["batch"], optimizer=optimizer, use_amp=False
        )
        return math.isfinite(out["dkl"])

    @torch.no_grad()
    def log_w(n):
        z = model["prior"].sample_n(n)
        x, log_q = apply_layers(model["layers"], z, model["prior"].log_prob(z))
        return -action(x) - log_q

    return model["layers"], step, log_w


def _flowvi_side(cfg):
    import torch

    from flowvi.flows.gauge import NEUMC_ARCH, u1_gauge_flow
    from flowvi.objectives.estimators import ESTIMATORS
    from flowvi.targets import make_target

    target = make_target(
        cfg["target"], L=cfg["L"], beta=2.0, **({"kappa": 0.276} if cfg["target"] == "schwinger" else {})
    )
    flow = u1_gauge_flow(cfg["L"], **{**NEUMC_ARCH, "layers": cfg["layers"], "channels": cfg["channels"]})
    estimator = ESTIMATORS[cfg["estimator"]]
    optimizer = torch.optim.Adam(flow.parameters(), lr=cfg["lr"])

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = estimator(flow, target, cfg["batch"]).loss
        if not torch.isfinite(loss):
            return False
        loss.backward()
        optimizer.step()
        return True

    @torch.no_grad()
    def log_w(n):
        x, log_q = flow.sample_and_log_prob(n)
        return target.log_prob(x) - log_q

    return flow, step, log_w


def lattice_worker(cfg):
    set_threads(cfg)
    sys.path.insert(0, str(neumc_dir()))
    module, step, log_w = (_neumc_side if cfg["side"] == "neumc" else _flowvi_side)(cfg)
    base = rss_mib()
    out = race(
        step,
        lambda: {"ess": log_weight_stats(log_w(cfg["eval_n"]))["ess"]},
        budget_s=cfg["budget_s"],
        max_steps=cfg["max_steps"],
        eval_every=cfg["eval_every"],
        goal=("ess", cfg["ess_target"]),
        clock=cfg.get("clock", "wall"),
    )
    out["peak_mib"] = peak_rss_mib() - base
    out["params"] = sum(p.numel() for p in module.parameters())
    return {**cfg, **out}


RUNS_LATTICE = [
    ("flowvi", "reparam"),
    ("flowvi", "path"),
    ("flowvi", "reinforce"),
    ("neumc", "reinforce"),
    ("neumc", "reparam"),
]


def part_lattice(args):
    rows = []
    runs = [tuple(r.split(":")) for r in args.lattice_runs] if args.lattice_runs else RUNS_LATTICE
    for target in args.lattice_targets:
        for side, estimator in runs:
            cfg = {
                "side": side, "estimator": estimator, "target": target, "L": args.L, "layers": args.lattice_layers,
                "channels": args.lattice_channels, "batch": args.lattice_batch, "lr": args.lattice_lr,
                "budget_s": args.lattice_seconds, "max_steps": args.lattice_max_steps, "eval_every": args.eval_every,
                "eval_n": args.eval_n, "ess_target": args.ess_target, "threads": args.threads, "seed": 0,
                "clock": args.lattice_clock,
            }  # fmt: skip
            slack = 10 if args.lattice_clock == "cpu" else 4  # CPU seconds pass slower than wall ones under load
            rows.append(run_worker("lattice", cfg, timeout=args.lattice_seconds * slack + 600))
            print(_lattice_line(rows[-1]), flush=True)
    return {"rows": rows, "summary": _lattice_summary(rows)}


def _lattice_line(r):
    if "error" in r:
        return f"{r['target']:9s} {r['side']:6s} {r['estimator']:9s} error: {r['error']}"
    reached = f"{r['reached_s']:7.1f}" if r["reached_s"] is not None else "     --"
    ess = r["curve"][-1]["ess"] if r["curve"] else float("nan")
    return (
        f"{r['target']:9s} {r['side']:6s} {r['estimator']:9s} {r['params']:8d} {1e3 * r['step_s']:9.1f} "
        f"{r['peak_mib']:8.0f} {r['steps']:6d} {ess:6.3f} {reached}"
    )


def _lattice_summary(rows):
    """Per target: flowvi's best time to the ESS target and step time over neumc-REINFORCE's."""
    out = {}
    for target in {r["target"] for r in rows}:
        ok = [r for r in rows if r["target"] == target and "error" not in r]
        ref = next((r for r in ok if r["side"] == "neumc" and r["estimator"] == "reinforce"), None)
        ours = [r for r in ok if r["side"] == "flowvi"]
        if ref is None or not ours:
            continue
        best = min(ours, key=lambda r: r["step_s"])
        reached = [r for r in ours if r["reached_s"] is not None]
        out[target] = {
            "step_ratio_best": best["step_s"] / ref["step_s"],
            "best_step_estimator": best["estimator"],
            "peak_ratio_best_step": best["peak_mib"] / max(ref["peak_mib"], 1e-9),
            "neumc_reinforce_reached_s": ref["reached_s"],
            "flowvi_best_reached_s": min((r["reached_s"] for r in reached), default=None),
        }
        if ref["reached_s"] and reached:
            out[target]["time_to_ess_ratio"] = out[target]["flowvi_best_reached_s"] / ref["reached_s"]
        elif reached:  # neumc-REINFORCE spent its whole budget short of the target: the ratio is at most this
            out[target]["time_to_ess_ratio_at_most"] = out[target]["flowvi_best_reached_s"] / ref["train_s"]
        out[target]["smoothed"] = _smoothed_race(ref, ours)
    return out


def first_passage(curve, level, window=5):
    """Training time at which the mean ESS of ``window`` consecutive evaluations first reaches ``level`` (one
    evaluation of a few hundred draws is noisy near the floor), or None."""
    for i in range(len(curve) - window + 1):
        if statistics.mean(c["ess"] for c in curve[i : i + window]) >= level:
            return curve[i + window - 1]["train_s"]
    return None


def _smoothed_race(ref, ours, levels=(0.01, 0.015, 0.02, 0.03)):
    """Per ESS level: neumc-REINFORCE's and flowvi's best first-passage times and their ratio."""
    out = {}
    for level in levels:
        theirs = first_passage(ref["curve"], level)
        mine = min((t for t in (first_passage(r["curve"], level) for r in ours) if t is not None), default=None)
        out[str(level)] = {"neumc_reinforce_s": theirs, "flowvi_best_s": mine}
        if mine is not None:  # neumc short of the level within its budget: the ratio is at most mine / budget
            out[str(level)]["ratio" if theirs else "ratio_at_most"] = mine / (theirs or ref["train_s"])
    return out


# --- part path: unified-path-gradients' fastPath on their Gaussian mixture ------------------------------------------


def _upg_flow(cfg, estimator):
    from argparse import Namespace

    from unified_path.models.realNVP import load_RealNVP

    ns = Namespace(
        dim=cfg["dim"], gradient_estimator=estimator, n_coupling_layers=cfg["couplings"], n_blocks=cfg["blocks"],
        hidden=cfg["hidden"],
    )  # fmt: skip
    return load_RealNVP(ns)


def gmm_worker(cfg):
    """One side on their MGM target: their fastPathQP on their RealNVP, or flowvi's path estimator on a Real NVP
    with as many couplings, hidden layers (blocks + 1) and width."""
    import torch

    set_threads(cfg)
    sys.path.insert(0, cfg["upg_dir"])
    from unified_path.action import MGM
    from unified_path.importsamp import estimate_reverse_ess
    from unified_path.loss import load_loss

    action = MGM(dim=cfg["dim"], device="cpu", clusters=2, cluster_loc=1.0, cluster_scale=0.5)
    if cfg["side"] == "upg":
        from argparse import Namespace

        flow = _upg_flow(cfg, cfg["estimator"])
        ns = Namespace(gradient_estimator=cfg["estimator"], lat_shape=[cfg["dim"]], batch_size=cfg["batch"])
        loss = load_loss(ns, flow, action, torch.device("cpu"))
        evaluate = lambda: {"ess": estimate_reverse_ess(flow, action, [cfg["dim"]], 1000, cfg["eval_n"] // 1000)}  # noqa: E731
        forward = loss
    else:
        flow, forward, evaluate = _flowvi_gmm(cfg, action)
    optimizer = torch.optim.Adam(flow.parameters(), lr=cfg["lr"])

    def step():
        flow.zero_grad()
        value = forward()[0]
        value.backward()
        optimizer.step()
        return bool(torch.isfinite(value))

    base = rss_mib()
    out = race(step, evaluate, budget_s=cfg["budget_s"], max_steps=cfg["max_steps"], eval_every=cfg["eval_every"])
    out["peak_mib"] = peak_rss_mib() - base
    out["params"] = sum(p.numel() for p in flow.parameters() if p.requires_grad)
    return {**cfg, **out}


def _flowvi_gmm(cfg, action):
    import torch

    from flowvi.flows.realnvp import realnvp
    from flowvi.objectives.estimators import ESTIMATORS
    from flowvi.targets.base import Target

    class Mixture(Target):  # their MGM as a flowvi target: the same density, evaluated by their code
        event_shape = (cfg["dim"],)

        def log_prob(self, x):
            return -action(x)

    target = Mixture()
    flow = realnvp(
        cfg["dim"],
        layers=cfg["couplings"],
        hidden=cfg["hidden"],
        depth=cfg["blocks"] + 1,
        activation="tanh",
        seed=cfg["seed"],
    )
    estimator = ESTIMATORS[cfg["estimator"]]

    @torch.no_grad()
    def evaluate():
        x, log_q = flow.sample_and_log_prob(cfg["eval_n"])
        return {"ess": log_weight_stats(target.log_prob(x) - log_q)["ess"]}

    return flow, lambda: (estimator(flow, target, cfg["batch"]).loss,), evaluate


def part_path(args):
    if not args.upg_dir:
        return {"skipped": "no unified-path-gradients checkout (--upg-dir or FLOWVI_UPG)"}
    rows = []
    common = {
        "dim": 6, "couplings": args.gmm_couplings, "blocks": args.gmm_blocks, "hidden": args.gmm_hidden,
        "batch": args.gmm_batch, "lr": args.gmm_lr, "eval_n": 4000, "threads": args.threads, "seed": 0,
        "upg_dir": str(args.upg_dir),
    }  # fmt: skip
    for side, estimator in (("upg", "fastPathQP"), ("flowvi", "path"), ("upg", "RepQP"), ("flowvi", "reparam")):
        for mode, budget, steps in (("steps", 1e9, args.gmm_steps), ("time", args.gmm_seconds, 10**9)):
            cfg = {**common, "side": side, "estimator": estimator, "mode": mode, "budget_s": budget, "max_steps": steps}
            cfg["eval_every"] = 10**9  # evaluated once, after the steps or the time budget
            rows.append(run_worker("gmm", cfg, timeout=(args.gmm_seconds + 60) * 4, paths=[args.upg_dir]))
            print(_gmm_line(rows[-1]), flush=True)
    return {"rows": rows}


def _gmm_line(r):
    if "error" in r:
        return f"{r['side']:6s} {r['estimator']:10s} {r['mode']:5s} error: {r['error']}"
    ess = r["curve"][-1]["ess"] if r["curve"] else float("nan")
    return f"{r['side']:6s} {r['estimator']:10s} {r['mode']:5s} {r['params']:8d} {1e3 * r['step_s']:8.1f} {r['steps']:6d} {ess:6.3f}"


# --- parts realnvp and ablation: Andrade's code and flowvi on his targets ---------------------------------------

ANDRADE_DATA = {  # his synthetic data sets: (data_type, target, n, rho, bias)
    "regression": ("synthetic_regression", "ConjugateLinearRegression", 100, 0.5, 0.0),
    "horseshoe": ("synthetic_logistic", "HorseshoePriorLogisticRegression", 100, 0.1, 1.0),
}


def _andrade_data(kind, d, fold):
    """His data set ``kind`` at dimension ``d``, fold ``fold``, made by his generators with his seed (as his
    ``syntheticData.generate_data`` does, without the other dimensions and folds); saved where he loads it."""
    import numpy as np
    import syntheticData

    data_type, _, n, rho, bias = ANDRADE_DATA[kind]
    rng = np.random.default_rng(293309)
    make = {
        "regression": syntheticData.get_sample_data_linear_regression,
        "horseshoe": syntheticData.get_sample_data_logistic_regression,
    }[kind]
    for _fold in range(fold + 1):  # fold k is the k-th draw after seeding
        X, y, beta, bias_, _gamma = make(rng, data_size=n, data_dim=d, rho=rho, bias=bias)
    for folder in ("synthetic_data", "all_results", "all_trained_models"):
        os.makedirs(folder, exist_ok=True)
    whole = {"X": X, "y": y, "true_beta": beta, "true_bias": bias_}
    np.save(f"synthetic_data/{data_type}_{n}n_{d}d_{rho}rho_{bias}bias_{fold}fold", whole)
    return X, y


class Clock:
    """Replaces ``tqdm`` in his training loop: times each iteration, evaluates every ``eval_every`` iterations
    with the clock stopped, and ends the loop after ``budget_s`` seconds of training."""

    def __init__(self, evaluate, eval_every, budget_s):
        self.evaluate, self.eval_every, self.budget_s = evaluate, eval_every, budget_s
        self.times, self.curve, self.train_s = [], [], 0.0

    def __call__(self, iterable):
        for it in iterable:
            t0 = time.perf_counter()
            yield it
            dt = time.perf_counter() - t0
            self.times.append(dt)
            self.train_s += dt
            n = len(self.times)
            if n % self.eval_every == 0:
                self.curve.append({"steps": n, "train_s": self.train_s, **self.evaluate()})
            if self.train_s >= self.budget_s:
                return


def andrade_worker(cfg):
    """His ``simple_init`` and ``core.train`` (his settings: Adam lr 1e-4, 256 draws, float64, his divergence
    ``reverse_kld_ws_debug``, non-finite draws filtered and steps skipped as in his code), timed by ``Clock``."""
    import torch

    sys.path.insert(0, cfg["andrade_dir"])
    set_threads(cfg)
    import normalizing_flows_core as core
    import run_experiments

    _andrade_data(cfg["data"], cfg["d"], cfg["fold"])
    sys.argv = sys.argv[:1]  # his argument parser reads the command line
    target, nfm, args = run_experiments.simple_init(
        ANDRADE_DATA[cfg["data"]][1], cfg["d"], "RealNVP_small", cfg["method"], nr_flows=cfg["couplings"],
        foldId=cfg["fold"], initialize=True,
    )  # fmt: skip
    torch.manual_seed(cfg["seed"])

    def evaluate():
        nfm.eval()
        with torch.no_grad():
            z, log_q = nfm.sample(cfg["eval_n"])
            ok = torch.isfinite(z).all(-1)  # his target asserts on NaN draws: a NaN draw weighs zero
            log_w = torch.full_like(log_q, -math.inf)
            if ok.any():
                log_w[ok] = nfm.p.log_prob(z[ok]) - log_q[ok]
            stats = log_weight_stats(log_w)
        nfm.train()
        return stats

    clock = Clock(evaluate, cfg["eval_every"], cfg["budget_s"])
    core.tqdm = clock
    steps = cfg["max_steps"]
    done, _ = core.train(
        nfm, steps, None, 10**9, learning_rate=cfg["lr"], record_stats=False, num_samples=cfg["batch"],
        divergence=args.divergence, annealing=False, redGradVarEst=args.redGradVarEst, cushion_t=args.loft_t,
        opt=args.opt, l2_strength=0.0, l2_clip_norm=None,
    )  # fmt: skip
    if not clock.curve or clock.curve[-1]["steps"] != len(clock.times):
        clock.curve.append({"steps": len(clock.times), "train_s": clock.train_s, **evaluate()})
    exact = getattr(target, "true_log_marginal", None)
    return {
        **cfg,
        "side": "andrade",
        "step_s": statistics.median(clock.times[2:] or clock.times),
        "steps": len(clock.times),
        "train_s": clock.train_s,
        "skipped": len(clock.times) - done,
        "curve": clock.curve,
        "exact_log_z": exact,
        "params": sum(p.numel() for p in nfm.parameters() if p.requires_grad),
        "his_default_lr": 10 ** (-args.lr_exp),
    }


class _Stop(Exception):
    pass


def _flowvi_vi_target(cfg):
    """flowvi's target on his data (when his checkout is given) or flowvi's own synthetic horseshoe."""
    from flowvi.targets import make_target

    if cfg.get("andrade_dir"):
        sys.path.insert(0, cfg["andrade_dir"])
        X, y = _andrade_data(cfg["data"], cfg["d"], cfg["fold"])
        if cfg["data"] == "horseshoe":
            from flowvi.targets.horseshoe import HorseshoeLogisticRegression

            return HorseshoeLogisticRegression(X, y)
        return _regression_on(X, y)
    return make_target("horseshoe_synthetic", p=cfg["d"])


def _regression_on(X, y):
    """flowvi's conjugate regression with his prior (InvGamma(1/2, 1/2), beta ~ N(0, sigma^2 I)) on his data."""
    import torch

    from flowvi.targets.regression import ConjugateLinearRegression

    t = ConjugateLinearRegression(p=X.shape[1], n=X.shape[0], a0=0.5, b0=0.5, lam=1.0)
    t.X, t.y = torch.as_tensor(X, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    t.log_evidence = t._exact_log_evidence()
    return t


def flowvi_vi_worker(cfg):
    """flowvi's ``fit`` (constant lr, ``cfg['clip']``, reparameterization) on a Real NVP of his size; the
    callback evaluates every ``eval_every`` steps with the clock stopped and ends training at the budget."""
    import torch

    from flowvi.flows.realnvp import realnvp
    from flowvi.training.loop import TrainConfig, TrainingDiverged, fit

    set_threads(cfg)
    target = _flowvi_vi_target(cfg).double()
    dim = target.event_shape[0]
    flow = realnvp(
        dim,
        layers=cfg["couplings"],
        hidden=cfg["hidden"],
        depth=1,
        clamp=cfg["clamp"],
        loft=cfg["loft"],
        seed=cfg["seed"],
    ).double()

    @torch.no_grad()
    def evaluate():
        x, log_q = flow.sample_and_log_prob(cfg["eval_n"])
        return log_weight_stats(target.log_prob(x) - log_q)

    curve, eval_s, last, t0 = [], [0.0], [0, 0], time.perf_counter()

    def callback(state, metrics):
        last[:] = [state.step, state.skipped]
        if state.step % cfg["eval_every"] == 0:
            e0 = time.perf_counter()
            curve.append({"steps": state.step, "train_s": e0 - t0 - eval_s[0], **evaluate()})
            eval_s[0] += time.perf_counter() - e0
        if time.perf_counter() - t0 - eval_s[0] >= cfg["budget_s"]:
            raise _Stop

    config = TrainConfig(
        steps=cfg["max_steps"], batch_size=cfg["batch"], lr=cfg["lr"], schedule="constant", clip=cfg["clip"] or None,
        log_every=min(10, cfg["eval_every"]), checkpoint_every=10**9,
    )  # fmt: skip
    status = "ok"
    try:
        state = fit(flow, target, config, progress=False, callback=callback)
        steps, skipped = state.step, state.skipped
    except _Stop:
        steps, skipped = last
    except TrainingDiverged:
        status, steps, skipped = "stopped (most steps non-finite)", None, None
    train_s = time.perf_counter() - t0 - eval_s[0]
    curve.append({"steps": steps, "train_s": train_s, **evaluate()})
    # time per step between the first and last evaluation: without fit()'s set-up
    timed = [c for c in curve if c["steps"]]
    if len(timed) >= 2 and timed[-1]["steps"] > timed[0]["steps"]:
        step_s = (timed[-1]["train_s"] - timed[0]["train_s"]) / (timed[-1]["steps"] - timed[0]["steps"])
    else:
        step_s = train_s / max(steps or 1, 1)
    return {
        **cfg, "side": "flowvi", "status": status, "steps": steps, "skipped": skipped, "train_s": train_s,
        "step_s": step_s, "curve": curve, "exact_log_z": getattr(target, "log_evidence", None),
        "params": sum(p.numel() for p in flow.parameters() if p.requires_grad),
    }  # fmt: skip


def _vi_common(args, data, d, seed):
    return {
        "data": data, "d": d, "fold": 1, "couplings": args.couplings, "hidden": 100, "batch": 256, "lr": args.vi_lr,
        "eval_n": args.vi_eval_n, "threads": args.threads, "seed": seed, "budget_s": args.vi_seconds,
        "max_steps": args.vi_max_steps, "eval_every": args.vi_eval_every,
        "andrade_dir": str(args.andrade_dir) if args.andrade_dir else None,
    }  # fmt: skip


def _run_andrade(cfg, args):
    scratch = Path(args.scratch) / f"andrade-{cfg['data']}-{cfg['method']}-{cfg['seed']}"
    scratch.mkdir(parents=True, exist_ok=True)
    return run_worker("andrade", cfg, timeout=cfg["budget_s"] * 4 + 300, cwd=scratch, paths=[args.andrade_dir])


def _run_flowvi(cfg, args):
    cwd = Path(args.scratch) / f"flowvi-{cfg['data']}"
    cwd.mkdir(parents=True, exist_ok=True)
    return run_worker("flowvi_vi", cfg, timeout=cfg["budget_s"] * 4 + 300, cwd=cwd, paths=[args.andrade_dir or ROOT])


def part_realnvp(args):
    if not args.andrade_dir:
        return {"skipped": "no checkout of andrade-stats/normalizing-flows (--andrade-dir or FLOWVI_ANDRADE)"}
    common = _vi_common(args, "regression", args.regression_d, 0)
    rows = [_run_andrade({**common, "method": "proposed"}, args)]
    print(_vi_line(rows[-1]), flush=True)
    for name, clamp, loft, clip in (("flowvi defaults", "asymmetric", True, 10.0),):
        rows.append(_run_flowvi({**common, "variant": name, "clamp": clamp, "loft": loft, "clip": clip}, args))
        print(_vi_line(rows[-1]), flush=True)
    return {"rows": rows, "summary": _time_to_final_elbo(rows)}


def _time_to_final_elbo(rows):
    """flowvi's training time to the authors' final ELBO (within 0.1 nat), at the evaluation points."""
    ref = next((r for r in rows if r.get("side") == "andrade" and "error" not in r), None)
    out = {}
    if ref is None:
        return out
    goal = ref["curve"][-1]["elbo"]
    for r in rows:
        if r.get("side") == "flowvi" and "error" not in r:
            hit = next((c["train_s"] for c in r["curve"] if c["elbo"] >= goal - 0.1), None)
            out[r["variant"]] = {"authors_final_elbo": goal, "authors_train_s": ref["train_s"], "reached_s": hit}
            if hit is not None:
                out[r["variant"]]["time_ratio"] = hit / ref["train_s"]
    return out


ABLATION = (  # name, clamp, LOFT, gradient clipping: the paper's standard Real NVP and the stabilized one
    ("standard", "none", False, 0.0),
    ("stabilized", "asymmetric", True, 0.0),
)


def _partial(args, part, rows):
    """The rows so far, in ``<out>/authors_<part>.partial.json`` (a long run stopped early keeps its rows)."""
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"authors_{part}.partial.json").write_text(json.dumps({"rows": rows}, indent=1))


def part_ablation(args):
    rows = []
    his_seeds = args.seeds if args.andrade_seeds is None else args.andrade_seeds
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        common = _vi_common(args, "horseshoe", args.horseshoe_d, seed)
        for name, clamp, loft, clip in ABLATION:
            rows.append(_run_flowvi({**common, "variant": name, "clamp": clamp, "loft": loft, "clip": clip}, args))
            print(_vi_line(rows[-1]), flush=True)
            _partial(args, "ablation", rows)
        if args.andrade_dir and seed < args.first_seed + his_seeds:
            steps = args.andrade_max_steps or common["max_steps"]
            for method in ("standard", "proposed"):
                rows.append(_run_andrade({**common, "method": method, "variant": method, "max_steps": steps}, args))
                print(_vi_line(rows[-1]), flush=True)
                _partial(args, "ablation", rows)
    return {"rows": rows, "summary": _ablation_summary(rows)}


#: nats: a final ELBO this far below the run's best evaluated ELBO is a collapse (the unclamped scales overflow)
COLLAPSE_NATS = 1e3


def diverged(r) -> bool:
    """A run diverges when it errs, flowvi stops it, half its steps are skipped, its final ELBO is not finite,
    it drew non-finite samples in its last evaluation, or its ELBO collapsed (``COLLAPSE_NATS`` below its best)."""
    if "error" in r or r.get("status", "ok") != "ok":
        return True
    last = r["curve"][-1]
    skipped = r.get("skipped") or 0
    best = max((c["elbo"] for c in r["curve"] if math.isfinite(c["elbo"])), default=-math.inf)
    collapsed = last["elbo"] < best - COLLAPSE_NATS
    nonfinite = last.get("nonfinite", 0) > 0
    return not math.isfinite(last["elbo"]) or skipped > 0.5 * max(r["steps"] or 1, 1) or collapsed or nonfinite


def _ablation_summary(rows):
    out = {}
    for key in sorted({(r.get("side", "?"), r.get("variant", r.get("method"))) for r in rows}):
        rs = [r for r in rows if (r.get("side", "?"), r.get("variant", r.get("method"))) == key]
        ok = [r for r in rs if not diverged(r)]
        out[" ".join(key)] = {
            "runs": len(rs),
            "diverged": len(rs) - len(ok),
            "skipped_steps": [r.get("skipped") for r in rs],  # None: flowvi stopped the run (most steps non-finite)
            "elbo_median": statistics.median([r["curve"][-1]["elbo"] for r in ok]) if ok else None,
            "log_z_median": statistics.median([r["curve"][-1]["log_z"] for r in ok]) if ok else None,
        }
    return out


def _vi_line(r):
    name = r.get("variant", r.get("method", ""))
    if "error" in r:
        return f"{r.get('side', '?'):8s} {name:16s} seed {r['seed']} error: {r['error']}"
    last = r["curve"][-1]
    exact = r.get("exact_log_z")
    ex = f" exact {exact:.3f}" if exact is not None else ""
    return (
        f"{r['side']:8s} {name:16s} seed {r['seed']} steps {r['steps'] or 0:6d} step {1e3 * r['step_s']:7.1f} ms "
        f"train {r['train_s']:6.1f} s ELBO {last['elbo']:10.3f} log Z {last['log_z']:10.3f} ESS {last['ess']:.3f}"
        f" nonfinite {last['nonfinite']} diverged {diverged(r)}{ex}"
    )


# --- part evidence: flowvi's flows against flowvi's tempered SMC at equal CPU time -----------------------------

EVIDENCE_FLOWS = {  # name: (realnvp options beyond its defaults, TrainConfig options beyond flowvi's defaults)
    "realnvp": ({}, {}),
    "spline": ({"spline": True}, {}),
    "spline+hierarchical": ({"spline": True, "hierarchical": True}, {}),
    "fab": ({}, {"estimator": "fab"}),
}


def _evidence_target(cfg, dtype):
    import torch

    from flowvi.targets import make_target

    return make_target("horseshoe_nci60", p=cfg["p"]).to(torch.float32 if dtype == "float32" else torch.float64)


def _is_stats(flow, target, n, chunk=1024):
    """IS log Z (and its SE), normalized ESS and PSIS k-hat of ``n`` fresh draws, in float64."""
    import torch

    from flowvi.diagnostics.importance import log_evidence, normalized_ess, pareto_k

    parts = []
    with torch.no_grad():
        for i in range(0, n, chunk):
            x, log_q = flow.sample_and_log_prob(min(chunk, n - i))
            parts.append((target.log_prob(x).double() - log_q.double()).cpu())
    log_w = torch.cat(parts)
    log_w = torch.where(torch.isfinite(log_w), log_w, torch.full_like(log_w, -math.inf))
    log_z, se = log_evidence(log_w)
    finite = log_w[torch.isfinite(log_w)]
    return {"log_z": log_z, "log_z_se": se, "ess": normalized_ess(log_w), "khat": pareto_k(finite),
            "elbo": float(finite.mean()), "nonfinite": int(n - finite.numel()), "n": n}  # fmt: skip


def evidence_flow_worker(cfg):
    """One flow on horseshoe_nci60 trained by ``fit`` until ``budget_s`` seconds of process CPU time (one
    thread): a 5-step probe times a step, then a cosine schedule over the steps that fit the rest of the budget
    (the callback stops it at the budget). IS statistics of ``is_n`` fresh draws, their CPU time apart."""
    from flowvi.flows.realnvp import realnvp
    from flowvi.training.loop import TrainConfig, fit

    set_threads(cfg)
    target = _evidence_target(cfg, "float32")
    options, train = EVIDENCE_FLOWS[cfg["variant"]]
    options = dict(options)
    if options.pop("hierarchical", False):
        options["hierarchy"] = target.hierarchy()
    flow = realnvp(target.dim, layers=cfg["layers"], hidden=cfg["hidden"], seed=cfg["seed"], **options)
    c0, w0, state = time.process_time(), time.perf_counter(), {"steps": 0, "base": 0, "ticks": []}

    def callback(st, _metrics):
        state["steps"] = state["base"] + st.step
        state["ticks"].append(time.process_time())
        if time.process_time() - c0 >= cfg["budget_s"]:
            raise _Stop

    common = {"batch_size": cfg["batch"], "lr": cfg["lr"], "log_every": 1, "checkpoint_every": 10**9, **train}
    status = "ok"
    try:  # the probe's step time from its last steps (its first carries fit's set-up)
        fit(flow, target, TrainConfig(steps=5, schedule="constant", **common), progress=False, callback=callback)
        probe = (state["ticks"][-1] - state["ticks"][1]) / (len(state["ticks"]) - 2)
        state["base"], rest = 5, cfg["budget_s"] - (time.process_time() - c0)
        steps = max(int(1.05 * rest / probe), 1)  # a little over: the callback ends it at the budget
        fit(flow, target, TrainConfig(steps=steps, schedule="cosine", **common), progress=False, callback=callback)
    except _Stop:
        pass
    except Exception as e:  # a diverged run (TrainingDiverged) or FAB's failure: recorded, not fatal
        status = f"{type(e).__name__}: {str(e)[:200]}"
    train_cpu, train_wall = time.process_time() - c0, time.perf_counter() - w0
    c1 = time.process_time()
    stats = _is_stats(flow, target, cfg["is_n"])
    return {
        **cfg, "side": "flow", "status": status, "steps": state["steps"], "train_cpu_s": train_cpu,
        "train_wall_s": train_wall, "eval_cpu_s": time.process_time() - c1, **stats,
        "params": sum(p.numel() for p in flow.parameters() if p.requires_grad),
    }  # fmt: skip


def evidence_smc_worker(cfg):
    """flowvi's tempered SMC (``samplers/smc.py``, float64) on the same target; its process CPU time."""
    from flowvi.samplers.smc import run_smc

    set_threads(cfg)
    target = _evidence_target(cfg, "float64")
    c0, w0 = time.process_time(), time.perf_counter()
    r = run_smc(target, particles=cfg["particles"], moves=cfg["moves"], seed=cfg["seed"])
    return {
        **cfg, "side": "smc", "log_z": r["log_z"], "stages": len(r["temperatures"]) - 1,
        "train_cpu_s": time.process_time() - c0, "train_wall_s": time.perf_counter() - w0,
        "acceptance": statistics.mean(r["acceptance"]) if r["acceptance"] else None,
    }  # fmt: skip


def part_evidence(args):
    rows = []
    common = {"p": args.evidence_p, "threads": args.threads, "seed": 0, "budget_s": args.evidence_seconds}
    timeout = args.evidence_seconds * 4 + 600
    for variant in args.evidence_flows:
        cfg = {**common, "variant": variant, "layers": args.evidence_layers, "hidden": args.evidence_hidden,
               "batch": args.evidence_batch, "lr": 1e-3, "is_n": args.evidence_is_n}  # fmt: skip
        rows.append(run_worker("evidence_flow", cfg, timeout=timeout))
        print(_evidence_line(rows[-1]), flush=True)
    for seed in range(args.smc_seeds):
        cfg = {**common, "seed": seed, "particles": args.smc_particles, "moves": args.smc_moves, "variant": "smc"}
        rows.append(run_worker("evidence_smc", cfg, timeout=timeout))
        print(_evidence_line(rows[-1]), flush=True)
    smc = [r["log_z"] for r in rows if r.get("side") == "smc" and "error" not in r]
    summary = {"smc_log_z_mean": statistics.mean(smc) if smc else None}
    for r in rows:
        if r.get("side") == "flow" and "error" not in r and smc:
            summary[r["variant"]] = {"log_z_minus_smc": r["log_z"] - statistics.mean(smc), "khat": r["khat"]}
    return {"rows": rows, "summary": summary}


def _evidence_line(r):
    if "error" in r:
        return f"{r['variant']:20s} error: {r['error']}"
    head = f"{r['variant']:20s} cpu {r['train_cpu_s']:7.1f} s wall {r['train_wall_s']:7.1f} s log Z {r['log_z']:9.3f}"
    if r["side"] == "smc":
        return f"{head} stages {r['stages']} particles {r['particles']} moves {r['moves']}"
    return f"{head} ± {r['log_z_se']:.3f} k {r['khat']:.2f} ELBO {r['elbo']:9.3f} steps {r['steps']} {r['status']}"


# --- command line ----------------------------------------------------------------------------------------------

WORKERS = {
    "lattice": lattice_worker, "gmm": gmm_worker, "andrade": andrade_worker, "flowvi_vi": flowvi_vi_worker,
    "evidence_flow": evidence_flow_worker, "evidence_smc": evidence_smc_worker,
}  # fmt: skip
QUICK = {
    "L": 4, "lattice_layers": 2, "lattice_channels": 4, "lattice_batch": 8, "lattice_seconds": 2.0,
    "lattice_max_steps": 3, "eval_every": 3, "eval_n": 32, "lattice_targets": ["schwinger"], "gmm_couplings": 2,
    "gmm_blocks": 1, "gmm_hidden": 16, "gmm_batch": 32, "gmm_steps": 3, "gmm_seconds": 1.0, "couplings": 2,
    "vi_seconds": 2.0, "vi_max_steps": 4, "vi_eval_every": 2, "vi_eval_n": 64, "seeds": 1, "horseshoe_d": 10,
    "regression_d": 10, "evidence_p": 5, "evidence_layers": 2, "evidence_hidden": 16, "evidence_batch": 32,
    "evidence_seconds": 1.0, "evidence_is_n": 256, "smc_particles": 32, "smc_moves": 2, "smc_seeds": 1,
}  # fmt: skip


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--quick", action="store_true", help="tiny sizes and budgets (seconds): the CI check")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for the JSON files")
    p.add_argument("--scratch", default="/tmp/flowvi-authors", help="working folders of the authors' code")
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads per run (1: no OpenMP contention on a busy CPU)"
    )
    p.add_argument("--tag", default="", help="suffix of the JSON file names")
    p.add_argument("--upg-dir", default=os.environ.get("FLOWVI_UPG"), help="unified-path-gradients checkout")
    p.add_argument("--andrade-dir", default=os.environ.get("FLOWVI_ANDRADE"), help="andrade normalizing-flows checkout")
    g = p.add_argument_group("lattice")
    g.add_argument("--L", type=int, default=8)
    g.add_argument("--lattice-targets", nargs="+", default=["schwinger", "u1"], choices=["schwinger", "u1"])
    g.add_argument("--lattice-layers", type=int, default=48)
    g.add_argument("--lattice-channels", type=int, default=64)
    g.add_argument("--lattice-batch", type=int, default=64)
    g.add_argument("--lattice-lr", type=float, default=1e-3)
    g.add_argument("--lattice-seconds", type=float, default=60.0, help="training-time budget per run")
    g.add_argument("--lattice-max-steps", type=int, default=10**6)
    g.add_argument("--eval-every", type=int, default=10, help="steps between ESS evaluations")
    g.add_argument("--eval-n", type=int, default=256, help="draws per ESS evaluation")
    g.add_argument("--ess-target", type=float, default=0.3)
    g.add_argument(
        "--lattice-clock", choices=["wall", "cpu"], default="wall", help="the clock of the budget and the race"
    )
    g.add_argument(
        "--lattice-runs", nargs="+", metavar="SIDE:ESTIMATOR", help="runs and their order (default: all, flowvi first)"
    )
    g = p.add_argument_group("path (their Gaussian mixture)")
    g.add_argument("--gmm-couplings", type=int, default=4)
    g.add_argument("--gmm-blocks", type=int, default=6)
    g.add_argument("--gmm-hidden", type=int, default=500)
    g.add_argument("--gmm-batch", type=int, default=500)
    g.add_argument("--gmm-lr", type=float, default=1e-4)
    g.add_argument("--gmm-steps", type=int, default=200, help="steps of the equal-steps comparison")
    g.add_argument("--gmm-seconds", type=float, default=30.0, help="training time of the equal-time comparison")
    g = p.add_argument_group("realnvp and ablation (Andrade's settings: width 100, lr 1e-4, 256 draws, float64)")
    g.add_argument("--couplings", type=int, default=64)
    g.add_argument("--regression-d", type=int, default=100)
    g.add_argument("--horseshoe-d", type=int, default=100, help="predictors p (target dimension 2p + 2)")
    g.add_argument("--seeds", type=int, default=3)
    g.add_argument("--vi-seconds", type=float, default=60.0, help="training time per run")
    g.add_argument("--vi-max-steps", type=int, default=10**6)
    g.add_argument("--vi-eval-every", type=int, default=100)
    g.add_argument("--vi-eval-n", type=int, default=2048)
    g.add_argument("--first-seed", type=int, default=0, help="the ablation's first seed")
    g.add_argument("--andrade-seeds", type=int, help="seeds of his code in the ablation (default: --seeds)")
    g.add_argument("--andrade-max-steps", type=int, help="his steps per ablation run (default: --vi-max-steps)")
    g.add_argument("--vi-lr", type=float, default=1e-4, help="Adam's learning rate on both codes (his: 1e-4)")
    g = p.add_argument_group("evidence (horseshoe_nci60: flowvi's flows against its SMC at equal CPU time)")
    g.add_argument("--evidence-p", type=int, default=2000, help="genes p (target dimension 2p + 2)")
    g.add_argument("--evidence-flows", nargs="*", choices=list(EVIDENCE_FLOWS), default=list(EVIDENCE_FLOWS))
    g.add_argument("--evidence-layers", type=int, default=8)
    g.add_argument("--evidence-hidden", type=int, default=256)
    g.add_argument("--evidence-batch", type=int, default=256)
    g.add_argument("--evidence-seconds", type=float, default=300.0, help="process CPU seconds of training per flow")
    g.add_argument("--evidence-is-n", type=int, default=8192, help="importance draws of each flow's log Z")
    g.add_argument("--smc-particles", type=int, default=2000)
    g.add_argument("--smc-moves", type=int, default=20)
    g.add_argument("--smc-seeds", type=int, default=1)
    args = p.parse_args(argv)
    known = [f"{side}:{estimator}" for side, estimator in RUNS_LATTICE]
    for run in args.lattice_runs or ():
        if run not in known:
            p.error(f"unknown lattice run {run!r}; choose from {', '.join(known)}")
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
        # flowvi's and neumc's code: no global settings changed
        IN_PROCESS.update({"lattice", "flowvi_vi", "evidence_flow", "evidence_smc"})
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        print("RESULT " + json.dumps(WORKERS[argv[1]](json.loads(argv[2]))), flush=True)
        return 0
    args = parse(argv)
    if not (neumc_dir() / "neumc").is_dir() and "lattice" in args.parts:
        raise SystemExit(f"neumc not found at {neumc_dir()} (shared/ beside the clone, or set FLOWVI_NEUMC)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"command": " ".join(["benchmarks/authors.py", *argv]), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads}  # fmt: skip
    results = {}
    for part in args.parts:
        print(f"== {part}", flush=True)
        results[part] = {**meta, **globals()[f"part_{part}"](args)}
        name = f"authors_{part}{'_quick' if args.quick else ''}{'_' + args.tag if args.tag else ''}.json"
        (out / name).write_text(json.dumps(results[part], indent=1))
        if "summary" in results[part]:
            print(json.dumps(results[part]["summary"], indent=1))
    return results


if __name__ == "__main__":
    main()
