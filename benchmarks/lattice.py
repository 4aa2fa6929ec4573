"""Schwinger-model and U(1) benchmark: cost per training step and training quality of the gradient estimators.

For the two-flavour Schwinger model at the REINFORCE paper's point (beta = 2, kappa = 0.276; Bialas, Korcyl,
Stebel 2023, arXiv 2308.13294) and its lattice sizes L = 8, 12, 16, with the gauge-equivariant flow
(``target.default_flow``):

1. ``ops``: aten operations dispatched per training step (eager) for each estimator at ``--ops-size`` — in
   eager mode on a GPU each non-view operation is a kernel launch, and this flow is launch-bound;
2. ``eager``: median time per eager training step (estimator, backward, Adam) and peak memory above the
   flow and target (``torch.cuda.max_memory_allocated``) for each estimator and size;
3. ``action``: median time of the action alone, value only (what REINFORCE needs) and value plus gradient
   (what reparam and path need); their ratio bounds REINFORCE/reparam from below (a free flow);
4. ``fast``: at ``--fast-sizes``, each estimator with ``fit()``'s fast step (torch.compile, fused Adam, TF32;
   no CUDA graph for the Schwinger model, whose LU cannot be captured): compile time, median step time and
   peak memory, then training with the same step for ``--train-seconds`` of wall time (after compilation),
   then the normalized ESS and the acceptance of an independence Metropolis-Hastings chain with the flow as
   proposal over ``--eval-samples`` draws, and the reweighted plaquette and chi_t;
5. ``u1``: pure-gauge U(1) (``--u1-size``, ``--u1-beta``; exact answers known) trained with ``--u1-estimators``
   (default path vs reparam) with the fast step (CUDA graph on a GPU, no compile unless ``--u1-compile``) for
   ``--u1-seconds`` each, same metrics.

A global ``--max-minutes`` guard skips training runs that would not fit (recorded as skipped).

GPU:  PYTHONPATH=src python benchmarks/lattice.py --device cuda --out lattice.json     (at most --max-minutes 8)
CPU:  PYTHONPATH=src python benchmarks/lattice.py --quick
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import platform
import statistics
import time

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from flowvi.diagnostics.importance import normalized_ess
from flowvi.objectives.estimators import ESTIMATORS
from flowvi.physics.u1 import average_plaquette, topological_charge, topological_susceptibility
from flowvi.targets import make_target
from flowvi.targets.gauge import SCHWINGER_PRESETS
from flowvi.training.fast_step import StepOptions, make_optimizer, make_step, matmul_precision
from flowvi.training.loop import TrainConfig


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(name, L, args, device, dtype, seed=0, beta=2.0):
    if name == "schwinger":
        params = dict(SCHWINGER_PRESETS.get(f"reinforce_L{L}", {"L": L, "beta": 2.0, "kappa": 0.276}))
    else:
        params = {"L": L, "beta": beta}
    target = make_target(name, **params).to(device, dtype)
    flow = target.default_flow(layers=args.layers, hidden=args.channels, depth=args.depth, seed=seed)
    return flow.to(device, dtype), target


def memory_start(device):
    """Reset the peak counter; return the memory allocated now (flow and target)."""
    sync(device)
    if device.type != "cuda":
        return 0
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def memory_peak(device, base):
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20 if device.type == "cuda" else None


def timed(fn, device, repeats):
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def eager_step(flow, target, name, batch_size, lr, clip=10.0):
    optimizer = torch.optim.Adam(flow.parameters(), lr=lr)
    estimator = ESTIMATORS[name]

    def step():
        optimizer.zero_grad(set_to_none=True)
        est = estimator(flow, target, batch_size)
        est.loss.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), clip)
        optimizer.step()

    return step


class OpCounter(TorchDispatchMode):
    """Counts the aten operations dispatched inside the block (all, and those that are not views)."""

    def __init__(self):
        super().__init__()
        self.ops, self.non_view = 0, 0
        self.by_name = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        if not func.is_view:
            self.non_view += 1
            self.by_name[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def count_ops(name, L, args, device, dtype, target_name="schwinger"):
    """Operations per eager training step (after one warm-up step), with a foreach Adam as on a GPU."""
    torch.manual_seed(0)
    flow, target = build(target_name, L, args, device, dtype)
    optimizer = torch.optim.Adam(flow.parameters(), lr=args.lr, foreach=True)
    estimator = ESTIMATORS[name]

    def step():
        optimizer.zero_grad(set_to_none=True)
        estimator(flow, target, args.ops_batch_size).loss.backward()
        optimizer.step()

    step()
    with OpCounter() as c:
        step()
    # Adam's per-parameter host reads of the step count are CPU-only (a GPU Adam keeps it on the device)
    local = c.by_name.get("aten._local_scalar_dense", 0)
    return {"estimator": name, "L": L, "ops": c.ops - local, "non_view_ops": c.non_view - local}


def time_eager(name, L, args, device, dtype):
    """Median seconds per eager step and peak memory (MiB above flow and target, GPU only)."""
    torch.manual_seed(0)
    flow, target = build("schwinger", L, args, device, dtype)
    base = memory_start(device)
    step = eager_step(flow, target, name, args.batch_size, args.lr)
    for _ in range(args.warmup):
        step()
    step_s = timed(step, device, args.steps)
    return {"estimator": name, "L": L, "step_s": step_s, "peak_mib": memory_peak(device, base)}


def time_action(L, args, device, dtype):
    """Median seconds of the Schwinger action: value only, and value plus gradient with respect to the links."""
    _, target = build("schwinger", L, args, device, dtype)
    torch.manual_seed(0)
    links = 2 * math.pi * torch.rand(args.batch_size, 2, L, L, device=device, dtype=dtype)

    def value():
        with torch.no_grad():
            target.log_prob(links)

    def value_and_grad():
        x = links.clone().requires_grad_(True)
        target.log_prob(x).sum().backward()

    out = {"L": L, "batch_size": args.batch_size}
    for key, fn in (("action_s", value), ("action_grad_s", value_and_grad)):
        for _ in range(args.warmup):
            fn()
        out[key] = timed(fn, device, args.steps)
    out["bound"] = out["action_s"] / out["action_grad_s"]
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
    out = {
        "ess": normalized_ess(lw.numpy()),
        "acceptance": imh_acceptance(lw.numpy()),
        "plaquette": float((w * plaq).sum()),
        "chi_t": float(topological_susceptibility(charge.round(), target.L * target.L, lw)),
    }
    if hasattr(target, "exact_average_plaquette"):
        out["exact_plaquette"] = target.exact_average_plaquette()
    return out


def fast_run(target_name, name, L, args, device, dtype, train_seconds, beta=2.0, compile=True):
    """fit()'s fast step for one estimator: compile time, step time, peak memory, then training for
    ``train_seconds`` of wall time (after compilation) and the ESS / acceptance of the trained flow."""
    torch.manual_seed(1)
    flow, target = build(target_name, L, args, device, dtype, seed=1, beta=beta)
    cuda = device.type == "cuda"
    if compile:
        torch._dynamo.reset()  # every run compiles from scratch: comparable compile times, no stale guards
    options = StepOptions(
        compile=compile,
        cuda_graph=cuda and target_name == "u1",  # the Schwinger model's LU cannot be captured
        precision="fp32",
        tf32=cuda,
        fused_adam=True,
    )
    cfg = TrainConfig(
        steps=10**9, batch_size=args.train_batch_size, lr=args.lr, schedule="constant", estimator=name, clip=10.0
    )
    params = [p for p in flow.parameters() if p.requires_grad]
    with matmul_precision(options.tf32):
        base = memory_start(device)
        step = make_step(flow, target, ESTIMATORS[name], make_optimizer(params, cfg, options), params, cfg, options)
        t0 = time.perf_counter()
        for _ in range(args.warmup + 1):  # compilation, and the CUDA graph capture after 3 steps
            step()
        sync(device)
        compile_s = time.perf_counter() - t0
        step_s = timed(step, device, args.steps)
        peak = memory_peak(device, base)
        steps, skipped = 0, torch.zeros((), device=device)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < train_seconds:
            skipped += ~step().ok
            steps += 1
        sync(device)
        wall = time.perf_counter() - t0
    out = {
        "target": target_name,
        "estimator": name,
        "L": L,
        "compile": options.compile,
        "cuda_graph": bool(getattr(step, "graph", None) is not None),
        "compile_s": compile_s,
        "step_s": step_s,
        "peak_mib": peak,
        "train_seconds": wall,
        "train_steps": steps,
        "skipped": int(skipped),
    }
    out.update(evaluate(flow, target, args.eval_samples, args.train_batch_size))
    return out


def guarded(fn, *a, **kw):
    """Run one measurement; an estimator that fails (out of memory, unsupported) is recorded, not fatal."""
    try:
        return fn(*a, **kw)
    except (RuntimeError, TypeError, ValueError) as e:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}


def ratio_lines(rows, key, label):
    """``reinforce/reparam = 1.33`` style lines for time and memory, per size."""
    lines, out = [], []
    for L in sorted({r["L"] for r in rows}):
        ref = next((r for r in rows if r["L"] == L and r["estimator"] == "reparam"), None)
        if ref is None:
            continue
        for r in rows:
            if r["L"] != L or r["estimator"] == "reparam":
                continue
            q = {"L": L, "estimator": r["estimator"], "kind": label, "time_ratio": r[key] / ref[key]}
            text = f"{label} L={L}: {r['estimator']}/reparam time = {q['time_ratio']:.2f}"
            if r.get("peak_mib") is not None and ref.get("peak_mib"):
                q["memory_ratio"] = r["peak_mib"] / ref["peak_mib"]
                text += f", memory = {q['memory_ratio']:.2f}"
            out.append(q)
            lines.append(text)
    return out, lines


def print_training(r):
    if "error" in r or "skipped_run" in r:
        print(f"{r.get('L', ''):>3} {r.get('estimator', ''):>10} {r.get('error', r.get('skipped_run'))}", flush=True)
        return
    peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
    print(
        f"{r['L']:>3} {r['estimator']:>10} {r['compile_s']:>9.1f} {1000 * r['step_s']:>9.1f} "
        f"{peak:>9} {r['train_steps']:>6} "
        f"{r['train_seconds']:>6.1f} {r['ess']:>7.4f} {r['acceptance']:>7.3f} {r['plaquette']:>7.4f} "
        f"{r['chi_t']:>8.4f}",
        flush=True,
    )


TRAIN_HEADER = (
    f"{'L':>3} {'estimator':>10} {'compile s':>9} {'step ms':>9} {'peak MiB':>9} {'steps':>6} {'train s':>6} "
    f"{'ESS':>7} {'accept':>7} {'plaq':>7} {'chi_t':>8}"
)


def _add_options(p):
    """The command line's options: the sizes and budgets of each part, and the flow's architecture."""
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--quick", action="store_true", help="small CPU check (L = 4, 8; short budgets; no compile)")
    p.add_argument("--sizes", type=int, nargs="+", default=[8, 12, 16], help="sizes of the eager timing")
    p.add_argument("--ops-size", type=int, default=8, help="lattice size of the operation counts (0: skip)")
    p.add_argument("--ops-batch-size", type=int, default=64)
    p.add_argument("--fast-sizes", type=int, nargs="*", default=[16], help="sizes of the fast-step runs")
    p.add_argument("--estimators", nargs="+", default=["reparam", "reinforce", "path"])
    p.add_argument("--batch-size", type=int, default=256, help="batch of the eager timing")
    p.add_argument("--train-batch-size", type=int, default=256)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--train-seconds", type=float, default=40.0, help="Schwinger training budget per estimator")
    p.add_argument("--eval-samples", type=int, default=8192)
    p.add_argument("--u1-size", type=int, default=8, help="U(1) lattice size (0: skip the U(1) runs)")
    p.add_argument("--u1-beta", type=float, default=2.0)
    p.add_argument("--u1-estimators", nargs="+", default=["path", "reparam"])
    p.add_argument("--u1-seconds", type=float, default=25.0, help="U(1) training budget per estimator")
    p.add_argument(
        "--u1-compile", action="store_true", help="compile the U(1) step too (default: CUDA graph, no compile)"
    )
    p.add_argument("--no-compile", dest="compile", action="store_false", help="fast step without torch.compile")
    p.add_argument("--max-minutes", type=float, default=8.0, help="skip training runs that would end later")
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--out", help="JSON output file")


def _apply_quick(args):
    """--quick: small sizes, short budgets, no compile (in place)."""
    args.sizes, args.fast_sizes, args.ops_size, args.u1_size = [4, 8], [8], 8, 4
    args.batch_size = args.train_batch_size = args.ops_batch_size = 32
    args.warmup, args.steps, args.eval_samples = 1, 3, 1024
    args.train_seconds, args.u1_seconds = 8.0, 5.0
    args.layers, args.channels = 8, 8
    args.compile = False


def _run_ops(names, args, device, dtype):
    """The aten operations per eager training step of each estimator, printed as they come."""
    ops = []
    if args.ops_size:
        print(f"aten operations per eager training step, L={args.ops_size}, batch {args.ops_batch_size}")
        print(f"{'estimator':>10} {'ops':>7} {'non-view':>9}")
        for name in names:
            r = guarded(count_ops, name, args.ops_size, args, device, dtype)
            ops.append(r)
            if "error" not in r:
                print(f"{name:>10} {r['ops']:>7} {r['non_view_ops']:>9}", flush=True)
    return ops


def _run_eager(names, args, device, dtype):
    """The eager steps' times and peaks per size and estimator, printed as they come, and their ratios."""
    eager = []
    print(f"\neager steps, batch {args.batch_size}\n{'L':>3} {'estimator':>10} {'step [ms]':>10} {'peak [MiB]':>11}")
    for L in args.sizes:
        for name in names:
            r = guarded(time_eager, name, L, args, device, dtype)
            if "error" in r:
                print(f"{L:>3} {name:>10} failed: {r['error']}", flush=True)
                continue
            eager.append(r)
            peak = f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "-"
            print(f"{L:>3} {name:>10} {1000 * r['step_s']:>10.1f} {peak:>11}", flush=True)
    ratios, lines = ratio_lines(eager, "step_s", "eager")
    print("\n".join(lines))
    return eager, ratios


