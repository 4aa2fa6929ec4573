"""Overlap of the data-parallel all-reduce with a compiled backward pass, and compressed gradient
communication (CPU, gloo, 2 processes).

* A flow compiled layer by layer computes what the flow computes, with the same parameters.
* Its backward pass starts the all-reduce of the last layers' buckets before the backward of the first
  layer begins; the flow compiled in one region starts none before (so the check can fail).
* Two ranks training with the overlapped compiled step end with the parameters of the uncompiled step,
  and the same on both ranks.
* bf16 / fp16 communication gives the exact average within the 16-bit roundoff, and not exactly.
"""

import copy
import functools

import pytest
import torch

from flowvi.training.fast_step import resolve_options
from flowvi.training.loop import TrainConfig

from .test_distributed import _flow_and_target, _spawn

aot_eager = functools.partial(torch.compile, backend="aot_eager")  # AOTAutograd's graphs without code generation


@pytest.mark.parametrize("layers_per_region", [1, 3])
def test_compile_by_layer_shares_parameters_and_computes_the_same(layers_per_region):
    from flowvi.objectives.estimators import ESTIMATORS
    from flowvi.training.overlap import compile_by_layer

    flow, target = _flow_and_target()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    by_layer = compile_by_layer(flow, aot_eager, layers_per_region)
    n = len(flow.transform)  # two couplings, an elementwise affine layer and LOFT
    assert len(by_layer.transform) == -(-n // layers_per_region)  # regions of 3 and 1 layers for 3
    assert [id(p) for p in by_layer.parameters()] == [id(p) for p in flow.parameters()]
    assert compile_by_layer(flow.transform, aot_eager) is None  # not a Flow: one compiled region
    x = flow.sample(32)
    torch.testing.assert_close(by_layer.log_prob(x), flow.log_prob(x))
    for name in ("reparam", "path", "reinforce"):  # forward, forward_with_score, inverse
        grads = []
        for f in (flow, by_layer):
            f.zero_grad(set_to_none=True)
            torch.manual_seed(3)
            ESTIMATORS[name](f, target, 32).loss.backward()
            grads.append(torch.cat([p.grad.reshape(-1) for p in flow.parameters()]))
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="layers_per_region"):
        compile_by_layer(flow, aot_eager, 0)


def test_resolve_overlap_and_grad_comm():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # resolving options touches no device
    assert resolve_options(TrainConfig(compile=True), cuda, distributed=True).overlap
    assert not resolve_options(TrainConfig(compile=True), cuda).overlap
    # On the CPU, alternating compiled layers and eager glue makes OpenMP threads spin: not by default.
    assert not resolve_options(TrainConfig(compile=True), cpu, distributed=True).overlap
    assert resolve_options(TrainConfig(compile=True, overlap=True), cpu).overlap
    assert not resolve_options(TrainConfig(compile=True, overlap=False), cuda, distributed=True).overlap
    assert not resolve_options(TrainConfig(compile=False), cuda, distributed=True).overlap  # eager overlaps anyway
    with pytest.raises(ValueError, match="grad_comm"):
        resolve_options(TrainConfig(grad_comm="int8"), cpu)
    with pytest.raises(ValueError, match="overlap"):
        resolve_options(TrainConfig(overlap="sometimes"), cpu)
    assert resolve_options(TrainConfig(compile=True, overlap_layers=4), cuda, distributed=True).overlap_layers == 4
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="overlap_layers"):
            resolve_options(TrainConfig(overlap_layers=bad), cpu)


def test_cli_options_reach_the_train_config():
    from flowvi.cli import build_parser
    from flowvi.cli.cmd_fit import config_from_args

    argv = ["fit", "gaussian", "--dim", "4", "--overlap", "false", "--grad-comm", "bf16", "--overlap-layers", "4"]
    train = config_from_args(build_parser().parse_args(argv))["train"]
    assert train["overlap"] is False and train["grad_comm"] == "bf16" and train["overlap_layers"] == 4
    with pytest.raises(ValueError, match="--overlap-layers"):
        config_from_args(build_parser().parse_args(["fit", "gaussian", "--dim", "4", "--overlap-layers", "0"]))


