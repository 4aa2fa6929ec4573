"""Training by parts: a flow split into gradient-isolated parts, each trained on a truncated objective.

Following the training-by-parts poster (Glow trained in gradient-isolated parts), the layers of a flow, in the
normalizing direction x = h_0 -> h_1 -> ... -> h_L, are cut into K consecutive parts. Part k maps its input
u_k (the output of part k-1, u_1 = x) to v_k and contributes the log terms c_i of its layers: log|det| of
each bijection and, for a multi-scale split inside the part, log p(z_split | h_kept) of the factored-out
latents under their learned conditional prior (:class:`flowvi.flows.multiscale.Split`). Its truncated objective is

    L_k = -E[ sum_{i in part k} c_i(u_k) + log p_Z(v_k) ],   u_k detached,

with p_Z the flow's base distribution (the standard normal of a multi-scale flow, evaluated on whatever
shape v_k has). So the factored-out latents are scored by their conditional prior inside the part that splits
them, and the part's remaining output by p_Z as if it were the final latent. No gradient crosses a part
boundary: L_k depends on the parameters of part k only. For K = 1, L_1 = -E log p(x), the full objective.

Schedules (:data:`SCHEDULES`):

* ``end_to_end``: every step, the full negative log-likelihood through all parts (ordinary training);
* ``alternate``: round robin, one part per step (``switch_every`` steps each). A step for part k runs parts
  < k under ``torch.no_grad()`` (their output is detached anyway), part k with a graph, and skips parts > k:
  L_k does not need them. Backward runs through part k alone; this is where one device saves time;
* ``sequential``: greedy, part 1 for steps/K steps, then part 2, ... (reported unstable by the poster);
* ``alternate_then_finetune``: ``alternate`` for the first (1 - finetune_fraction) of the steps, then
  ``end_to_end``;
* ``parallel``: every step, every part on its own truncated objective (disjoint graphs). With parts on
  different devices (``devices=``) their backward passes run concurrently; only detached forward
  activations travel between devices.

Each part has its own Adam optimizer, gradient clipping and learning rate schedule. Forward-KL estimators
(:data:`flowvi.estimators.FORWARD_ESTIMATORS`): ``ml`` (maximum likelihood) is the truncated objective above
and works with every schedule and with data; ``path`` needs the target's density and its gradient, so it is
accepted only for ``end_to_end`` training of a :class:`flowvi.core.flow.Flow` towards a target with a density
(intermediate parts have no target density to pull back).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from flowvi.core.flow import Flow
from flowvi.flows.multiscale import MultiscaleFlow, Split, normalize_layer
from flowvi.objectives.estimators import FORWARD_ESTIMATORS
from flowvi.runs import checkpoint as ckpt
from flowvi.training.parts_step import PrefixCache
from flowvi.training.trainer import LoopState, RunFiles, SkipGuard, progress_bar, train_loop
from flowvi.transforms.squeeze import Squeeze, Unsqueeze

SCHEDULES = ("end_to_end", "alternate", "sequential", "alternate_then_finetune", "parallel")


def normalizing_layers(model) -> tuple[list[nn.Module], Callable[[Tensor], Tensor]]:
    """The layers of ``model`` in the normalizing direction and its prior log density p_Z."""
    if isinstance(model, MultiscaleFlow):
        return list(model.layers), model.prior_log_prob
    if isinstance(model, Flow):
        return list(reversed(list(model.transform))), model.base.log_prob
    raise ValueError(f"training by parts needs a MultiscaleFlow or a Flow, got {type(model).__name__}")


def _is_step(layer) -> bool:
    """Flow steps count for placing cuts; squeezes and splits go with their neighbours."""
    return not isinstance(layer, (Split, Squeeze, Unsqueeze))


def part_starts(layers, parts: int | None = None, every: int | None = None, blocks: bool = False) -> list[int]:
    """Index of the first layer of each part.

    ``blocks``: cut after every multi-scale split (one part per scale); ``every=n``: cut after every n flow
    steps; ``parts=K``: K parts with (nearly) equal numbers of flow steps. A cut after a step also takes a split
    that directly follows it into the part before the cut, so each part scores the latents it factors out.
    """
    if sum(x is not None and x is not False for x in (parts, every, blocks)) != 1:
        raise ValueError("give exactly one of parts, every or blocks")
    if blocks:
        cuts = [i + 1 for i, layer in enumerate(layers[:-1]) if isinstance(layer, Split)]
        if not cuts:
            raise ValueError("the flow has no multi-scale splits to cut at; use parts=K or every=N")
        return [0, *cuts]
    step_ends = [i + 1 for i, layer in enumerate(layers) if _is_step(layer)]
    n_steps = len(step_ends)
    if every is not None:
        if every < 1:
            raise ValueError(f"layers per part must be positive, got {every}")
        after = list(range(every, n_steps, every))
    else:
        if not 1 <= parts <= n_steps:
            raise ValueError(f"number of parts must lie in 1..{n_steps} (the flow steps), got {parts}")
        after = sorted({round(i * n_steps / parts) for i in range(1, parts)})
    starts = [0]
    for m in after:
        cut = step_ends[m - 1]
        while cut < len(layers) and isinstance(layers[cut], Split):
            cut += 1
        if starts[-1] < cut < len(layers):
            starts.append(cut)
    return starts


def balanced_starts(layers, parts: int, costs: list[float]) -> list[int]:
    """Starts of ``parts`` parts of about equal total ``costs``, cut only where ``part_starts`` may cut (after
    a flow step, a split directly after it going with the part before)."""
    candidates = part_starts(layers, every=1)[1:]
    if not 1 <= parts <= len(candidates) + 1:
        raise ValueError(f"number of parts must lie in 1..{len(candidates) + 1} (the flow steps), got {parts}")
    cumulative = [sum(costs[:c]) for c in candidates]
    total = sum(costs)
    starts = [0]
    for i in range(1, parts):
        free = [c for c in candidates if c > starts[-1] and len([d for d in candidates if d > c]) >= parts - 1 - i]
        starts.append(min(free, key=lambda c: abs(cumulative[candidates.index(c)] - i * total / parts)))
    return starts


class PartedFlow:
    """A flow cut into parts (``starts`` from :func:`part_starts`), part k placed on ``devices[k]``.

    The parameters stay those of ``model`` (the parts are views of its layers); moving parts to devices moves
    the model's layers.
    """

    def __init__(self, model, starts: list[int], devices=None):
        layers, self.prior_log_prob = normalizing_layers(model)
        if starts[0] != 0 or sorted(set(starts)) != starts or starts[-1] >= len(layers):
            raise ValueError(f"bad part starts {starts} for {len(layers)} layers")
        self.model = model
        ends = [*starts[1:], len(layers)]
        self.parts = [nn.ModuleList(layers[a:b]) for a, b in zip(starts, ends, strict=True)]
        self.starts = list(starts)
        default = next(model.parameters()).device
        devices = [torch.device(d) for d in devices] if devices else [default] * len(self.parts)
        if len(devices) != len(self.parts):
            raise ValueError(f"{len(devices)} devices given for {len(self.parts)} parts")
        self.devices = devices
        for part, device in zip(self.parts, devices, strict=True):
            part.to(device)
        if isinstance(model, Flow):
            model.base.to(devices[-1])

    def __len__(self) -> int:
        return len(self.parts)

    def parameters(self, k: int) -> list[Tensor]:
        return [p for p in self.parts[k].parameters() if p.requires_grad]

    def run_part(self, k: int, h: Tensor) -> tuple[Tensor, Tensor]:
        """Part k on ``h`` (moved to its device): its output and the sum of its log terms."""
        h = h.to(self.devices[k])
        total = h.new_zeros(h.shape[0])
        for layer in self.parts[k]:
            h, c = normalize_layer(layer, h)
            total = total + c
        return h, total

    def truncated_objective(self, k: int, h_in: Tensor) -> tuple[Tensor, Tensor]:
        """Per-example L_k (no gradient reaches ``h_in``) and the part's output."""
        h_out, terms = self.run_part(k, h_in.detach())
        return -(terms + self.prior_log_prob(h_out)), h_out

    def log_prob(self, x: Tensor, clock=None) -> Tensor:
        """The full log p(x) through all parts (gradients cross the boundaries), on the first part's device.

        ``clock`` (a :class:`flowvi.training.parts_step.StepClock`) times each part's forward and, through a
        hook on each part's input, the backward pass that follows up to that boundary."""
        h, total = x, None
        for k in range(len(self.parts)):
            if clock is not None and k > 0 and h.requires_grad:
                h.register_hook(lambda g, k=k: clock.mark(f"backward part {k}"))
            h, terms = self.run_part(k, h)
            total = terms if total is None else total.to(terms.device) + terms
            if clock is not None:
                clock.mark(f"forward part {k}")
        return (total + self.prior_log_prob(h)).to(self.devices[0])

    def prefix(self, k: int, x: Tensor) -> Tensor:
        """The output of parts < k on ``x``, without autograd (no graph, nothing kept for a backward pass)."""
        with torch.no_grad():
            for j in range(k):
                x, _ = self.run_part(j, x)
        return x

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Data-dependent initialisation (ActNorm) from one batch, before training."""
        self.log_prob(x)


@dataclass
class PartsConfig:
    schedule: str = "alternate_then_finetune"
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    lr_schedule: str = "constant"  # constant | cosine (after the warm-up)
    warmup: int = 50
    clip: float | None = 50.0  # gradient-norm clip of each part; None turns it off
    finetune_fraction: float = 1 / 3  # alternate_then_finetune: the last fraction runs end to end
    switch_every: int = 1  # alternate: consecutive steps per part
    cache_prefix: bool = False  # reuse frozen parts' outputs per example while they are unchanged (parts_step.py)
    estimator: str = "ml"
    eval_every: int = 100
    checkpoint_every: int = 500
    seed: int = 0

    def check(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.estimator not in FORWARD_ESTIMATORS:
            raise ValueError(
                f"unknown forward-KL estimator {self.estimator!r}; choose one of {', '.join(FORWARD_ESTIMATORS)}"
            )
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"unknown lr schedule {self.lr_schedule!r}; choose constant or cosine")
        if not 0 <= self.finetune_fraction <= 1:
            raise ValueError(f"finetune fraction must lie in [0, 1], got {self.finetune_fraction}")
        for name in ("steps", "batch_size", "switch_every", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


def active_parts(cfg: PartsConfig, step: int, n_parts: int) -> list[int] | None:
    """Parts trained at ``step`` on their truncated objectives, or None for an end-to-end step."""
    schedule = cfg.schedule
    if schedule == "alternate_then_finetune":
        if step >= round((1 - cfg.finetune_fraction) * cfg.steps):
            return None
        schedule = "alternate"
    if schedule == "end_to_end":
        return None
    if schedule == "alternate":
        return [(step // cfg.switch_every) % n_parts]
    if schedule == "sequential":
        return [min(step * n_parts // cfg.steps, n_parts - 1)]
    return list(range(n_parts))  # parallel


def lr_factor(cfg: PartsConfig, step: int) -> float:
    warm = min(1.0, (step + 1) / cfg.warmup) if cfg.warmup > 0 else 1.0
    if cfg.lr_schedule == "cosine":
        return warm * 0.5 * (1 + math.cos(math.pi * min(step, cfg.steps) / cfg.steps))
    return warm


@dataclass
class PartsState(LoopState):
    """The by-parts trainer's counters: :class:`flowvi.training.trainer.LoopState` (``elapsed`` excludes the
    evaluations)."""


def _diverged(state) -> str:
    return (
        f"training stopped at step {state.step}: {state.skipped} steps had a non-finite loss or gradient "
        "(try a smaller --lr or a clamp)"
    )


def _synchronize(devices) -> None:
    for d in {d for d in devices if d.type == "cuda"}:
        torch.cuda.synchronize(d)


def _clip_and_check(params_per_part, clip) -> bool:
    """Clip each part's gradient norm; True when every gradient is finite (one host synchronisation)."""
    norms = []
    for params in params_per_part:
        grads = [p for p in params if p.grad is not None]
        if grads:
            norm = torch.nn.utils.clip_grad_norm_(grads, clip if clip else float("inf"))
            norms.append(torch.isfinite(norm).to(params[0].device))
    if not norms:
        return True
    return bool(torch.stack([n.to(norms[0].device) for n in norms]).all())


