"""Non-finite draws are dropped from the batch (issue 20): the loss is the mean over the finite draws, the
gradient stays finite, the dropped draws are counted, and a step is skipped only below half a batch."""

import math

import pytest
import torch

from flowvi import realnvp
from flowvi.objectives.estimators import ESTIMATORS, MIN_FINITE_FRACTION, masked_mean
from flowvi.targets import CallableTarget


def _holes(share):
    """A standard normal with log density -inf (through log1p(-1)) or NaN on about ``share`` of the draws."""

    def log_p(x):
        lp = -0.5 * (x * x).sum(-1)
        u = torch.frac(1000 * x[:, 0].abs())  # about uniform on [0, 1) for any smooth q
        bad = u < share
        minus_inf = torch.log1p(-torch.sigmoid(torch.where(bad, torch.full_like(lp, 200.0), lp)))  # -inf at 200
        return torch.where(bad & (u < share / 2), torch.full_like(lp, math.nan), torch.where(bad, minus_inf, lp))

    return CallableTarget(log_p, dim=3)


def test_masked_mean_and_threshold():
    v = torch.tensor([1.0, 2.0, math.nan, 4.0])
    ok = torch.isfinite(v)
    assert masked_mean(v, ok).item() == pytest.approx(7 / 3)
    assert MIN_FINITE_FRACTION == 0.5
    assert math.isnan(masked_mean(v, torch.tensor([True, False, False, False])).item())  # 1 of 4 < half


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_every_estimator_drops_non_finite_draws(name):
    torch.manual_seed(0)
    flow = realnvp(3, layers=2, hidden=8)
    est = ESTIMATORS[name](flow, _holes(0.2), 256)
    lw = est.log_weights
    finite = torch.isfinite(lw)
    assert 0 < int((~finite).sum()) < 128 and int(est.dropped.sum()) == int((~finite).sum())
    assert int(est.dropped[1]) == 0  # all charged to the target
    assert torch.isfinite(est.loss)
    assert est.loss.item() == pytest.approx(-lw[finite].mean().item(), rel=1e-5)
    est.loss.backward()
    grads = [p.grad for p in flow.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_target_non_finite_on_a_fifth_of_draws_trains_to_the_end(tmp_path):
    from flowvi import fit

    torch.manual_seed(1)
    flow = realnvp(3, layers=2, hidden=16)
    with torch.no_grad():  # start away from the answer so that training has to move
        flow.transform[-2].loc.fill_(1.0)
    state = fit(flow, _holes(0.2), steps=300, batch_size=128, lr=5e-3, run_dir=tmp_path, progress=False)
    assert state.step == 300 and state.skipped == 0
    assert 0.1 < state.dropped[0] / state.draws < 0.3 and state.dropped[1] == 0
    last = state.history[-1]
    assert last["dropped"] > 0 and last["dropped_total"] == sum(state.dropped)
    x = flow.sample(4000).detach()
    assert x.mean(0).abs().max() < 0.15 and (x.std(0) - 1).abs().max() < 0.15


def test_stop_message_names_the_cause():
    from flowvi import TrainingDiverged, fit

    calls = {"n": 0}

    def breaks_later(x):
        calls["n"] += 1
        lp = -0.5 * (x * x).sum(-1)
        return lp if calls["n"] <= 3 else torch.full_like(lp, -math.inf)

    with pytest.raises(TrainingDiverged) as e:
        fit(
            realnvp(2, layers=2, hidden=8), CallableTarget(breaks_later, dim=2), steps=100, batch_size=8, progress=False
        )
    msg = str(e.value)
    assert "target" in msg and "NaN or -inf" in msg and "90 % of the draws" in msg
    assert "--clamp" not in msg and "--loft" not in msg  # on by default: not suggested
