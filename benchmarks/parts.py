"""Training by parts vs end-to-end training of Glow on digits: wall time to the same test bits/dim.

Data: scikit-learn's 8x8 digits (shipped in flowvi), by default upscaled x2 to 16x16 by bilinear interpolation
and rounded back to the 17 pixel levels (so convolutions have real spatial work), split 80/20 into train/test.
Model: Glow, 3 scales x 8 steps, coupling width 256 (``--quick``: 8x8 digits, 3 x 2 steps, width 32, on CPU).

Runs (same model initialisation, data, batch size and learning rate):

* ``end_to_end``: ``--steps`` steps; its final test bits/dim is the target (its best one a second target);
* ``alternate_then_finetune``: 2 parts, alternate for 2/3 of its steps, then end to end; up to
  ``--parts-factor`` x ``--steps`` steps, stopped once the test bits/dim is within 1% of both targets;
* ``sequential``: 2 parts trained greedily one after the other for ``--steps`` steps (reported as it is);
* ``alternate_then_finetune`` and ``parallel`` (every part on its own truncated objective every step, so the
  two devices' backward passes can overlap) with the parts on ``cuda:0,cuda:1``, only when 2 GPUs are present.

Wall time is training time only (the device is synchronised before the clock is read; evaluation excluded).
A step of ``alternate`` for part k runs the parts before k under no_grad, skips the parts after k, and runs
backward and the optimizer for part k alone, which is where one GPU saves time; the per-step costs are
measured separately (median of CUDA-event/perf-counter timings after warm-up) and reported too.

    PYTHONPATH=src python benchmarks/parts.py --device cuda --out parts.json
    PYTHONPATH=src python benchmarks/parts.py --quick --out parts_quick.json      # CPU, ~2 minutes
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from flowvi.data.arrays import ArrayData, load_data
from flowvi.flows.glow import glow
from flowvi.training.density import make_parted, prepare
from flowvi.training.parts import PartsConfig, PartsTrainer, active_parts

TOLERANCE = 0.01  # "reached" = test bits/dim <= (1 + TOLERANCE) * target


def digits(upscale: int) -> ArrayData:
    data = load_data("digits")
    if upscale == 1:
        return data
    x = torch.tensor(data.x, dtype=torch.float64)
    x = F.interpolate(x, scale_factor=upscale, mode="bilinear", align_corners=False).round().clamp(0, 16)
    return ArrayData(f"digits x{upscale}", x.to(torch.int64).numpy(), levels=17)


def _sync(devices):
    for d in {torch.device(d) for d in devices}:
        if d.type == "cuda":
            torch.cuda.synchronize(d)


def build(args, prep, devices, schedule, steps):
    torch.manual_seed(args.seed)
    model = glow(
        prep.data.x.shape[1:], levels=args.scales, steps=args.flow_steps, hidden=args.hidden, seed=args.seed
    ).to(devices[0])
    n_parts = 1 if schedule == "end_to_end" else args.parts
    parted = make_parted(model, {"parts": n_parts}, devices if len(devices) == n_parts else devices[:1] * n_parts)
    init = torch.Generator(device=devices[0]).manual_seed(args.seed + 1)
    parted.initialize(prep.sample_batch(init, min(len(prep.train), 1024)))
    cfg = PartsConfig(
        schedule=schedule,
        steps=steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=args.warmup,
        eval_every=args.eval_every,
        checkpoint_every=10**9,
        seed=args.seed,
    )
    return parted, cfg


def first_hit(curve, level):
    """(time, step) of the first evaluation within TOLERANCE of ``level``, or (None, None)."""
    hit = next((c for c in curve if c["test_bpd"] <= (1 + TOLERANCE) * level), None)
    return (hit["time"], hit["step"]) if hit else (None, None)


def train(args, prep, name, schedule, steps, devices, stop_level=None) -> dict:
    parted, cfg = build(args, prep, devices, schedule, steps)

    def evaluate(p):
        with torch.no_grad():
            return {"test_bpd": float(prep.loss(p.log_prob(prep.test_eval)).mean())}

    curve = []

    def callback(state, m):
        curve.append({"step": m["step"], "time": m["time"], "test_bpd": m["test_bpd"], "phase": m["phase"]})
        print(f"  {name:28s} step {m['step']:6d}  {m['time']:7.1f} s  test {m['test_bpd']:.4f} bits/dim", flush=True)
        if stop_level is not None and args.stop_at_target and m["test_bpd"] <= (1 + TOLERANCE) * stop_level:
            return True
        return m["time"] > args.max_seconds

    trainer = PartsTrainer(parted, cfg, prep.sample_batch, evaluate)
    first = evaluate(parted)
    curve.append({"step": 0, "time": 0.0, "test_bpd": first["test_bpd"], "phase": "init"})
    state = trainer.run(callback=callback)
    tests = [c["test_bpd"] for c in curve]
    return {
        "name": name,
        "schedule": schedule,
        "parts": len(parted),
        "part_starts": parted.starts,
        "devices": [str(d) for d in parted.devices],
        "steps_planned": steps,
        "steps_run": state.step,
        "train_seconds": state.elapsed,
        "ms_per_step": 1e3 * state.elapsed / max(state.step, 1),
        "final_test_bpd": tests[-1],
        "best_test_bpd": min(tests),
        "stopped_by_time_cap": state.step < steps and curve[-1]["time"] > args.max_seconds,
        "curve": curve,
    }


def step_costs(args, prep, devices, n: int) -> dict:
    """Median wall time of one step: end to end, and an alternate step for each part."""
    out = {}
    for label, schedule in (("end_to_end", "end_to_end"), ("alternate", "alternate")):
        parted, cfg = build(args, prep, devices, schedule, steps=10**6)
        trainer = PartsTrainer(parted, cfg, prep.sample_batch)
        per_part = {}
        for i in range(n + 5 * len(parted)):
            k = active_parts(cfg, trainer.state.step, len(parted))
            _sync(devices)
            t = time.perf_counter()
            trainer.step()
            _sync(devices)
            trainer.state.step += 1
            if i >= 5 * len(parted):  # warm-up
                per_part.setdefault("all" if k is None else f"part {k[0]}", []).append(time.perf_counter() - t)
        for key, times in per_part.items():
            out[f"{label} ({key})" if label == "alternate" else label] = 1e3 * statistics.median(times)
    return out


def plot(runs, target, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in runs:
        ax.plot([c["time"] for c in r["curve"]], [c["test_bpd"] for c in r["curve"]], marker=".", label=r["name"])
    ax.axhline(target, color="k", ls=":", lw=1, label=f"end-to-end final {target:.4f}")
    ax.axhline((1 + TOLERANCE) * target, color="gray", ls="--", lw=1, label="within 1%")
    finals = [c["test_bpd"] for r in runs for c in r["curve"][1:]]
    if finals:
        lo = min(finals)
        ax.set_ylim(lo - 0.05, min(max(finals), lo + 1.5))
    ax.set_xlabel("training wall time (s)")
    ax.set_ylabel("test bits/dim")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="parts.json")
    p.add_argument("--quick", action="store_true", help="small CPU run")
    p.add_argument("--steps", type=int, help="end-to-end steps (default 2000; quick 600)")
    p.add_argument("--parts", type=int, default=2)
    p.add_argument("--parts-factor", type=float, default=1.5, help="by-parts step budget / end-to-end steps")
    p.add_argument("--upscale", type=int, help="digits upscaling factor (default 2; quick 1)")
    p.add_argument("--scales", type=int, default=3)
    p.add_argument("--flow-steps", type=int, help="flow steps per scale (default 8; quick 2)")
    p.add_argument("--hidden", type=int, help="coupling width (default 256; quick 32)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--eval-every", type=int, help="steps between evaluations (default steps/40)")
    p.add_argument("--max-seconds", type=float, default=90.0, help="training time cap of each run")
    p.add_argument("--no-stop-at-target", dest="stop_at_target", action="store_false")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--part-devices", help="devices of the multi-device runs (default cuda:0,cuda:1 if 2 GPUs)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (quick mode)")
    args = p.parse_args(argv)
    q = args.quick
    args.steps = args.steps or (600 if q else 2000)
    args.upscale = args.upscale or (1 if q else 2)
    args.flow_steps = args.flow_steps or (2 if q else 8)
    args.hidden = args.hidden or (32 if q else 256)
    args.eval_every = args.eval_every or max(1, args.steps // 40)
    if q:
        args.device = "cpu"
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    data = digits(args.upscale)
    prep = prepare(data, 0.2, args.seed, device, torch.float32, max_train_eval=256)
    env = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "data": f"{data.name}: {tuple(data.x.shape)}, {len(prep.train)} train / {len(prep.test_eval)} test",
    }
    print(f"{env['device']}, torch {env['torch']}; {env['data']}")
    print(f"Glow {args.scales} scales x {args.flow_steps} steps, width {args.hidden}, batch {args.batch_size}")

    # warm-up (cuDNN autotuning, allocator) on throwaway models of every kind of step
    step_ms = step_costs(args, prep, [device], n=10 if q else 30)
    print("per-step cost (ms):", ", ".join(f"{k} {v:.2f}" for k, v in step_ms.items()))

    runs = [train(args, prep, "end_to_end", "end_to_end", args.steps, [device])]
    e2e = runs[0]
    target, best_target = e2e["final_test_bpd"], e2e["best_test_bpd"]
    long = round(args.parts_factor * args.steps)
    runs.append(train(args, prep, "alternate_then_finetune", "alternate_then_finetune", long, [device], best_target))
    runs.append(train(args, prep, "sequential", "sequential", args.steps, [device], best_target))
    two_gpus = device.type == "cuda" and torch.cuda.device_count() >= 2
    devs = args.part_devices.split(",") if args.part_devices else (["cuda:0", "cuda:1"] if two_gpus else None)
    if devs:
        names = "+".join(devs)
        runs.append(
            train(args, prep, f"alternate_then_finetune {names}", "alternate_then_finetune", long, devs, best_target)
        )
        runs.append(train(args, prep, f"parallel {names}", "parallel", long, devs, best_target))
        multi = f"ran on {','.join(devs)}"
    else:
        multi = "not run: fewer than 2 CUDA GPUs available"
        print(f"--part-devices cuda:0,cuda:1 variant {multi}")

    for r in runs:
        r["time_to_target"], r["steps_to_target"] = first_hit(r["curve"], target)
        r["time_to_best_target"], r["steps_to_best_target"] = first_hit(r["curve"], best_target)

    def fmt(t):
        return f"{t:.1f} s" if t is not None else "not reached"

    print()
    print(
        f"targets: end-to-end final test bits/dim {target:.4f}, its best {best_target:.4f} "
        f"(reached = within {100 * TOLERANCE:.0f}%)"
    )
    header = (
        f"{'run':30s} {'steps':>7s} {'ms/step':>8s} {'train s':>8s} {'final':>8s} {'best':>8s} "
        f"{'t->final':>12s} {'t->best':>12s}"
    )
    print(header)
    print("-" * len(header))
    for r in runs:
        print(
            f"{r['name']:30s} {r['steps_run']:7d} {r['ms_per_step']:8.2f} {r['train_seconds']:8.1f} "
            f"{r['final_test_bpd']:8.4f} {r['best_test_bpd']:8.4f} {fmt(r['time_to_target']):>12s} "
            f"{fmt(r['time_to_best_target']):>12s}"
        )
    atf = runs[1]
    saving = None
    if atf["time_to_target"] is not None:
        saving = {
            "vs_end_to_end_total": 1 - atf["time_to_target"] / e2e["train_seconds"],
            "vs_end_to_end_time_to_target": 1 - atf["time_to_target"] / e2e["time_to_target"],
        }
        if atf["time_to_best_target"] is not None and e2e["time_to_best_target"]:
            saving["best_target_vs_end_to_end"] = 1 - atf["time_to_best_target"] / e2e["time_to_best_target"]
        print(
            f"alternate_then_finetune reaches the final-value target in {atf['time_to_target']:.1f} s; saving "
            f"{100 * saving['vs_end_to_end_total']:+.0f}% against the end-to-end run's {e2e['train_seconds']:.1f} s, "
            f"{100 * saving['vs_end_to_end_time_to_target']:+.0f}% against its own time to within 1% "
            f"({e2e['time_to_target']:.1f} s) (negative = by parts was slower)"
        )
    else:
        print("alternate_then_finetune did not reach the target within its step budget")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_suffix(".png")
    plot(runs, target, png)
    result = {
        "env": env,
        "args": vars(args),
        "target_test_bpd": target,
        "best_target_test_bpd": best_target,
        "tolerance": TOLERANCE,
        "step_ms": step_ms,
        "runs": runs,
        "saving": saving,
        "part_devices": multi,
        "plot": str(png),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(f"wrote {out} and {png}")
    return 0 if all(math.isfinite(r["final_test_bpd"]) for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
