"""FAB (flowvi.objectives.fab): AIS from q to p^2/q against closed forms, step-size adaptation, training that covers the
target's mass, resume through checkpoints, and bad input."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flowvi import fit, realnvp
from flowvi.objectives import get_estimator
from flowvi.objectives.fab import FAB
from flowvi.targets import CallableTarget

SRC = str(Path(__file__).resolve().parents[2] / "src")
MU, SIGMA = 0.5, 0.8  # p(x) = exp(-|x - MU|^2 / (2 SIGMA^2)), unnormalized, per coordinate


def _gaussian_target(dim):
    return CallableTarget(lambda x: -0.5 * ((x - MU) ** 2).sum(-1) / SIGMA**2, dim=dim)


def test_ais_weights_estimate_the_alpha_2_integral_and_mean():
    """With q = N(0, I), p^2/q ∝ N(m, 1/lam) per coordinate, lam = 2/SIGMA^2 - 1, m = (2 MU/SIGMA^2)/lam, and
    E[w] = int p^2/q = [2 pi lam^(-1/2) exp((2 MU/SIGMA^2)^2/(2 lam) - MU^2/SIGMA^2)]^d (AIS is unbiased)."""
    dim = 2
    torch.manual_seed(0)
    flow = realnvp(dim, layers=2, hidden=8)
    x = torch.randn(5, dim)
    torch.testing.assert_close(flow.log_prob(x), -0.5 * (x * x).sum(-1) - dim * 0.5 * math.log(2 * math.pi))
    fab = FAB(stages=8, leapfrog=3, step_size=0.3)
    target = _gaussian_target(dim)
    for _ in range(3):  # adapt the step sizes
        fab.ais(flow, target, 256)
    xs, log_ws = [], []
    for _ in range(2):
        x, log_w, log_w0, accept, log_q = fab.ais(flow, target, 3000)
        xs.append(x)
        log_ws.append(log_w)
        assert len(accept) == 8 and all(0.3 < a <= 1 for a in accept)
        torch.testing.assert_close(log_q, flow.log_prob(x).detach())  # log q(x_M), as returned
    x, log_w = torch.cat(xs), torch.cat(log_ws)
    lam = 2 / SIGMA**2 - 1
    b = 2 * MU / SIGMA**2
    exact_log_z = dim * (math.log(2 * math.pi) - 0.5 * math.log(lam) + b**2 / (2 * lam) - MU**2 / SIGMA**2)
    log_z = float(torch.logsumexp(log_w, 0) - math.log(len(log_w)))
    assert abs(log_z - exact_log_z) < 0.05
    w = torch.softmax(log_w, 0)
    mean = (w[:, None] * x).sum(0)
    torch.testing.assert_close(mean, torch.full((dim,), b / lam), atol=0.04, rtol=0)
    # with log p - log q = const the weights are equal, and log w0 is that constant
    fab1 = FAB(stages=4, leapfrog=2)
    same = CallableTarget(lambda x: -0.5 * (x * x).sum(-1) + 1.25, dim=dim)
    _, log_w, log_w0, _, _ = fab1.ais(flow, same, 64)
    torch.testing.assert_close(log_w, torch.full((64,), 2 * (1.25 + dim * 0.5 * math.log(2 * math.pi))))
    torch.testing.assert_close(log_w0, torch.full((64,), 1.25 + dim * 0.5 * math.log(2 * math.pi)))


def test_step_sizes_adapt_towards_the_target_acceptance():
    torch.manual_seed(1)
    flow = realnvp(2, layers=2, hidden=8)
    target = _gaussian_target(2)
    big = FAB(stages=2, leapfrog=3, step_size=3.0, adapt_rate=0.5)
    small = FAB(stages=2, leapfrog=3, step_size=0.01, adapt_rate=0.5)
    for _ in range(6):
        big.ais(flow, target, 64)
        small.ais(flow, target, 64)
    assert (big.log_step < math.log(3.0)).all() and (small.log_step > math.log(0.01)).all()
    copy = FAB(stages=2, leapfrog=3)
    copy.load_state_dict(big.state_dict())
    assert torch.equal(copy.log_step, big.log_step)
    with pytest.raises(ValueError, match="has 2 stages, this estimator 3"):
        FAB(stages=3).load_state_dict(big.state_dict())


@pytest.mark.parametrize("buffer", [0, 4096])
def test_fab_training_covers_a_wider_target(buffer):
    """From q = N(0, I), FAB fits p = N(MU, SIGMA^2 I) (mean and sd) and the ELBO approaches log Z, with its own
    AIS batch at every step (buffer 0) and with the replay buffer (AIS every 4th step)."""
    dim = 2
    torch.manual_seed(0)
    flow = realnvp(dim, layers=4, hidden=32)
    sigma = 2.0
    target = CallableTarget(lambda x: -0.5 * ((x - MU) ** 2).sum(-1) / sigma**2, dim=dim)
    state = fit(flow, target, steps=200, batch_size=256, lr=5e-3, schedule="constant", estimator="fab", fab_stages=4,
                fab_leapfrog=2, fab_buffer=buffer, fab_replay=4, log_every=1, progress=False)  # fmt: skip
    assert state.skipped == 0 and ("buffer_ess" in state.history[-1]) == bool(buffer)
    ais = [m for m in state.history if "ais_ess" in m]
    assert len(ais) == (50 if buffer else 200) and all(0 < m["ais_ess"] <= 1 and len(m["accept"]) == 4 for m in ais)
    with torch.no_grad():
        x = flow.sample(20000)
    torch.testing.assert_close(x.mean(0), torch.full((dim,), MU), atol=0.15, rtol=0)
    torch.testing.assert_close(x.std(0), torch.full((dim,), sigma), atol=0.15, rtol=0)
    log_z = dim * 0.5 * math.log(2 * math.pi * sigma**2)
    assert state.history[-1]["elbo"] > log_z - 0.05


class _Interrupt(Exception):
    pass


def _run(run_dir, interrupt_at=None, resume=False, buffer=0):
    torch.manual_seed(0)
    flow = realnvp(2, layers=2, hidden=8)

    def callback(state, metrics):
        if state.step == interrupt_at:
            raise _Interrupt

    fit(flow, _gaussian_target(2), steps=12, batch_size=32, log_every=2, checkpoint_every=4, run_dir=run_dir,
        resume=resume, progress=False, callback=callback, estimator="fab", fab_stages=2, fab_leapfrog=2,
        fab_buffer=buffer, fab_replay=3)  # fmt: skip
    return flow, torch.load(Path(run_dir) / "checkpoint.pt", weights_only=False)


@pytest.mark.parametrize("buffer", [0, 80])
def test_resume_restores_the_adapted_step_sizes_and_the_buffer(tmp_path, buffer):
    reference, saved_a = _run(tmp_path / "a", buffer=buffer)
    with pytest.raises(_Interrupt):
        _run(tmp_path / "b", interrupt_at=10, buffer=buffer)  # after the checkpoint at step 8
    resumed, saved_b = _run(tmp_path / "b", resume=True, buffer=buffer)
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(saved_a["estimator"]["log_step"], saved_b["estimator"]["log_step"])
    for key in ("x", "log_w", "log_q") if buffer else ():  # 4 AIS runs of 32 draws into 80 places: it wrapped
        assert len(saved_a["estimator"]["buffer"][key]) == 80
        assert torch.equal(saved_a["estimator"]["buffer"][key], saved_b["estimator"]["buffer"][key])
    assert not torch.equal(saved_a["estimator"]["log_step"], torch.full((2,), math.log(0.05), dtype=torch.float64))


def test_buffer_is_first_in_first_out():
    fab = FAB(buffer=10)
    ids = torch.arange(12.0)
    for chunk in (ids[:4], ids[4:8], ids[8:12]):
        fab._push(chunk[:, None].repeat(1, 2), -chunk, chunk * 0)
    assert sorted(fab.buffer["x"][:, 0].tolist()) == list(range(2, 12))  # the two oldest left
    assert torch.equal(fab.buffer["log_w"], -fab.buffer["x"][:, 0])
    fab._push(torch.full((3, 2), 99.0), torch.tensor([0.0, -math.inf, 0.0]), torch.zeros(3))  # no weight: not kept
    assert sorted(fab.buffer["x"][:, 0].tolist()) == [4, 5, 6, 7, 8, 9, 10, 11, 99, 99]
    big = FAB(buffer=3)
    big._push(ids[:, None], ids, ids)  # more than fits at once: the newest 3
    assert big.buffer["x"][:, 0].tolist() == [9.0, 10.0, 11.0]


def test_replay_corrects_the_weights_to_the_current_flow():
    """log w + (alpha - 1) log q_old is each buffered draw's invariant (its AIS weight for p^2/q_old); after a
    step its picked draws carry log q of the current flow, and the loss is the draws' mean -log q."""
    torch.manual_seed(2)
    flow = realnvp(2, layers=2, hidden=8)
    target = _gaussian_target(2)
    fab = FAB(stages=2, leapfrog=2, buffer=200, replay=2)
    fab(flow, target, 64)  # AIS, then a step from the buffer
    invariant = fab.buffer["log_w"] + fab.buffer["log_q"]
    torch.testing.assert_close(fab.buffer["log_q"][:64], flow.log_prob(fab.buffer["x"][:64]).detach())
    with torch.no_grad():
        for prm in flow.parameters():
            prm.add_(0.1 * torch.randn_like(prm))
    est = fab(flow, target, 64)  # no AIS at this call: the buffer is only resampled
    assert "ais_ess" not in fab.last and 0 < fab.last["buffer_ess"] <= 1 and len(fab.buffer["log_w"]) == 64
    torch.testing.assert_close(fab.buffer["log_w"] + fab.buffer["log_q"], invariant)
    current = flow.log_prob(fab.buffer["x"]).detach()
    picked = torch.isclose(fab.buffer["log_q"], current, atol=1e-6, rtol=0)
    assert 10 < int(picked.sum()) < 64  # the picked draws refer to the current flow, the others still to the old
    est.loss.backward()
    assert all(prm.grad is not None for prm in flow.parameters())
    fab(flow, target, 64)  # third call: AIS again, the buffer grows
    assert len(fab.buffer["log_w"]) == 128 and "ais_ess" in fab.last


