"""Time many-chain HMC on a target, then run ``flowvi baseline hmc`` and write a reference file.

    PYTHONPATH=src python benchmarks/hmc_reference.py --device cuda --out FILE.json \\
        --run-dir runs/hmc_ref --reference-out runs/horseshoe_nci60_p2000_hmc.npz --max-seconds 300
    PYTHONPATH=src python benchmarks/hmc_reference.py --quick --out /tmp/hmc_quick.json   # CPU check

1. Cost of one leapfrog step (one batched log_prob + gradient and the position/momentum updates) at several
   numbers of chains: median over repeats after a warm-up, timed with CUDA synchronisation on a GPU.
2. The reference run itself, exactly ``flowvi baseline hmc TARGET --chains ... --reference-out ...``, stopped
   cleanly by ``--max-seconds`` (warm-up and sampling; the summary afterwards takes extra time, printed).
Writes the timings and the run's summary to ``--out`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from flowvi.cli import main as flowvi_main
from flowvi.runs.run_dir import resolve_device, resolve_dtype
from flowvi.samplers.hmc import GraphedLeapfrog, leapfrog
from flowvi.samplers.hmc import log_prob_and_grad as _log_prob_and_grad
from flowvi.targets import make_target


def time_leapfrog(target, chains: int, device, dtype, repeats: int = 20, steps: int = 10, graph=False) -> float:
    """Median seconds per leapfrog step at ``chains`` chains (replayed from a CUDA graph if ``graph``)."""
    x = (2 * torch.rand(chains, target.dim, device=device, dtype=dtype) - 1) * 0.5
    p = torch.randn_like(x)
    m_inv = torch.ones(target.dim, device=device, dtype=dtype)
    lp, g = _log_prob_and_grad(target, x)
    step = GraphedLeapfrog(target, x, m_inv) if graph else leapfrog
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        step(target, x, p, lp, g, 1e-3, m_inv, steps)
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        step(target, x, p, lp, g, 1e-3, m_inv, steps)
        sync()
        times.append((time.perf_counter() - t0) / steps)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="horseshoe_nci60")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    ap.add_argument("--chains", type=int, default=512)
    ap.add_argument("--warmup", type=int, default=2000)
    ap.add_argument("--draws", type=int, default=2000)
    ap.add_argument("--thin", type=int, default=2)
    ap.add_argument("--max-leapfrog", type=int, default=64)
    ap.add_argument("--target-accept", type=float, default=0.9)
    ap.add_argument("--max-seconds", type=float, default=300.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quiet", action="store_true", help="no progress bar in the reference run")
    ap.add_argument("--cuda-graph", default="auto", choices=["auto", "true", "false"])
    ap.add_argument("--time-chains", default="64,256,512,1024", help="numbers of chains to time a leapfrog at")
    ap.add_argument("--run-dir", default="runs/hmc_ref")
    ap.add_argument("--reference-out", default="runs/horseshoe_nci60_p2000_hmc.npz")
    ap.add_argument("--out", required=True, help="JSON file of the timings and the run summary")
    ap.add_argument("--quick", action="store_true", help="small CPU check: p=20, 32 chains, 100 + 100 iterations")
    args = ap.parse_args(argv)
    if args.quick:
        args.param = args.param or ["p=20"]
        args.chains, args.warmup, args.draws, args.max_leapfrog, args.time_chains = 32, 100, 100, 16, "16,32"
        args.max_seconds = min(args.max_seconds, 60.0)
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    params = dict(kv.split("=", 1) for kv in args.param)
    target = make_target(args.target, **{k: int(v) if v.isdigit() else v for k, v in params.items()})
    target = target.to(device, dtype)
    rows = []
    for c in [int(s) for s in args.time_chains.split(",")]:
        for graph in [False, True] if device.type == "cuda" else [False]:
            sec = time_leapfrog(target, c, device, dtype, graph=graph)
            rows.append(
                {"chains": c, "cuda_graph": graph, "ms_per_leapfrog": 1e3 * sec, "us_per_chain_leapfrog": 1e6 * sec / c}
            )
    print(f"{args.target} d={target.dim} on {device} ({args.dtype})")
    print(f"{'chains':>8} {'graph':>6} {'ms/leapfrog':>12} {'us/(chain*leapfrog)':>20}")
    for r in rows:
        print(
            f"{r['chains']:>8} {r['cuda_graph']!s:>6} {r['ms_per_leapfrog']:>12.3f} {r['us_per_chain_leapfrog']:>20.3f}"
        )
    cli = ["baseline", "hmc", args.target, "--device", str(device), "--dtype", args.dtype, "--store-dtype", "float32"]
    for kv in args.param:
        cli += ["-p", kv]
    cli += ["--chains", str(args.chains), "--warmup", str(args.warmup), "--draws", str(args.draws)]
    cli += ["--thin", str(args.thin), "--max-leapfrog", str(args.max_leapfrog)]
    cli += ["--target-accept", str(args.target_accept), "--max-seconds", str(args.max_seconds)]
    cli += ["--seed", str(args.seed), "--out", args.run_dir, "--force", "--no-samples"]
    cli += ["--reference-out", args.reference_out, "--cuda-graph", args.cuda_graph] + (
        ["--quiet"] if args.quiet else []
    )
    print("flowvi " + " ".join(cli))
    t0 = time.perf_counter()
    rc = flowvi_main(cli)
    total = time.perf_counter() - t0
    summary = json.loads((Path(args.run_dir) / "summary.json").read_text()) if rc == 0 else None
    result = {
        "target": args.target,
        "params": params,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "dtype": args.dtype,
        "leapfrog_timing": rows,
        "cli": cli,
        "cli_rc": rc,
        "cli_seconds_total": total,
        "run_summary": summary,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"total {total:.1f} s; wrote {args.out}")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
