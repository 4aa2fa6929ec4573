"""The one training-loop core: steps, counters, the skip guard, logging, checkpoints and the training clock.

Every trainer in flowvi runs on :func:`train_loop`: reverse-KL :func:`flowvi.training.loop.fit` and the by-parts
trainer :class:`flowvi.training.parts.PartsTrainer` (and through it pre-training on draws and density estimation).
A trainer is a :class:`Task`: it brings its objective, optimizer and schedule (``step``), its stopping rule
(``after_step``), its logged metrics and its checkpoint; the core owns what they share:

* the counters (:class:`LoopState`): steps taken, steps skipped (a non-finite loss or gradient: the update is not
  applied), training time;
* the skip guard (:class:`SkipGuard`): stop with an error once more than a fraction of the steps so far were
  skipped, after a minimum number of steps;
* the cadence: a metrics row every ``log_every`` steps and at the last step, appended to ``metrics.jsonl``; an
  atomic ``checkpoint.pt`` every ``checkpoint_every`` steps and at the last step (:class:`RunFiles`); a progress
  bar; ``callback(state, metrics)`` after each logged row (returning True stops training there, after a
  checkpoint);
* the clock: ``state.elapsed`` counts training only; time spent logging, evaluating and writing checkpoints is
  excluded. It is updated after every step without waiting for the device (what a time limit reads in
  ``after_step``) and exactly, after the trainer's ``synchronize``, before each log row and checkpoint.

A resumed run continues from its checkpoint with the same counters, RNG streams and optimizer state, and gives the
same parameters as an uninterrupted run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from flowvi.runs import checkpoint as ckpt
from flowvi.runs.run_files import truncate_metrics


@dataclass
class LoopState:
    """The counters every trainer keeps (checkpointed; a resumed run continues them)."""

    step: int = 0
    skipped: int = 0  # steps whose update was not applied (non-finite loss or gradient)
    elapsed: float = 0.0  # training wall time in seconds, logging and checkpoints excluded
    history: list = field(default_factory=list)  # the logged metrics rows
    stop_reason: str | None = None


class Task(Protocol):
    """What a trainer gives the core (see the module docstring)."""

    state: LoopState
    log_every: int
    checkpoint_every: int

    def step(self) -> bool:
        """One optimisation step; True when its update was applied (a finite loss and gradient)."""

    def after_step(self, ok: bool) -> str | None:
        """Called once per step after the counters moved: the reason to stop now, or None."""

    def metrics(self) -> dict:
        """The row logged at this step."""

    def checkpoint(self) -> dict | None:
        """The checkpoint payload (None on a process that does not write)."""

    def synchronize(self) -> None:
        """Wait for queued device work (before the clock is read)."""


@dataclass
class SkipGuard:
    """Stop with ``error(message(state))`` once a step fails, at least ``min_steps`` steps have run and more than
    ``max_fraction`` of them were skipped."""

    min_steps: int
    max_fraction: float
    message: Callable[[LoopState], str]
    error: type = RuntimeError

    def check(self, state: LoopState, ok: bool) -> None:
        if not ok and state.step >= self.min_steps and state.skipped > self.max_fraction * state.step:
            raise self.error(self.message(state))


class RunFiles:
    """A run directory's training files: ``metrics.jsonl`` (one JSON row per logged step, appended) and
    ``checkpoint.pt`` (written atomically). ``write_metrics=False`` on processes that do not log (other ranks)."""

    def __init__(self, run_dir, write_metrics: bool = True):
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.checkpoint = self.run_dir / "checkpoint.pt" if self.run_dir else None
        self.metrics = self.run_dir / "metrics.jsonl" if self.run_dir and write_metrics else None

    def load(self, keys: tuple, map_location=None) -> dict:
        """The checkpoint's payload (``keys`` required; a one-line error names what is missing)."""
        if self.checkpoint is None or not self.checkpoint.exists():
            raise FileNotFoundError(f"nothing to resume: no checkpoint.pt in {self.run_dir}")
        return ckpt.load(self.checkpoint, map_location=map_location, keys=keys)

    def resumed(self, step: int) -> None:
        """Keep the metrics rows up to ``step`` (a torn last line, from a kill during an append, is dropped)."""
        truncate_metrics(self.metrics, step)

    def fresh(self) -> None:
        """A new run: an empty metrics file."""
        if self.metrics is not None:
            self.metrics.parent.mkdir(parents=True, exist_ok=True)
            self.metrics.write_text("")

    def append(self, row: dict) -> None:
        if self.metrics is not None:
            with open(self.metrics, "a") as f:
                f.write(json.dumps(row) + "\n")

    def save(self, payload: dict | None) -> None:
        if payload is not None:  # None: a process that does not write (another rank)
            ckpt.save_atomic(payload, self.checkpoint)


def progress_bar(enabled: bool, total: int, initial: int, desc: str):
    """A tqdm bar (None when disabled; tqdm hides itself when the output is not a terminal)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, disable=None)


class _Clock:
    """Training time: wall time since ``start`` minus the paused intervals, read after ``synchronize``."""

    def __init__(self, elapsed: float, synchronize):
        self.synchronize = synchronize
        self.synchronize()
        self.t0 = time.perf_counter() - elapsed

    def read(self, synchronize: bool = True) -> float:
        if synchronize:
            self.synchronize()
        return time.perf_counter() - self.t0

    def resume_from(self, elapsed: float) -> None:
        self.synchronize()
        self.t0 = time.perf_counter() - elapsed


def train_loop(task: Task, files: RunFiles, bar=None, callback=None, postfix=None) -> LoopState:
    """Run ``task`` until its ``after_step`` (or the callback) says stop; returns its state.

    Per step: ``ok = task.step()``; a failed step counts as skipped; ``state.stop_reason = task.after_step(ok)``;
    every ``log_every`` steps (and at the last) ``task.metrics()`` is appended to the history and metrics.jsonl,
    shown on the bar (``postfix(row) -> dict``) and passed to ``callback``; every ``checkpoint_every`` steps (and
    at the last) ``task.checkpoint()`` is written."""
    state = task.state
    clock = _Clock(state.elapsed, task.synchronize)
    while state.stop_reason is None:
        ok = task.step()
        state.skipped += not ok
        state.step += 1
        state.elapsed = clock.read(synchronize=False)
        state.stop_reason = task.after_step(ok)
        if bar is not None:
            bar.update(1)
        last = state.stop_reason is not None
        log_now = state.step % task.log_every == 0 or last
        save_now = state.step % task.checkpoint_every == 0 or last
        if not (log_now or save_now):
            continue
        state.elapsed = clock.read()
        if log_now:
            row = task.metrics()
            state.history.append(row)
            files.append(row)
            if bar is not None and postfix is not None:
                bar.set_postfix(postfix(row), refresh=False)
            if callback is not None and callback(state, row) is True:
                state.stop_reason = state.stop_reason or "stopped by the callback"
        if (save_now or state.stop_reason is not None) and files.checkpoint is not None:
            files.save(task.checkpoint())
        clock.resume_from(state.elapsed)
    state.elapsed = clock.read()
    return state


__all__ = ["LoopState", "RunFiles", "SkipGuard", "Task", "progress_bar", "train_loop"]
