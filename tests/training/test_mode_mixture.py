"""mode_mixture (issue 20): a flow that reverse KL left in one mode of a three-mode Gaussian mixture gets one new
flow per missed mode, each started there and trained by the fit's loop; the weights from the components' IS log Z
are the modes' exact masses, the mixture's IS log Z is the exact 0, and each mode is fitted once."""

import torch

from flowvi import realnvp
from flowvi.diagnostics.evaluate import evaluate
from flowvi.targets import make_target
from flowvi.training.loop import TrainConfig, fit
from flowvi.training.mode_init import place_at_mode
from flowvi.training.mode_mixture import fit_at_mode, mode_mixture

CONFIG = TrainConfig(steps=150, batch_size=128, lr=3e-3)


def small_flow():
    return realnvp(2, layers=2, hidden=16).double()


def test_mode_mixture_recovers_the_masses_and_log_z():
    torch.manual_seed(0)
    target = make_target("gauss_mix_separated", dim=2).double()
    centres = torch.tensor(target.CENTRES, dtype=torch.float64)
    modes = centres[:, None].expand(3, 2)
    modes = torch.cat([modes, modes[1:2]])  # the search's end points repeat: the middle mode twice
    flow, record = fit_at_mode(small_flow, target, modes[1], CONFIG)  # reverse KL in the middle mode only
    assert record["placed"] and evaluate(flow, target, n=4000)["log_z"] < -1  # log 0.3 = -1.20: one mode
    lines = []
    mixture, info = mode_mixture(flow, target, modes, small_flow, CONFIG, n_eval=8000, log=lines.append)
    assert len(mixture.components) == 3 and len(lines) == 2 and info["uncovered"] == 0 and info["modes"] == 4
    weights = torch.tensor([c["weight"] for c in info["components"]])
    starts = [c["start"] for c in info["components"][1:]]
    order = [1] + [target.CENTRES.index(s[0]) for s in starts]  # component -> the mode it started at
    exact = torch.tensor(target.WEIGHTS)[order]
    assert (weights - exact).abs().max() < 0.02
    torch.manual_seed(1)
    stats = evaluate(mixture, target, n=20_000)
    assert abs(stats["log_z"]) < 0.02 and stats["pareto_k"] < 0.7


def test_a_covered_posterior_gets_no_new_component():
    torch.manual_seed(0)
    target = make_target("gauss_mix_separated", dim=2).double()
    flow = small_flow()
    assert place_at_mode(flow, target, torch.full((2,), 6.0, dtype=torch.float64))[0]
    fit(flow, target, CONFIG, progress=False)
    modes = torch.full((2, 2), 6.0, dtype=torch.float64)
    mixture, info = mode_mixture(flow, target, modes, small_flow, CONFIG, n_eval=2000, log=lambda *_: None)
    assert len(mixture.components) == 1 and info["uncovered"] == 0
    assert info["components"][0]["weight"] == 1.0
