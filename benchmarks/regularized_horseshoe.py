"""The regularized horseshoe on NCI-60: many-chain HMC against flows trained by reverse KL (issue 4).

    PYTHONPATH=src python benchmarks/regularized_horseshoe.py --p 200 --out FILE.json    # CPU (2 cores), ~15 min
    PYTHONPATH=src python benchmarks/regularized_horseshoe.py --quick --out /tmp/rhs.json  # seconds
    PYTHONPATH=src python benchmarks/regularized_horseshoe.py --device cuda --p 2000 --out FILE.json  # GPU

On ``regularized_horseshoe_nci60`` (Piironen & Vehtari 2017; :mod:`flowvi.targets.regularized_horseshoe`) with p
genes, this runs

* many-chain HMC (:func:`flowvi.samplers.adaptive_hmc.adaptive_hmc`, dispersed starts) as the reference, with
  split and rank-normalized R-hat and ESS of beta and of all coordinates (:func:`flowvi.diagnostics.mcmc.summarize_chains`, on the sampler's device);
* flows trained by reverse KL (``--variants``: ``realnvp`` = Real NVP with the asymmetric clamp and LOFT,
  ``spline`` = the same with the elementwise spline, ``hier`` = with the target's hierarchical couplings
  (:mod:`flowvi.transforms.hierarchical`), ``hier-spline`` = both; a ``-fab`` suffix continues with ``--fab-steps``
  steps of the mass-covering FAB estimator (:mod:`flowvi.objectives.fab`), ``-fabbuf`` the same with its prioritized replay
  buffer (``--fab-buffer`` draws, ``--fab-replay`` steps per AIS run)), each with ELBO, IS log Z and Pareto k; with
  ``--fab-eval-every K`` the FAB phase is scored against HMC every K steps (the ``fab_trace`` of its row);
* tempered SMC (``--smc-repeats`` runs, :func:`flowvi.samplers.smc.run_smc`) for a log Z to compare with;

and reports for every sampler the regimes (5/50/95 % quantiles of log tau, beta0 and log c; median |beta_j| and
median sd(beta_j)) and, for the flows, the share of coefficients whose posterior mean is within 0.1 HMC posterior
sd of HMC's (:func:`flowvi.studies.stability.share_within`; medians: :func:`flowvi.studies.stability.share_within_robust`) beside
the share of the zero guess (:func:`flowvi.studies.stability.zero_guess_scores`) and of half of the HMC chains scored
against the other half (what an exact sampler with HMC's Monte Carlo error would get).

``--reference-cache FILE`` keeps HMC's row and reference summary in FILE (written on the first run, read on later
runs with the same p, chains, iterations, leapfrog cap, thinning, time limit and seed), so that flows can be
compared with it without rerunning HMC.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from flowvi.diagnostics.importance import psis_log_weights, summarize
from flowvi.diagnostics.mcmc import convergence_info, summarize_chains
from flowvi.runs import checkpoint as ckpt
from flowvi.runs.run_dir import build
from flowvi.samplers.adaptive_hmc import adaptive_hmc
from flowvi.samplers.smc import run_smc
from flowvi.studies.stability import ROBUST, share_within, share_within_robust, zero_guess_scores
from flowvi.training.loop import TrainConfig, fit

TARGET = "regularized_horseshoe_nci60"
STAT_KEYS = ("elbo", "elbo_se", "log_z", "log_z_se", "ess", "pareto_k")


def regimes(target, theta: torch.Tensor) -> dict:
    """Quantiles (5, 50, 95 %) of log tau, beta0 and log c, median |beta_j| and the median over j of sd(beta_j)."""
    theta = theta.double()
    _, _, log_tau, beta0, log_c2 = target.split(theta)
    beta = target.coefficients(theta)

    def q(v):
        return np.quantile(v.cpu().numpy(), [0.05, 0.5, 0.95]).tolist()

    return {
        "log_tau_q05_q50_q95": q(log_tau),
        "beta0_q05_q50_q95": q(beta0),
        "log_c_q05_q50_q95": q(0.5 * log_c2),
        "median_abs_beta": float(beta.abs().median()),
        "median_sd_beta": float(beta.std(0).median()),
    }


def scores(mean: np.ndarray, median: np.ndarray, ref: dict) -> dict:
    return {"within_0.1_sd": share_within(mean, ref), ROBUST: share_within_robust(median, ref)}


def hmc_reference(
    target,
    chains: int,
    iterations: int,
    max_leapfrog: int,
    seed: int,
    device: str = "cpu",
    thin: int = 1,
    max_seconds: float | None = None,
) -> tuple[dict, dict, np.ndarray]:
    """Run HMC on ``device`` (``target`` stays on the CPU for the summaries); return (row, reference summary,
    draws (chains, n, d))."""
    t0 = time.perf_counter()
    r = adaptive_hmc(
        copy.deepcopy(target).to(device),
        chains=chains,
        warmup=iterations,
        draws=iterations,
        max_leapfrog=max_leapfrog,
        target_accept=0.9,
        seed=seed,
        thin=thin,
        max_seconds=max_seconds,
    )
    seconds = time.perf_counter() - t0
    # Summaries in torch on the sampler's device (the NumPy ones take seconds per chain at d = 4003).
    ref = summarize_chains(target, r["draws"], device=device)
    draws = r["draws"].cpu().numpy()
    info = convergence_info(ref)
    # the global coordinates by name: log tau, beta0, log c^2
    p = target.p
    names = {"log_tau": 2 * p, "beta0": 2 * p + 1, "log_c2": 2 * p + 2}
    info["rank_rhat_global"] = {k: float(ref["rank_rhat_theta"][j]) for k, j in names.items()}
    info["bulk_ess_global"] = {k: float(ref["bulk_ess_theta"][j]) for k, j in names.items()}
    # exact-sampler ceiling: the second half of the chains scored against the first half
    half = chains // 2
    ref_a = summarize_chains(target, r["draws"][:half], device=device)
    with torch.no_grad():
        coef_b = target.coefficients(torch.as_tensor(draws[half:].reshape(-1, target.dim))).numpy()
    row = {
        "sampler": "HMC",
        **regimes(target, torch.as_tensor(draws.reshape(-1, target.dim))),
        "seconds": seconds,
        "chains": chains,
        "warmup": int(r["warmup_iterations"]),
        "draws": int(r["iterations"]),
        "stopped_early": bool(r["stopped_early"]),
        "thin": thin,
        "max_leapfrog": max_leapfrog,
        "step_size": float(r["step_size"]),
        "accept_prob": float(r["accept_prob"].mean()),
        "divergences": int(r["divergences"].sum()),
        "warmup_divergences": int(r["warmup_divergences"].sum()),
        "convergence": info,
        "half_chains_vs_other_half": scores(coef_b.mean(0), np.median(coef_b, 0), ref_a),
    }
    return row, ref, draws


#: the FAB phase of the ``-fab`` / ``-fabbuf`` variants: steps, Adam learning rate (constant), AIS stages, leapfrog
#: steps per HMC move, replay buffer size in draws (``-fabbuf``), training steps per AIS run, scoring interval, and
#: a time limit (seconds, checked at the scoring steps after scoring; 0: none)
FAB_DEFAULTS = {
    "steps": 300,
    "lr": 1e-4,
    "stages": 8,
    "leapfrog": 3,
    "buffer": 16384,
    "replay": 4,
    "eval_every": 0,
    "max_seconds": 0.0,
}


class _TimeUp(Exception):
    """The FAB phase reached ``max_seconds``."""


def _score_fab(flow, target, ref: dict, step: int, metrics: dict, trace: list, variant: str) -> None:
    """Append the regimes and shares of 10 000 draws of ``flow`` (``target`` on the CPU, float64) to ``trace``."""
    with torch.no_grad():
        x = torch.cat([flow.sample(5000) for _ in range(2)]).double().cpu()
        coef = target.coefficients(x).numpy()
    keys = ("elbo", "ess", "ais_ess", "buffer_ess", "time")
    trace.append({"step": step, **{k: metrics[k] for k in keys if k in metrics}, **regimes(target, x),
                  "scores": scores(coef.mean(0), np.median(coef, 0), ref)})  # fmt: skip
    print(f"  FAB {variant} step {step}: {json.dumps(trace[-1], default=float)}", flush=True)


def train_flow(
    p: int,
    variant: str,
    steps: int,
    seed: int,
    layers: int,
    hidden: int,
    batch: int,
    eval_n: int,
    device: str = "cpu",
    fab: dict | None = None,
    ref: dict | None = None,
):
    """Reverse-KL flow (asymmetric clamp + LOFT, Gaussian base). ``variant``: ``realnvp``, or dash-joined
    additions to it: ``spline`` (the elementwise spline), ``hier`` (the target's hierarchical couplings), ``fab`` /
    ``fabbuf`` (then FAB, without / with its replay buffer, with the options ``fab``, :data:`FAB_DEFAULTS`; the
    FAB phase is scored against ``ref`` every ``eval_every`` steps into ``stats["fab_trace"]``)."""
    parts = set(variant.split("-"))
    unknown = parts - {"realnvp", "spline", "hier", "fab", "fabbuf"}
    if unknown:
        raise ValueError(
            f"unknown flow variant part(s) {sorted(unknown)} in {variant!r}; use realnvp, spline, hier, fab, fabbuf"
        )
    fab = {**FAB_DEFAULTS, **(fab or {})}
    config = {
        "target": {"name": TARGET, "params": {"p": p}},
        "seed": seed,
        "dtype": "float32",
        "device": device,
        "flow": {
            "layers": layers,
            "hidden": hidden,
            "clamp": "asymmetric",
            "loft": True,
            "spline": "spline" in variant.split("-"),
            "hierarchical": "hier" in variant.split("-"),
        },
    }
    flow, target = build(config)
    t0 = time.perf_counter()
    fit(flow, target, TrainConfig(steps=steps, batch_size=batch, checkpoint_every=10**9, log_every=50), progress=False)
    trace = []
    # then the mass-covering FAB objective from the reverse-KL flow (flowvi.objectives.fab)
    if parts & {"fab", "fabbuf"}:
        _fab_phase(flow, target, fab, "fabbuf" in parts, batch, variant, ref, trace)
    x, coef, out = _flow_draws(flow, target, eval_n)
    if trace:
        out["fab_trace"] = trace
    return x[:10_000], coef, out, time.perf_counter() - t0


def _fab_phase(flow, target, fab: dict, buffer: bool, batch: int, variant: str, ref: dict | None, trace: list):
    """FAB from the reverse-KL flow (with its replay buffer if ``buffer``), scored into ``trace`` as it goes."""
    cfg = TrainConfig(
        steps=fab["steps"],
        batch_size=batch,
        lr=fab["lr"],
        schedule="constant",
        estimator="fab",
        fab_stages=fab["stages"],
        fab_leapfrog=fab["leapfrog"],
        fab_buffer=fab["buffer"] if buffer else 0,
        fab_replay=fab["replay"],
        log_every=fab["eval_every"] or 50,
        checkpoint_every=10**9,
    )

    cpu_target = copy.deepcopy(target).cpu().double()

    def score(state, metrics):  # the FAB phase's course: regimes and shares every eval_every steps
        if fab["eval_every"] and ref is not None:
            _score_fab(flow, cpu_target, ref, state.step, metrics, trace, variant)
        if fab["max_seconds"] and metrics["time"] > fab["max_seconds"]:
            raise _TimeUp

    try:
        fit(flow, target, cfg, progress=False, callback=score)
    except _TimeUp:
        print(f"  FAB {variant}: stopped by --fab-max-seconds {fab['max_seconds']}", flush=True)


def _flow_draws(flow, target, eval_n: int):
    """``eval_n`` draws of the flow (float64, CPU), their coefficients and the importance statistics
    (:data:`STAT_KEYS` and the PSIS posterior means ``is_coef_mean``)."""
    xs, coefs, log_ws = [], [], []
    with torch.no_grad():  # draws, their coefficients and importance log weights, in batches
        for start in range(0, eval_n, 5000):
            x, log_q = flow.sample_and_log_prob(min(5000, eval_n - start))
            xs.append(x.double().cpu())
            coefs.append(target.coefficients(x).double().cpu())
            log_ws.append((target.log_prob(x) - log_q).double().cpu())
    x, coef, log_w = torch.cat(xs), torch.cat(coefs).numpy(), torch.cat(log_ws).numpy()
    stats = summarize(log_w)
    # Pareto-smoothed self-normalized importance weights: the flow as a proposal for posterior means
    smoothed, _ = psis_log_weights(log_w)
    w = np.exp(smoothed - smoothed[np.isfinite(smoothed)].max())
    stats["is_coef_mean"] = (w @ coef) / w.sum()
    out = {k: stats[k] if k == "is_coef_mean" else float(stats[k]) for k in (*STAT_KEYS, "is_coef_mean")}
    return x, coef, out


def run(
    p: int = 200,
    steps: int = 3000,
    chains: int = 64,
    hmc_iterations: int = 2000,
    max_leapfrog: int = 64,
    variants: tuple = ("realnvp", "spline"),
    layers: int = 8,
    hidden: int = 256,
    batch: int = 256,
    eval_samples: int = 20_000,
    smc_particles: int = 2000,
    smc_moves: int = 10,
    smc_repeats: int = 3,
    seed: int = 0,
    device: str = "cpu",
    fab: dict | None = None,
    thin: int = 1,
    hmc_max_seconds: float | None = None,
    reference_cache: str | None = None,
) -> dict:
    from flowvi.targets import make_target

    target = make_target(TARGET, p=p).double()
    key = {"p": p, "chains": chains, "iterations": hmc_iterations, "max_leapfrog": max_leapfrog, "thin": thin,
           "seed": seed, "max_seconds": hmc_max_seconds}  # fmt: skip
    hmc, ref = _cached_reference(target, key, reference_cache, device)
    rows = [hmc]
    for variant in variants:
        x, coef, stats, seconds = train_flow(
            p, variant, steps, seed, layers, hidden, batch, eval_samples, device, fab, ref
        )
        trace = stats.pop("fab_trace", None)
        is_mean = stats.pop("is_coef_mean")
        rows.append(
            {
                "sampler": f"flow {variant}",
                **regimes(target, x),
                **stats,
                "seconds": seconds,
                "scores": scores(coef.mean(0), np.median(coef, 0), ref),
                "psis_mean_within_0.1_sd": share_within(is_mean, ref),
                "coef_mean": coef.mean(0).tolist(),  # per coefficient, to see which ones a flow gets right
                **({"fab": {**FAB_DEFAULTS, **(fab or {})}, "fab_trace": trace} if "fab" in variant else {}),
            }
        )
        print(
            f"flow {variant}: {seconds:.0f} s, ELBO {stats['elbo']:.2f}, k {stats['pareto_k']:.2f}, {rows[-1]['scores']}, "
            f"PSIS means within 0.1 sd {rows[-1]['psis_mean_within_0.1_sd']:.3f}",
            flush=True,
        )
    smc = _smc_row(target, device, smc_particles, smc_moves, smc_repeats, seed)
    if smc is not None:
        rows.append(smc)
    return {
        "target": TARGET,
        "params": {"p": p},
        "dim": target.dim,
        "tau0": target.tau_scale,
        "flow": {"layers": layers, "hidden": hidden, "steps": steps, "batch_size": batch, "eval_samples": eval_samples},
        "zero_guess": zero_guess_scores(ref),
        "rows": rows,
    }


def _cached_reference(target, key: dict, reference_cache: str | None, device) -> tuple[dict, dict]:
    """HMC's (row, reference summary) with the settings ``key``: read from ``reference_cache`` where it holds them
    (another ``key`` there is an error), else run and, with a cache, saved there."""
    cache = Path(reference_cache) if reference_cache else None
    if cache is not None and cache.exists():
        saved = torch.load(cache, weights_only=False)
        if saved["key"] != key:
            raise ValueError(f"--reference-cache {cache} holds HMC with {saved['key']}, this run asks for {key}")
        hmc, ref = saved["row"], saved["ref"]
        print(f"HMC: read from {cache} (it ran {hmc['seconds']:.0f} s)", flush=True)
    else:
        hmc, ref, _ = hmc_reference(
            target,
            key["chains"],
            key["iterations"],
            key["max_leapfrog"],
            key["seed"],
            device,
            key["thin"],
            key["max_seconds"],
        )
        print(f"HMC: {hmc['seconds']:.0f} s", flush=True)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            ckpt.save_atomic({"key": key, "row": hmc, "ref": ref}, cache)
    return hmc, ref


def _smc_row(target, device, particles: int, moves: int, repeats: int, seed: int) -> dict | None:
    """SMC ``repeats`` times (seeds seed, seed + 1, ...): the row of their log Z mean and sd (None for no runs)."""
    smc = []
    for k in range(repeats):
        r = run_smc(copy.deepcopy(target).to(device), particles=particles, moves=moves, seed=seed + k)
        smc.append({"log_z": r["log_z"], "stages": len(r["temperatures"]) - 1, "seconds": r["seconds"]})
        print(f"SMC {k}: {smc[-1]}", flush=True)
    if not smc:
        return None
    return {
        "sampler": f"SMC {particles} x {moves}",
        **regimes(target, r["samples"].cpu()),
        "log_z": float(np.mean([s["log_z"] for s in smc])),
        "log_z_sd": float(np.std([s["log_z"] for s in smc], ddof=1)) if len(smc) > 1 else float("nan"),
        "runs": smc,
        "seconds": float(np.mean([s["seconds"] for s in smc])),
    }


def table(result: dict) -> str:
    def fmt(v):
        return ", ".join(f"{x:.3g}" for x in v)

    zero = result["zero_guess"]
    lines = [
        f"{result['target']} p={result['params']['p']} (d={result['dim']}, tau0={result['tau0']:.3g})",
        "| sampler | log tau (5, 50, 95 %) | beta0 (5, 50, 95 %) | log c (5, 50, 95 %) | median abs beta | median sd(beta) "
        "| ELBO | log Z | Pareto k | mean within 0.1 sd | median within 0.1 IQR/1.349 | PSIS mean within 0.1 sd | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        s = row.get("scores", row.get("half_chains_vs_other_half", {}))
        lines.append(
            f"| {row['sampler']} | {fmt(row['log_tau_q05_q50_q95'])} | {fmt(row['beta0_q05_q50_q95'])} | "
            f"{fmt(row['log_c_q05_q50_q95'])} | {row['median_abs_beta']:.3g} | {row['median_sd_beta']:.3g} | "
            f"{row.get('elbo', float('nan')):.2f} | {row.get('log_z', float('nan')):.2f} | "
            f"{row.get('pareto_k', float('nan')):.2f} | {s.get('within_0.1_sd', float('nan')):.3f} | "
            f"{s.get(ROBUST, float('nan')):.3f} | {row.get('psis_mean_within_0.1_sd', float('nan')):.3f} | "
            f"{row['seconds']:.0f} |"
        )
    lines.append(
        f"| every coefficient 0 (no flow) | | | | | | | | | {zero['within_0.1_sd']:.3f} | {zero.get(ROBUST, float('nan')):.3f} | | |"
    )
    hmc = result["rows"][0]
    c = hmc["convergence"]
    lines.append(
        f"HMC: {hmc['chains']} chains x ({hmc['warmup']} + {hmc['draws']}), step {hmc['step_size']:.3g}, "
        f"divergences {hmc['divergences']} (warm-up {hmc['warmup_divergences']}); beta R-hat max {c['beta_rhat_max']:.3f}, "
        f"rank-normalized max {c['beta_rank_rhat_max']:.3f} (all coordinates {c['theta_rank_rhat_max']:.3f}); "
        f"global {json.dumps({k: round(v, 3) for k, v in c['rank_rhat_global'].items()})}; "
        f"beta bulk-ESS min {c['beta_bulk_ess_min']:.0f}; the HMC row's shares: half the chains against the other half"
    )
    return "\n".join(lines)


def finish(result: dict, args, argv, t0: float, table) -> int:
    """Add the run's device, command line, total seconds and torch threads to ``result``, print ``table(result)``
    and write ``result`` as JSON to ``args.out``."""
    result["device"] = args.device
    result["argv"] = sys.argv[1:] if argv is None else list(argv)
    result["seconds_total"] = time.perf_counter() - t0
    result["torch_threads"] = torch.get_num_threads()
    print(table(result))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"total {result['seconds_total']:.0f} s; wrote {args.out}")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--p", type=int, default=200)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--chains", type=int, default=64)
    ap.add_argument("--hmc-iterations", type=int, default=2000, help="warm-up and draws each")
    ap.add_argument("--max-leapfrog", type=int, default=64)
    ap.add_argument("--thin", type=int, default=1, help="keep every thin-th HMC draw")
    ap.add_argument(
        "--hmc-max-seconds", type=float, help="stop HMC's warm-up and sampling after this long (each cut short cleanly)"
    )
    ap.add_argument("--variants", default="realnvp,spline")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--eval-samples", type=int, default=20_000)
    g = ap.add_argument_group("FAB phase of the -fab and -fabbuf variants")
    for name, value in FAB_DEFAULTS.items():
        g.add_argument(f"--fab-{name.replace('_', '-')}", type=type(value), default=value)
    ap.add_argument("--reference-cache", help="keep HMC's reference in this file and reuse it (same settings only)")
    ap.add_argument("--smc-particles", type=int, default=2000)
    ap.add_argument("--smc-moves", type=int, default=10)
    ap.add_argument("--smc-repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="where HMC, SMC and the flows run (cuda: HMC in a CUDA graph)")
    ap.add_argument("--quick", action="store_true", help="p = 10, small HMC, flows and SMC (a few seconds)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.quick:
        args.p, args.steps, args.chains, args.hmc_iterations, args.max_leapfrog = 10, 30, 8, 60, 16
        args.layers, args.hidden, args.batch_size, args.eval_samples = 2, 16, 32, 500
        args.smc_particles, args.smc_moves, args.smc_repeats, args.fab_steps = 100, 3, 2, 5
        args.fab_buffer, args.fab_eval_every = 64, 2
    t0 = time.perf_counter()
    result = run(
        p=args.p,
        steps=args.steps,
        chains=args.chains,
        hmc_iterations=args.hmc_iterations,
        max_leapfrog=args.max_leapfrog,
        variants=tuple(v for v in args.variants.split(",") if v),
        layers=args.layers,
        hidden=args.hidden,
        batch=args.batch_size,
        eval_samples=args.eval_samples,
        fab={name: getattr(args, f"fab_{name}") for name in FAB_DEFAULTS},
        smc_particles=args.smc_particles,
        smc_moves=args.smc_moves,
        smc_repeats=args.smc_repeats,
        seed=args.seed,
        device=args.device,
        thin=args.thin,
        hmc_max_seconds=args.hmc_max_seconds,
        reference_cache=args.reference_cache,
    )
    return finish(result, args, argv, t0, table)


if __name__ == "__main__":
    raise SystemExit(main())
