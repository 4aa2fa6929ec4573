"""Data-parallel scaling: samples per second of flowvi's training step on 1 and on N GPUs (NCCL).

Each rank trains the same Real NVP on its own batch of ``batch`` samples and the gradients are
averaged over ranks (exactly what ``torchrun -m flowvi fit`` does), so N ranks process N x batch
samples per step. Reported per configuration and step variant: median ms/step (CUDA events, after
warm-up), samples/s, and the scaling = samples/s on N GPUs / samples/s on 1 GPU (the goal: >= 1.8 on
2 GPUs), both for the same variant and against the fastest 1-GPU variant.

    PYTHONPATH=src python benchmarks/ddp.py --device cuda --gpus 2 --out ddp.json
    PYTHONPATH=src python benchmarks/ddp.py --device cuda --gpus 2 --configs 1 \
        --variants fast,fast-overlap,fast-bf16comm,fast-overlap-bf16comm --out ddp2.json
    PYTHONPATH=src python benchmarks/ddp.py --quick               # 2 CPU processes with gloo

Variants (``--variants``): ``eager`` (no compile, no CUDA graph), ``graph`` (eager backward, whose
gradient hooks start each bucket's all-reduce during the backward pass, captured in a CUDA graph),
``compile`` (torch.compile of the whole loss, no graph), ``fast`` (compile + CUDA graph: the default
fast step; one compiled backward, so the all-reduce follows it), ``compile-overlap`` and
``fast-overlap`` (the flow compiled layer by layer, flowvi.training.overlap, so the all-reduce of the last
layers overlaps the backward of the first ones; ``fast-overlap@4`` compiles regions of 4 layers),
and ``-bf16comm`` versions of ``graph``, ``fast`` and ``fast-overlap`` (gradients all-reduced in bf16).
A ``-bf16comm`` variant on one GPU is its base variant (no communication), so its 1-GPU row is copied
from the base variant when that ran.

NVLink multicast stays off (NCCL_NVLS_ENABLE=0 and friends are set here for every process).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

# Must be in the environment before NCCL starts in any process (mandatory on the lent multi-GPU machines).
os.environ["NCCL_NVLS_ENABLE"] = "0"
os.environ["TORCH_SYMM_MEM_DISABLE_MULTICAST"] = "1"
os.environ["NVSHMEM_DISABLE_NVLS"] = "1"

import torch  # noqa: E402
import torch.distributed as td  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from flowvi import realnvp
from flowvi.objectives.estimators import ESTIMATORS
from flowvi.training import distributed as dist
from flowvi.training.fast_step import StepOptions, make_optimizer, make_step, matmul_precision
from flowvi.training.loop import TrainConfig, make_scheduler

CONFIGS = [(1000, 4096, 16, 512), (5000, 1024, 16, 512)]  # the two larger configurations of step.py
QUICK_CONFIGS = [(20, 128, 2, 32)]
VARIANTS = {  # compile, cuda_graph, overlap (compile layer by layer), dtype of the gradient all-reduce
    "eager": (False, False, False, "fp32"),
    "graph": (False, True, False, "fp32"),
    "compile": (True, False, False, "fp32"),
    "fast": (True, True, False, "fp32"),
    "compile-overlap": (True, False, True, "fp32"),
    "fast-overlap": (True, True, True, "fp32"),
    "graph-bf16comm": (False, True, False, "bf16"),
    "fast-bf16comm": (True, True, False, "bf16"),
    "fast-overlap-bf16comm": (True, True, True, "bf16"),
}


def parse_variant(variant: str) -> tuple[str, int]:
    """``'fast-overlap@4'`` -> ``('fast-overlap', 4)``: an overlap variant compiled in regions of 4 layers
    (``@K`` is only for the overlap variants; without it, K = 1: layer by layer)."""
    name, _, k = variant.partition("@")
    if name not in VARIANTS or (k and not (VARIANTS[name][2] and k.isdigit() and int(k) >= 1)):
        raise ValueError(variant)
    return name, int(k or 1)


def base_variant(variant: str) -> str:
    """The variant that runs the same step without the all-reduce compression (the same on one GPU)."""
    name, k = parse_variant(variant)
    return name.removesuffix("-bf16comm") + (f"@{k}" if "@" in variant else "")


class StandardGaussian(torch.nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dim, self.event_shape = dim, (dim,)

    def log_prob(self, x):
        return -0.5 * (x * x).sum(-1) - 0.9189385332046727 * self.dim


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, device_type, job, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if device_type == "cuda":
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(1)  # two ranks on a few cores: spinning thread pools would time each other
    td.init_process_group("nccl" if device_type == "cuda" else "gloo", rank=rank, world_size=world)
    try:
        out = _measure(device, world, rank, **job)
        if rank == 0:
            queue.put(out)
    except Exception as e:  # noqa: BLE001  (report the failure as a result row)
        if rank == 0:
            queue.put({"error": f"{type(e).__name__}: {e}"[:400]})
        dist.shutdown()
        raise
    dist.leave()


def _measure(device, world, rank, d, batch, layers, hidden, variant, warmup, steps, bucket_mb):
    name, overlap_layers = parse_variant(variant)
    compile_, graph, overlap, comm = VARIANTS[name]
    torch.manual_seed(0)
    flow = realnvp(d, layers=layers, hidden=hidden, depth=2, affine=False, loft=False).to(device)
    target = StandardGaussian(d)
    cfg = TrainConfig(steps=10**9, batch_size=batch, schedule="constant")
    cuda = device.type == "cuda"
    options = StepOptions(
        compile=compile_,
        cuda_graph=graph and cuda,
        precision="fp32",
        tf32=cuda,
        fused_adam=True,
        overlap=overlap,
        overlap_layers=overlap_layers,
    )
    params = list(flow.parameters())
    optimizer = make_optimizer(params, cfg, options)
    scheduler = make_scheduler(optimizer, cfg)
    hook = dist.GradientAverager(params, bucket_mb=bucket_mb, comm_dtype=comm) if world > 1 else None
    step_fn = make_step(flow, target, ESTIMATORS["reparam"], optimizer, params, cfg, options, grad_hook=hook)
    torch.manual_seed(1 + rank)

    def step():
        ok = bool(step_fn().ok)
        scheduler.step()
        return ok

    with matmul_precision(options.tf32):
        t0 = time.perf_counter()
        for _ in range(warmup):
            step()
        warm_s = time.perf_counter() - t0
        td.barrier()
        times = []
        for _ in range(steps):
            if cuda:
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
    # The slowest rank sets the pace: take each step's maximum over ranks.
    per_rank = torch.tensor(times, dtype=torch.float64)
    gathered = [torch.empty_like(per_rank) for _ in range(world)]
    td.all_gather_object(gathered, per_rank)
    slowest = torch.stack(gathered).max(0).values
    ms = statistics.median(slowest.tolist())
    return {
        "ms": ms,
        "samples_per_s": world * batch / (ms * 1e-3),
        "warmup_s": warm_s,
        "graph_used": bool(getattr(step_fn, "graph", None) is not None),
        "overlap_used": bool(getattr(getattr(step_fn, "options", None), "overlap", False)),
        "grad_comm": comm,
        "peak_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
    }


def run_job(world, device_type, job, timeout_s):
    """Run one measurement on ``world`` processes; a job that hangs (for example a collective that
    cannot be captured in a CUDA graph) is killed after ``timeout_s`` and reported as an error."""
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = _free_port()
    procs = mp.start_processes(
        _worker, args=(world, port, device_type, job, queue), nprocs=world, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout_s
    try:
        while not procs.join(timeout=1.0):
            if time.monotonic() > deadline:
                for proc in procs.processes:
                    if proc.is_alive():
                        proc.kill()
                return {"error": f"timed out after {timeout_s} s"}
    except Exception as e:  # noqa: BLE001  (a rank failed: report it)
        if queue.empty():
            return {"error": f"{type(e).__name__}: {str(e)[-300:]}"}
    return queue.get() if not queue.empty() else {"error": "no result"}


def _add_options(p):
    """The command line's options."""
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--gpus", type=int, default=2, help="the N of the N-process runs")
    p.add_argument("--out")
    p.add_argument("--quick", action="store_true", help="one small configuration on 2 CPU processes (gloo)")
    p.add_argument("--variants", help=f"step variants: {', '.join(VARIANTS)} (default graph,compile,fast on CUDA)")
    p.add_argument("--configs", help=f"indices into the configurations {CONFIGS} (default all), e.g. 1")
    p.add_argument("--steps", type=int)
    p.add_argument("--job-timeout", type=float, default=180.0, help="seconds before a hung job is killed")
    p.add_argument("--bucket-mb", type=float, default=25.0, help="gradient all-reduce bucket size")
    p.add_argument("--warmup", type=int)


