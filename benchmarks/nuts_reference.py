"""Combine ``flowvi baseline nuts`` runs (one chain or more each) into a small reference file for the stability study.

    PYTHONPATH=src python benchmarks/nuts_reference.py RUN_DIR [RUN_DIR ...] --out refs/NAME.npz

Every run must be of the same target (its config.json is read to rebuild it). Writes ``NAME.npz`` (per
coefficient: posterior mean, sd, split R-hat, ESS; R-hat/ESS of all raw coordinates; the draws of the four
coefficients of largest |mean|/sd) and ``NAME.json`` (settings, timings, divergences, diagnostics summary),
and prints the convergence summary. Use the file with ``benchmarks/stability.py --reference refs/NAME.npz``
or ``flowvi study stability TARGET --reference refs/NAME.npz``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from flowvi.diagnostics.mcmc import convergence_info, summarize_chains, write_reference
from flowvi.targets import make_target


def load_run(run_dir: Path):
    config = json.loads((run_dir / "config.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    draws = np.load(run_dir / "samples.npy")
    if "nuts" not in config:  # many-chain HMC writes its reference itself: flowvi baseline hmc --reference-out
        raise SystemExit(f"{run_dir} is not a 'flowvi baseline nuts' run; for hmc runs use --reference-out")
    chains = config["nuts"]["chains"]
    return config, summary, draws.reshape(chains, -1, draws.shape[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="flowvi baseline nuts run directories")
    ap.add_argument("--out", required=True, help="reference file (.npz); a .json with the same stem is written too")
    ap.add_argument("--thin-plot", type=int, default=1, help="keep every k-th draw of the plotted coefficients")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if out.suffix != ".npz":
        raise SystemExit(f"--out must end in .npz, got {out}")
    runs = [load_run(Path(r)) for r in args.runs]
    targets = {json.dumps(c["target"], sort_keys=True) for c, _, _ in runs}
    if len(targets) != 1:
        raise SystemExit(f"the runs are of different targets: {sorted(targets)}")
    n = min(d.shape[1] for _, _, d in runs)
    chains = np.concatenate([d[:, :n] for _, _, d in runs])
    spec = runs[0][0]["target"]
    target = make_target(spec["name"], **spec["params"]).double()
    s = summarize_chains(target, chains, thin_plot=args.thin_plot)
    info = {
        "target": spec,
        "dim": target.dim,
        "sampler": "NUTS (Pyro), diagonal mass matrix, chains started at the origin",
        "chains": int(chains.shape[0]),
        "draws_per_chain": int(n),
        "warmup": [c["nuts"]["warmup"] for c, _, _ in runs],
        "max_tree_depth": [c["nuts"]["max_tree_depth"] for c, _, _ in runs],
        "seeds": [c["seed"] for c, _, _ in runs],
        "seconds": [r["seconds"] for _, r, _ in runs],
        "divergences": int(sum(r["divergences"] for _, r, _ in runs)),
        "step_size": [x for _, r, _ in runs for x in r["step_size"]],
        "accept_prob": [x for _, r, _ in runs for x in r["accept_prob"]],
        **convergence_info(s),
    }
    write_reference(out, s, info)
    out.with_suffix(".json").write_text(json.dumps(info, indent=2))
    for key, value in info.items():
        if key not in ("target",):
            print(f"  {key}: {value}")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB) and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
