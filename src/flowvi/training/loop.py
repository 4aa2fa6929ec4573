"""Reverse-KL training loop: Adam, a learning-rate schedule, gradient clipping, a guard against
non-finite steps, a live progress bar, atomic checkpoints and exact resume."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from flowvi.diagnostics.importance import log_evidence, normalized_ess
from flowvi.objectives import get_estimator
from flowvi.objectives.estimators import MIN_FINITE_FRACTION
from flowvi.runs import checkpoint as ckpt
from flowvi.targets import TargetError, checked_log_prob
from flowvi.targets.guard import guarded, target_error
from flowvi.training import distributed as dist
from flowvi.training.config import TrainConfig
from flowvi.training.convergence import AutoSchedule, Monitor
from flowvi.training.fast_step import load_optimizer_state, make_optimizer, make_step, matmul_precision, resolve_options
from flowvi.training.trainer import LoopState, RunFiles, SkipGuard, progress_bar, train_loop


class TrainingDiverged(RuntimeError):
    """Raised by :func:`fit` when more than ``TrainConfig.max_skip_fraction`` of the steps so far (after
    ``min_steps_before_stop`` steps) had a non-finite loss or gradient; the message says what to try."""


@dataclass
class TrainState(LoopState):
    """:class:`flowvi.training.trainer.LoopState` and what reverse-KL training adds to it."""

    dropped: list = field(default_factory=lambda: [0, 0])  # draws dropped for a non-finite [log p, log q]
    draws: int = 0  # draws made by all steps
    skipped_finite: int = 0  # steps skipped because too few draws were finite
    # convergence monitor (flowvi.training.convergence)
    elbo_trace: list = field(default_factory=list)
    since_change: int = 0
    elbo_delta: float | None = None
    elbo_se: float | None = None
    elbo_flat: bool | None = None
    khat_checks: list = field(default_factory=list)
    pending_reason: str | None = None

    @classmethod
    def from_dict(cls, saved: dict) -> TrainState:
        """From a checkpoint's ``state`` (keys of older versions that are no longer kept are ignored)."""
        return cls(**{k: v for k, v in saved.items() if k in {f.name for f in fields(cls)}})