def _checked_variants(p, args, device_type):
    """The step variants to run (default graph,compile,fast on CUDA, eager on the CPU); unknown ones are an error."""
    variants = (args.variants or ("graph,compile,fast" if device_type == "cuda" else "eager")).split(",")
    unknown = []
    for v in variants:
        try:
            parse_variant(v)
        except ValueError:
            unknown.append(v)
    if unknown:
        p.error(
            f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)} (an overlap variant may "
            "end in @K: compiled in regions of K layers)"
        )
    return variants


def _run_config(config, variants, worlds, device_type, warmup, steps, args):
    """Every variant at every world size for one configuration (d, batch, layers, hidden): {"variant/world": result}."""
    res = {}
    for variant in variants:
        for world in worlds:
            base = res.get(f"{base_variant(variant)}/1")
            if world == 1 and base_variant(variant) != variant and base is not None and "ms" in base:
                res[f"{variant}/1"] = {**base, "variant": variant, "same_as": base_variant(variant)}
                continue
            job = {**config, "variant": variant, "warmup": warmup, "steps": steps, "bucket_mb": args.bucket_mb}
            res[f"{variant}/{world}"] = {
                "variant": variant,
                "world": world,
                **run_job(world, device_type, job, args.job_timeout),
            }
    return res


def _add_scaling(res):
    """Add to each multi-process result its speed-up over the same variant and over the best one-process run."""
    ok1 = [r for r in res.values() if r["world"] == 1 and "ms" in r]
    best1 = max((r["samples_per_s"] for r in ok1), default=None)
    for r in res.values():
        if "ms" not in r or r["world"] == 1:
            continue
        same = res.get(f"{r['variant']}/1", {})
        r["scaling_same_variant"] = r["samples_per_s"] / same["samples_per_s"] if "samples_per_s" in same else None
        r["scaling_vs_best_1"] = r["samples_per_s"] / best1 if best1 else None


