"""Training by parts: gradient isolation, the one-part objective, cut placement, and a short run on digits."""

import pytest
import torch

from flowvi.data.arrays import load_data, train_test_split
from flowvi.data.dequantize import bits_per_dim, uniform_dequantize
from flowvi.flows.glow import flat_glow, glow
from flowvi.flows.multiscale import Split
from flowvi.flows.realnvp import realnvp
from flowvi.training.parts import PartedFlow, PartsConfig, PartsTrainer, active_parts, normalizing_layers, part_starts


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _perturbed_glow():
    model = glow((1, 8, 8), levels=3, steps=2, hidden=8).double()
    model.log_prob(torch.rand(64, 1, 8, 8, dtype=torch.float64))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


@pytest.mark.parametrize(
    "build", [_perturbed_glow, lambda: realnvp(6, layers=4, hidden=8, loft=False).double()], ids=["glow", "realnvp"]
)
def test_no_gradient_crosses_a_part_boundary(build):
    model = build()
    layers, _ = normalizing_layers(model)
    parted = PartedFlow(model, part_starts(layers, parts=3))
    x = torch.rand(16, *model.event_shape, dtype=torch.float64)
    losses, h = [], x
    for k in range(3):
        loss, h = parted.truncated_objective(k, h)
        losses.append(loss.mean())
    for k in range(3):
        model.zero_grad(set_to_none=True)
        losses[k].backward(retain_graph=True)
        for j in range(3):
            grads = [p.grad for p in parted.parameters(j)]
            if j == k:
                assert any(g is not None and g.abs().sum() > 0 for g in grads)
            else:
                assert all(g is None or torch.count_nonzero(g) == 0 for g in grads)


@pytest.mark.parametrize("build", [_perturbed_glow, lambda: flat_glow(8, blocks=2, steps=2, hidden=8).double()])
def test_one_part_truncated_objective_is_the_full_objective(build):
    model = build()
    x = torch.rand(8, *model.event_shape, dtype=torch.float64)
    model.log_prob(x)  # ActNorm init for the flat model
    parted = PartedFlow(model, [0])
    loss, _ = parted.truncated_objective(0, x)
    assert torch.allclose(loss, -model.log_prob(x), rtol=0, atol=1e-12)
    # and the multi-part log p(x) is the model's log p(x)
    layers, _ = normalizing_layers(model)
    assert torch.allclose(PartedFlow(model, part_starts(layers, parts=2)).log_prob(x), model.log_prob(x))


def test_cuts_follow_blocks_layer_counts_and_splits():
    layers = list(glow((1, 8, 8), levels=3, steps=4, hidden=4).layers)
    # unsqueeze, 4 steps, split | unsqueeze, 4 steps, split | unsqueeze, 4 steps
    assert part_starts(layers, blocks=True) == [0, 6, 12]
    assert part_starts(layers, every=4) == [0, 6, 12]
    assert part_starts(layers, parts=2) == [0, 9]
    assert part_starts(layers, every=2) == [0, 3, 6, 9, 12, 15]
    for starts in (part_starts(layers, parts=5), part_starts(layers, every=3)):
        assert all(not isinstance(layers[s], Split) for s in starts)
    assert part_starts(layers, parts=1) == [0]
    with pytest.raises(ValueError, match="number of parts"):
        part_starts(layers, parts=13)
    with pytest.raises(ValueError, match="no multi-scale splits"):
        part_starts(list(realnvp(4, layers=2).transform), blocks=True)


def test_schedules_pick_the_parts():
    cfg = PartsConfig(schedule="alternate_then_finetune", steps=90, finetune_fraction=1 / 3)
    assert [active_parts(cfg, s, 3) for s in (0, 1, 2, 3, 59)] == [[0], [1], [2], [0], [2]]
    assert active_parts(cfg, 60, 3) is None
    seq = PartsConfig(schedule="sequential", steps=90)
    assert [active_parts(seq, s, 3) for s in (0, 29, 30, 89)] == [[0], [0], [1], [2]]
    assert active_parts(PartsConfig(schedule="parallel"), 5, 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="unknown schedule"):
        PartsConfig(schedule="greedy").check()


def test_path_estimator_is_refused_for_data_and_parts():
    model = realnvp(4, layers=2, hidden=8)
    parted = PartedFlow(model, [0])
    with pytest.raises(ValueError, match="target density"):
        PartsTrainer(parted, PartsConfig(estimator="path"), lambda g, n: torch.randn(n, 4))


def test_short_alternate_run_lowers_test_bits_per_dim_on_digits(tmp_path):
    data = load_data("digits")
    train, test = train_test_split(len(data.x), 0.2, seed=0)
    x_train = torch.tensor(data.x[train], dtype=torch.float32)
    y_test = uniform_dequantize(torch.tensor(data.x[test], dtype=torch.float32), 17, torch.Generator().manual_seed(1))
    model = glow((1, 8, 8), levels=3, steps=2, hidden=32)
    layers, _ = normalizing_layers(model)
    parted = PartedFlow(model, part_starts(layers, parts=2), devices=["cpu", "cpu"])
    parted.initialize(uniform_dequantize(x_train[:256], 17))

    def batch(gen, n):
        return uniform_dequantize(x_train[torch.randint(0, len(x_train), (n,), generator=gen)], 17, gen)

    def test_bpd(p):
        with torch.no_grad():
            return {"test_bpd": float(bits_per_dim(p.log_prob(y_test), 64, 17).mean())}

    before = test_bpd(parted)["test_bpd"]
    cfg = PartsConfig(schedule="alternate", steps=120, batch_size=64, lr=2e-3, warmup=10, eval_every=60)
    state = PartsTrainer(parted, cfg, batch, test_bpd).run(run_dir=tmp_path)
    after = state.history[-1]["test_bpd"]
    assert after < before - 0.3, (before, after)
    assert (tmp_path / "checkpoint.pt").exists()
    assert [m["step"] for m in state.history] == [0, 60, 120]


@pytest.mark.parametrize("schedule, changed", [("alternate", [0]), ("parallel", [0, 1, 2]), ("end_to_end", [0, 1, 2])])
def test_a_step_updates_exactly_the_scheduled_parts(schedule, changed):
    model = flat_glow(8, blocks=2, steps=3, hidden=8)
    layers, _ = normalizing_layers(model)
    parted = PartedFlow(model, part_starts(layers, parts=3), devices=["cpu"] * 3)
    x = torch.randn(256, 8) * torch.linspace(0.5, 2, 8)
    parted.initialize(x)
    before = [[p.detach().clone() for p in parted.parameters(k)] for k in range(3)]
    trainer = PartsTrainer(parted, PartsConfig(schedule=schedule, warmup=0), lambda g, n: x[:n])
    ok = trainer.step()
    assert ok
    for k in range(3):
        moved = any(not torch.equal(a, b) for a, b in zip(before[k], parted.parameters(k), strict=True))
        assert moved == (k in changed), (schedule, k)