def test_a_target_without_finite_weights_skips_the_step():
    """No AIS draw with a finite weight (here log p is NaN everywhere): nothing enters the buffer and the step's
    loss is NaN, a step that fit skips; fit itself refuses such a target before training, naming the NaN."""
    torch.manual_seed(3)
    flow = realnvp(2, layers=2, hidden=8)
    nan_target = CallableTarget(lambda x: x.sum(-1) * math.nan, dim=2)
    fab = FAB(stages=2, leapfrog=2, buffer=64)
    est = fab(flow, nan_target, 16)
    assert math.isnan(float(est.loss.detach())) and len(fab.buffer["log_w"]) == 0
    with pytest.raises(ValueError, match="target log_prob returned nan"):
        fit(flow, nan_target, steps=40, batch_size=16, estimator="fab", fab_stages=2, fab_leapfrog=2, progress=False)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="stages >= 1"):
        FAB(stages=0)
    with pytest.raises(ValueError, match="leapfrog >= 1"):
        FAB(leapfrog=1.5)
    with pytest.raises(ValueError, match="alpha > 1"):
        FAB(alpha=1.0)
    with pytest.raises(ValueError, match="buffer is a number of draws >= 0"):
        FAB(buffer=-1)
    with pytest.raises(ValueError, match="replay"):
        FAB(buffer=10, replay=0)
    full = FAB(buffer=10)
    full._push(torch.zeros(8, 2), torch.zeros(8), torch.zeros(8))
    with pytest.raises(ValueError, match="holds 8 buffered draws, this estimator's buffer 4"):
        FAB(buffer=4).load_state_dict(full.state_dict())
    with pytest.raises(ValueError, match="takes no options"):
        get_estimator("reparam", stages=3)
    with pytest.raises(ValueError, match="unknown estimator 'fob'.*fab"):
        get_estimator("fob")
    assert isinstance(get_estimator("fab", stages=3), FAB) and get_estimator("fab") is not get_estimator("fab")
    flow = realnvp(2, layers=2, hidden=8)
    for option in ({"compile": True}, {"precision": "bf16"}):
        with pytest.raises(ValueError, match="runs eagerly in float32"):
            fit(flow, _gaussian_target(2), steps=2, batch_size=8, estimator="fab", progress=False, **option)


