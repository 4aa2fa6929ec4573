"""Convergence-driven training (steps="auto"): the stopping rule, its reasons, the schedule, exact resume, and the
grouped TrainConfig."""

from dataclasses import asdict

import pytest
import torch

from flowvi import TrainConfig, fit, realnvp
from flowvi.targets import ConjugateLinearRegression
from flowvi.training.config import Optimization
from flowvi.training.convergence import AutoSchedule, window_delta


def test_train_config_groups_and_flat_names():
    cfg = TrainConfig(steps=500, lr=3e-3, max_time=10.0, fab_stages=4)
    assert cfg.optimization.lr == 3e-3 and cfg.lr == 3e-3 and cfg.stopping.max_time == 10.0 and cfg.fab.fab_stages == 4
    assert TrainConfig(**asdict(cfg)) == cfg  # nested round trip (config.json)
    flat = {"steps": 500, "batch_size": 256, "lr": 3e-3, "max_time": 10.0, "fab_stages": 4}
    assert TrainConfig(**flat) == cfg and TrainConfig(**cfg.flat()) == cfg  # flat dicts, as config.json holds
    assert TrainConfig(optimization=Optimization(steps=7)).steps == 7
    cfg.lr = 1e-2
    assert cfg.optimization.lr == 1e-2
    with pytest.raises(TypeError, match="unknown training option 'nope'"):
        TrainConfig(nope=1)
    assert TrainConfig().steps == "auto" and TrainConfig(steps=10).step_limit == 10


def test_window_delta_and_schedule():
    trace = [0.0] * 10 + [1.0] * 10
    delta, se = window_delta(trace, 10)
    assert delta == 1.0 and se == 0.0
    assert window_delta(trace[:15], 10) is None
    s = AutoSchedule(warmup=0)
    assert s(5) == 1.0
    s.level = 1
    assert s(5) == 0.5
    s.decay_start, s.decay_len = 10, 10
    assert s(15) == pytest.approx(0.25) and s(20) == pytest.approx(0.0) and s(30) == pytest.approx(0.0)


def _small():
    torch.manual_seed(0)
    target = ConjugateLinearRegression(p=2, n=20)
    return realnvp(target.dim, layers=2, hidden=16), target


def test_auto_stops_when_converged_and_says_why():
    flow, target = _small()
    state = fit(flow, target, batch_size=128, lr=5e-3, window=50, max_steps=3000, progress=False)
    assert state.stop_reason.startswith("converged") and "k-hat" in state.stop_reason
    assert state.step < 3000 and state.khat_checks and state.khat_checks[-1][1] < 0.7


def test_max_time_stops_training():
    flow, target = _small()
    state = fit(flow, target, batch_size=32, max_time=0.3, progress=False)
    assert state.stop_reason.startswith("reached max_time") and state.step < 20_000
    with pytest.raises(ValueError, match="max_time must be positive"):
        fit(flow, target, max_time=0, progress=False)


class _Interrupt(Exception):
    pass


def _auto_run(path, interrupt_at=None, resume=False):
    flow, target = _small()

    def callback(state, metrics):
        if interrupt_at is not None and state.step == interrupt_at:
            raise _Interrupt

    options = {"batch_size": 32, "lr": 5e-3, "window": 20, "max_steps": 300, "check_draws": 512}
    state = fit(flow, target, run_dir=path, resume=resume, progress=False, callback=callback, checkpoint_every=40,
                log_every=10, **options)  # fmt: skip
    return flow, state


def test_auto_resume_gives_the_uninterrupted_result(tmp_path):
    reference, ref_state = _auto_run(tmp_path / "a")
    assert ref_state.stop_reason.startswith("converged") and ref_state.step > 100
    stop = [s for s in range(50, ref_state.step, 10) if s % 40][-1]  # a logged step after the last checkpoint
    with pytest.raises(_Interrupt):
        _auto_run(tmp_path / "b", interrupt_at=stop)
    resumed, state = _auto_run(tmp_path / "b", resume=True)
    assert state.step == ref_state.step and state.stop_reason == ref_state.stop_reason
    for (k, a), (_, b) in zip(reference.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