def _first_layer_backward_nodes(loss, layer):
    """The autograd nodes that hand gradients to ``layer``'s parameters."""
    own = {id(p) for p in layer.parameters()}
    seen, stack, nodes = set(), [loss.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        nexts = [n for n, _ in node.next_functions]
        if any(id(getattr(n, "variable", None)) in own for n in nexts):
            nodes.append(node)
        stack += nexts
    return nodes


def _check_overlap_order(rank, world, tmp):
    from flowvi.objectives.estimators import reparam
    from flowvi.training import distributed as dist
    from flowvi.training.overlap import compile_by_layer

    flow, target = _flow_and_target()
    params = list(flow.parameters())
    events = []

    class RecordingAverager(dist.GradientAverager):
        def _launch(self):
            events.append("all-reduce")
            super()._launch()

    averager = RecordingAverager(params, bucket_mb=1e-5)  # about one bucket per parameter
    whole = aot_eager(lambda: reparam(flow, target, 64).loss)
    by_layer = compile_by_layer(flow, aot_eager)
    order = {}
    for name, loss_fn in (("whole", whole), ("by_layer", lambda: reparam(by_layer, target, 64).loss)):
        events.clear()
        flow.zero_grad(set_to_none=True)
        loss = loss_fn()
        nodes = _first_layer_backward_nodes(loss, flow.transform[0])
        assert nodes, name
        for node in nodes:
            node.register_prehook(lambda grads: events.append("first layer backward"))
        loss.backward()
        averager(params)
        order[name] = events.index("first layer backward")
        assert events.count("all-reduce") == len(averager.buckets)
    # One compiled region: every gradient appears at the end of the backward pass, nothing starts earlier.
    assert order["whole"] == 0
    # Layer by layer: the buckets of the later layers are on their way before the first layer's backward.
    assert order["by_layer"] >= len(list(flow.transform[1].parameters()))
    averager.close()


def test_layer_wise_compile_starts_the_all_reduce_during_the_backward_pass(tmp_path):
    _spawn(_check_overlap_order, tmp_path)


def _train_two_ranks(flow, target, rank, compile_, overlap, steps=4, overlap_layers=1):
    from flowvi.objectives.estimators import reparam
    from flowvi.training import distributed as dist
    from flowvi.training.fast_step import StepOptions, make_optimizer, make_step

    cfg = TrainConfig(steps=steps, batch_size=32, lr=1e-2)
    options = StepOptions(compile_, False, "fp32", False, True, overlap=overlap, overlap_layers=overlap_layers)
    params = list(flow.parameters())
    averager = dist.GradientAverager(params, bucket_mb=0.002)
    step = make_step(flow, target, reparam, make_optimizer(params, cfg, options), params, cfg, options, averager)
    torch.manual_seed(10 + rank)
    oks = [bool(step().ok) for _ in range(steps)]
    averager.close()
    assert all(oks)
    return torch.cat([p.detach().reshape(-1) for p in params]), step


def _check_overlapped_step(rank, world, tmp):
    import flowvi.training.fast_step as fastpath

    flow, target = _flow_and_target()
    theta0 = torch.cat([p.detach().reshape(-1) for p in flow.parameters()])
    reference, _ = _train_two_ranks(copy.deepcopy(flow), target, rank, compile_=False, overlap=False)
    # The step's own compiler (inductor) is slow on the CPU; AOTAutograd without code generation makes
    # the same per-layer backward nodes.
    fastpath._compile = aot_eager
    regions_of_3 = copy.deepcopy(flow)  # regions of 3 and 1 of the 4 layers
    overlapped, step = _train_two_ranks(flow, target, rank, compile_=True, overlap=True)
    assert step.options.overlap and step.options.compile
    grouped, step = _train_two_ranks(regions_of_3, target, rank, compile_=True, overlap=True, overlap_layers=3)
    assert step.options.overlap_layers == 3
    moved = (reference - theta0).norm()
    assert moved > 0
    assert (overlapped - reference).norm() < 1e-4 * moved
    assert (grouped - reference).norm() < 1e-4 * moved
    gathered = [torch.empty_like(overlapped) for _ in range(world)]
    torch.distributed.all_gather(gathered, overlapped)
    assert torch.equal(gathered[0], gathered[1])


def test_overlapped_compiled_step_gives_the_parameters_of_the_eager_step(tmp_path):
    _spawn(_check_overlapped_step, tmp_path)


def _check_inductor_step(rank, world, tmp):
    flow, target = _flow_and_target()
    reference, _ = _train_two_ranks(copy.deepcopy(flow), target, rank, compile_=False, overlap=False, steps=3)
    overlapped, step = _train_two_ranks(flow, target, rank, compile_=True, overlap=True, steps=3)
    assert step.options.compile and step.options.overlap  # compiled, no fallback
    torch.testing.assert_close(overlapped, reference, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_overlapped_step_with_inductor(tmp_path):
    _spawn(_check_inductor_step, tmp_path)


def _check_compressed_average(rank, world, tmp):
    from flowvi.objectives.estimators import reparam
    from flowvi.training import distributed as dist

    flow, target = _flow_and_target()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    params = list(flow.parameters())

    def grads_for(seed):
        flow.zero_grad(set_to_none=True)
        torch.manual_seed(seed)
        reparam(flow, target, 64).loss.backward()
        return torch.cat([p.grad.reshape(-1) for p in params])

    exact = sum(grads_for(100 + r) for r in range(world)) / world
    # bf16: unit roundoff 2^-8 (cast and one summation for 2 ranks); fp16: 2^-11
    for comm, tol in (("bf16", 1e-2), ("fp16", 2e-3)):
        averager = dist.GradientAverager(params, bucket_mb=0.001, comm_dtype=comm)
        grads_for(100 + rank)
        averager(params)
        averager.close()
        got = torch.cat([p.grad.reshape(-1) for p in params])
        assert all(p.grad.dtype == torch.float32 for p in params)
        rel = ((got - exact).norm() / exact.norm()).item()
        assert 0 < rel < tol, (comm, rel)
        assert (got - exact).abs().max() <= 2 * tol * exact.abs().max()
    with pytest.raises(ValueError, match="int8"):
        dist.GradientAverager(params, comm_dtype="int8")


def test_compressed_gradient_average_is_within_the_16_bit_roundoff(tmp_path):
    _spawn(_check_compressed_average, tmp_path)