def make_scheduler(optimizer, cfg: TrainConfig):
    if cfg.auto:
        if cfg.schedule == "cosine":
            raise ValueError(
                "schedule 'cosine' needs a fixed number of steps; with steps='auto' use 'auto' or 'constant'"
            )
        if cfg.schedule == "auto":
            return torch.optim.lr_scheduler.LambdaLR(optimizer, AutoSchedule(cfg.warmup))

    def factor(step):
        warm = min(1.0, (step + 1) / cfg.warmup) if cfg.warmup > 0 else 1.0
        if cfg.schedule == "constant":
            return warm
        if cfg.schedule in ("cosine", "auto"):
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
    """Evaluate the target once on a few flow samples; a bad target raises a clear TargetError (NaN and -inf
    draws are allowed: training drops them; all of them is an error)."""
    with torch.no_grad():
        x = flow.sample(n)
    with guarded(target, "the first check of the target, before training"):
        out = checked_log_prob(target, x, allow_nan=True)
    if not torch.isfinite(out).any():
        scale = float(x.abs().max())
        raise TargetError(
            f"target log_prob returned nan or -inf at all {n} draws of the initial flow (|x| <= {scale:.3g}); "
            "is its support right? (a constrained parameter needs an unconstrained parameterization)"
        )


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
    ``callback(state, metrics)`` is called at every logged step; returning True stops training there (after a
    checkpoint; ``state.stop_reason`` says so). The loop itself is :func:`flowvi.training.trainer.train_loop`.

    ``steps="auto"`` (the default) trains until the smoothed ELBO is flat and the PSIS k-hat of fresh draws is
    below 0.7, or until ``max_steps``/``max_time`` (the rule: :mod:`flowvi.training.convergence`);
    ``state.stop_reason`` says which. Draws with a non-finite log p or log q are dropped from their batch
    (:mod:`flowvi.objectives.estimators`), counted in ``state.dropped``; a step is skipped only when fewer than
    half of its draws are finite, or its gradient is not.
    """
    cfg = TrainConfig(**{**asdict(config or TrainConfig()), **overrides})
    cfg.check()
    run = _Run(flow, target, cfg, Path(run_dir) if run_dir is not None else None)
    saved = run.restore() if resume else run.start()
    run.make_step(saved)
    try:
        run.loop(progress, callback)
    except Exception as e:
        err = target_error(e, target, f"training step {run.state.step + 1}")
        if err is None:
            raise
        raise err from e
    finally:
        run.close()
    return run.state


class _Run:
    """One call of :func:`fit` as a :class:`flowvi.training.trainer.Task`: the optimizer, schedule, step function,
    stopping rule and checkpoint; the loop itself is :func:`flowvi.training.trainer.train_loop`."""

    def __init__(self, flow, target, cfg: TrainConfig, run_dir: Path | None):
        self.flow, self.target, self.cfg = flow, target, cfg
        fab = {
            "stages": cfg.fab_stages,
            "leapfrog": cfg.fab_leapfrog,
            "buffer": cfg.fab_buffer,
            "replay": cfg.fab_replay,
        }
        self.estimator = get_estimator(cfg.estimator, **(fab if cfg.estimator == "fab" else {}))
        self.params = [p for p in flow.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the flow has no trainable parameters")
        self.world, self.rank = dist.world_size(), dist.rank()
        self.main = self.rank == 0
        eager = getattr(self.estimator, "eager_only", False)
        self.options = resolve_options(cfg, self.params[0].device, distributed=self.world > 1, eager_only=eager)
        self.optimizer = make_optimizer(self.params, cfg, self.options)
        self.scheduler = make_scheduler(self.optimizer, cfg)
        self.state = TrainState()
        self.files = RunFiles(run_dir, write_metrics=self.main)
        self.log_every, self.checkpoint_every = cfg.log_every, cfg.checkpoint_every
        self.guard = SkipGuard(
            cfg.min_steps_before_stop, cfg.max_skip_fraction, lambda s: diverged_message(s, flow), TrainingDiverged
        )
        self.need = max(2, math.ceil(MIN_FINITE_FRACTION * cfg.batch_size))  # finite draws a step needs
        self.grad_hook = self.step_fn = self.scaler = self.monitor = self.result = self.bar = None
        self.elbo = math.nan
        if self.world > 1:
            dist.broadcast_parameters(flow)

    def restore(self) -> dict:
        """Parameters, optimizer, schedule, estimator, counters and RNG state from the run's checkpoint."""
        device = next(iter(self.flow.state_dict().values())).device
        saved = self.files.load(("flow", "optimizer", "scheduler", "state", "rng"), map_location=device)
        ckpt.load_state_into(self.flow, saved["flow"], self.files.checkpoint)
        load_optimizer_state(self.optimizer, saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if "estimator" in saved and hasattr(self.estimator, "load_state_dict"):
            ranks = saved.get("estimator_ranks")
            mine = ranks is not None and len(ranks) == self.world
            self.estimator.load_state_dict(ranks[self.rank] if mine else saved["estimator"])
        state = self.state = TrainState.from_dict(saved["state"])
        if state.stop_reason and not state.stop_reason.startswith("converged") and state.step < self.cfg.step_limit:
            state.stop_reason = None  # resumed with a larger step limit (or more time): train on
        rng = saved["rng"]
        if "rng_ranks" in saved:
            if len(saved["rng_ranks"]) != self.world:
                raise ValueError(
                    f"--resume: the checkpoint was written by {len(saved['rng_ranks'])} processes, now {self.world} run"
                )
            rng = saved["rng_ranks"][self.rank]
        _set_rng_state(rng)
        self.files.resumed(state.step)
        return saved

    def start(self) -> None:
        """A fresh run: the target's first check, each rank its own sample stream, an empty metrics file."""
        check_target(self.flow, self.target)
        if self.world > 1:
            # Each rank its own sample stream: seed + rank (the flow was built from ``seed`` on every rank).
            torch.manual_seed(torch.initial_seed() + self.rank)
        self.files.fresh()

    def make_step(self, saved: dict | None) -> None:
        cfg = self.cfg
        self.grad_hook = dist.GradientAverager(self.params, comm_dtype=cfg.grad_comm) if self.world > 1 else None
        self.step_fn = make_step(
            self.flow, self.target, self.estimator, self.optimizer, self.params, cfg, self.options, self.grad_hook
        )
        self.scaler = getattr(self.step_fn, "scaler", None)
        if saved is not None and self.scaler is not None and "scaler" in saved:
            self.scaler.load_state_dict(saved["scaler"])
        rule = self.scheduler.lr_lambdas[0] if cfg.auto and cfg.schedule == "auto" else None
        self.monitor = Monitor(cfg, rule, self.flow, self.target)

    # -- the Task of flowvi.training.trainer ----------------------------------------------------------------------

    def step(self) -> bool:
        self.result = self.step_fn()
        # one host read per step: ok, the dropped draws and the batch ELBO together
        ok, n_finite, self.elbo = _read_step(self.result, self.state)
        if not ok:
            self.state.skipped_finite += n_finite < self.need
        self.scheduler.step()
        return ok

    def after_step(self, ok: bool) -> str | None:
        state = self.state
        self.guard.check(state, ok)
        reason = self.monitor.observe(state, self.elbo)
        if self.world > 1:  # decided together, once a window (rank 0's decision)
            boundary = state.step % self.cfg.window == 0 or state.step >= self.cfg.step_limit
            reason = _agree(reason, self.monitor.schedule) if boundary else None
        return reason

    def metrics(self) -> dict:
        return _log_metrics(self.state, self.result, self.scheduler, self.estimator, self.world)

    def checkpoint(self) -> dict | None:
        """The checkpoint (every rank's RNG and estimator state gathered; rank 0's payload, None elsewhere)."""
        rng = _rng_state()
        many = self.world > 1
        rng_ranks = dist.all_gather_objects(rng) if many else None
        stateful = hasattr(self.estimator, "state_dict")  # FAB: step sizes and replay buffer, one per rank
        est_ranks = dist.all_gather_objects(self.estimator.state_dict()) if stateful and many else None
        if not self.main:
            return None
        payload = {
            "flow": self.flow.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "state": asdict(self.state),
            "rng": rng,
            "config": asdict(self.cfg),
        }
        extras = {
            "rng_ranks": rng_ranks,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "estimator": self.estimator.state_dict() if stateful else None,
            "estimator_ranks": est_ranks,
        }
        payload.update({k: v for k, v in extras.items() if v is not None})
        return payload

    def synchronize(self) -> None:
        if self.params[0].is_cuda:
            torch.cuda.synchronize(self.params[0].device)

    def loop(self, progress: bool, callback) -> None:
        """Steps until the stopping rule (or the step limit) says stop; metrics and checkpoints on the way."""
        self.bar = progress_bar(progress and self.main, self.cfg.step_limit, self.state.step, "fit")
        self.flow.train()
        with matmul_precision(self.options.tf32):
            train_loop(self, self.files, self.bar, callback, postfix=self._postfix)

    def _postfix(self, m: dict) -> dict:
        state = self.state
        return {"elbo": f"{m['elbo']:.3f}", "ess": f"{m['ess']:.3f}", "dropped": sum(state.dropped),
                "skipped": state.skipped}  # fmt: skip

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        # Gradients may live in a CUDA graph's memory pool; none of them is needed after training.
        self.optimizer.zero_grad(set_to_none=True)
        if self.grad_hook is not None:
            self.grad_hook.close()


def _read_step(result, state) -> tuple[bool, int, float]:
    """``(ok, finite draws, batch ELBO over them)`` of a step, read from the device in one transfer; adds the
    step's dropped draws to ``state``."""
    lw = result.log_weights.detach()
    finite = torch.isfinite(lw)
    n_finite = finite.sum()
    elbo = torch.where(finite, lw, torch.zeros_like(lw)).sum() / n_finite.clamp(min=1)
    dropped = result.dropped
    if dropped is None:  # an estimator that does not split the count (FAB): charged to the target
        dropped = torch.stack([(~finite).sum(), torch.zeros((), dtype=torch.long, device=lw.device)])
    parts = [result.ok.reshape(1), dropped.to(lw.device), n_finite.reshape(1), elbo.reshape(1)]
    ok, d_target, d_flow, n, e = torch.cat([t.double() for t in parts]).tolist()
    state.dropped = [state.dropped[0] + int(d_target), state.dropped[1] + int(d_flow)]
    state.draws += len(lw)
    return bool(ok), int(n), (e if n > 0 else math.nan)


def _agree(reason: str | None, schedule) -> str | None:
    """Under torch.distributed (every window, so rarely): every rank takes rank 0's stop decision and learning-rate
    schedule state, since the ranks' batch ELBOs, and so their plateau tests, differ."""
    reason, sched = dist.all_gather_objects((reason, vars(schedule) if schedule is not None else None))[0]
    if schedule is not None:
        vars(schedule).update(sched)
    return reason


def _log_metrics(state, result, scheduler, estimator, world) -> dict:
    lw = result.log_weights.float()
    if world > 1:
        lw = dist.all_gather_tensor(lw)
    finite = lw[torch.isfinite(lw)]
    m = {
        "step": state.step,
        "elbo": float(finite.mean()) if len(finite) else float("nan"),
        "log_z": log_evidence(finite)[0] if len(finite) else float("nan"),
        "ess": normalized_ess(torch.nan_to_num(lw, nan=-math.inf)),
        "lr": float(scheduler.get_last_lr()[0]),
        "skipped": state.skipped,
        "dropped": len(lw) - len(finite),  # this step's draws with a non-finite log p or log q
        "dropped_total": sum(state.dropped),
        "time": state.elapsed,
        **(getattr(estimator, "last", None) or {}),  # the estimator's own diagnostics (FAB: AIS)
    }
    return m


def diverged_message(state, flow=None) -> str:
    """Why training stopped with most steps skipped: the target's or the flow's non-finite draws, or gradients."""
    head = f"training stopped at step {state.step}: {state.skipped} of {state.step} steps had a non-finite loss or gradient"
    target_bad, flow_bad = state.dropped
    causes = []
    if state.skipped_finite:
        share = f"{100 * max(target_bad, flow_bad) / max(state.draws, 1):.0f} % of the draws"
        if target_bad >= flow_bad:
            causes.append(
                f"in {state.skipped_finite} of them fewer than half of the draws had a finite target log density "
                f"(the target returned NaN or -inf for {share}): check the model where the flow puts mass (log of "
                "0, overflow in exp; write log1p(-sigmoid(u)) as -softplus(u)), or start near the posterior (--init mode)"
            )
        else:
            causes.append(
                f"in {state.skipped_finite} of them fewer than half of the draws had a finite flow log density "
                f"({share} overflowed): lower --lr, or start near the posterior (--init mode)"
            )
    other = state.skipped - state.skipped_finite
    if other:
        hint = _stability_hint(flow) if flow is not None else ""
        causes.append(f"{other} had a non-finite gradient with finite draws: try {hint}a lower --lr or --clip")
    return head + ("; " + "; ".join(causes) if causes else "")


def _stability_hint(flow) -> str:
    """The stabilising options that are off in ``flow``: ``--clamp asymmetric`` (no coupling clamps its
    scales) and ``--loft`` (no LOFT layer)."""
    from flowvi.transforms.clamps import NoClamp
    from flowvi.transforms.loft import LOFT

    modules = list(flow.modules())
    hint = "--clamp asymmetric, " if any(isinstance(m, NoClamp) for m in modules) else ""
    return hint + ("" if any(isinstance(m, LOFT) for m in modules) else "--loft, ")
