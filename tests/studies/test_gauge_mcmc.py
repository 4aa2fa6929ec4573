"""Neural MCMC on U(1) gauge theory: the chain and the reweighted proposals agree with the exact plaquette and
topological susceptibility of the 2D theory, for an untrained flow too (IMH is exact for any proposal)."""

import numpy as np
import pytest
import torch

from flowvi.runs.ensemble import chain_record, load_configs, save_configs
from flowvi.studies.gauge_mcmc import nmcmc_gauge
from flowvi.targets.gauge import U1Gauge


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_untrained_flow_chain_matches_exact_u1_values():
    target = U1Gauge(L=4, beta=0.4).double()  # an untrained flow still gets acceptance ~0.4
    flow = target.default_flow(layers=2).double()
    r = nmcmc_gauge(flow, target, 6000, seed=0)
    exact = r["exact"]
    for est in (r["chain"], r["reweighted"]):
        assert abs(est["plaquette"]["mean"] - exact["plaquette"]) < 4 * est["plaquette"]["se"]
        assert abs(est["chi_t"]["mean"] - exact["chi_t"]) < 4 * est["chi_t"]["se"]
        assert abs(est["charge"]["mean"]) < 4 * est["charge"]["se"]
    assert r["chain"]["plaquette"]["tau_int"] >= 0.5 and 0 < r["acceptance"] < 1


def test_chain_record_and_npz_round_trip(tmp_path):
    chain = torch.tensor([[0.0], [1.0], [1.0], [2.0], [2.0], [2.0]])
    idx = torch.tensor([0, 1, 1, 3, 3, 3])
    logw = torch.arange(6.0)
    rec = chain_record(chain, idx, logw)
    assert rec["accepted"].tolist() == [True, True, False, True, False, False]
    assert rec["log_weight"].tolist() == [0.0, 1.0, 1.0, 3.0, 3.0, 3.0]
    path = save_configs(tmp_path / "c.npz", rec["chain_states"], rec["accepted"], rec["log_weight"], 0.4, {"a": 1})
    back = load_configs(path)
    assert np.array_equal(back["configs"], chain.numpy()) and back["run"] == {"a": 1} and back["acceptance"] == 0.4
    assert back["configs"][back["accepted"]].ravel().tolist() == [0.0, 1.0, 2.0]