class PartsTrainer:
    """Trains a :class:`PartedFlow` with a schedule of :data:`SCHEDULES`.

    ``sample_batch(generator, batch_size) -> Tensor`` draws a training batch on the first part's device
    (``generator`` is a ``torch.Generator`` on that device, saved in checkpoints); ``evaluate(parted) -> dict``
    returns metrics logged with every evaluation (its time is not counted as training time); ``target`` is
    needed by the ``path`` estimator only. ``cfg.cache_prefix`` needs ``sample_indexed(generator, n) ->
    (batch, example indices, number of examples)`` (:class:`flowvi.training.parts_step.PrefixCache`). Set
    ``clock`` to a :class:`flowvi.training.parts_step.StepClock` to time each step's phases.
    """

    def __init__(
        self, parted: PartedFlow, cfg: PartsConfig, sample_batch, evaluate=None, target=None, sample_indexed=None
    ):
        cfg.check()
        if cfg.estimator == "path":
            if cfg.schedule != "end_to_end" or target is None or not isinstance(parted.model, Flow):
                raise ValueError(
                    "the forward-KL path estimator needs a target density and end-to-end training of a Flow; "
                    "use estimator 'ml' for data and for training by parts"
                )
        self.parted, self.cfg, self.sample_batch, self.evaluate, self.target = (
            parted,
            cfg,
            sample_batch,
            evaluate,
            target,
        )
        if cfg.cache_prefix and sample_indexed is None:
            raise ValueError("the prefix cache needs the example index of each batch row (sample_indexed)")
        self.sample_indexed = sample_indexed if cfg.cache_prefix else None
        self.cache = None
        self.clock = None
        self.updates = [0] * len(parted)  # optimizer steps per part (the prefix cache's validity)
        self.optimizers = [torch.optim.Adam(parted.parameters(k), lr=cfg.lr) for k in range(len(parted))]
        self.generator = torch.Generator(device=parted.devices[0]).manual_seed(cfg.seed)
        self.state = PartsState()
        self.loss = torch.zeros(())
        self.guard = SkipGuard(21, 0.5, _diverged, ValueError)

    # -- one step -------------------------------------------------------------------------------------------

    def _set_lr(self, step: int) -> float:
        lr = self.cfg.lr * lr_factor(self.cfg, step)
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr
        return lr

    def _mark(self, label: str) -> None:
        if self.clock is not None:
            self.clock.mark(label)

    def _batch(self, active) -> tuple[Tensor, Tensor | None]:
        """The step's batch, with its example indices when the prefix cache will serve it."""
        if self.sample_indexed is None or active is None or len(active) != 1 or active[0] == 0:
            return self.sample_batch(self.generator, self.cfg.batch_size), None
        x, idx, n = self.sample_indexed(self.generator, self.cfg.batch_size)
        if self.cache is None:
            self.cache = PrefixCache(n)
        return x, idx

    def _part_input(self, k: int, x: Tensor, idx: Tensor | None) -> Tensor:
        """Input of part k: x for k = 0, else the frozen parts' output (no graph; cached when enabled)."""
        if k == 0:
            return x
        if idx is None:
            h = self.parted.prefix(k, x)
        else:
            h = self.cache.inputs((k, tuple(self.updates[:k])), idx, x, lambda xs: self.parted.prefix(k, xs))
        self._mark("frozen prefix" + (" (cache)" if idx is not None else " (no grad)"))
        return h

    def _losses(self, active, x: Tensor, idx) -> list[Tensor]:
        """The step's losses: [-log p] end to end, or each active part's L_k (disjoint graphs)."""
        parted = self.parted
        if active is None:
            if self.cfg.estimator == "path":
                return [FORWARD_ESTIMATORS["path"](parted.model, x, self.target).loss]
            return [-parted.log_prob(x, clock=self.clock).mean()]
        losses, h = [], self._part_input(min(active), x, idx)
        for k in range(min(active), max(active) + 1):
            if k in active:
                per_example, h = parted.truncated_objective(k, h)
                losses.append(per_example.mean())
                self._mark(f"forward part {k}")
            else:
                h = self._run_frozen(k, h)
        return losses

    def _run_frozen(self, k: int, h: Tensor) -> Tensor:
        with torch.no_grad():
            h, _ = self.parted.run_part(k, h)
        self._mark(f"forward part {k} (no grad)")
        return h

    def _backward(self, losses: list[Tensor], active) -> None:
        if self.clock is None or active is None:
            torch.autograd.backward(losses)  # disjoint graphs: each part gets the gradient of its own L_k
            self._mark("backward part 0" if active is None else "backward")
            return
        for k, loss in zip(active, losses, strict=True):  # timed one part at a time
            loss.backward()
            self._mark(f"backward part {k}")

    def step(self) -> bool:
        """One optimisation step of the schedule; True when its loss and gradients were finite (the step's
        detached loss is kept in ``self.loss``).

        A step that trains some parts runs the frozen parts before them without autograd (or takes their output
        from the prefix cache), skips the parts after the last trained one, and runs backward and the optimizer
        of the trained parts only, each part with its own Adam state."""
        cfg, parted = self.cfg, self.parted
        if self.clock is not None:
            self.clock.start()
        active = active_parts(cfg, self.state.step, len(parted))
        x, idx = self._batch(active)
        self._mark("data")
        self._set_lr(self.state.step)
        trained = list(range(len(parted))) if active is None else active
        for k in trained:
            self.optimizers[k].zero_grad(set_to_none=True)
        losses = self._losses(active, x, idx)
        self._backward(losses, active)
        losses = [loss.detach() for loss in losses]
        ok = _clip_and_check([parted.parameters(k) for k in trained], cfg.clip)
        self._mark("clip")
        for k in trained:
            if ok:
                self.optimizers[k].step()
                self.updates[k] += 1
            self.optimizers[k].zero_grad(set_to_none=True)
            self._mark(f"optimizer part {k}")
        if self.clock is not None:
            self.clock.stop()
        self.loss = sum(loss.to(losses[0].device) for loss in losses)
        return ok

    # -- the Task of flowvi.training.trainer --------------------------------------------------------------------------

    @property
    def log_every(self) -> int:
        return self.cfg.eval_every

    @property
    def checkpoint_every(self) -> int:
        return self.cfg.checkpoint_every

    def after_step(self, ok: bool) -> str | None:
        self.guard.check(self.state, ok)
        return "steps" if self.state.step >= self.cfg.steps else None

    def metrics(self) -> dict:
        """The logged row: phase, the step's objective, learning rate, skipped steps and the evaluation."""
        step = self.state.step
        active = active_parts(self.cfg, max(step - 1, 0), len(self.parted))
        m = {
            "step": step,
            "time": self.state.elapsed,
            "phase": "end_to_end" if active is None else "parts " + ",".join(map(str, active)),
            # nats per example: the trained parts' truncated objectives (or -log p); None before the first step
            "step_objective": float(self.loss) if step > 0 else None,
            "lr": self.cfg.lr * lr_factor(self.cfg, max(step - 1, 0)),
            "skipped": self.state.skipped,
        }
        if self.evaluate is not None:
            m.update(self.evaluate(self.parted))
        return m

    def checkpoint(self) -> dict:
        return {
            "model": self.parted.model.state_dict(),
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "state": asdict(self.state),
            "generator": self.generator.get_state(),
            "rng": torch.get_rng_state(),
            "config": asdict(self.cfg),
        }

    def synchronize(self) -> None:
        _synchronize(self.parted.devices)

    # -- the loop ---------------------------------------------------------------------------------------------------

    def load_checkpoint(self, files: RunFiles) -> None:
        saved = files.load(("model", "optimizers", "state", "generator", "rng"))
        ckpt.load_state_into(self.parted.model, saved["model"], files.checkpoint)
        for opt, state in zip(self.optimizers, saved["optimizers"], strict=True):
            opt.load_state_dict(state)
        self.state = PartsState(**saved["state"])
        self.generator.set_state(saved["generator"])
        torch.set_rng_state(saved["rng"])
        files.resumed(self.state.step)

    def run(self, run_dir=None, resume: bool = False, progress: bool = False, callback=None) -> PartsState:
        """Train for ``cfg.steps`` steps on :func:`flowvi.training.trainer.train_loop`; with ``run_dir``:
        metrics.jsonl per evaluation and an atomic checkpoint.pt every ``checkpoint_every`` steps; ``resume``
        continues from it. ``callback(state, metrics)`` runs after every evaluation; returning True stops training
        there (after a checkpoint)."""
        files = RunFiles(run_dir)
        if resume:
            self.load_checkpoint(files)
        else:
            files.fresh()
        state = self.state
        bar = progress_bar(progress, self.cfg.steps, state.step, self.cfg.schedule)
        try:
            if state.step == 0 and self.evaluate is not None and not resume:
                self._set_lr(0)
                state.history.append(self.metrics())
                files.append(state.history[-1])
            state.stop_reason = "steps" if state.step >= self.cfg.steps else None
            train_loop(self, files, bar, callback, postfix=_test_metrics)
        finally:
            if bar is not None:
                bar.close()
        return state


def _test_metrics(m: dict) -> dict:
    return {k: f"{v:.4g}" for k, v in m.items() if k.startswith("test")}
