"""Schwinger-model benchmark: cost per training step and training quality of the gradient estimators.

For the two-flavour Schwinger model at the REINFORCE paper's point (beta = 2, kappa = 0.276; Bialas, Korcyl,
Stebel 2023, arXiv 2308.13294) and its lattice sizes L = 8, 12, 16, with the gauge-equivariant flow:

1. time per training step, and of the action alone with and without its gradient, (median over timed steps after warm-up; CUDA events on the GPU) and peak memory
   (``torch.cuda.max_memory_allocated``) for each estimator in ``--estimators`` that exists in
   ``flowvi.estimators.ESTIMATORS`` (missing ones are skipped with a note);
2. for ``--train-sizes``, every estimator trained for the same wall-clock budget (``--train-seconds``), then
   the normalized ESS of importance weights and the acceptance rate of an independence Metropolis-Hastings
   chain with the flow as proposal, over ``--eval-samples`` draws.

GPU:  PYTHONPATH=src python benchmarks/lattice.py --device cuda --out lattice.json
CPU:  PYTHONPATH=src python benchmarks/lattice.py --quick
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time

import numpy as np
import torch

from flowvi.diagnostics import normalized_ess
from flowvi.estimators import ESTIMATORS
from flowvi.lattice.u1 import average_plaquette, topological_charge, topological_susceptibility
from flowvi.targets import make_target
from flowvi.targets.gauge import SCHWINGER_PRESETS


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(L, args, device, dtype, seed=0):
    preset = dict(SCHWINGER_PRESETS.get(f"reinforce_L{L}", {"L": L, "beta": 2.0, "kappa": 0.276}))
    target = make_target("schwinger", **preset).to(device, dtype)
    flow = target.default_flow(layers=args.layers, hidden=args.channels, depth=args.depth, seed=seed)
    return flow.to(device, dtype), target


def train_step(flow, target, estimator, optimizer, batch_size, clip=10.0):
    optimizer.zero_grad(set_to_none=True)
    est = estimator(flow, target, batch_size)
    est.loss.backward()
    torch.nn.utils.clip_grad_norm_(flow.parameters(), clip)
    optimizer.step()
    return est


def time_steps(name, L, args, device, dtype):
    """Median seconds per step and peak memory (MiB, GPU only) of one estimator at one lattice size."""
    torch.manual_seed(0)
    flow, target = build(L, args, device, dtype)
    optimizer = torch.optim.Adam(flow.parameters(), lr=args.lr)
    estimator = ESTIMATORS[name]
    for _ in range(args.warmup):
        train_step(flow, target, estimator, optimizer, args.batch_size)
    sync(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.steps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            train_step(flow, target, estimator, optimizer, args.batch_size)
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            train_step(flow, target, estimator, optimizer, args.batch_size)
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {
        "estimator": name,
        "L": L,
        "batch_size": args.batch_size,
        "step_s": statistics.median(times),
        "peak_mib": peak,
    }


def time_action(L, args, device, dtype):
    """Median seconds of the Schwinger action alone: value only (what REINFORCE needs) and value plus
    gradient with respect to the links (what the reparameterization and path estimators need)."""
    _, target = build(L, args, device, dtype)
    torch.manual_seed(0)
    links = 2 * math.pi * torch.rand(args.batch_size, 2, L, L, device=device, dtype=dtype)

    def value():
        with torch.no_grad():
            target.log_prob(links)

    def value_and_grad():
        x = links.clone().requires_grad_(True)
        target.log_prob(x).sum().backward()

    out = {}
    for key, fn in (("action_s", value), ("action_grad_s", value_and_grad)):
        for _ in range(args.warmup):
            fn()
        times = []
        for _ in range(args.steps):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - t0)
        out[key] = statistics.median(times)
    return out


def imh_acceptance(log_w: np.ndarray, seed: int = 0) -> float:
    """Acceptance rate of independence Metropolis-Hastings with proposals in the given order:
    accept x' with probability ``min(1, w(x') / w(x))``."""
    rng = np.random.default_rng(seed)
    current, accepted = log_w[0], 0
    for lw, u in zip(log_w[1:], rng.random(len(log_w) - 1), strict=True):
        if math.log(u) < lw - current:
            current, accepted = lw, accepted + 1
    return accepted / max(len(log_w) - 1, 1)


@torch.no_grad()
def evaluate(flow, target, n, batch):
    lw, plaq, charge = [], [], []
    for i in range(0, n, batch):
        x, log_q = flow.sample_and_log_prob(min(batch, n - i))
        lw.append((target.log_prob(x) - log_q).double().cpu())
        plaq.append(average_plaquette(x).double().cpu())
        charge.append(topological_charge(x).double().cpu())
    lw, plaq, charge = torch.cat(lw), torch.cat(plaq), torch.cat(charge)
    w = torch.softmax(lw, 0)
    return {
        "ess": normalized_ess(lw.numpy()),
        "acceptance": imh_acceptance(lw.numpy()),
        "plaquette": float((w * plaq).sum()),
        "chi_t": float(topological_susceptibility(charge, target.L * target.L, lw)),
    }


def train_for(name, L, args, device, dtype):
    """Train for ``args.train_seconds`` of wall time, then evaluate ESS and MH acceptance."""
    torch.manual_seed(1)
    flow, target = build(L, args, device, dtype, seed=1)
    optimizer = torch.optim.Adam(flow.parameters(), lr=args.lr)
    estimator = ESTIMATORS[name]
    steps, skipped, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < args.train_seconds:
        est = train_step(flow, target, estimator, optimizer, args.train_batch_size)
        skipped += int(not torch.isfinite(est.loss))
        steps += 1
    sync(device)
    wall = time.perf_counter() - t0
    out = {"estimator": name, "L": L, "train_seconds": wall, "train_steps": steps, "skipped": skipped}
    out.update(evaluate(flow, target, args.eval_samples, args.train_batch_size))
    return out


def guarded(fn, name, L, args, device, dtype):
    """Run one measurement; an estimator that fails (out of memory, unsupported) is recorded, not fatal."""
    try:
        return fn(name, L, args, device, dtype)
    except (RuntimeError, TypeError, ValueError) as e:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return {"estimator": name, "L": L, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--quick", action="store_true", help="small CPU check (L = 4, 8; short budgets)")
    p.add_argument("--sizes", type=int, nargs="+", default=[8, 12, 16])
    p.add_argument(
        "--train-sizes", type=int, nargs="*", default=[8, 16], help="sizes for the training runs (none: skip)"
    )
    p.add_argument("--estimators", nargs="+", default=["reparam", "path", "reinforce"])
    p.add_argument("--batch-size", type=int, default=256, help="batch for the timing runs")
    p.add_argument("--train-batch-size", type=int, default=256)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--train-seconds", type=float, default=25.0, help="wall-time budget per training run")
    p.add_argument("--eval-samples", type=int, default=8192)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--out", help="JSON output file")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.train_sizes = [4, 8], [4]
        args.batch_size = args.train_batch_size = 32
        args.warmup, args.steps, args.train_seconds, args.eval_samples = 1, 3, 10.0, 1024
        args.layers, args.channels = 8, 8
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    names = []
    for name in args.estimators:
        if name in ESTIMATORS:
            names.append(name)
        else:
            print(f"note: estimator {name!r} is not in flowvi.estimators.ESTIMATORS; skipped")

    timing = []
    print(f"{'L':>3} {'estimator':>10} {'step [ms]':>10} {'peak [MiB]':>11}")
    for L in args.sizes:
        for name in names:
            r = guarded(time_steps, name, L, args, device, dtype)
            if "error" in r:
                print(f"{L:>3} {name:>10} failed: {r['error']}", flush=True)
                continue
            timing.append(r)
            peak = f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "-"
            print(f"{L:>3} {name:>10} {1000 * r['step_s']:>10.1f} {peak:>11}", flush=True)

    action = []
    print(f"\n{'L':>3} {'action [ms]':>12} {'action+grad [ms]':>17}")
    for L in args.sizes:
        r = {"L": L, "batch_size": args.batch_size, **time_action(L, args, device, dtype)}
        action.append(r)
        print(f"{L:>3} {1000 * r['action_s']:>12.1f} {1000 * r['action_grad_s']:>17.1f}", flush=True)

    ratios = []
    if "reparam" in names:
        for L in args.sizes:
            base = next((r for r in timing if r["L"] == L and r["estimator"] == "reparam"), None)
            if base is None:
                continue
            for r in timing:
                if r["L"] == L and r["estimator"] != "reparam":
                    mem = (1 - r["peak_mib"] / base["peak_mib"]) if base["peak_mib"] else None
                    ratios.append(
                        {
                            "L": L,
                            "estimator": r["estimator"],
                            "speedup_vs_reparam": base["step_s"] / r["step_s"],
                            "memory_saving_vs_reparam": mem,
                        }
                    )
        for q in ratios:
            mem = (
                f"{100 * q['memory_saving_vs_reparam']:.0f}% less memory"
                if q["memory_saving_vs_reparam"] is not None
                else ""
            )
            print(f"L={q['L']}: {q['estimator']} {q['speedup_vs_reparam']:.2f}x faster per step than reparam {mem}")

    training = []
    print(f"\n{'L':>3} {'estimator':>10} {'steps':>6} {'seconds':>8} {'ESS':>7} {'accept':>7} {'plaq':>7} {'chi_t':>8}")
    for L in args.train_sizes:
        for name in names:
            r = guarded(train_for, name, L, args, device, dtype)
            training.append(r)
            if "error" in r:
                print(f"{L:>3} {name:>10} failed: {r['error']}", flush=True)
                continue
            print(
                f"{L:>3} {name:>10} {r['train_steps']:>6} {r['train_seconds']:>8.1f} {r['ess']:>7.3f} "
                f"{r['acceptance']:>7.3f} {r['plaquette']:>7.4f} {r['chi_t']:>8.4f}",
                flush=True,
            )

    result = {
        "benchmark": "lattice/schwinger",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "dtype": args.dtype,
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "timing": timing,
        "action": action,
        "ratios": ratios,
        "training": training,
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