def _print_table(d, batch, layers, hidden, variants, res):
    """One configuration's results as a table."""
    print(f"\n## d={d} B={batch}/GPU L={layers} h={hidden}")
    w = max(10, *(len(v) for v in variants))
    print(f"{'variant':{w}s} {'GPUs':>4s} {'ms/step':>8s} {'samples/s':>11s} {'scale':>6s} {'vs best1':>8s} graph")
    for r in res.values():
        if "ms" not in r:
            print(f"{r['variant']:{w}s} {r['world']:4d} error: {r.get('error', '')[:100]}")
            continue
        sc = f"{r['scaling_same_variant']:6.2f}" if r.get("scaling_same_variant") else "     -"
        sb = f"{r['scaling_vs_best_1']:8.2f}" if r.get("scaling_vs_best_1") else "       -"
        same = f" (= {r['same_as']})" if "same_as" in r else ""
        print(
            f"{r['variant']:{w}s} {r['world']:4d} {r['ms']:8.3f} {r['samples_per_s']:11.0f} {sc} {sb} "
            f"{r['graph_used']}{same}"
        )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _add_options(p)
    args = p.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)
    device_type = torch.device(args.device).type
    if device_type == "cuda" and torch.cuda.device_count() < args.gpus:
        print(f"# only {torch.cuda.device_count()} GPU(s) here; the {args.gpus}-GPU runs are skipped")
    configs = QUICK_CONFIGS if args.quick else CONFIGS
    if args.configs:
        try:
            configs = [configs[int(i)] for i in args.configs.split(",")]
        except (ValueError, IndexError):
            p.error(f"--configs takes indices 0..{len(configs) - 1} separated by commas, got {args.configs!r}")
    variants = _checked_variants(p, args, device_type)
    steps = args.steps or (5 if args.quick else 30)
    warmup = args.warmup or (3 if args.quick else 10)
    worlds = [1, args.gpus] if device_type == "cpu" or torch.cuda.device_count() >= args.gpus else [1]
    info = {
        "device": torch.cuda.get_device_name(0) if device_type == "cuda" else "cpu",
        "gpus": torch.cuda.device_count() if device_type == "cuda" else 0,
        "torch": torch.__version__,
        "NCCL_NVLS_ENABLE": os.environ["NCCL_NVLS_ENABLE"],
    }
    print(f"# {info}")
    rows = []
    for d, batch, layers, hidden in configs:
        config = {"d": d, "batch": batch, "layers": layers, "hidden": hidden}
        res = _run_config(config, variants, worlds, device_type, warmup, steps, args)
        _add_scaling(res)
        rows.append({"config": config, "results": res})
        if args.out:  # after every configuration, so a run cut short keeps what it measured
            Path(args.out).write_text(json.dumps({"info": info, "rows": rows}, indent=1))
        _print_table(d, batch, layers, hidden, variants, res)
    out = {"info": info, "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
        print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
