"""``flowvi evaluate RUN_DIR``: ELBO, IS log Z with standard error, ESS and Pareto k-hat."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from flowvi.cli.common import add_device_options, format_summary
from flowvi.diagnostics.evaluate import evaluate
from flowvi.diagnostics.verdict import fit_verdict, format_verdict
from flowvi.runs import checkpoint as ckpt
from flowvi.runs.run_dir import load_run
from flowvi.targets.guard import guarded


def register(sub):
    p = sub.add_parser("evaluate", help="evaluate a run: ELBO, log Z ± SE, ESS, Pareto k")
    p.add_argument("run_dir")
    p.add_argument("-n", "--samples", type=int, default=100_000, help="importance samples")
    p.add_argument("--batch-size", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_device_options(p)
    p.set_defaults(func=run)


def run(args):
    import torch

    flow, target, _ = load_run(args.run_dir, device=args.device)
    torch.manual_seed(args.seed)
    with guarded(target, "evaluation"):
        summary = evaluate(flow, target, n=args.samples, batch_size=args.batch_size)
    fitted = Path(args.run_dir) / "summary.json"
    fit_summary = json.loads(fitted.read_text()) if fitted.exists() else {}
    if fit_summary.get("modes"):  # the fit's mode check (the trained flow is the same)
        summary["modes"] = fit_summary["modes"]
    summary["verdict"] = fit_verdict(summary, fit_summary.get("stop_reason"))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"flowvi evaluate: {args.run_dir}")
        print(format_summary(summary))
        print(format_verdict(summary["verdict"]).replace("RUN_DIR", str(args.run_dir)))
    sys.stdout.flush()  # the results are out before a failed write of evaluation.json
    ckpt.write_json_atomic(summary, Path(args.run_dir) / "evaluation.json")
    return 0
