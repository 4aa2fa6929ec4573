"""What bounds the training step from below: its matrix products and its Adam update, timed alone.

For each configuration of ``benchmarks/step.py`` (d, batch, coupling layers, hidden), the step's matrix
products are run by themselves on random data in the shapes the Real NVP step has: per coupling layer three
linear layers (d/2 -> hidden -> hidden -> d), forward, then backward (input gradients, the chain from the last
layer to the first, and weight gradients). Timed as CUDA-graph replays (no launch gaps), TF32 on CUDA:

* ``fwd``: the forward products; ``bwd``: the backward products in autograd's order (one stream);
* ``bwd 2 streams``: the weight gradients on a second stream beside the input-gradient chain (what a
  scheduler with two streams could reach; inductor uses one);
* ``adam``: one fused Adam step (with ``grad_scale``, as the fast step clips) over the step's parameter
  count; ``adam bytes floor``: the bytes it must move (parameters, gradients and both moments read;
  parameters, moments and gradients written) over the device's measured copy bandwidth;
* ``floor`` = fwd + bwd + adam: a step cannot be faster than these parts plus its elementwise work.

On the CPU (``--quick``) the same products run eagerly with host timing, as a check that the script works.

    PYTHONPATH=src python benchmarks/step_floor.py --device cuda --out floor.json
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from step import CONFIGS, QUICK_CONFIGS, matmul_flops  # noqa: E402


def timed(fn, device, reps=10, repeats=20) -> float:
    """Median ms of one ``fn()``: CUDA-graph replays of ``reps`` calls on CUDA, host timing elsewhere."""
    if device.type != "cuda":
        fn()
        ts = []
        for _ in range(max(3, repeats // 4)):
            t = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t) * 1e3)
        return statistics.median(ts)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side):
        for _ in range(reps):
            fn()
    graph.replay()
    ts = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) / reps)
    return statistics.median(ts)


def copy_bandwidth(device, n=1 << 28) -> float | None:
    """Bytes per second of a large device-to-device copy (read + write), or None off CUDA."""
    if device.type != "cuda":
        return None
    src = torch.randn(n // 4, device=device)
    dst = torch.empty_like(src)
    ms = timed(lambda: dst.copy_(src), device, reps=5, repeats=10)
    return 2 * src.numel() * 4 / (ms * 1e-3)


def step_matmuls(d, batch, layers, hidden, device):
    """Closures for the forward products, the backward products on one stream, and the backward with the
    weight gradients on a second stream, over random tensors of the step's shapes."""
    n_cond, n_out = d // 2, 2 * (d - d // 2)
    widths = [(n_cond, hidden), (hidden, hidden), (hidden, n_out)]

    def rand(*shape):
        return torch.randn(*shape, device=device) / shape[-1] ** 0.5

    weights = [[rand(o, i) for i, o in widths] for _ in range(layers)]
    inputs = [[rand(batch, i) for i, _ in widths] for _ in range(layers)]
    out_grads = [[rand(batch, o) for _, o in widths] for _ in range(layers)]
    side = torch.cuda.Stream(device) if device.type == "cuda" else None

    def fwd():
        for w, x in zip(weights, inputs, strict=True):
            for wk, xk in zip(w, x, strict=True):
                xk @ wk.t()

    def bwd(two_streams=False):
        for layer in reversed(range(layers)):
            w, x, g = weights[layer], inputs[layer], out_grads[layer]
            for k in reversed(range(3)):
                if layer > 0 or k > 0:  # the first layer's input (the base draws) needs no gradient
                    g[k] @ w[k]
                if two_streams:
                    ready = torch.cuda.Event()
                    ready.record()
                    side.wait_event(ready)
                    with torch.cuda.stream(side):
                        g[k].t() @ x[k]
                else:
                    g[k].t() @ x[k]
        if two_streams:
            torch.cuda.current_stream(device).wait_stream(side)

    n_params = sum(o * i + o for i, o in widths) * layers
    return fwd, bwd, n_params


def adam_step(n_params, device):
    """One fused Adam step over ``n_params`` float32 parameters in 16 tensors, clipping through ``grad_scale``."""
    params = [torch.randn(n_params // 16, device=device, requires_grad=True) for _ in range(16)]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = torch.optim.Adam(params, lr=torch.tensor(1e-3, device=device), fused=True, capturable=device.type == "cuda")
    opt.grad_scale = torch.tensor(2.0, device=device)
    opt.found_inf = torch.tensor(0.0, device=device)
    return opt.step


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="the two small configurations of step.py --quick")
    p.add_argument("--configs", help="indices of the configurations, e.g. 2,3")
    p.add_argument("--out", help="write the results as JSON")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    configs = QUICK_CONFIGS if args.quick else CONFIGS
    if args.configs:
        configs = [configs[int(i)] for i in args.configs.split(",")]
    bandwidth = copy_bandwidth(device)
    rows = []
    head = f"{'d':>5} {'batch':>5} {'fwd':>7} {'bwd':>7} {'bwd 2 str':>9} {'adam':>7} {'adam flr':>8} {'floor':>7} {'TFLOP/s':>8}"
    print("ms per step; " + (f"copy bandwidth {bandwidth / 1e12:.2f} TB/s" if bandwidth else "host timing"))
    print(head)
    for d, batch, layers, hidden in configs:
        fwd, bwd, n_params = step_matmuls(d, batch, layers, hidden, device)
        row = {"d": d, "batch": batch, "layers": layers, "hidden": hidden, "params": n_params}
        row["fwd_ms"] = timed(fwd, device)
        row["bwd_ms"] = timed(bwd, device)
        row["bwd_two_streams_ms"] = timed(functools.partial(bwd, True), device) if device.type == "cuda" else None
        row["adam_ms"] = timed(adam_step(n_params, device), device)
        row["adam_bytes"] = 8 * 4 * n_params
        row["adam_floor_ms"] = row["adam_bytes"] / bandwidth * 1e3 if bandwidth else None
        row["floor_ms"] = row["fwd_ms"] + row["bwd_ms"] + row["adam_ms"]
        row["matmul_tflops"] = matmul_flops(d, batch, layers, hidden) / ((row["fwd_ms"] + row["bwd_ms"]) * 1e-3) / 1e12
        rows.append(row)

        def f(v, w):
            return f"{v:{w}.3f}" if v is not None else " " * (w - 1) + "-"

        print(
            f"{d:5d} {batch:5d} {f(row['fwd_ms'], 7)} {f(row['bwd_ms'], 7)} {f(row['bwd_two_streams_ms'], 9)} "
            f"{f(row['adam_ms'], 7)} {f(row['adam_floor_ms'], 8)} {f(row['floor_ms'], 7)} {row['matmul_tflops']:8.1f}"
        )
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "copy_bandwidth_bytes_per_s": bandwidth,
    }
    out = {"info": info, "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
