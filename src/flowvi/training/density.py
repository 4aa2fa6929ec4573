"""Density estimation on arrays (images or vectors) with Glow, trained end to end or by parts.

``run(config, out)`` does everything ``flowvi fit-data`` does: load and split the data, build the flow, cut
it into parts, train with :class:`flowvi.training.parts.PartsTrainer`, evaluate, and write the run directory:

RUN_DIR/config.json         data, flow, parts and training settings
RUN_DIR/metrics.jsonl       per evaluation: step, training seconds, phase, train_loss, test_loss (full model)
RUN_DIR/checkpoint.pt       latest checkpoint (atomic), used by --resume
RUN_DIR/flow.pt             final flow parameters
RUN_DIR/summary.json        final and best test loss, unit, sizes, time
RUN_DIR/learning_curve.png  train and test loss against the step
RUN_DIR/samples.npy         draws from the flow (images: integer pixels; vectors: original units)
RUN_DIR/samples.png         images only: a grid of samples

Losses are bits per dimension for images (uniform dequantization, :mod:`flowvi.data.dequantize`) and nats per
dimension in the data's original units for vectors. The test loss is evaluated with one fixed draw of the
dequantization noise, so that successive evaluations are comparable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flowvi.data.arrays import ArrayData, Standardizer, load_data, nats_per_dim, train_test_split
from flowvi.data.dequantize import bits_per_dim, uniform_dequantize
from flowvi.flows.glow import flat_glow, glow
from flowvi.runs import checkpoint as ckpt
from flowvi.runs.run_dir import resolve_device, resolve_dtype
from flowvi.runs.run_files import read_metrics, start_run
from flowvi.training.parts import (
    PartedFlow,
    PartsConfig,
    PartsTrainer,
    balanced_starts,
    normalizing_layers,
    part_starts,
)
from flowvi.training.parts_step import layer_costs

FLOW_DEFAULTS = {
    "scales": None,  # images: min(3, log2 of the smaller side); vectors: 2 when dim >= 4
    "steps": 4,
    "hidden": 64,
    "depth": 2,
    "clamp": "asymmetric",
    "alpha_pos": 0.1,
    "alpha_neg": 2.0,
    "alpha": 2.0,
    "seed": 0,
}


#: named flow configurations (``flowvi fit-data --preset NAME``); explicit --scales/--flow-steps/--hidden win
PRESETS = {
    # compute-bound multi-scale Glow of the Glow paper's CIFAR-10 size class (GPU)
    "glow-large": {"scales": 3, "steps": 32, "hidden": 512},
    "glow-medium": {"scales": 3, "steps": 16, "hidden": 256},
    # CPU-sized: the convolutions, not the per-layer overhead, dominate a step on a 2-core CPU
    "glow-cpu": {"scales": 2, "steps": 8, "hidden": 96},
}


def build_flow(data: ArrayData, **options):
    """Glow for images, flat Glow for vectors (options: see :data:`FLOW_DEFAULTS`)."""
    o = {**FLOW_DEFAULTS, **options}
    clamp = {k: o[k] for k in ("clamp", "alpha_pos", "alpha_neg", "alpha")}
    if data.is_image:
        _, _, h, w = data.x.shape
        scales = o["scales"] or max(1, min(3, int(math.log2(min(h, w)))))
        return glow(data.x.shape[1:], levels=scales, steps=o["steps"], hidden=o["hidden"], seed=o["seed"], **clamp)
    dim = data.x.shape[1]
    scales = o["scales"] or (2 if dim >= 4 else 1)
    return flat_glow(
        dim, blocks=scales, steps=o["steps"], hidden=o["hidden"], depth=o["depth"], seed=o["seed"], **clamp
    )


@dataclass
class Prepared:
    """Data on the device with the loss (per example, in the report unit) of a model."""

    data: ArrayData
    train: torch.Tensor  # images: integer-valued floats; vectors: standardised
    test_eval: torch.Tensor  # ready for log_prob (dequantized once / standardised)
    train_eval: torch.Tensor
    unit: str
    standardizer: Standardizer | None = None

    @property
    def dim(self) -> int:
        return int(np.prod(self.data.x.shape[1:]))

    def sample_batch(self, generator, n: int) -> torch.Tensor:
        return self.sample_indexed(generator, n)[0]

    def sample_indexed(self, generator, n: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """A training batch (dequantized with fresh noise), its example indices and the training set size."""
        idx = torch.randint(0, len(self.train), (n,), generator=generator, device=self.train.device)
        x = self.train[idx]
        x = uniform_dequantize(x, self.data.levels, generator, check=False) if self.data.is_image else x
        return x, idx, len(self.train)

    def loss(self, log_prob: torch.Tensor) -> torch.Tensor:
        if self.data.is_image:
            return bits_per_dim(log_prob, self.dim, self.data.levels)
        return nats_per_dim(log_prob, self.standardizer.log_det, self.dim)

    @torch.no_grad()
    def evaluate(self, parted: PartedFlow, batch_size: int = 1024) -> dict:
        out = {}
        for name, x in (("train_loss", self.train_eval), ("test_loss", self.test_eval)):
            chunks = [parted.log_prob(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
            out[name] = float(self.loss(torch.cat(chunks)).mean())
        return out


def split(data: ArrayData, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The data set's own held-out split (``data.test_index``, e.g. by source image) or a seeded random one."""
    if data.test_index is None:
        return train_test_split(len(data.x), test_fraction, seed)
    test = np.zeros(len(data.x), dtype=bool)
    test[data.test_index] = True
    return np.flatnonzero(~test), np.flatnonzero(test)


