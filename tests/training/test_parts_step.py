"""What a by-parts step saves: frozen parts run without autograd and get no gradient, the prefix cache is exact
while the prefix is unchanged and emptied when it changes, and the step clock names each phase."""

import pytest
import torch

from flowvi.flows.glow import glow
from flowvi.training.parts import (
    PartedFlow,
    PartsConfig,
    PartsTrainer,
    balanced_starts,
    normalizing_layers,
    part_starts,
)
from flowvi.training.parts_step import (
    PrefixCache,
    StepClock,
    layer_costs,
    saved_tensor_bytes,
    state_bytes,
)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


DATA = torch.rand(96, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def sample_indexed(gen, n):
    idx = torch.randint(0, len(DATA), (n,), generator=gen)
    return DATA[idx] + 0.01 * torch.rand(DATA[idx].shape, generator=gen), idx, len(DATA)


def make(schedule="alternate", cache=False, switch_every=1, parts=3):
    model = glow((1, 8, 8), levels=3, steps=2, hidden=8).double().float()
    layers, _ = normalizing_layers(model)
    parted = PartedFlow(model, part_starts(layers, parts=parts))
    parted.initialize(DATA)
    cfg = PartsConfig(schedule=schedule, warmup=0, batch_size=16, cache_prefix=cache, switch_every=switch_every)
    return parted, PartsTrainer(parted, cfg, lambda g, n: sample_indexed(g, n)[0], sample_indexed=sample_indexed)


def test_frozen_parts_have_no_graph_and_get_no_gradient():
    parted, trainer = make()
    x = DATA[:16]
    with saved_tensor_bytes() as saved:
        h = parted.prefix(2, x)
    assert saved["bytes"] == 0 and not h.requires_grad and h.grad_fn is None
    (loss,) = trainer._losses([2], x, None)
    assert loss.grad_fn is not None
    loss.backward()
    for k in range(3):
        grads = [p.grad for p in parted.parameters(k)]
        if k == 2:
            assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
        else:
            assert all(g is None for g in grads), k  # not even a zero tensor: autograd never reached them
    # the loss equals part 2's truncated objective on the frozen parts' output
    expected, _ = parted.truncated_objective(2, parted.prefix(2, x))
    assert torch.allclose(loss, expected.mean())


def test_a_step_for_one_part_saves_only_its_activations():
    parted, trainer = make()
    x = DATA[:16]
    with saved_tensor_bytes() as e2e:
        parted.log_prob(x)
    with saved_tensor_bytes() as last:
        trainer._losses([2], x, None)
    assert 0 < last["bytes"] < e2e["bytes"]
    s = state_bytes(parted.parameters(0), trainer.optimizers[0])
    n = sum(p.numel() for p in parted.parameters(0))
    assert s["parameters"] == s["gradients"] == 4 * n and s["optimizer"] == 0  # Adam state appears on a step


def test_prefix_cache_is_exact_while_the_prefix_is_unchanged_and_emptied_when_it_changes():
    parted, trainer = make(cache=True, switch_every=1000, parts=2)
    trainer.state.step = 1000  # part 1's turn; part 0 frozen
    trainer._batch([1])  # creates the cache
    idx = torch.randperm(len(DATA), generator=torch.Generator().manual_seed(1))[:16]
    x = DATA[idx] + 0.01 * torch.rand(16, 1, 8, 8)
    first = trainer._part_input(1, x, idx)
    assert torch.allclose(first, parted.prefix(1, x))  # a miss computes the prefix output
    misses = trainer.cache.misses
    # the same examples again, with new noise: served from the cache, i.e. their first noise draw's output
    again = trainer._part_input(1, x + 0.001, idx)
    assert torch.equal(again, first) and trainer.cache.misses == misses and trainer.cache.hits == len(idx)
    before = [p.detach().clone() for p in parted.parameters(0)]
    trainer.step()  # trains part 1: part 0 and the cache are untouched
    assert all(torch.equal(a, b) for a, b in zip(before, parted.parameters(0), strict=True))
    assert trainer.cache.key == (1, (0,))
    trainer.state.step, trainer.cfg.switch_every = 0, 1
    trainer.step()  # part 0 takes an optimizer step: the cached outputs are stale
    trainer.state.step = 1
    misses = trainer.cache.misses
    assert torch.allclose(trainer._part_input(1, x, idx), parted.prefix(1, x))  # recomputed by the new part 0
    assert trainer.cache.key == (1, (1,)) and trainer.cache.misses == misses + len(idx)


def test_prefix_cache_needs_example_indices():
    parted, _ = make(parts=2)
    with pytest.raises(ValueError, match="example index"):
        PartsTrainer(parted, PartsConfig(cache_prefix=True), lambda g, n: DATA[:n])
    cache = PrefixCache(4)
    out = cache.inputs((1, (0,)), torch.tensor([0, 2]), torch.ones(2, 3), lambda v: 2 * v)
    assert torch.equal(out, 2 * torch.ones(2, 3)) and cache.valid.tolist() == [True, False, True, False]


@pytest.mark.parametrize(
    "schedule, step, present, absent",
    [
        ("end_to_end", 0, {"forward part 0", "backward part 0", "optimizer part 0"}, {"frozen prefix (no grad)"}),
        (
            "alternate",
            1,
            {"frozen prefix (no grad)", "forward part 1", "backward part 1", "optimizer part 1"},
            {"backward part 0", "optimizer part 0", "forward part 0"},
        ),
    ],
)
def test_step_clock_times_each_phase(schedule, step, present, absent):
    parted, trainer = make(schedule=schedule, parts=1 if schedule == "end_to_end" else 2)
    trainer.clock = StepClock()
    trainer.state.step = step
    trainer.step()
    phases = trainer.clock.last
    assert present <= set(phases) and not absent & set(phases)
    assert all(t >= 0 for t in phases.values())


def test_balanced_cuts_split_the_measured_cost_evenly():
    model = glow((1, 8, 8), levels=3, steps=2, hidden=8)
    layers, _ = normalizing_layers(model)
    # unsqueeze, 2 steps, split | unsqueeze, 2 steps, split | unsqueeze, 2 steps: cuts only after steps
    costs = [0, 10, 10, 1, 0, 3, 3, 1, 0, 1, 1]
    assert balanced_starts(layers, 2, costs) == [0, 2]  # 10 | 20 (a cut after 2 steps would give 21 | 9)
    assert balanced_starts(layers, 3, costs) == [0, 2, 4]
    assert balanced_starts(layers, 1, costs) == [0]
    assert balanced_starts(layers, 2, [1.0] * len(layers)) == part_starts(layers, parts=2) == [0, 6]
    with pytest.raises(ValueError, match="number of parts"):
        balanced_starts(layers, 7, costs)
    measured = layer_costs(layers, DATA[:8])
    assert len(measured) == len(layers) and measured[1] > 0 and measured[0] == 0  # a squeeze saves nothing
