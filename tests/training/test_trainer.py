"""The one training-loop core: cadence, skip guard, callback stop, the training clock, run files."""

import json
import time

import pytest
import torch

from flowvi.training.trainer import LoopState, RunFiles, SkipGuard, train_loop


class _Task:
    """Counts to ``steps``; steps listed in ``fail`` are not applied; logging sleeps ``log_sleep`` seconds."""

    def __init__(self, steps=10, fail=(), log_every=3, checkpoint_every=4, log_sleep=0.0, guard=None):
        self.state = LoopState()
        self.steps, self.fail, self.log_sleep, self.guard = steps, set(fail), log_sleep, guard
        self.log_every, self.checkpoint_every = log_every, checkpoint_every
        self.value, self.saved_at = 0, []

    def step(self):
        if self.state.step + 1 in self.fail:
            return False
        self.value += 1
        return True

    def after_step(self, ok):
        if self.guard is not None:
            self.guard.check(self.state, ok)
        return "steps" if self.state.step >= self.steps else None

    def metrics(self):
        time.sleep(self.log_sleep)
        return {"step": self.state.step, "value": self.value}

    def checkpoint(self):
        self.saved_at.append(self.state.step)
        return {"state": {"step": self.state.step}, "value": self.value}

    def synchronize(self):
        pass


def test_cadence_counters_and_files(tmp_path):
    task = _Task(steps=10, fail=[5])
    files = RunFiles(tmp_path)
    files.fresh()
    state = train_loop(task, files)
    assert (state.step, state.skipped, task.value) == (10, 1, 9)
    assert [m["step"] for m in state.history] == [3, 6, 9, 10]  # every 3 steps and the last
    assert task.saved_at == [4, 8, 10]  # every 4 steps and the last
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == state.history
    assert files.load(("state", "value"))["value"] == 9
    assert state.stop_reason == "steps"


def test_a_callback_returning_true_stops_after_a_checkpoint(tmp_path):
    task = _Task(steps=100, log_every=5, checkpoint_every=50)
    state = train_loop(task, RunFiles(tmp_path), callback=lambda s, m: s.step == 10)
    assert state.step == 10 and state.stop_reason == "stopped by the callback"
    assert task.saved_at == [10]


def test_the_skip_guard_stops_with_its_error():
    guard = SkipGuard(min_steps=4, max_fraction=0.5, message=lambda s: f"{s.skipped} of {s.step}", error=ValueError)
    task = _Task(steps=100, fail=range(2, 100), guard=guard)
    with pytest.raises(ValueError, match="3 of 4"):  # steps 2, 3, 4 failed: 3 > 0.5 * 4
        train_loop(task, RunFiles(None))


def test_logging_time_is_not_training_time():
    task = _Task(steps=6, log_every=2, checkpoint_every=100, log_sleep=0.2)
    start = time.perf_counter()
    state = train_loop(task, RunFiles(None))
    assert time.perf_counter() - start > 0.6  # three rows logged, 0.2 s each
    assert state.elapsed < 0.1
    assert task.saved_at == []  # no run directory: no checkpoint payload is built


def test_resume_needs_a_checkpoint_and_drops_later_rows(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        RunFiles(tmp_path).load(("state",))
    files = RunFiles(tmp_path)
    files.fresh()
    train_loop(_Task(steps=9, log_every=3, checkpoint_every=3), files)
    files.resumed(6)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 6]


def test_fit_and_the_parts_trainer_run_on_the_core(monkeypatch):
    from flowvi.core.flow import Flow
    from flowvi.flows.realnvp import realnvp
    from flowvi.targets import CallableTarget
    from flowvi.training import loop, parts, trainer
    from flowvi.training.pretrain import pretrain_on_draws

    calls = []
    original = trainer.train_loop

    def counting(task, *args, **kwargs):
        calls.append(type(task).__name__)
        return original(task, *args, **kwargs)

    monkeypatch.setattr(loop, "train_loop", counting)
    monkeypatch.setattr(parts, "train_loop", counting)
    torch.manual_seed(0)
    flow = realnvp(2, layers=2, hidden=8)
    assert isinstance(flow, Flow)
    loop.fit(flow, CallableTarget(lambda x: -0.5 * (x**2).sum(-1), dim=2), steps=3, batch_size=16, progress=False)
    pretrain_on_draws(flow, torch.randn(64, 2), steps=3, batch_size=16)
    assert calls == ["_Run", "PartsTrainer"]
