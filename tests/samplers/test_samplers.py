import torch

from flowvi.flows.phi4 import phi4_flow
from flowvi.physics.phi4_observables import magnetization, two_point
from flowvi.samplers import hmc, independence_mh
from flowvi.targets.phi4 import Phi4


class _Own:
    def __init__(self, flow):
        self.flow = flow

    def log_prob(self, x):
        return self.flow.log_prob(x) + 3.0


def test_imh_acceptance_one_when_proposal_is_target():
    torch.manual_seed(0)
    f = phi4_flow(4, layers=2, hidden=4, depth=1)
    for p in f.parameters():
        torch.nn.init.normal_(p, std=0.2)
    _, acc = independence_mh(f, _Own(f), 500)
    assert acc > 0.999


def test_hmc_free_field_variance_and_two_point():
    # kappa = lam = 0: S = sum phi^2, so phi_x ~ N(0, 1/2) independently
    t = Phi4(L=4, kappa=0.0, lam=0.0)
    xs, acc = hmc(t, torch.zeros(64, 4, 4), 200, step_size=0.3, n_leapfrog=5, seed=0)
    xs = xs[50:].reshape(-1, 4, 4)
    assert acc > 0.8
    assert abs(xs.var().item() - 0.5) < 0.03
    g = two_point(xs).mean(0)
    assert abs(g[0, 0].item() - 0.5) < 0.03 and abs(g[1, 0].item()) < 0.03
    assert abs(magnetization(xs).var().item() - 8.0) < 1.0