def test_cli_fit_with_fab(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "flowvi", "fit", "gaussian", "--dim", "2", "--steps", "5", "--batch-size", "32",
           "--layers", "2", "--hidden", "8", "--estimator", "fab", "--fab-stages", "2", "--fab-leapfrog", "2",
           "--eval-samples", "500", "--n-samples", "50", "--quiet", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env={"PYTHONPATH": SRC, "PATH": ""}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["estimator"] == "fab" and config["train"]["fab_stages"] == 2
    assert config["train"]["fab_buffer"] == 16384  # the replay buffer is on by default
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert "buffer_ess" in metrics[-1] and "ais_ess" in metrics[-1]  # step 5: the second AIS run (replay 4)
    bad = subprocess.run(cmd[:-2] + ["--fab-stages", "0", "--out", str(tmp_path / "bad")],
                         env={"PYTHONPATH": SRC, "PATH": ""}, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode != 0 and "--fab-stages must be positive" in bad.stderr


def test_cli_resume_of_a_fab_run_from_before_the_buffer(tmp_path):
    """A FAB run whose config predates the replay buffer had none: resuming it asks for --fab-buffer 0."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "flowvi", "fit", "gaussian", "--dim", "2", "--steps", "4", "--batch-size", "16",
           "--layers", "2", "--hidden", "8", "--estimator", "fab", "--fab-stages", "2", "--fab-leapfrog", "2",
           "--eval-samples", "100", "--n-samples", "10", "--quiet", "--out", str(out)]  # fmt: skip
    env = {"PYTHONPATH": SRC, "PATH": ""}
    first = subprocess.run([*cmd, "--fab-buffer", "0"], env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr[-4000:]
    config = json.loads((out / "config.json").read_text())
    del config["train"]["fab_buffer"], config["train"]["fab_replay"]
    (out / "config.json").write_text(json.dumps(config))
    again = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "the options differ" in again.stderr
    ok = subprocess.run([*cmd, "--resume", "--fab-buffer", "0"], env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr[-4000:]
