"""Training by parts vs end-to-end training of Glow on natural-image patches: time to the same test bits/dim,
memory per part, and where the time of a step goes.

Data: ``patches16`` (16x16 RGB patches cut from the photographs in scikit-image / scikit-learn, test patches
from other photographs than the training ones; ``--data patches32`` for the GPU). The learning curves score a
fixed random subset of ``--test-subset`` test patches (the final row scores ``--final-test`` of them).
Model: Glow ``--preset`` (``glow-cpu``: 2 scales x 8 steps, width 96; ``glow-large`` on a GPU).
``--quick``: 8x8 digits, Glow 3 x 1, width 16, a few dozen steps (seconds; for the tests).

Runs, all from the same initialisation, data order, batch size and learning rate:

* ``end_to_end`` for ``--steps`` steps: its final test bits/dim is the target;
* ``alternate_then_finetune``, ``alternate``, ``parallel`` (2 parts, ``--parts``) for up to ``--parts-factor``
  x ``--steps`` steps, each stopped once its test bits/dim is within 1 % of the target;
* on two GPUs (or ``--part-devices``), ``alternate_then_finetune`` and ``parallel`` with part k on device k.

Reported per run: steps, ms/step, training seconds (evaluation excluded), final and best test bits/dim, the
time to the target, and its ratio to the end-to-end run's own time to within 1 % of its final value (the goal
is <= 0.7 for alternate_then_finetune). Wall times on a shared CPU are noisy, so each run also gets a *modelled*
time: its steps of each kind times that kind's median cost in the step profile, measured side by side.

Profile (``StepClock``): the median time per phase of an end-to-end step and of an ``alternate`` step of each
part (data, frozen prefix without autograd, each part's forward, backward, optimizer), and the alternate step of
the last part with the prefix cache warm. Memory per part: parameters, gradients, Adam state and the bytes
autograd saves for the backward pass (counted through saved-tensor hooks, each storage once), per step kind;
per device the sum over its parts; on CUDA also the allocator's peak per device in a step.

    PYTHONPATH=src python benchmarks/parts.py --threads 1 --out parts_cpu.json      # CPU, <= ~20 min
    PYTHONPATH=src python benchmarks/parts.py --device cuda --data patches32 --preset glow-large --out parts.json
    PYTHONPATH=src python benchmarks/parts.py --quick --out parts_quick.json         # seconds
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from flowvi.data.arrays import load_data
from flowvi.data.dequantize import uniform_dequantize
from flowvi.flows.glow import glow
from flowvi.training.density import PRESETS, make_parted, prepare
from flowvi.training.parts import PartsConfig, PartsTrainer, active_parts
from flowvi.training.parts_step import StepClock, saved_tensor_bytes, state_bytes

TOLERANCE = 0.01  # "reached" = test bits/dim <= (1 + TOLERANCE) * target
MiB = 2**20


def build(args, prep, devices, schedule, steps, cache=False, switch_every=1):
    size = PRESETS[args.preset]
    model = glow(prep.data.x.shape[1:], levels=size["scales"], steps=size["steps"], hidden=size["hidden"], seed=0)
    model = model.to(devices[0])
    n_parts = 1 if schedule == "end_to_end" else args.parts
    init = prep.sample_batch(torch.Generator(device=devices[0]).manual_seed(1), 512)
    with torch.no_grad():
        model.log_prob(init)  # ActNorm's data-dependent initialisation
    cut = {"parts": n_parts, "balance": args.balance}
    parted = make_parted(model, cut, devices if len(devices) == n_parts else devices[:1] * n_parts, init[:64])
    cfg = PartsConfig(
        schedule=schedule,
        steps=steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=args.warmup,
        eval_every=args.eval_every,
        checkpoint_every=10**9,
        switch_every=switch_every,
        cache_prefix=cache,
        seed=args.seed,
    )
    trainer = PartsTrainer(parted, cfg, prep.sample_batch, sample_indexed=prep.sample_indexed)
    return parted, trainer


def kind_of(active) -> str:
    """The profile's name of a step that trains ``active`` (None: end to end)."""
    if active is None:
        return "end_to_end"
    return f"part {active[0]}" if len(active) == 1 else "parallel"