def prepare(data: ArrayData, test_fraction: float, seed: int, device, dtype, max_train_eval: int = 2000) -> Prepared:
    train_idx, test_idx = split(data, test_fraction, seed)
    x = torch.as_tensor(data.x, dtype=dtype, device=device)
    train, test = x[train_idx], x[test_idx]
    eval_gen = torch.Generator(device=device).manual_seed(seed + 12345)
    train_eval = train[:max_train_eval]
    if data.is_image:
        test = uniform_dequantize(test, data.levels, eval_gen)
        train_eval = uniform_dequantize(train_eval, data.levels, eval_gen)
        return Prepared(data, train, test, train_eval, "bits/dim")
    std = Standardizer.fit(train)
    return Prepared(data, std(train), std(test), std(train_eval), "nats/dim", std)


def make_parted(model, parts: dict, devices, batch=None) -> PartedFlow:
    """Cut ``model`` as ``parts`` says (``blocks``, ``every`` or ``parts``, with ``balance``: parts of about equal
    activation bytes on ``batch``, :func:`flowvi.training.parts.balanced_starts`)."""
    layers, _ = normalizing_layers(model)
    if parts.get("balance") and not (parts.get("blocks") or parts.get("every")):
        if batch is None:
            raise ValueError("balanced parts need a batch to measure the layers on")
        starts = balanced_starts(layers, parts.get("parts", 1), layer_costs(layers, batch))
    elif parts.get("blocks"):
        starts = part_starts(layers, blocks=True)
    elif parts.get("every"):
        starts = part_starts(layers, every=parts["every"])
    else:
        starts = part_starts(layers, parts=parts.get("parts", 1))
    if devices and len(devices) != len(starts):
        raise ValueError(f"--part-devices names {len(devices)} devices for {len(starts)} parts")
    return PartedFlow(model, starts, devices or None)


