"""``flowvi gauge-observables RUN_DIR``: reweighted plaquette, topological charge and susceptibility of a
trained U(1) or Schwinger-model run."""

from __future__ import annotations

import json
from pathlib import Path

from flowvi.cli.common import add_device_options
from flowvi.physics.gauge_observables import gauge_observables
from flowvi.runs import checkpoint as ckpt
from flowvi.runs.run_dir import load_run


def register(sub):
    p = sub.add_parser("gauge-observables", help="reweighted plaquette, topological charge and chi_t of a gauge run")
    p.add_argument("run_dir")
    p.add_argument("-n", "--samples", type=int, default=10_000, help="importance samples")
    p.add_argument("--batch-size", type=int, default=1_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_device_options(p)
    p.set_defaults(func=run)


def run(args):
    import torch

    flow, target, _ = load_run(args.run_dir, device=args.device)
    if tuple(target.event_shape)[:1] != (2,) or len(target.event_shape) != 3:
        raise ValueError(f"{args.run_dir} is not a 2D gauge-theory run (event shape {tuple(target.event_shape)})")
    torch.manual_seed(args.seed)
    out = gauge_observables(flow, target, n=args.samples, batch_size=args.batch_size)
    ckpt.write_json_atomic(out, Path(args.run_dir) / "gauge_observables.json")
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"flowvi gauge-observables: {args.run_dir}  (n = {out['n']}, ESS/n = {out['ess']:.4f})")
    print(f"  plaquette    {out['plaquette']:.5f} ± {out['plaquette_se']:.5f}", end="")
    print(f"   (exact {out['exact_plaquette']:.5f})" if "exact_plaquette" in out else "")
    print(f"  <Q>          {out['charge']:.4f} ± {out['charge_se']:.4f}")
    print(f"  chi_t        {out['chi_t']:.5f} ± {out['chi_t_se']:.5f}", end="")
    print(f"   (exact {out['exact_chi_t']:.5f})" if "exact_chi_t" in out else "")
    if "exact_log_z" in out:
        print(f"  IS log Z     {out['log_z']:.4f}   (exact {out['exact_log_z']:.4f})")
    return 0
