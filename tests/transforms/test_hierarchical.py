"""HierarchicalAffine: exactness on Neal's funnel, the targets' hierarchies, training, and bad input."""

import math

import pytest
import torch

from flowvi import realnvp
from flowvi.core.bases import make_base
from flowvi.core.flow import Flow
from flowvi.runs.run_dir import build, load_run
from flowvi.targets import make_target
from flowvi.training.loop import TrainConfig, fit
from flowvi.transforms import ElementwiseAffine, HierarchicalAffine
from tests.conftest import load_benchmark


def test_starts_at_identity():
    layer = HierarchicalAffine(5, [0, 1], [[2, 4], [3, 4]])
    z = torch.randn(7, 5)
    x, logdet = layer(z)
    torch.testing.assert_close(x, z)
    torch.testing.assert_close(logdet, torch.zeros(7))


def test_linear_layer_represents_the_funnel_exactly():
    """x_i = exp(v / 2) eps_i: one elementwise scale for v and log-scales 0.5 v give q = p exactly."""
    target = make_target("funnel", dim=6, sigma=3.0).double()
    ((children, parents),) = target.hierarchy()
    layer = HierarchicalAffine(6, children, parents, hidden=0).double()
    scale = ElementwiseAffine(6).double()
    with torch.no_grad():
        layer.linear[:, 0, 0] = 0.5  # log-scale of x_i = v / 2
        scale.log_scale[0] = math.log(3.0)  # v = 3 eps_0
    flow = Flow(make_base("gaussian", 6), [scale, layer]).double()
    torch.manual_seed(0)
    x, log_q = flow.sample_and_log_prob(1000)
    torch.testing.assert_close(log_q, target.log_prob(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name,globals_", [("horseshoe_synthetic", 1), ("regularized_horseshoe_synthetic", 2)])
def test_horseshoe_hierarchy_names_what_each_coefficient_depends_on(name, globals_):
    """The parents of z_j are exactly the other coordinates beta_j depends on (autograd's sparsity pattern)."""
    target = make_target(name, p=4, n=10).double()
    (z, z_parents), (lam, lam_parents) = target.hierarchy()
    theta = torch.randn(1, target.dim, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda t: target.coefficients(t)[0], theta)[:, 0]  # (p, d)
    for j in range(target.p):
        depends = set(torch.nonzero(jac[j]).flatten().tolist())
        assert depends == {int(z[j]), *z_parents[j].tolist()}
        assert z_parents.shape[1] == 1 + globals_
    # the second pair is the first one turned round: log lambda_j given z_j and the same global scales
    torch.testing.assert_close(lam, z_parents[:, 0])
    torch.testing.assert_close(lam_parents[:, 0], z)
    torch.testing.assert_close(lam_parents[:, 1:], z_parents[:, 1:])


def _funnel_elbo(hierarchical: bool) -> float:
    torch.manual_seed(0)
    config = {
        "target": {"name": "funnel", "params": {"dim": 8, "sigma": 3.0}},
        "seed": 0,
        "flow": {"layers": 2, "hidden": 32, "hierarchical": hierarchical, "loft": False},
    }
    flow, target = build(config)
    fit(flow, target, TrainConfig(steps=600, batch_size=128, lr=5e-3, checkpoint_every=10**9), progress=False)
    with torch.no_grad():
        x, log_q = flow.sample_and_log_prob(20_000)
        return float((target.log_prob(x) - log_q).mean())


def test_hierarchical_couplings_fit_the_funnel_that_real_nvp_cannot():
    """Reverse KL on Neal's funnel (log Z = 0, so ELBO = -KL): the layer closes most of the gap."""
    plain, hierarchical = _funnel_elbo(False), _funnel_elbo(True)
    assert hierarchical > -0.1, hierarchical
    assert hierarchical > plain + 0.2, (plain, hierarchical)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="both a child and a parent"):
        HierarchicalAffine(4, [0, 1], [[1], [2]])
    with pytest.raises(ValueError, match=r"must lie in \[0, 4\)"):
        HierarchicalAffine(4, [0, 1], [[2], [4]])
    with pytest.raises(ValueError, match="distinct"):
        HierarchicalAffine(4, [0, 0], [[2], [3]])
    with pytest.raises(ValueError, match=r"shape \(2, k\)"):
        HierarchicalAffine(4, [0, 1], [[2, 3]])
    with pytest.raises(TypeError, match="integer indices"):
        HierarchicalAffine(4, [0.0, 1.0], [[2], [3]])
    with pytest.raises(ValueError, match=r"expects \(batch, 4\)"):
        HierarchicalAffine(4, [0, 1], [[2], [3]])(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="declares no hierarchy"):
        build({"target": {"name": "gaussian", "params": {"dim": 4}}, "flow": {"hierarchical": True}})


def test_realnvp_places_one_layer_per_pair_before_loft():
    pairs = make_target("funnel", dim=5).hierarchy()
    names = [type(t).__name__ for t in realnvp(5, layers=2, hidden=8, hierarchy=pairs).transform]
    assert names[-2:] == ["HierarchicalAffine", "LOFT"]


def test_cli_fit_hierarchical_and_reload(tmp_path):
    """``flowvi fit --hierarchical`` records the option, and the run reloads into the same flow."""
    from flowvi.cli import main

    out = tmp_path / "run"
    argv = ["fit", "funnel", "--dim", "5", "--steps", "20", "--batch-size", "32", "--layers", "2", "--hidden", "16",
            "--eval-samples", "500", "--n-samples", "10", "--quiet", "--hierarchical", "--hierarchy-hidden", "0",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    flow, target, config = load_run(out)
    assert config["flow"]["hierarchical"] and config["flow"]["hierarchy_hidden"] == 0
    (layer,) = [t for t in flow.transform if isinstance(t, HierarchicalAffine)]
    assert layer.hidden == 0 and layer.linear.abs().sum() > 0  # trained, and reloaded with its weights
    assert main(["fit", "gaussian", "--dim", "4", "--steps", "2", "--hierarchical", "--out", str(tmp_path / "g")]) != 0


def test_funnel_benchmark_quick_mode(tmp_path):
    """benchmarks/hierarchical.py --quick writes both flows' rows with finite ELBO and log Z."""
    import json

    bench = load_benchmark("hierarchical")
    out = tmp_path / "funnel.json"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["flow"] for r in rows] == ["Real NVP", "Real NVP + hierarchical"]
    assert all(math.isfinite(r["elbo"]) and r["elbo"] <= r["log_z"] + 3 * r["log_z_se"] for r in rows)


def test_target_file_declares_its_hierarchy(tmp_path):
    """A target file's function with a ``hierarchy`` attribute gets the layer from ``flowvi fit --hierarchical``."""
    from flowvi.cli import main

    path = tmp_path / "model.py"
    path.write_text(
        "import torch\n\n"
        "def log_p(x):\n"
        "    v, rest = x[:, 0], x[:, 1:]\n"
        "    return -v**2 / 18 - 0.5 * (rest**2).sum(-1) * torch.exp(-v) - 0.5 * rest.shape[1] * v\n\n"
        "log_p.hierarchy = [(range(1, 4), [[0]] * 3)]\n"
        "def bad(x):\n    return -(x**2).sum(-1)\n\n"
        "bad.hierarchy = 'v scales the rest'\n"
    )
    out = tmp_path / "run"
    argv = ["fit", f"{path}:log_p", "--dim", "4", "--steps", "5", "--layers", "2", "--hidden", "8",
            "--eval-samples", "200", "--n-samples", "10", "--quiet", "--hierarchical", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    flow, _, _ = load_run(out)
    (layer,) = [t for t in flow.transform if isinstance(t, HierarchicalAffine)]
    assert layer.child_index.tolist() == [1, 2, 3] and layer.parent_index.tolist() == [[0], [0], [0]]
    with pytest.raises(ValueError, match="hierarchy must be a list"):
        make_target(f"{path}:bad", dim=4)
    no_hierarchy = {"target": {"name": f"{path}:bad", "params": {"dim": 4}}, "flow": {"hierarchical": True}}
    path.write_text(path.read_text().replace("bad.hierarchy = 'v scales the rest'\n", ""))
    with pytest.raises(ValueError, match="declares no hierarchy"):
        build(no_hierarchy)