def step_kind(trainer) -> str:
    return kind_of(active_parts(trainer.cfg, trainer.state.step, len(trainer.parted)))


def modelled_seconds(run: dict, step: int, prof: dict, n_parts: int) -> float:
    """Seconds of ``step`` steps of the run's schedule at the profile's median cost of each step kind."""
    cfg = PartsConfig(schedule=run["schedule"], steps=run["steps_planned"])
    n = 1 if run["schedule"] == "end_to_end" else n_parts
    return sum(prof[kind_of(active_parts(cfg, s, n))]["total_ms"] for s in range(step)) / 1e3


def test_bpd(prep, parted, x) -> float:
    with torch.no_grad():
        return float(torch.cat([prep.loss(parted.log_prob(c)) for c in x.split(512)]).mean())


def train(args, prep, test_x, name, schedule, steps, devices, target=None) -> dict:
    parted, trainer = build(args, prep, devices, schedule, steps)
    trainer.evaluate = lambda p: {"test_bpd": test_bpd(prep, p, test_x)}
    curve = [{"step": 0, "time": 0.0, "test_bpd": trainer.evaluate(parted)["test_bpd"], "phase": "init"}]
    kinds: dict[str, int] = {}
    original = trainer.step

    def counted_step():
        kinds[step_kind(trainer)] = kinds.get(step_kind(trainer), 0) + 1
        return original()

    trainer.step = counted_step

    def callback(state, m):
        curve.append({"step": m["step"], "time": m["time"], "test_bpd": m["test_bpd"], "phase": m["phase"]})
        print(f"  {name:34s} step {m['step']:6d} {m['time']:7.1f} s  test {m['test_bpd']:.4f} bits/dim", flush=True)
        if target is not None and m["test_bpd"] <= (1 + TOLERANCE) * target:
            return True
        return m["time"] > args.max_seconds

    state = trainer.run(callback=callback)
    tests = [c["test_bpd"] for c in curve]
    return {
        "name": name,
        "schedule": schedule,
        "steps_planned": steps,
        "devices": [str(d) for d in parted.devices],
        "part_starts": parted.starts,
        "steps_run": state.step,
        "step_kinds": kinds,
        "train_seconds": state.elapsed,
        "ms_per_step": 1e3 * state.elapsed / max(state.step, 1),
        "final_test_bpd": tests[-1],
        "best_test_bpd": min(tests),
        "final_test_bpd_large": test_bpd(prep, parted, prep.test_eval[: args.final_test]),
        "curve": curve,
    }


def subset_sampler(prep, m: int):
    """``prep.sample_indexed`` restricted to the first ``m`` training examples."""

    def sample(gen, n):
        idx = torch.randint(0, m, (n,), generator=gen, device=prep.train.device)
        x = prep.train[idx]
        return (uniform_dequantize(x, prep.data.levels, gen, check=False) if prep.data.is_image else x), idx, m

    return sample


