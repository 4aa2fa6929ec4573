"""Training-step speed: flowvi beside normflows and zuko, in one process on one device.

A reverse-KL Real NVP step (sample a batch from the flow, loss = mean(log q - log p) for a standard
Gaussian target p, backward, Adam update), for four configurations (d, batch, coupling layers,
hidden width). Every library builds the same architecture: ``layers`` affine couplings, each with
one two-hidden-layer ReLU MLP of width ``hidden`` that maps the conditioning half to the scale and
shift of the other half (flowvi: ``realnvp(..., affine=False, loft=False)`` with its default
asymmetric soft clamp; normflows: ``AffineCouplingBlock`` with alternating channel splits; zuko:
``flows.RealNVP``).

Reported per run: median ms/step over the timed steps (CUDA events around each step, after warm-up
steps that also absorb compilation and CUDA-graph capture), peak device memory (over all steps, and "steady": over
the timed steps only, without the first compilation's transients), achieved matmul
FLOP/s (3 x the forward matmul FLOPs per step) against the device's measured peak, and for flowvi
the ratio to the faster peer at the same matmul precision and the agreement of its losses and
parameters with flowvi's plain float32 step (same seed, same samples).

    PYTHONPATH=src python benchmarks/step.py --device cuda --out step.json
    PYTHONPATH=src python benchmarks/step.py --quick            # small CPU check
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from flowvi import realnvp
from flowvi.objectives.estimators import ESTIMATORS
from flowvi.training.fast_step import StepOptions, make_optimizer, make_step, matmul_precision
from flowvi.training.loop import TrainConfig, make_scheduler

CONFIGS = [  # d, batch, coupling layers, hidden
    (100, 256, 8, 256),
    (1000, 256, 16, 256),
    (1000, 4096, 16, 512),
    (5000, 1024, 16, 512),
]
QUICK_CONFIGS = [(10, 64, 2, 16), (40, 128, 4, 32)]

# flowvi variants: (compile, cuda_graph, precision, tf32). "plain" is the float32 reference.
VARIANTS = {
    "plain": (False, False, "fp32", False),
    "graph": (False, True, "fp32", True),
    "fast": (True, True, "fp32", True),  # what fit() uses on CUDA by default
    "fast-fp32": (True, True, "fp32", False),  # strict float32 matmuls
    "fast-bf16": (True, True, "bf16", True),
    "compile": (True, False, "fp32", True),
    "eager-fused": (False, False, "fp32", True),
}
DATASHEET_TFLOPS = {  # dense, per precision (NVIDIA H100/H200 SXM datasheets)
    "H100": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4},
    "H200": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4},
}


class StandardGaussian(nn.Module):
    """The target: ``log p(x) = -|x|^2 / 2 - d/2 log(2 pi)`` (log Z = 0)."""

    def __init__(self, dim):
        super().__init__()
        self.dim, self.event_shape = dim, (dim,)
        self.log_evidence = 0.0

    def log_prob(self, x):
        return -0.5 * (x * x).sum(-1) - 0.5 * self.dim * math.log(2 * math.pi)


def matmul_flops(d, batch, layers, hidden):
    """Matmul FLOPs of one training step: 3 x forward (backward = 2 x forward)."""
    n_cond, n_trans = d // 2, d - d // 2
    per_layer = 2 * batch * (n_cond * hidden + hidden * hidden + hidden * 2 * n_trans)
    return 3 * layers * per_layer


# ----------------------------------------------------------------------------------- timing


def allocated(device):
    """Bytes allocated on ``device`` now, after freeing cuBLAS's workspaces (32 MiB on Hopper for each
    pair of thread and stream that ran a matrix product). Every run measures from here, so each pays
    for the workspaces it creates itself (two for the default stream: the caller's thread and
    autograd's; two in a CUDA graph's pool for flowvi's capture stream), not only the first run of
    the process."""
    gc.collect()
    if device.type != "cuda":
        return 0
    torch.cuda.synchronize(device)
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:
        clear()
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated(device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, device, warmup, steps, base=0):
    """(median ms, all ms, warm-up seconds, peak bytes, steady peak bytes) of ``step()`` calls. The peaks count
    the bytes allocated above ``base`` (the allocation before the model was built), so that what earlier runs
    of the same process left behind (compiled graphs' memory pools) is not charged to this one: the first over
    warm-up and timed steps (with the first compilation's transients), the steady one over the timed steps."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(device)
    warm_s = time.perf_counter() - t0
    if device.type == "cuda":
        warm_peak = torch.cuda.max_memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            step()
            times.append(1e3 * (time.perf_counter() - t))
    if device.type != "cuda":
        return statistics.median(times), times, warm_s, None, None
    steady = torch.cuda.max_memory_allocated(device)
    return statistics.median(times), times, warm_s, max(warm_peak, steady) - base, steady - base


# ------------------------------------------------------------------------------------ peers


def normflows_step(d, batch, layers, hidden, device):
    import normflows as nf

    flows = []
    for i in range(layers):
        net = nf.nets.MLP([d // 2, hidden, hidden, 2 * (d - d // 2)], init_zeros=True)
        flows.append(
            nf.flows.AffineCouplingBlock(net, scale=True, scale_map="exp", split_mode=("channel", "channel_inv")[i % 2])
        )
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian(d, trainable=False), flows, StandardGaussian(d)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model.reverse_kld(batch)
        loss.backward()
        opt.step()
        return loss

    return step


def zuko_step(d, batch, layers, hidden, device):
    import zuko

    flow = zuko.flows.RealNVP(features=d, transforms=layers, hidden_features=(hidden, hidden)).to(device)
    target = StandardGaussian(d)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        x, log_q = flow().rsample_and_log_prob((batch,))
        loss = (log_q - target.log_prob(x)).mean()
        loss.backward()
        opt.step()
        return loss

    return step


PEERS = {"normflows": normflows_step, "zuko": zuko_step}


# ------------------------------------------------------------------------------------ flowvi


def flowvi_run(d, batch, layers, hidden, device, estimator, variant, warmup, steps, timer=None):
    """Time flowvi's training step (exactly what fit() runs per step) and keep its losses.
    ``timer(step, device, warmup, steps, base)`` replaces :func:`time_steps` (the profiler uses it)."""
    compile_, graph, precision, tf32 = VARIANTS[variant]
    if compile_:
        # Start each compiled run from an empty compile cache: dynamo stops compiling a function
        # after a few recompilations (one per architecture or precision), which would leave later
        # runs uncompiled without saying so.
        torch._dynamo.reset()
    torch.manual_seed(0)
    base = allocated(device)
    flow = realnvp(d, layers=layers, hidden=hidden, depth=2, affine=False, loft=False).to(device)
    with torch.no_grad():
        # Move the flow off the identity (seeded, the same for every variant): at the identity the flow
        # equals this target, where the path and REINFORCE gradients are exactly zero and a comparison
        # of gradients would be empty. The work per step does not depend on the values.
        g = torch.Generator().manual_seed(2)
        for p in flow.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g).to(p))
    target = StandardGaussian(d)
    cfg = TrainConfig(steps=10**9, batch_size=batch, lr=1e-3, schedule="constant", estimator=estimator)
    options = StepOptions(
        compile=compile_,
        cuda_graph=graph,
        precision=precision,
        tf32=tf32 and device.type == "cuda",
        fused_adam=variant != "plain",
    )
    params = [p for p in flow.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg, options)
    scheduler = make_scheduler(optimizer, cfg)
    step_fn = make_step(flow, target, ESTIMATORS[estimator], optimizer, params, cfg, options)
    losses = []
    first_grad = []

    def step():
        result = step_fn()
        if not bool(result.ok):  # fit() reads this flag every step; so does the benchmark
            raise RuntimeError("non-finite step in the benchmark")
        scheduler.step()
        losses.append(result.loss)
        if not first_grad:  # the first (warm-up) step's clipped gradient, for the agreement check
            # Copied to the host tensor by tensor: a concatenation on the device (and its float64 copy)
            # would be charged to the step's peak memory (3 x the gradients' size).
            first_grad.append(torch.cat([p.grad.reshape(-1).cpu() for p in params]).double())

    torch.manual_seed(1)
    with warnings.catch_warnings(record=True) as caught, matmul_precision(options.tf32):
        warnings.simplefilter("always")
        med, times, warm_s, peak, steady = (timer or time_steps)(step, device, warmup, steps, base)
    notes = sorted({str(w.message).splitlines()[0][:200] for w in caught if issubclass(w.category, RuntimeWarning)})
    return {
        "ms": med,
        "ms_all": times,
        "warmup_s": warm_s,
        "peak_bytes": peak,
        "steady_peak_bytes": steady,
        "losses": [float(v) for v in losses],
        "grad": first_grad[0],
        "graph_used": bool(getattr(step_fn, "graph", None) is not None),
        "notes": notes,
    }


def kernel_category(name: str) -> str:
    """Which kind of work a CUDA kernel does, from its name (cuBLAS/CUTLASS matrix products, Adam, the rest)."""
    n = name.lower()
    if any(k in n for k in ("gemm", "xmma", "cutlass", "cublas", "triton_tem")):
        return "matmul"
    if "multi_tensor" in n or "adam" in n:
        return "adam"
    if "triton" in n or "elementwise" in n or "reduce" in n:
        return "elementwise"
    return "other"


def profile_step(d, batch, layers, hidden, device, variant="compile", steps=5):
    """GPU time per step by kind of kernel (torch.profiler) of flowvi's step, uncaptured so that every kernel
    is seen; returns ({category: ms per step}, [(ms per step, calls per step, kernel), ...] top 12)."""
    from torch.profiler import ProfilerActivity, profile

    found = {}

    def timer(step, device, warmup, steps_, base=0):
        for _ in range(max(warmup, 3)):
            step()
        sync(device)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                step()
            sync(device)
        by_cat, by_kernel = {}, {}
        for e in prof.events():
            if e.device_type != torch.autograd.DeviceType.CUDA:
                continue
            ms = getattr(e, "device_time_total", 0.0) / 1e3 / steps
            by_cat[kernel_category(e.name)] = by_cat.get(kernel_category(e.name), 0.0) + ms
            t, n = by_kernel.get(e.name, (0.0, 0))
            by_kernel[e.name] = (t + ms, n + 1)
        found["by_category_ms"] = by_cat
        top = sorted(by_kernel.items(), key=lambda kv: -kv[1][0])[:12]
        found["top_kernels"] = [(t, n / steps, name[:100]) for name, (t, n) in top]
        return float("nan"), [], 0.0, None, None

    flowvi_run(d, batch, layers, hidden, device, "reparam", variant, 3, steps, timer=timer)
    return found["by_category_ms"], found["top_kernels"]


def agreement(run, ref, d):
    """Agreement with the plain float32 step on the same samples: the largest loss difference over
    the steps per dimension (nats), and the relative L2 distance of the first step's (clipped)
    gradient, ||g - g_plain|| / ||g_plain||, both from the same parameters and the same draws."""
    n = min(len(run["losses"]), len(ref["losses"]))
    pairs = zip(run["losses"][:n], ref["losses"][:n], strict=True)
    loss_err = max(abs(a - b) for a, b in pairs) / d
    grad_rel = float((run["grad"] - ref["grad"]).norm() / ref["grad"].norm().clamp_min(1e-300))
    return {"loss_err_per_dim": loss_err, "grad_rel": grad_rel}


# ------------------------------------------------------------------------------------ device


def measured_peak_tflops(device, quick):
    """Matmul ceilings measured on this device (fp32 strict, tf32, bf16), TFLOP/s."""
    n = 1024 if quick else 8192
    out = {}
    for name, dtype, prec in [
        ("fp32", torch.float32, "highest"),
        ("tf32", torch.float32, "high"),
        ("bf16", torch.bfloat16, "highest"),
    ]:
        if device.type == "cpu" and name != "fp32":
            continue
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        before = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision(prec)
        try:
            for _ in range(2):
                a @ b
            sync(device)
            reps = 3 if quick else 10
            t = time.perf_counter()
            for _ in range(reps):
                a @ b
            sync(device)
            out[name] = 2 * n**3 * reps / (time.perf_counter() - t) / 1e12
        finally:
            torch.set_float32_matmul_precision(before)
    return out


def precision_of(variant, device):
    _, _, precision, tf32 = VARIANTS[variant]
    tf32 = tf32 and device.type == "cuda"
    return "bf16" if precision == "bf16" else ("tf32" if tf32 else "fp32")


# -------------------------------------------------------------------------------------- main


def _add_options(p):
    """The command line's options (all of them: the run, the configurations, the variants, the peers)."""
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", help="write the results as JSON")
    p.add_argument("--quick", action="store_true", help="two small configurations, few steps (a CPU check)")
    p.add_argument("--steps", type=int, help="timed steps (default 30; 5 with --quick)")
    p.add_argument("--warmup", type=int, help="warm-up steps (default 8; 4 with --quick)")
    p.add_argument("--configs", help="indices of the configurations to run, e.g. 0,2")
    p.add_argument("--estimators", default="reparam,path,reinforce")
    p.add_argument(
        "--variants",
        help=f"flowvi variants for reparam: {', '.join(VARIANTS)} (default plain,graph,fast,fast-fp32,fast-bf16 on "
        "CUDA; plain,eager-fused,compile on the CPU)",
    )
    p.add_argument(
        "--estimator-variants", default="plain,fast,eager-fused", help="flowvi variants for the other estimators"
    )
    p.add_argument("--peers", default="normflows,zuko")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also print the GPU time per step of flowvi's compiled step by kind of kernel (matmul, elementwise, Adam)",
    )


def _selected_variants(args, device):
    """The flowvi variants for reparam (checked, with --estimator-variants; those with a CUDA graph only on CUDA)."""
    default_variants = "plain,graph,fast,fast-fp32,fast-bf16" if device.type == "cuda" else "plain,eager-fused,compile"
    variants = [v for v in (args.variants or default_variants).split(",") if v]
    for v in variants + args.estimator_variants.split(","):
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    if device.type != "cuda":
        variants = [v for v in variants if not VARIANTS[v][1]]
    return variants


def _selected_estimators_and_peers(args):
    """(estimators, notes, {peer: version}): what this flowvi and this environment have, and notes on the rest."""
    estimators, notes = [], []
    for name in args.estimators.split(","):
        if name in ESTIMATORS:
            estimators.append(name)
        else:
            notes.append(f"estimator {name!r} not in this flowvi (has {', '.join(ESTIMATORS)}); skipped")
    peers = {}
    for name in filter(None, args.peers.split(",")):  # --peers "" runs flowvi alone
        if name not in PEERS:
            raise SystemExit(f"unknown peer {name!r}; choose from {', '.join(PEERS)}")
        try:
            mod = __import__(name)
            peers[name] = getattr(mod, "__version__", "?")
        except ImportError as e:
            notes.append(f"peer {name} not installed ({e}); skipped")
    return estimators, notes, peers


def _run_peers(d, batch, layers, hidden, device, peers, warmup, steps, results):
    """Time each peer's step (float32, and TF32 on CUDA) into ``results``."""
    for peer in peers:
        for tf32 in (False, True) if device.type == "cuda" else (False,):
            key = peer + ("+tf32" if tf32 else "")
            torch.manual_seed(0)
            base = allocated(device)
            with matmul_precision(tf32):
                step = PEERS[peer](d, batch, layers, hidden, device)
                med, times, warm_s, pk, steady = time_steps(step, device, warmup, steps, base)
            results[key] = {
                "lib": peer,
                "estimator": "reparam",
                "variant": "tf32" if tf32 else "fp32",
                "ms": med,
                "ms_all": times,
                "peak_bytes": pk,
                "steady_peak_bytes": steady,
                "precision": "tf32" if tf32 else "fp32",
            }
            del step


def _run_flowvi(d, batch, layers, hidden, device, est, todo, warmup, steps, cfg_name, results):
    """Time flowvi's ``todo`` variants for the estimator ``est`` into ``results``, with their agreement with plain."""
    ref = None
    for variant in todo:
        try:
            run = flowvi_run(d, batch, layers, hidden, device, est, variant, warmup, steps)
        except Exception as e:  # noqa: BLE001  (report it, go on with the others)
            results[f"flowvi/{est}/{variant}"] = {
                "lib": "flowvi",
                "estimator": est,
                "variant": variant,
                "error": f"{type(e).__name__}: {e}"[:300],
            }
            print(f"# flowvi {est}/{variant} failed at {cfg_name}: {type(e).__name__}: {e}"[:300])
            continue
        if variant == "plain":
            ref = run
        agree = agreement(run, ref, d) if ref is not None else {}
        results[f"flowvi/{est}/{variant}"] = {
            "lib": "flowvi",
            "estimator": est,
            "variant": variant,
            "precision": precision_of(variant, device),
            **{
                k: run[k]
                for k in ("ms", "ms_all", "warmup_s", "peak_bytes", "steady_peak_bytes", "graph_used", "notes")
            },
            **agree,
        }


def _add_rates(results, flops, peak, peers, device):
    """Add each run's TFLOP/s and share of the peak, and for flowvi its time and memory ratios to the peers."""
    for r in results.values():
        if "error" in r:
            continue
        prec = r["precision"]
        r["tflops"] = flops / (r["ms"] * 1e-3) / 1e12
        r["peak_fraction"] = r["tflops"] / peak[prec] if prec in peak else None
        if r["lib"] == "flowvi":
            # Compare with the faster peer at the same matmul precision (bf16 against tf32 peers).
            peer_prec = "tf32" if prec in ("tf32", "bf16") and device.type == "cuda" else "fp32"
            peer_ms = [v["ms"] for v in results.values() if v["lib"] in peers and v["precision"] == peer_prec]
            peer_mem = [v["peak_bytes"] for v in results.values() if v["lib"] in peers and v.get("peak_bytes")]
            r["ratio_to_faster_peer"] = r["ms"] / min(peer_ms) if peer_ms else None
            # Against the fastest peer run at any matmul precision: the peers' float32 runs are sometimes
            # faster than their TF32 runs (host-bound steps), and this ratio does not flatter flowvi then.
            any_ms = [v["ms"] for v in results.values() if v["lib"] in peers]
            r["ratio_to_fastest_peer_any_precision"] = r["ms"] / min(any_ms) if any_ms else None
            r["peer_precision"] = peer_prec
            r["memory_ratio_to_lower_peer"] = r["peak_bytes"] / min(peer_mem) if peer_mem and r["peak_bytes"] else None
            peer_steady = [v["steady_peak_bytes"] for v in results.values() if v["lib"] in peers]
            peer_steady = [b for b in peer_steady if b]
            r["steady_memory_ratio_to_lower_peer"] = (
                r["steady_peak_bytes"] / min(peer_steady) if peer_steady and r.get("steady_peak_bytes") else None
            )


def _profile_row(d, batch, layers, hidden, device, row):
    """Profile flowvi's compiled step at this configuration, store it in ``row`` and print it."""
    by_cat, top = profile_step(d, batch, layers, hidden, device)
    row["profile"] = {"by_category_ms": by_cat, "top_kernels": top}
    total = sum(by_cat.values())
    print(
        f"kernel time per step (compiled, uncaptured): {total:.3f} ms = "
        + ", ".join(f"{k} {v:.3f}" for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1]))
    )
    for t, n, name in top:
        print(f"  {t:7.3f} ms  {n:4.0f} calls  {name}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _add_options(p)
    args = p.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)
    device = torch.device(args.device)
    steps = args.steps or (5 if args.quick else 30)
    warmup = args.warmup or (4 if args.quick else 8)
    configs = QUICK_CONFIGS if args.quick else CONFIGS
    if args.configs:
        configs = [configs[int(i)] for i in args.configs.split(",")]
    variants = _selected_variants(args, device)
    estimators, notes, peers = _selected_estimators_and_peers(args)

    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "peers": peers,
        "steps": steps,
        "warmup": warmup,
    }
    peak = measured_peak_tflops(device, args.quick)
    sheet = next((v for k, v in DATASHEET_TFLOPS.items() if k in info["device"]), None)
    info["peak_tflops_measured"] = peak
    info["peak_tflops_datasheet"] = sheet
    print(f"# {info['device']}, torch {info['torch']}, peers {peers}; matmul peak measured {peak} TFLOP/s")
    for n in notes:
        print(f"# note: {n}")

    rows = []
    for d, batch, layers, hidden in configs:
        flops = matmul_flops(d, batch, layers, hidden)
        cfg_name = f"d={d} B={batch} L={layers} h={hidden}"
        results = {}
        _run_peers(d, batch, layers, hidden, device, peers, warmup, steps, results)
        for est in estimators:
            todo = variants if est == "reparam" else [v for v in args.estimator_variants.split(",") if v in variants]
            if "plain" not in todo:
                todo = ["plain", *todo]
            _run_flowvi(d, batch, layers, hidden, device, est, todo, warmup, steps, cfg_name, results)
        _add_rates(results, flops, peak, peers, device)
        rows.append(
            {
                "config": {"d": d, "batch": batch, "layers": layers, "hidden": hidden},
                "matmul_flops": flops,
                "results": results,
            }
        )
        print_table(cfg_name, results)
        if args.profile and device.type == "cuda":
            _profile_row(d, batch, layers, hidden, device, rows[-1])
        out = {"info": info, "notes": notes, "rows": rows}
        if args.out:  # after every configuration, so a run cut short keeps what it measured
            Path(args.out).write_text(json.dumps(out, indent=1))
            print(f"wrote {args.out}")
    print_summary(rows)
    return out


