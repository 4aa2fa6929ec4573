"""Reverse-KL training loop: Adam, a learning-rate schedule, gradient clipping, a guard against
non-finite steps, a live progress bar, atomic checkpoints and exact resume."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from flowvi.diagnostics.importance import log_evidence, normalized_ess
from flowvi.objectives.estimators import get_estimator
from flowvi.runs import checkpoint as ckpt
from flowvi.runs.run_files import truncate_metrics
from flowvi.targets import TargetError, checked_log_prob
from flowvi.targets.guard import guarded, target_error
from flowvi.training import distributed as dist
from flowvi.training.fast_step import load_optimizer_state, make_optimizer, make_step, matmul_precision, resolve_options


class TrainingDiverged(RuntimeError):
    """Raised by :func:`fit` when more than ``TrainConfig.max_skip_fraction`` of the steps so far (after
    ``min_steps_before_stop`` steps) had a non-finite loss or gradient; the message says what to try."""


@dataclass
class TrainConfig:
    """Settings of :func:`fit` (the fields of ``flowvi fit``'s options; stored in a run's ``config.json``).

    Optimisation: Adam (Kingma & Ba 2015) for ``steps`` steps on batches of ``batch_size`` flow samples, at
    learning rate ``lr`` with a linear warm-up over ``warmup`` steps followed by a ``cosine`` decay,
    ``lr_t = lr (1 + cos(pi t / steps)) / 2`` (Loshchilov & Hutter 2017), or a ``constant`` rate; gradients are
    clipped to norm ``clip`` (``None``: no clipping). A step whose loss or gradient is not finite is skipped and
    counted; more than ``max_skip_fraction`` skipped after ``min_steps_before_stop`` steps raises
    :class:`TrainingDiverged`.

    Objective: ``estimator`` names the gradient of reverse KL, ``KL(q||p) = E_q[log q(x) - log p(x)]``
    (``reparam``, ``path``, ``path_naive``, ``reinforce``, ``reinforce_mean``; :mod:`flowvi.objectives.estimators`),
    or ``fab``, the alpha = 2 divergence by annealed importance sampling with ``fab_stages`` stages of
    ``fab_leapfrog``-step HMC and a prioritized replay buffer of ``fab_buffer`` draws reused for ``fab_replay``
    steps per AIS run (Midgley et al. 2023, arXiv 2208.01893; :mod:`flowvi.objectives.fab`).

    Logging and checkpoints: a metrics line every ``log_every`` steps, a checkpoint every ``checkpoint_every``.

    Speed (CUDA only; ``"auto"`` turns each on for CUDA devices): ``compile`` (``torch.compile`` the step),
    ``cuda_graph`` (capture the whole step in a CUDA graph), ``precision`` (``fp32``, or ``bf16``/``fp16``
    autocast with log densities and the loss kept in float32), ``tf32``; under torchrun, ``overlap`` (compile in
    regions of ``overlap_layers`` layers so the gradient all-reduce overlaps the backward pass) and ``grad_comm``
    (the all-reduce's dtype).
    """

    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    schedule: str = "cosine"  # cosine | constant
    warmup: int = 0
    weight_decay: float = 0.0
    clip: float | None = 10.0  # gradient-norm clipping; None turns it off
    estimator: str = "reparam"  # a name in flowvi.objectives.estimators.ESTIMATOR_NAMES
    fab_stages: int = 8  # estimator="fab": AIS stages (flowvi.objectives.fab.FAB)
    fab_leapfrog: int = 3  # estimator="fab": leapfrog steps per HMC transition
    fab_buffer: int = 16384  # estimator="fab": prioritized replay buffer, in draws (0: none)
    fab_replay: int = 4  # estimator="fab" with a buffer: training steps per AIS run
    checkpoint_every: int = 200
    log_every: int = 10
    max_skip_fraction: float = 0.5  # stop when more than this fraction of steps were skipped...
    min_steps_before_stop: int = 20  # ...after at least this many steps
    # Fast path (docs/performance.md): "auto" = on for CUDA devices, off on the CPU.
    compile: bool | str = "auto"  # torch.compile the estimator's forward and backward
    cuda_graph: bool | str = "auto"  # capture the whole step in a CUDA graph after warm-up
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; log-dets, log-densities, loss in fp32)
    tf32: bool = True  # TF32 matrix products on CUDA during training
    overlap: bool | str = "auto"  # compile layer by layer: all-reduce overlaps backward (auto: CUDA + torchrun)
    overlap_layers: int = 1  # with overlap: consecutive layers per compiled region (more fuse more, overlap less)
    grad_comm: str = "fp32"  # fp32 | bf16 | fp16: dtype of the data-parallel gradient all-reduce


@dataclass
class TrainState:
    step: int = 0
    skipped: int = 0
    elapsed: float = 0.0
    history: list = field(default_factory=list)


def make_scheduler(optimizer, cfg: TrainConfig):
    def factor(step):
        warm = min(1.0, (step + 1) / cfg.warmup) if cfg.warmup > 0 else 1.0
        if cfg.schedule == "constant":
            return warm
        if cfg.schedule == "cosine":
            return warm * 0.5 * (1 + math.cos(math.pi * min(step, cfg.steps) / max(cfg.steps, 1)))
        raise ValueError(f"unknown schedule {cfg.schedule!r}; choose cosine or constant")

    factor(0)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _rng_state():
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state):
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_target(flow, target, n: int = 8) -> None:
    """Evaluate the target once on a few flow samples; a bad target raises a clear TargetError."""
    with torch.no_grad():
        x = flow.sample(n)
    with guarded(target, "the first check of the target, before training"):
        out = checked_log_prob(target, x)
    if not torch.isfinite(out).any():
        raise TargetError("target log_prob is -inf for every sample of the initial flow; is its support right?")


def fit(
    flow,
    target,
    config: TrainConfig | None = None,
    run_dir=None,
    resume: bool = False,
    progress: bool = True,
    callback=None,
    **overrides,
) -> TrainState:
    """Train ``flow`` towards ``target`` by reverse KL with ``config.estimator``, in place.

    Minimises ``KL(q||p) = E_q[log q(x) - log p(x)] = log Z - ELBO`` over the flow's parameters (variational
    inference with normalizing flows: Rezende & Mohamed 2015, arXiv 1505.05770), with the stabilised Real NVP of
    Andrade 2024 (arXiv 2402.16408) in mind. ``target`` is any object with ``log_prob(x)`` mapping
    ``(batch, *event_shape)`` to ``(batch,)`` unnormalized log densities (a :class:`flowvi.targets.Target`, or a
    function wrapped in :class:`flowvi.targets.CallableTarget`); ``config`` a :class:`TrainConfig`, whose fields
    can also be given as keyword ``overrides`` (``fit(flow, target, steps=500, lr=3e-4)``).

    With ``run_dir``, metrics go to ``run_dir/metrics.jsonl`` every ``log_every`` steps and a
    checkpoint (parameters, optimizer, scheduler, RNG state, counters) to ``run_dir/checkpoint.pt``
    every ``checkpoint_every`` steps and at the end, written atomically. ``resume=True`` continues
    from that checkpoint and gives the same parameters as an uninterrupted run with the same seed.
    ``callback(state, metrics)`` is called at every logged step.
    """
    cfg = TrainConfig(**{**asdict(config or TrainConfig()), **overrides})
    fab = {"stages": cfg.fab_stages, "leapfrog": cfg.fab_leapfrog, "buffer": cfg.fab_buffer, "replay": cfg.fab_replay}
    fab = fab if cfg.estimator == "fab" else {}
    estimator = get_estimator(cfg.estimator, **fab)
    params = [p for p in flow.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the flow has no trainable parameters")
    device = params[0].device
    world, rank = dist.world_size(), dist.rank()
    main = rank == 0
    options = resolve_options(cfg, device, distributed=world > 1, eager_only=getattr(estimator, "eager_only", False))
    optimizer = make_optimizer(params, cfg, options)
    scheduler = make_scheduler(optimizer, cfg)
    state = TrainState()
    run_dir = Path(run_dir) if run_dir is not None else None
    ckpt_path = run_dir / "checkpoint.pt" if run_dir else None
    metrics_path = run_dir / "metrics.jsonl" if run_dir and main else None
    if world > 1:
        dist.broadcast_parameters(flow)

    if resume:
        if ckpt_path is None or not ckpt_path.exists():
            raise FileNotFoundError(f"nothing to resume: no checkpoint.pt in {run_dir}")
        device = next(iter(flow.state_dict().values())).device
        saved = ckpt.load(ckpt_path, map_location=device, keys=("flow", "optimizer", "scheduler", "state", "rng"))
        ckpt.load_state_into(flow, saved["flow"], ckpt_path)
        load_optimizer_state(optimizer, saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if "estimator" in saved and hasattr(estimator, "load_state_dict"):
            ranks = saved.get("estimator_ranks")
            estimator.load_state_dict(ranks[rank] if ranks is not None and len(ranks) == world else saved["estimator"])
        state = TrainState(**saved["state"])
        rng = saved["rng"]
        if "rng_ranks" in saved:
            if len(saved["rng_ranks"]) != world:
                raise ValueError(
                    f"--resume: the checkpoint was written by {len(saved['rng_ranks'])} processes, now {world} run"
                )
            rng = saved["rng_ranks"][rank]
        _set_rng_state(rng)
        _truncate_metrics(metrics_path, state.step)
    else:
        check_target(flow, target)
        if world > 1:
            # Each rank its own sample stream: seed + rank (the flow was built from ``seed`` on every rank).
            torch.manual_seed(torch.initial_seed() + rank)
        if metrics_path is not None:
            metrics_path.parent.mkdir(parents=True, exist_ok=True)
            metrics_path.write_text("")

    grad_hook = dist.GradientAverager(params, comm_dtype=cfg.grad_comm) if world > 1 else None
    step_fn = make_step(flow, target, estimator, optimizer, params, cfg, options, grad_hook)
    scaler = getattr(step_fn, "scaler", None)
    if resume and scaler is not None and "scaler" in saved:
        scaler.load_state_dict(saved["scaler"])

    def save():
        if ckpt_path is None:
            return
        rng = _rng_state()
        rng_ranks = dist.all_gather_objects(rng) if world > 1 else None
        stateful = hasattr(estimator, "state_dict")  # FAB: step sizes and replay buffer, one per rank
        est_ranks = dist.all_gather_objects(estimator.state_dict()) if stateful and world > 1 else None
        if not main:
            return
        payload = {
            "flow": flow.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "state": asdict(state),
            "rng": rng,
            "config": asdict(cfg),
        }
        if rng_ranks is not None:
            payload["rng_ranks"] = rng_ranks
        if scaler is not None:
            payload["scaler"] = scaler.state_dict()
        if stateful:
            payload["estimator"] = estimator.state_dict()
        if est_ranks is not None:
            payload["estimator_ranks"] = est_ranks
        ckpt.save_atomic(payload, ckpt_path)

    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=cfg.steps, initial=state.step, desc="fit", dynamic_ncols=True, disable=None
        )  # off without a TTY
    flow.train()
    t0 = time.perf_counter() - state.elapsed
    try:
        with matmul_precision(options.tf32):
            while state.step < cfg.steps:
                result = step_fn()
                ok = bool(result.ok)
                if not ok:
                    state.skipped += 1
                scheduler.step()
                state.step += 1
                if (
                    not ok
                    and state.step >= cfg.min_steps_before_stop
                    and state.skipped > cfg.max_skip_fraction * state.step
                ):
                    raise TrainingDiverged(
                        f"training stopped at step {state.step}: {state.skipped} of {state.step} steps had a "
                        f"non-finite loss or gradient (try {_stability_hint(flow)}a smaller --lr, or check the target "
                        "for NaN)"
                    )
                if state.step % cfg.log_every == 0 or state.step == cfg.steps:
                    lw = result.log_weights.float()
                    if world > 1:
                        lw = dist.all_gather_tensor(lw)
                    finite = lw[torch.isfinite(lw)]
                    m = {
                        "step": state.step,
                        "elbo": float(finite.mean()) if len(finite) else float("nan"),
                        "log_z": log_evidence(lw)[0],
                        "ess": normalized_ess(lw),
                        "lr": float(scheduler.get_last_lr()[0]),
                        "skipped": state.skipped,
                        "time": time.perf_counter() - t0,
                        **(getattr(estimator, "last", None) or {}),  # the estimator's own diagnostics (FAB: AIS)
                    }
                    state.history.append(m)
                    if metrics_path is not None:
                        with open(metrics_path, "a") as f:
                            f.write(json.dumps(m) + "\n")
                    if bar is not None:
                        bar.set_postfix(
                            elbo=f"{m['elbo']:.3f}", ess=f"{m['ess']:.3f}", skipped=state.skipped, refresh=False
                        )
                    if callback is not None:
                        callback(state, m)
                if bar is not None:
                    bar.update(1)
                if state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps:
                    state.elapsed = time.perf_counter() - t0
                    save()
    except Exception as e:
        err = target_error(e, target, f"training step {state.step + 1}")
        if err is None:
            raise
        raise err from e
    finally:
        if bar is not None:
            bar.close()
        # Gradients may live in a CUDA graph's memory pool; none of them is needed after training.
        optimizer.zero_grad(set_to_none=True)
        if grad_hook is not None:
            grad_hook.close()
    state.elapsed = time.perf_counter() - t0
    return state


def _truncate_metrics(path, step):
    truncate_metrics(path, step)  # a torn last line (a kill during the append) is dropped with a warning


def _stability_hint(flow) -> str:
    """The stabilising options that are off in ``flow``: ``--clamp asymmetric`` (no coupling clamps its
    scales) and ``--loft`` (no LOFT layer)."""
    from flowvi.transforms.clamps import NoClamp
    from flowvi.transforms.loft import LOFT

    modules = list(flow.modules())
    hint = "--clamp asymmetric, " if any(isinstance(m, NoClamp) for m in modules) else ""
    return hint + ("" if any(isinstance(m, LOFT) for m in modules) else "--loft, ")