def _run_action(args, device, dtype):
    """The action's time with and without its gradient per size, printed as they come."""
    action = []
    print(f"\n{'L':>3} {'action [ms]':>12} {'action+grad [ms]':>17} {'bound fwd/(fwd+bwd)':>20}")
    for L in args.sizes:
        r = time_action(L, args, device, dtype)
        action.append(r)
        print(
            f"{L:>3} {1000 * r['action_s']:>12.1f} {1000 * r['action_grad_s']:>17.1f} {r['bound']:>20.2f}", flush=True
        )
    print("(bound: the REINFORCE/reparam time ratio if the flow cost nothing: action / (action + gradient))")
    return action


def _run_training(names, args, device, dtype, deadline):
    """The fast-step training runs (Schwinger, then U(1)) that fit before ``deadline``: (schwinger rows, u1 rows)."""
    runs = [("schwinger", name, L, args.train_seconds, 2.0, args.compile) for L in args.fast_sizes for name in names]
    if args.u1_size:
        u1_runs = [
            ("u1", name, args.u1_size, args.u1_seconds, args.u1_beta, args.u1_compile) for name in args.u1_estimators
        ]
        runs += u1_runs
    fast, u1 = [], []
    compile_estimate = 60.0  # seconds; updated from the runs; a run also needs about 15 s to warm up and evaluate
    print("\nfast step (Schwinger: compile, no CUDA graph; U(1): CUDA graph), then training at equal wall time")
    header_for = None
    for target_name, name, L, seconds, beta, compile in runs:
        if target_name != header_for:
            label = "Schwinger" if target_name == "schwinger" else f"U(1) beta={beta}"
            print(f"\n{label}\n{TRAIN_HEADER}")
            header_for = target_name
        left = deadline - time.perf_counter()
        if left < seconds + 15.0 + (compile_estimate if compile else 0.0):
            r = {"target": target_name, "estimator": name, "L": L, "skipped_run": "not run: --max-minutes budget"}
        else:
            r = guarded(fast_run, target_name, name, L, args, device, dtype, seconds, beta=beta, compile=compile)
            r.update({"target": target_name, "estimator": name, "L": L})
            if "compile_s" in r and compile:
                compile_estimate = max(compile_estimate, r["compile_s"])
        (fast if target_name == "schwinger" else u1).append(r)
        print_training(r)
    return fast, u1


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _add_options(p)
    args = p.parse_args(argv)
    if args.quick:
        _apply_quick(args)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    start = time.perf_counter()
    deadline = start + 60 * args.max_minutes

    names = []
    for name in args.estimators:
        if name in ESTIMATORS:
            names.append(name)
        else:
            print(f"note: estimator {name!r} is not in flowvi.objectives.estimators.ESTIMATORS; skipped")

    ops = _run_ops(names, args, device, dtype)
    eager, ratios = _run_eager(names, args, device, dtype)
    action = _run_action(args, device, dtype)
    fast, u1 = _run_training(names, args, device, dtype, deadline)
    exact = next((r["exact_plaquette"] for r in u1 if "exact_plaquette" in r), None)
    if exact is not None:
        print(f"U(1) exact plaquette {exact:.4f}")
    fast_ok = [r for r in fast if "step_s" in r]
    fast_ratios, lines = ratio_lines(fast_ok, "step_s", "fast")
    print("\n" + "\n".join(lines))
    total = time.perf_counter() - start
    print(f"total {total:.0f} s")

    result = {
        "benchmark": "lattice/schwinger+u1",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "dtype": args.dtype,
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "memory": "peak torch.cuda.max_memory_allocated during the step's warm-up and timed steps, above the "
        "flow and target",
        "ops": ops,
        "eager": eager,
        "eager_ratios": ratios,
        "action": action,
        "fast": fast,
        "fast_ratios": fast_ratios,
        "u1": u1,
        "total_seconds": total,
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
