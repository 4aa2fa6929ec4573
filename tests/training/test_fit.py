"""Training end to end: exact evidence recovered, exact resume, the non-finite-step guard."""

import math

import pytest
import torch

from flowvi import TrainingDiverged, evaluate, fit, realnvp
from flowvi.targets import CallableTarget, ConjugateLinearRegression


def test_conjugate_regression_recovers_exact_log_evidence():
    torch.manual_seed(0)
    target = ConjugateLinearRegression(p=9, n=100)
    flow = realnvp(target.dim, layers=4, hidden=64)
    fit(flow, target, steps=800, batch_size=256, lr=2e-3, progress=False)
    s = evaluate(flow, target, n=50_000)
    assert abs(s["log_z"] - target.log_evidence) < 0.05
    assert abs(s["log_z_error"]) < 4 * s["log_z_se"] + 0.01
    assert s["elbo"] <= target.log_evidence + 3 * s["elbo_se"]
    assert s["pareto_k"] < 0.7 and s["ess"] > 0.5


class _Interrupt(Exception):
    pass


def _run(tmp_path, interrupt_at=None, resume=False):
    torch.manual_seed(0)
    target = ConjugateLinearRegression(p=3, n=20)
    flow = realnvp(target.dim, layers=2, hidden=16, base="student_t")

    def callback(state, metrics):
        if interrupt_at is not None and state.step == interrupt_at:
            raise _Interrupt

    fit(
        flow,
        target,
        steps=30,
        batch_size=32,
        checkpoint_every=10,
        log_every=5,
        run_dir=tmp_path,
        resume=resume,
        progress=False,
        callback=callback,
    )
    return flow


def test_resume_gives_the_uninterrupted_result(tmp_path):
    reference = _run(tmp_path / "a")
    with pytest.raises(_Interrupt):
        _run(tmp_path / "b", interrupt_at=25)  # killed after the checkpoint at step 20
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 5  # steps 5..25 logged before the kill
    resumed = _run(tmp_path / "b", resume=True)
    for (k, a), (_, b) in zip(reference.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    steps = [
        int(line.split('"step": ')[1].split(",")[0])
        for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [5, 10, 15, 20, 25, 30]


def test_resume_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        _run(tmp_path / "none", resume=True)


def test_guard_skips_non_finite_steps_and_stops_when_most_fail():
    def sometimes_nan(x):
        lp = -0.5 * (x * x).sum(-1)
        return torch.where((x.abs() > 2.5).any(-1), torch.full_like(lp, math.nan), lp)

    torch.manual_seed(0)
    flow = realnvp(2, layers=2, hidden=8)
    state = fit(flow, CallableTarget(sometimes_nan, dim=2), steps=60, batch_size=8, progress=False)
    # NaN draws are dropped from their batch (issue 20), not whole steps
    assert state.dropped[0] > 0 and state.dropped[1] == 0 and state.skipped < 10
    assert all(torch.isfinite(p).all() for p in flow.parameters())

    calls = {"n": 0}

    def breaks_later(x):
        calls["n"] += 1
        lp = -0.5 * (x * x).sum(-1)
        return lp if calls["n"] <= 3 else lp * math.nan

    with pytest.raises(TrainingDiverged, match="non-finite loss or gradient"):
        fit(
            realnvp(2, layers=2, hidden=8), CallableTarget(breaks_later, dim=2), steps=100, batch_size=8, progress=False
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_follows_the_flow(dtype):
    target = ConjugateLinearRegression(p=2, n=10).to(dtype)
    flow = realnvp(target.dim, layers=2, hidden=8).to(dtype)
    fit(flow, target, steps=5, batch_size=8, progress=False)
    assert flow.sample(3).dtype == dtype
    assert evaluate(flow, target, n=100, batch_size=40)["n"] == 100