def profile(args, prep, device, n: int) -> dict:
    """Median seconds per phase of each step kind (StepClock), after warm-up."""
    out = {}
    variants = [("end_to_end", False, 1), ("alternate", False, 1), ("parallel", False, 1), ("alternate", True, 10**6)]
    for schedule, cache, switch in variants:
        parted, trainer = build(args, prep, [device], schedule, 10**6, cache=cache, switch_every=switch)
        if cache:  # the last part only, from 512 training examples so that its frozen prefix's cache is warm
            trainer.state.step = (len(parted) - 1) * switch
            trainer.sample_indexed = subset_sampler(prep, 512)
            for _ in range(4 * 512 // args.batch_size):
                trainer._part_input(len(parted) - 1, *trainer._batch([len(parted) - 1]))
            trainer.cache.hits = trainer.cache.misses = 0
        trainer.clock = StepClock([device])
        rows: dict[str, list[dict]] = {}
        for i in range(n + 2 * len(parted)):
            kind = step_kind(trainer) + (" (prefix cache)" if cache else "")
            trainer.step()
            trainer.state.step += 1
            if i >= 2 * len(parted):
                rows.setdefault(kind, []).append(trainer.clock.last)
        for kind, samples in rows.items():
            labels = sorted({k for s in samples for k in s})
            phases = {k: 1e3 * statistics.median(s.get(k, 0.0) for s in samples) for k in labels}
            out[kind] = {"phases_ms": phases, "total_ms": 1e3 * statistics.median(sum(s.values()) for s in samples)}
        if cache:
            out[kind]["cache_hit_rate"] = trainer.cache.hits / max(trainer.cache.hits + trainer.cache.misses, 1)
    return out


def memory(args, prep, devices) -> dict:
    """Bytes held per part in each step kind: parameters and Adam state of every part, plus gradients and the
    activations autograd saves for the trained parts (parts after the last trained one are not run); the sum
    per device. ``parallel``: every part trained on its own objective (its input detached)."""
    out = {}
    for schedule in ("end_to_end", "alternate"):
        parted, trainer = build(args, prep, devices, schedule, 10**6)
        for _ in range(len(parted)):  # Adam allocates its state on the first step of each part
            trainer.step()
            trainer.state.step += 1
        x = prep.sample_batch(torch.Generator(device=devices[0]).manual_seed(7), args.batch_size)
        n = len(parted)
        kinds = {"end_to_end": (None, False)} if schedule == "end_to_end" else {}
        if schedule == "alternate":
            kinds = {f"alternate part {k}": ([k], True) for k in range(n)} | {"parallel": (list(range(n)), True)}
        for label, (active, detach) in kinds.items():
            per_part, h = [], x
            for k in range(n):
                trained = active is None or k in active
                s = state_bytes(parted.parameters(k), trainer.optimizers[k])
                saved = {"bytes": 0}
                if active is None or k <= max(active):
                    with saved_tensor_bytes() as saved, torch.set_grad_enabled(trained):
                        h, _ = parted.run_part(k, h.detach() if detach else h)
                held = s["parameters"] + s["optimizer"] + (s["gradients"] + saved["bytes"] if trained else 0)
                per_part.append({"device": str(parted.devices[k]), "trained": trained, **s, "saved": saved["bytes"]})
                per_part[-1]["held"] = held
            per_device: dict[str, int] = {}
            for row in per_part:
                per_device[row["device"]] = per_device.get(row["device"], 0) + row["held"]
            out[label] = {"parts": per_part, "per_device": per_device}
    return out


def cuda_peaks(args, prep, devices) -> dict:
    """torch.cuda.max_memory_allocated per device over a few steps of each schedule (CUDA only)."""
    out = {}
    for schedule in ("end_to_end", "alternate", "parallel"):
        _, trainer = build(args, prep, devices, schedule, 10**6)
        for d in devices:
            torch.cuda.reset_peak_memory_stats(d)
        for _ in range(4):
            trainer.step()
            trainer.state.step += 1
        out[schedule] = {str(d): torch.cuda.max_memory_allocated(d) / MiB for d in devices}
    return out


def first_hit(curve, level):
    """(time, step) of the first evaluation within TOLERANCE of ``level``, or (None, None)."""
    hit = next((c for c in curve if c["test_bpd"] <= (1 + TOLERANCE) * level), None)
    return (hit["time"], hit["step"]) if hit else (None, None)


def plot(runs, target, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in runs:
        ax.plot([c["time"] for c in r["curve"]], [c["test_bpd"] for c in r["curve"]], marker=".", label=r["name"])
    ax.axhline(target, color="k", ls=":", lw=1, label=f"end-to-end final {target:.4f}")
    ax.axhline((1 + TOLERANCE) * target, color="gray", ls="--", lw=1, label="within 1%")
    later = [c["test_bpd"] for r in runs for c in r["curve"][1:]]
    if later:
        ax.set_ylim(min(later) - 0.05, min(max(later), min(later) + 1.5))
    ax.set_xlabel("training wall time (s)")
    ax.set_ylabel("test bits/dim")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="parts.json")
    p.add_argument("--quick", action="store_true", help="seconds: 8x8 digits, a tiny Glow, a few dozen steps")
    p.add_argument("--data", default="patches16")
    p.add_argument("--preset", default="glow-cpu", choices=list(PRESETS) + ["tiny"])
    p.add_argument("--steps", type=int, default=400, help="end-to-end steps")
    p.add_argument("--parts", type=int, default=2)
    p.add_argument("--balance", action="store_true", help="cut into parts of equal activation bytes (--balance-parts)")
    p.add_argument("--parts-factor", type=float, default=1.5, help="by-parts step budget / end-to-end steps")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--eval-every", type=int, help="steps between evaluations (default steps/20)")
    p.add_argument("--test-subset", type=int, default=512, help="test patches scored along the curves")
    p.add_argument(
        "--final-test", type=int, default=2048, help="test patches scored at the end of each run (a superset)"
    )
    p.add_argument("--profile-steps", type=int, default=12, help="steps per kind in the step profile")
    p.add_argument("--schedules", default="alternate_then_finetune,alternate,parallel")
    p.add_argument("--max-seconds", type=float, default=420.0, help="training time cap of each run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--part-devices", help="devices of the multi-device runs (default cuda:0,cuda:1 with 2 GPUs)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads")
    args = p.parse_args(argv)
    if args.quick:
        args.device, args.data, args.preset = "cpu", "digits", "tiny"
        args.steps, args.warmup, args.test_subset, args.final_test, args.profile_steps = 40, 5, 128, 256, 3
    args.eval_every = args.eval_every or max(1, args.steps // 20)
    return args


def report(runs, e2e, target, prof, n_parts) -> None:
    """Print the table; add time_to_target, the ratio to end-to-end and the modelled times to each run."""
    e2e_time, e2e_step = first_hit(e2e["curve"], target)
    print(
        f"\ntarget: end-to-end final test bits/dim {target:.4f} (reached = within {100 * TOLERANCE:.0f} %); "
        f"end to end got there at {e2e_time:.1f} s"
    )
    head = f"{'run':34s} {'steps':>6s} {'ms/step':>8s} {'train s':>8s} {'final':>7s} {'best':>7s} {'t->target':>10s} "
    print(head + f"{'ratio':>6s} {'model s':>8s} {'m.ratio':>7s}")
    e2e_model = modelled_seconds(e2e, e2e_step, prof, n_parts)
    for r in runs:
        r["time_to_target"], r["steps_to_target"] = first_hit(r["curve"], target)
        hit = r["time_to_target"] is not None
        r["ratio_to_end_to_end"] = r["time_to_target"] / e2e_time if hit else None
        one_device = len(set(r["devices"])) == 1
        model = modelled_seconds(r, r["steps_to_target"], prof, n_parts) if hit and one_device else None
        r["modelled_seconds_to_target"] = model
        r["modelled_ratio"] = model / e2e_model if model is not None else None
        print(
            f"{r['name']:34s} {r['steps_run']:6d} {r['ms_per_step']:8.1f} {r['train_seconds']:8.1f} "
            f"{r['final_test_bpd']:7.4f} {r['best_test_bpd']:7.4f} "
            + (
                f"{r['time_to_target']:9.1f}s {r['ratio_to_end_to_end']:6.2f} "
                if hit
                else f"{'not reached':>10s} {'':6s} "
            )
            + (f"{model:8.1f} {r['modelled_ratio']:7.2f}" if model is not None else "")
        )


def print_profile(prof, mem) -> None:
    print("\nstep profile (median ms per phase):")
    for kind, row in prof.items():
        phases = ", ".join(f"{k} {v:.1f}" for k, v in row["phases_ms"].items() if v >= 0.05)
        print(f"  {kind:28s} total {row['total_ms']:7.1f}: {phases}")
    print("memory held in a step (MiB; params + Adam state of all parts, grads + saved activations of trained):")
    for kind, row in mem.items():
        parts = ", ".join(
            f"part {k} {p['held'] / MiB:.1f} (saved {p['saved'] / MiB:.1f})" for k, p in enumerate(row["parts"])
        )
        devs = ", ".join(f"{d} {b / MiB:.1f}" for d, b in row["per_device"].items())
        print(f"  {kind:28s} {parts}; per device: {devs}")


def main(argv=None):
    args = parse(argv)
    if args.preset == "tiny":
        PRESETS["tiny"] = {"scales": 3, "steps": 1, "hidden": 16}
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    data = load_data(args.data)
    prep = prepare(data, 0.2, args.seed, device, torch.float32, max_train_eval=16)
    # the test patches in a seeded random order (test_eval is ordered by source photograph)
    prep.test_eval = prep.test_eval[torch.randperm(len(prep.test_eval), generator=torch.Generator().manual_seed(3))]
    test_x = prep.test_eval[: args.test_subset]
    env = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "data": f"{data.name}: {tuple(data.x.shape)}, {len(prep.train)} train / {len(prep.test_eval)} test",
        "model": f"Glow {PRESETS[args.preset]}",
    }
    print(f"{env['device']}, torch {env['torch']}; {env['data']}; {env['model']}, batch {args.batch_size}")
    prof = profile(args, prep, device, args.profile_steps)
    mem = memory(args, prep, [device])
    print_profile(prof, mem)
    runs = [train(args, prep, test_x, "end_to_end", "end_to_end", args.steps, [device])]
    target = runs[0]["final_test_bpd"]
    budget = round(args.parts_factor * args.steps)
    for schedule in filter(None, args.schedules.split(",")):
        runs.append(train(args, prep, test_x, schedule, schedule, budget, [device], target))
    two_gpus = device.type == "cuda" and torch.cuda.device_count() >= 2
    devs = args.part_devices.split(",") if args.part_devices else (["cuda:0", "cuda:1"] if two_gpus else None)
    multi = "not run: fewer than 2 GPUs (no GPU lent)" if devs is None else f"ran on {','.join(devs)}"
    for schedule in ("alternate_then_finetune", "parallel") if devs else ():
        runs.append(train(args, prep, test_x, f"{schedule} {'+'.join(devs)}", schedule, budget, devs, target))
    report(runs, runs[0], target, prof, args.parts)
    atf = next((r for r in runs if r["name"] == "alternate_then_finetune"), None)
    if atf is not None:
        goal = atf["ratio_to_end_to_end"] is not None and atf["ratio_to_end_to_end"] <= 0.7
        print(
            f"goal (alternate_then_finetune within 1 % in <= 0.7x the end-to-end time): {'met' if goal else 'missed'}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_suffix(".png")
    plot(runs, target, png)
    result = {
        "env": env,
        "args": vars(args),
        "target_test_bpd": target,
        "tolerance": TOLERANCE,
        "profile": prof,
        "memory": mem,
        "cuda_peak_mib": cuda_peaks(args, prep, devs or [device]) if device.type == "cuda" else "not measured: CPU",
        "part_devices": multi,
        "runs": runs,
        "plot": str(png),
    }
    out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(f"wrote {out} and {png}")
    return result


if __name__ == "__main__":
    main()
