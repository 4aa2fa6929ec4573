"""Lattice commands: `flowvi sample` draws a phi^4 run from its Z2 mixture; `flowvi nmcmc` reports the gauge
observables of a U(1) run and writes the chain's configurations with --save-configs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from flowvi.cli import main
from flowvi.physics.u1 import average_plaquette, topological_charge
from flowvi.runs.ensemble import load_configs
from flowvi.runs.run_dir import load_run

TINY = ["--steps", "2", "--batch-size", "8", "--layers", "2", "--eval-samples", "64", "--n-samples", "8", "--quiet"]


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_sample_uses_the_z2_mixture_of_a_phi4_run(tmp_path, capsys):
    """A flow shifted into the phi > 0 vacuum: its own draws all have M > 0, the Z2 mixture's half of them."""
    run = tmp_path / "phi4"
    assert main(["fit", "phi4", "--lattice", "4", *TINY, "--out", str(run)]) == 0
    state = torch.load(run / "flow.pt")
    for key in [k for k in state if k.endswith("shift_net.4.bias") or k.endswith("shift_net.2.bias")]:
        state[key] = torch.full_like(state[key], 3.0)  # the shift net's output bias: every free site + 3
    torch.save(state, run / "flow.pt")
    flow, _, _ = load_run(run)
    with torch.no_grad():
        assert (flow.sample(200).sum((-2, -1)) > 0).all()  # the flow alone sits in one vacuum
    assert main(["sample", str(run), "-n", "2000"]) == 0
    m = np.load(run / "samples-2000.npy").sum((-2, -1))
    assert 0.4 < (m > 0).mean() < 0.6
    capsys.readouterr()


def test_nmcmc_reports_gauge_observables_and_saves_the_chain(tmp_path, capsys):
    run = tmp_path / "u1"
    assert main(["fit", "u1", "--lattice", "4", "-p", "beta=1.0", *TINY, "--out", str(run)]) == 0
    capsys.readouterr()
    configs = tmp_path / "ensemble.npz"
    assert main(["nmcmc", str(run), "--steps", "400", "--save-configs", str(configs)]) == 0
    out = capsys.readouterr().out
    for name in ("plaquette", "charge", "chi_t"):
        assert name in out
    assert "x0" not in out
    result = json.loads((run / "nmcmc.json").read_text())
    saved = load_configs(configs)
    x, accepted, log_w = saved["configs"], saved["accepted"], saved["log_weight"]
    assert x.shape == (400, 2, 4, 4) and accepted.shape == log_w.shape == (400,) and accepted[0]
    # a rejected step repeats the previous state; an accepted one moves
    same = np.all(x[1:] == x[:-1], axis=(1, 2, 3))
    assert np.array_equal(same, ~accepted[1:])
    assert saved["acceptance"] == pytest.approx(accepted[1:].mean()) == pytest.approx(result["acceptance"])
    assert saved["run"]["target"]["name"] == "u1"
    # the report is the average over the saved ensemble
    links = torch.from_numpy(x)
    assert result["chain"]["plaquette"]["mean"] == pytest.approx(average_plaquette(links).double().mean().item())
    q = topological_charge(links).double().round()
    assert result["chain"]["chi_t"]["mean"] == pytest.approx((q**2).mean().item() / 16)
    assert "exact" in result and set(result["reweighted"]) >= {"plaquette", "charge", "chi_t", "ess", "pareto_k"}
    # the recorded log weights are log p - log q of the states
    flow, target, _ = load_run(run)
    with torch.no_grad():
        lw = target.log_prob(links[:5]) - flow.log_prob(links[:5])
    assert np.allclose(lw.double().numpy(), log_w[:5], atol=1e-3)


def test_save_configs_npy_and_bad_paths(tmp_path, capsys):
    run = tmp_path / "phi4"
    assert main(["fit", "phi4", "--lattice", "4", *TINY, "--out", str(run)]) == 0
    capsys.readouterr()
    path = tmp_path / "chain.npy"
    assert main(["nmcmc", str(run), "--steps", "50", "--bins", "5", "--save-configs", str(path)]) == 0
    assert np.load(path).shape == (50, 4, 4)
    assert not (run / "nmcmc.json").exists() or "chain_states" not in json.loads((run / "nmcmc.json").read_text())
    capsys.readouterr()
    for bad, message in [(tmp_path / "chain.txt", ".npy or .npz"), (tmp_path / "no" / "c.npy", "does not exist")]:
        assert main(["nmcmc", str(run), "--steps", "50", "--save-configs", str(bad)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_nmcmc_on_a_plain_target_reports_every_coordinate(tmp_path, capsys):
    """Any target: every coordinate's chain mean with its error (the chain is exact, so the means are 0 here)."""
    run = tmp_path / "g"
    fit = ["fit", "gaussian", "--dim", "3", "-p", "condition=2", *TINY, "--hidden", "16", "--init", "none"]
    assert main([*fit, "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["nmcmc", str(run), "--steps", "4000", "--bins", "20"]) == 0
    chain = json.loads((run / "nmcmc.json").read_text())["chain"]
    assert set(chain) == {"x0", "x1", "x2"}
    for est in chain.values():
        assert abs(est["mean"]) < 4 * est["se"] and est["tau_int"] >= 0.5
