"""The REINFORCE authors' gauge flow in flowvi ('2x1' masks, dilations, spline rotation; NEUMC_ARCH), checked
against the geometry and size of their own code (neumc, at ../shared/ext/neumc; see test_authors_physics)."""

import math

import pytest
import torch

from flowvi.flows.gauge import NEUMC_ARCH, PlaquetteCoupling, u1_gauge_flow
from flowvi.physics.u1 import gauge_transform, plaquette_angles, wrap
from flowvi.targets import make_target
from tests.physics.test_authors_physics import NEUMC  # puts neumc on sys.path, or fails clearly

assert NEUMC.is_dir()
from neumc.nf.sch_masks import schwinger_masks_with_2x1_loops  # noqa: E402
from neumc.nf.u1_model_asm import assemble_model_from_dict  # noqa: E402

TWO_PI = 2 * math.pi
SMALL = {**NEUMC_ARCH, "layers": 8, "channels": 4}


def randomize(module, std, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, std)
    return module


@pytest.mark.parametrize("mu", [0, 1])
def test_2x1_coupling_geometry(mu):
    """Active links, frozen plaquettes and the layer order are those of neumc's masks; a layer moves only its
    active links and leaves the frozen plaquettes (and hence its own conditioner input) unchanged."""
    L = 8
    masks = schwinger_masks_with_2x1_loops(
        plaq_mask_shape=(L, L), link_mask_shape=(2, L, L), float_dtype="float64", device="cpu"
    )
    flow = u1_gauge_flow(L, **SMALL)
    for layer in flow.transform.transforms[:8]:
        link_mask, (plaq_mask, _) = next(masks)
        assert torch.equal(torch.sort(layer.active_links).values, torch.nonzero(link_mask.reshape(-1)).reshape(-1))
        assert torch.equal(layer.frozen.reshape(L, L).bool(), plaq_mask["frozen"].bool())
    layer = randomize(PlaquetteCoupling(L, mu=mu, offset=3, masks="2x1", dilations=(1, 2, 3), shift=True), 0.5, 1)
    layer = layer.double()
    z = TWO_PI * torch.rand(2, 2, L, L, dtype=torch.float64)
    x, _ = layer(z)
    changed = wrap(x - z).abs() > 1e-12
    assert changed[:, 1 - mu].sum() == 0 and changed[:, mu].sum() == 2 * L * L // 4
    frozen = layer.frozen.reshape(L, L).bool()
    assert wrap(plaquette_angles(x) - plaquette_angles(z)).abs()[:, frozen].max() < 1e-12


def test_neumc_arch_flow_is_a_gauge_equivariant_bijection_with_exact_scores():
    flow = randomize(u1_gauge_flow(4, **SMALL), 0.15, 2).double()
    z = flow.base.sample(2)
    x, logdet = flow.transform(z)
    z2, logdet_inv = flow.transform.inverse(x)
    assert wrap(z2 - z).abs().max() < 1e-10 and torch.allclose(logdet, -logdet_inv, atol=1e-10)
    jac = torch.autograd.functional.jacobian(lambda t: flow.transform(t[None])[0][0], z[0]).reshape(32, 32)
    assert torch.allclose(torch.linalg.slogdet(jac).logabsdet, logdet[0], atol=1e-9)
    assert logdet.abs().min() > 1e-2
    alpha = TWO_PI * torch.rand(2, 4, 4, dtype=torch.float64)
    xg, ldg = flow.transform(gauge_transform(z, alpha))
    assert wrap(xg - gauge_transform(x, alpha)).abs().max() < 1e-10 and torch.allclose(ldg, logdet, atol=1e-10)
    # the fast path score equals autograd's
    x, log_q, score = flow.sample_with_score(3)
    x_ref = x.detach().requires_grad_(True)
    (score_ref,) = torch.autograd.grad(flow.log_prob(x_ref).sum(), x_ref)
    assert torch.allclose(score, score_ref, atol=1e-8) and score.abs().max() > 1e-2


def test_neumc_arch_is_the_authors_flow_size():
    """48 layers, 9-knot splines with rotation (25 outputs), channels [64, 64], kernel 3, dilations 1, 2, 3.
    neumc's conditioners read 6 channels (cos, sin of the masked plaquettes and of both 2x1 orientations, one
    of which is masked to the constant angle 0); flowvi's read the 4 that vary, so each layer has 2 x 64 x 9
    weights fewer."""
    L = 8
    theirs = assemble_model_from_dict(
        {
            "lattice_shape": (L, L),
            "masking": "2x1",
            "coupling": "cs",
            "n_layers": 48,
            "n_knots": 9,
            "float_dtype": "float32",
            "nn": {"hidden_channels": [64, 64], "kernel_size": 3, "dilation": [1, 2, 3]},
        },
        device="cpu",
    )["layers"]
    ours = u1_gauge_flow(L, **NEUMC_ARCH)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert len(ours.transform.transforms) == len(theirs) == 48
    assert count(ours) == count(theirs) - 48 * 2 * 64 * 9
    convs = [c for c in theirs[0].plaq_coupling.net if isinstance(c, torch.nn.Conv2d)]
    assert [c.dilation for c in ours.transform.transforms[0].net.convs] == [c.dilation for c in convs]
    # both are flows on the same torus: a trained-from-zero flowvi flow is the identity
    z = ours.base.sample(2)
    assert torch.allclose(ours.transform(z)[0], z)


def test_gauge_arch_options_and_errors():
    t = make_target("schwinger", L=4)
    flow = t.default_flow(gauge_arch="neumc", layers=2, hidden=4, seed=0)
    layer = flow.transform.transforms[0]
    assert layer.masks == "2x1" and layer.shift and layer.net.dilations == (1, 2, 3) and len(layer.net.convs) == 3
    flow = t.default_flow(gauge_masks="2x1", dilations=[1, 2], depth=1, layers=2, hidden=4)
    assert flow.transform.transforms[1].net.dilations == (1, 2) and not flow.transform.transforms[1].shift
    with pytest.raises(ValueError, match="dilations"):
        t.default_flow(gauge_arch="neumc", depth=1)
    with pytest.raises(ValueError, match="architecture"):
        t.default_flow(gauge_arch="big")
    with pytest.raises(ValueError, match="masks"):
        PlaquetteCoupling(4, 0, 0, masks="checkers")
    with pytest.raises(ValueError, match="dilations"):
        PlaquetteCoupling(4, 0, 0, depth=2, dilations=(1, 2))


def test_cli_fit_with_the_authors_architecture(tmp_path):
    from flowvi.cli import main
    from flowvi.runs import read_config

    run = tmp_path / "sch"
    argv = ["fit", "schwinger", "-p", "L=4", "--gauge-arch", "neumc", "--layers", "2", "--hidden", "4"]
    argv += ["--steps", "2", "--batch-size", "8", "--eval-samples", "16", "--n-samples", "4", "--quiet"]
    assert main(argv + ["--out", str(run), "--device", "cpu"]) == 0
    assert read_config(run)["flow"]["gauge_arch"] == "neumc"
    argv = ["fit", "u1", "-p", "L=4", "--gauge-masks", "2x1", "--dilations", "1,2,3", "--layers", "2"]
    argv += ["--steps", "2", "--batch-size", "8", "--eval-samples", "16", "--n-samples", "4", "--quiet"]
    assert main(argv + ["--out", str(tmp_path / "u1"), "--device", "cpu"]) == 0
    assert read_config(tmp_path / "u1")["flow"]["dilations"] == [1, 2, 3]
    with pytest.raises(SystemExit):
        main(argv[:8] + ["--dilations", "1,x"])
