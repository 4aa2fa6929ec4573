"""Time per training step and peak memory of each reverse-KL gradient estimator.

A step is: estimator forward, backward, Adam step. Reported: the median over ``--repeats`` timed steps
after ``--warmup`` untimed ones (``torch.cuda.synchronize()`` around each step on GPU), and on GPU the
peak of ``torch.cuda.max_memory_allocated`` over the timed steps. On CPU memory is not measured
(PyTorch's CPU allocator is invisible to tracemalloc), and the column reads ``nan``.

Cases:
  (a) funnel, d = 1000, Real NVP with 16 coupling layers (hidden 256), batch 256: a cheap target;
  (b) an expensive target: log p(x) = -|x|^2/2 + log|det M(x)|, with the per-sample complex matrix
      M(x) = A + diag(exp(i W x)) of size 512 x 512 (A fixed complex Gaussian / sqrt(n), W fixed real),
      log|det| by a batched ``torch.linalg.slogdet`` — the cost profile of a fermion determinant.

    PYTHONPATH=src python benchmarks/estimators.py --device cuda --out estimators_gpu.json
    PYTHONPATH=src python benchmarks/estimators.py --quick --out estimators_cpu.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time

import torch

from flowvi.flows.realnvp import realnvp
from flowvi.objectives.estimators import ESTIMATORS
from flowvi.targets.base import Target
from flowvi.targets.funnel import Funnel
from flowvi.training.fast_step import StepOptions, make_optimizer, make_step
from flowvi.training.loop import TrainConfig

NAMES = ("reparam", "path", "path_naive", "reinforce")


class DeterminantTarget(Target):
    """log p(x) = -|x|^2 / 2 + log|det(A + diag(exp(i W x)))|, one n x n complex determinant per sample."""

    def __init__(self, dim: int, n: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.event_shape = (dim,)
        a = torch.complex(torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)) / math.sqrt(2 * n)
        self.register_buffer("a", a)
        self.register_buffer("w", torch.randn(n, dim, generator=g) / math.sqrt(dim))

    def log_prob(self, x):
        phase = x @ self.w.to(x.dtype).T  # (batch, n)
        diag = torch.polar(torch.ones_like(phase), phase)
        m = self.a.to(diag.dtype) + torch.diag_embed(diag)
        return -0.5 * (x * x).sum(-1) + torch.linalg.slogdet(m).logabsdet.to(x.dtype)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_estimator(name, flow, target, batch, warmup, repeats, device, kind="plain"):
    """``kind="plain"``: the eager step (estimator, backward, Adam). ``kind="fast"``: the step that
    ``fit()`` runs by default on a GPU (torch.compile of the estimator's forward and backward, CUDA
    graph, fused Adam; float32 matmuls here so that only the estimator differs)."""
    estimator = ESTIMATORS[name]
    # Memory: the peak over warm-up and timed steps above what was allocated before the step was built
    # (the flow and the target), so it counts optimizer state, activations, gradients and, for the fast
    # step, the CUDA graph's memory pool, which is allocated once during warm-up.
    sync(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base_mem = torch.cuda.memory_allocated(device)
    if kind == "fast":
        torch._dynamo.reset()
        cfg = TrainConfig(steps=10**9, batch_size=batch, lr=1e-5, schedule="constant", estimator=name, clip=0.0)
        options = StepOptions(
            compile=True,
            cuda_graph=device.type == "cuda",
            precision="fp32",
            tf32=False,
            fused_adam=device.type == "cuda",
        )
        params = [p for p in flow.parameters() if p.requires_grad]
        step = make_step(flow, target, estimator, make_optimizer(params, cfg, options), params, cfg, options)
    else:
        opt = torch.optim.Adam(flow.parameters(), lr=1e-5)

        def step():
            opt.zero_grad(set_to_none=True)
            est = estimator(flow, target, batch)
            est.loss.backward()
            opt.step()

    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    peak = float("nan")
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - base_mem) / 2**20
    return {"step_s": statistics.median(times), "peak_mib": peak}


def run_case(label, make_flow, target, batch, args, device, kind="plain"):
    rows = {}
    for name in NAMES:
        torch.manual_seed(0)
        flow = make_flow().to(device)
        rows[name] = time_estimator(name, flow, target, batch, args.warmup, args.repeats, device, kind)
        del flow
        if device.type == "cuda":
            torch.cuda.empty_cache()
    ref = rows["reparam"]
    for r in rows.values():
        r["time_ratio"] = r["step_s"] / ref["step_s"]
        r["mem_ratio"] = r["peak_mib"] / ref["peak_mib"] if device.type == "cuda" else float("nan")
    label = f"{label} [{kind} step]"
    print(f"\n{label}")
    print(f"{'estimator':<12}{'step [ms]':>12}{'x reparam':>11}{'peak [MiB]':>13}{'x reparam':>11}")
    for name, r in rows.items():
        print(
            f"{name:<12}{1e3 * r['step_s']:>12.2f}{r['time_ratio']:>11.2f}{r['peak_mib']:>13.1f}{r['mem_ratio']:>11.2f}"
        )
    t = rows["path"]["step_s"]
    print(
        f"path / reparam = {t / ref['step_s']:.2f}, path / path_naive = {t / rows['path_naive']['step_s']:.2f}, "
        f"reinforce / reparam = {rows['reinforce']['time_ratio']:.2f}"
    )
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="small sizes for a CPU check")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument(
        "--fast",
        default="funnel",
        help="cases (funnel,determinant or none) also timed with fit()'s compiled / CUDA-graph step",
    )
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.quick:
        funnel = {"dim": 64, "layers": 4, "hidden": 64, "batch": 64}
        det = {"dim": 16, "n": 32, "layers": 4, "hidden": 64, "batch": 32}
        args.warmup, args.repeats = args.warmup or 2, args.repeats or 5
    else:
        funnel = {"dim": 1000, "layers": 16, "hidden": 256, "batch": 256}
        det = {"dim": 128, "n": 512, "layers": 8, "hidden": 256, "batch": 256}
        args.warmup, args.repeats = args.warmup or 5, args.repeats or 20
    torch.backends.cuda.matmul.allow_tf32 = False

    results = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "memory": "peak torch.cuda.max_memory_allocated over warm-up and timed steps, above the flow and target"
        if device.type == "cuda"
        else "not measured on CPU",
        "warmup": args.warmup,
        "repeats": args.repeats,
        "cases": {},
    }

    def flow_for(cfg):
        return lambda: realnvp(cfg["dim"], layers=cfg["layers"], hidden=cfg["hidden"], seed=0)

    target = Funnel(funnel["dim"]).to(device)
    label = f"(a) funnel d={funnel['dim']}, {funnel['layers']} couplings, hidden {funnel['hidden']}, batch {funnel['batch']}"
    results["cases"]["funnel"] = {
        "config": funnel,
        "rows": run_case(label, flow_for(funnel), target, funnel["batch"], args, device),
    }
    fast_cases = [] if args.fast == "none" else args.fast.split(",")
    if "funnel" in fast_cases:
        results["cases"]["funnel_fast"] = {
            "config": funnel,
            "rows": run_case(label, flow_for(funnel), target, funnel["batch"], args, device, "fast"),
        }

    target = DeterminantTarget(det["dim"], det["n"]).to(device)
    label = (
        f"(b) {det['n']}x{det['n']} complex log-det target d={det['dim']}, {det['layers']} couplings, "
        f"hidden {det['hidden']}, batch {det['batch']}"
    )
    results["cases"]["determinant"] = {
        "config": det,
        "rows": run_case(label, flow_for(det), target, det["batch"], args, device),
    }
    if "determinant" in fast_cases:
        results["cases"]["determinant_fast"] = {
            "config": det,
            "rows": run_case(label, flow_for(det), target, det["batch"], args, device, "fast"),
        }

    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