def _mb(b):
    return f"{b / 2**20:8.1f}" if b else "       -"


def print_table(cfg_name, results):
    print(f"\n## {cfg_name}")
    print(
        f"{'run':28s} {'prec':5s} {'ms/step':>8s} {'peak MiB':>8s} {'steady':>8s} {'TFLOP/s':>8s} {'%peak':>6s} {'x peer':>7s} {'loss err':>9s} {'grad rel':>8s}"
    )
    for key, r in results.items():
        if "error" in r:
            print(f"{key:28s} error: {r['error'][:80]}")
            continue
        frac = f"{100 * r['peak_fraction']:5.1f}%" if r.get("peak_fraction") else "     -"
        ratio = f"{r['ratio_to_faster_peer']:7.3f}" if r.get("ratio_to_faster_peer") else "      -"
        lrel = f"{r['loss_err_per_dim']:9.1e}" if "loss_err_per_dim" in r else "        -"
        urel = f"{r['grad_rel']:8.1e}" if "grad_rel" in r else "       -"
        print(
            f"{key:28s} {r['precision']:5s} {r['ms']:8.3f} {_mb(r['peak_bytes'])} {_mb(r.get('steady_peak_bytes'))} "
            f"{r['tflops']:8.2f} {frac} {ratio} {lrel} {urel}"
        )


def print_summary(rows):
    print("\n## summary: flowvi reparam vs the faster peer (same matmul precision)")
    for row in rows:
        c = row["config"]
        parts = []
        for key, r in row["results"].items():
            if key.startswith("flowvi/reparam/") and r.get("ratio_to_faster_peer"):
                mem, steady = r.get("memory_ratio_to_lower_peer"), r.get("steady_memory_ratio_to_lower_peer")
                text = f"{r['variant']} {r['ms']:.2f} ms x{r['ratio_to_faster_peer']:.3f}"
                text += f" (any-precision peer x{r['ratio_to_fastest_peer_any_precision']:.3f})"
                text += f" mem x{mem:.2f}" if mem else ""
                text += f" (steady x{steady:.2f})" if steady else ""
                parts.append(text)
        print(f"d={c['d']} B={c['batch']} L={c['layers']} h={c['hidden']}: " + "; ".join(parts))


if __name__ == "__main__":
    main()