def run(config: dict, out, resume: bool = False, progress: bool = True, log=print, force: bool = False) -> dict:
    """Train and evaluate as described by ``config`` (see ``flowvi fit-data``); returns the summary. The run
    directory is written once the data and flow are set up (``force``: over an existing run's files)."""
    out = Path(out)
    device, dtype = resolve_device(config.get("device")), resolve_dtype(config.get("dtype", "float32"))
    devices = [resolve_device(d) for d in config["parts"].get("devices") or []]
    first = devices[0] if devices else device
    torch.manual_seed(config["seed"])
    d = config["data"]
    data = load_data(d["spec"], key=d.get("key"), levels=d.get("levels"))
    prep = prepare(data, d["test_fraction"], config["seed"], first, dtype)
    model = build_flow(data, **config["flow"]).to(first, dtype)
    cfg = PartsConfig(**config["train"])
    init_gen = torch.Generator(device=first).manual_seed(config["seed"] + 1)
    init_batch = prep.sample_batch(init_gen, min(len(prep.train), 1024))
    with torch.no_grad():
        model.log_prob(init_batch)  # ActNorm's data-dependent initialisation, before measuring or cutting
    parted = make_parted(model, config["parts"], devices, init_batch[: cfg.batch_size])
    trainer = PartsTrainer(parted, cfg, prep.sample_batch, prep.evaluate, sample_indexed=prep.sample_indexed)
    log(
        f"flowvi fit-data: {data.name} {tuple(data.x.shape)}, {len(prep.train)} train / {len(prep.test_eval)} test, "
        f"{sum(p.numel() for p in model.parameters())} parameters in {len(parted)} part(s), "
        f"schedule {cfg.schedule} -> {out}"
    )
    start_run(out, config, "fit-data", resume=resume, force=force)
    state = trainer.run(run_dir=out, resume=resume, progress=progress)
    ckpt.save_atomic(model.state_dict(), out / "flow.pt")
    tests = [m["test_loss"] for m in state.history if "test_loss" in m]
    baseline = image_baseline(data, d["test_fraction"], config["seed"]) if data.is_image else {}
    summary = {
        "data": data.name,
        "unit": prep.unit,
        "schedule": cfg.schedule,
        "parts": len(parted),
        "part_starts": parted.starts,
        "steps": state.step,
        "skipped_steps": state.skipped,
        "train_seconds": state.elapsed,
        "n_train": len(prep.train),
        "n_test": len(prep.test_eval),
        "dim": prep.dim,
        **prep.evaluate(parted),
        "best_test_loss": min(tests) if tests else float("nan"),
        **baseline,
    }
    ckpt.write_json_atomic(summary, out / "summary.json")
    write_samples(model, prep, out, config.get("n_samples", 64), config.get("temperature", 1.0))
    switch = round((1 - cfg.finetune_fraction) * cfg.steps) if cfg.schedule == "alternate_then_finetune" else None
    plot_learning_curve(out, prep.unit, switch)
    return summary


def image_baseline(data: ArrayData, test_fraction: float, seed: int) -> dict:
    """Test bits/dim of independent per-pixel histograms fitted on the training split (a scale for flowvi's)."""
    from flowvi.data.patches import histogram_bits_per_dim

    train_idx, test_idx = split(data, test_fraction, seed)
    bpd = histogram_bits_per_dim(data.x[train_idx], data.x[test_idx], data.levels)
    return {"baseline": "independent per-pixel histogram (add-one)", "baseline_test_loss": bpd}


@torch.no_grad()
def write_samples(model, prep: Prepared, out: Path, n: int, temperature: float) -> None:
    """samples.npy (and samples.png for images) from the trained flow."""
    if n < 1:
        return
    y = model.sample(n, temperature=temperature)
    if prep.data.is_image:
        levels = prep.data.levels
        pixels = torch.clamp(torch.floor(y * levels), 0, levels - 1).to(torch.int64).cpu().numpy()
        _save_npy(out / "samples.npy", pixels)
        _image_grid(pixels, levels, out / "samples.png")
    else:
        s = prep.standardizer
        _save_npy(out / "samples.npy", (y * s.std.to(y) + s.mean.to(y)).cpu().numpy())


def _save_npy(path: Path, array: np.ndarray) -> None:
    ckpt.atomic_write(path, lambda f: np.save(f, array))


def _image_grid(pixels: np.ndarray, levels: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, c, h, w = pixels.shape
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    grid = np.zeros((rows * (h + 1), cols * (w + 1), c))
    for i in range(n):
        r, q = divmod(i, cols)
        grid[r * (h + 1) : r * (h + 1) + h, q * (w + 1) : q * (w + 1) + w] = pixels[i].transpose(1, 2, 0)
    grid = grid / (levels - 1)
    fig, ax = plt.subplots(figsize=(cols * 0.6 + 1, rows * 0.6 + 1))
    ax.imshow(grid[..., 0] if c == 1 else grid[..., :3], cmap="gray_r" if c == 1 else None, vmin=0, vmax=1)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_learning_curve(out: Path, unit: str, finetune_from: int | None = None) -> Path:
    """learning_curve.png: train and test loss of the full model against the step (and where end-to-end
    fine-tuning starts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(out / "metrics.jsonl", warn=False)
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in rows]
    for key, label in (("train_loss", "train"), ("test_loss", "test")):
        ax.plot(steps, [r.get(key, float("nan")) for r in rows], marker=".", label=label)
    if finetune_from is not None:
        ax.axvline(finetune_from, color="gray", ls=":", label="end-to-end fine-tuning from here")
    ax.set_xlabel("step")
    ax.set_ylabel(unit)
    ax.set_title(f"flowvi fit-data: {out.name}")
    ax.legend()
    fig.tight_layout()
    path = out / "learning_curve.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
