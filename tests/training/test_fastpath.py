"""The fast training step gives the plain step's losses and parameters (same samples) within the
tolerances of docs/performance.md; mixed precision keeps log-densities in float32; a non-finite
step is skipped on the device."""

import copy
import json
import math

import pytest
import torch

from flowvi import fit, realnvp
from flowvi.objectives.estimators import reparam
from flowvi.targets import make_target
from flowvi.training.fast_step import Float32Target, StepOptions, _compile, make_optimizer, make_step, resolve_options
from flowvi.training.loop import TrainConfig


def _setup(dim=6, layers=2, hidden=32):
    torch.manual_seed(0)
    target = make_target("conjugate_regression", p=dim - 1, n=30)
    return realnvp(target.dim, layers=layers, hidden=hidden), target


def _train(flow, target, options, steps=12, clip=10.0, lr=1e-3):
    cfg = TrainConfig(steps=steps, batch_size=64, lr=lr, clip=clip)
    params = [p for p in flow.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg, options)
    step = make_step(flow, target, reparam, optimizer, params, cfg, options)
    torch.manual_seed(1)
    losses, oks = [], []
    for _ in range(steps):
        r = step()
        losses.append(float(r.loss))
        oks.append(bool(r.ok))
    return torch.tensor(losses, dtype=torch.float64), oks, step


def _opts(**kw):
    base = dict(compile=False, cuda_graph=False, precision="fp32", tf32=False, fused_adam=True)
    return StepOptions(**{**base, **kw})


def _theta(flow):
    return torch.cat([p.detach().reshape(-1) for p in flow.parameters()]).double()


def test_resolve_options():
    cpu = torch.device("cpu")
    o = resolve_options(TrainConfig(), cpu)
    assert not (o.compile or o.cuda_graph or o.tf32 or o.fused_adam)
    assert resolve_options(TrainConfig(precision="bf16"), cpu).fused_adam
    with pytest.raises(ValueError, match="precision"):
        resolve_options(TrainConfig(precision="fp8"), cpu)
    with pytest.raises(ValueError, match="CUDA"):
        resolve_options(TrainConfig(cuda_graph=True), cpu)
    with pytest.raises(ValueError, match="compile"):
        resolve_options(TrainConfig(compile="maybe"), cpu)


@pytest.mark.parametrize("clip", [10.0, 0.05])
def test_fused_step_matches_plain_step(clip):
    # clip=0.05 clips every step: the fused step clips inside the Adam kernel (grad_scale) and leaves the
    # clipped gradient in .grad, as clip_grads_with_norm_ does.
    flow, target = _setup()
    fast_flow = copy.deepcopy(flow)
    theta0 = _theta(flow)
    plain_losses, _, _ = _train(flow, target, _opts(fused_adam=False), clip=clip)
    fast_losses, oks, _ = _train(fast_flow, target, _opts(), clip=clip)
    assert all(oks)
    grads = [torch.cat([p.grad.reshape(-1) for p in f.parameters()]) for f in (flow, fast_flow)]
    if clip < 1:
        assert grads[0].norm() == pytest.approx(clip, rel=1e-4)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)
    # Same samples, same float32 arithmetic up to the fused Adam kernel's rounding.
    torch.testing.assert_close(fast_losses, plain_losses, rtol=1e-5, atol=1e-5)
    moved = (_theta(flow) - theta0).norm()
    assert (_theta(fast_flow) - _theta(flow)).norm() < 1e-4 * moved


def _hierarchical_funnel():
    torch.manual_seed(0)
    target = make_target("funnel", dim=6)
    return realnvp(6, layers=2, hidden=16, hierarchy=target.hierarchy()), target


@pytest.mark.parametrize("case", ["realnvp", "hierarchical"])
def test_compiled_step_matches_plain_step(case):
    flow, target = _setup(layers=2, hidden=16) if case == "realnvp" else _hierarchical_funnel()
    fast_flow = copy.deepcopy(flow)
    theta0 = _theta(flow)
    plain_losses, _, _ = _train(flow, target, _opts(fused_adam=False), steps=6)
    fast_losses, oks, _ = _train(fast_flow, target, _opts(compile=True), steps=6)
    assert all(oks)
    torch.testing.assert_close(fast_losses, plain_losses, rtol=1e-5, atol=1e-4)
    moved = (_theta(flow) - theta0).norm()
    assert (_theta(fast_flow) - _theta(flow)).norm() < 1e-3 * moved


def _kept_bytes(flow, loss_fn):
    """Bytes of the tensors (parameters aside) that autograd keeps for the backward pass of ``loss_fn()``,
    the loss, and the parameters' gradient after its backward pass (same draws: the seed is reset)."""
    params = {p.untyped_storage().data_ptr() for p in flow.parameters()}
    kept = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            kept[st.data_ptr()] = st.nbytes()
        return t

    flow.zero_grad()
    torch.manual_seed(1)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        value = loss_fn()
    value.backward()
    return sum(kept.values()), torch.cat([p.grad.reshape(-1) for p in flow.parameters()])


def test_compiled_backward_keeps_what_the_eager_node_keeps():
    # Saved for the backward pass of the loss, parameters aside. Eagerly, per coupling layer: the two
    # hidden activations, the layer's input block and one copy of the raw log-scales (the lean
    # coupling node); and the draws z and the flow's output x. The compiled step, with
    # flowvi.training.fast_step.PARTITIONER_OPTIONS, keeps no more; with the partitioner's defaults it keeps
    # exp(c) and c'(s) instead of s (one more B x d/2 tensor per layer). Draws are kept, never recomputed.
    torch._dynamo.reset()
    torch.manual_seed(0)
    B, d, h = 16, 13, 8
    flow = realnvp(d, layers=4, hidden=h, depth=2, affine=False, loft=False)

    def loss():
        x, logdet = flow.transform(torch.randn(B, d))
        return (0.5 * (x * x).sum(-1) - logdet).mean()

    eager, eager_grad = _kept_bytes(flow, loss)
    ours, grad = _kept_bytes(flow, _compile(loss))
    torch._dynamo.reset()
    default, _ = _kept_bytes(flow, torch.compile(loss, options={"fallback_random": True}))
    # Layers alternate which block they transform: 7 coordinates, then 6. Four copies of log-scales, and
    # the three blocks that layers 0-2 write (the input blocks of the later layers; the draws are z).
    hi, lo = 4 * B * (d - d // 2), 4 * B * (d // 2)
    halves = (hi + lo + hi + lo) + (hi + lo + hi)
    assert eager == 2 * 4 * B * d + 4 * (2 * 4 * B * h) + halves
    assert ours <= eager < default
    torch.testing.assert_close(grad, eager_grad)


@pytest.mark.parametrize("precision,tol", [("bf16", 3e-2), ("fp16", 3e-3)])
def test_mixed_precision_keeps_float32_log_densities(precision, tol):
    flow, target = _setup(layers=2)
    # A trained-looking flow: non-zero conditioner outputs.
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.manual_seed(2)
    x, log_q = flow.sample_and_log_prob(256)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    torch.manual_seed(2)
    with torch.autocast("cpu", dtype=dtype):
        x16, log_q16 = flow.sample_and_log_prob(256)
        log_p16 = Float32Target(target).log_prob(x16)
    assert x16.dtype == log_q16.dtype == log_p16.dtype == torch.float32
    rel = ((log_q16 - log_q).norm() / log_q.norm()).item()
    assert 0 < rel < tol
    torch.testing.assert_close(log_p16, target.log_prob(x16))


def test_bf16_training_tracks_float32_training():
    flow, target = _setup()
    fast_flow = copy.deepcopy(flow)
    plain_losses, _, _ = _train(flow, target, _opts(fused_adam=False))
    bf16_losses, oks, _ = _train(fast_flow, target, _opts(precision="bf16"))
    assert all(oks)
    assert (bf16_losses - plain_losses).abs().max() < 0.05 * plain_losses.abs().mean()


def test_nonfinite_step_is_skipped_on_the_device():
    flow, target = _setup()

    class SometimesNaN:
        event_shape, dim, calls = target.event_shape, target.dim, 0

        def log_prob(self, x):
            SometimesNaN.calls += 1
            out = target.log_prob(x)
            return out * float("nan") if SometimesNaN.calls == 3 else out

    cfg = TrainConfig(steps=5, batch_size=32)
    params = list(flow.parameters())
    opts = _opts()
    optimizer = make_optimizer(params, cfg, opts)
    step = make_step(flow, SometimesNaN(), reparam, optimizer, params, cfg, opts)
    oks, thetas = [], []
    for _ in range(4):
        oks.append(bool(step().ok))
        thetas.append(_theta(flow))
    assert oks == [True, True, False, True]
    assert torch.equal(thetas[1], thetas[2]) and not torch.equal(thetas[2], thetas[3])
    assert float(optimizer.state[params[0]]["step"]) == 3.0


def test_fit_with_fast_path_resumes_exactly(tmp_path):
    def run(run_dir, interrupt_at=None, resume=False):
        flow, target = _setup()

        def callback(state, metrics):
            if state.step == interrupt_at:
                raise KeyboardInterrupt

        try:
            fit(flow, target, steps=20, batch_size=32, checkpoint_every=10, log_every=5, precision="bf16",
                run_dir=run_dir, resume=resume, progress=False, callback=callback)  # fmt: skip
        except KeyboardInterrupt:
            pass
        return flow

    ref = run(tmp_path / "a")
    run(tmp_path / "b", interrupt_at=15)
    resumed = run(tmp_path / "b", resume=True)
    for a, b in zip(ref.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_resume_across_plain_and_fast_paths(tmp_path):
    # A checkpoint of the plain step continues on the fast step (e.g. a CPU run resumed on a GPU)
    # and the other way round, on the same learning-rate schedule.
    flow, target = _setup()
    fit(flow, target, steps=20, batch_size=32, checkpoint_every=10, run_dir=tmp_path, progress=False)
    for steps, precision in ((40, "bf16"), (60, "fp32"), (80, "bf16")):
        flow2, _ = _setup()
        state = fit(flow2, target, steps=steps, batch_size=32, checkpoint_every=10, log_every=7, run_dir=tmp_path,
                    resume=True, progress=False, precision=precision)  # fmt: skip
        last = state.history[-2]  # a step inside the schedule
        assert state.skipped == 0 and last["step"] < steps
        assert abs(last["lr"] - 0.5e-3 * (1 + math.cos(math.pi * last["step"] / steps))) < 1e-9


def test_cli_fit_speed_options(tmp_path):
    from flowvi.cli import main

    out = tmp_path / "run"
    argv = ["fit", "gaussian", "--dim", "4", "--steps", "10", "--batch-size", "32", "--layers", "2", "--hidden", "16",
            "--eval-samples", "500", "--n-samples", "10", "--quiet", "--precision", "bf16", "--compile", "false",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    train = json.loads((out / "config.json").read_text())["train"]
    assert (train["precision"], train["compile"], train["cuda_graph"], train["tf32"]) == ("bf16", False, "auto", True)
    with pytest.raises(SystemExit):
        main([*argv[:-2], "--precision", "fp8", "--out", str(tmp_path / "bad")])


def test_asymmetric_clamp_derivatives():
    from flowvi.transforms.clamps import AsymmetricClamp

    clamp = AsymmetricClamp(alpha_pos=0.3, alpha_neg=1.7)
    s = (3 * torch.randn(40, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(clamp, (s,))
    assert torch.autograd.gradgradcheck(clamp, (s,))
    # the value is the formula of Andrade (2024), eq. 7
    alpha = torch.where(s >= 0, 0.3, 1.7).double()
    torch.testing.assert_close(clamp(s), 2 / math.pi * alpha * torch.atan(s / alpha))


@pytest.mark.parametrize("where", ["forward", "backward"])
def test_compile_failure_falls_back_to_the_same_step(monkeypatch, where):
    class FailingBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            raise RuntimeError("backward compiler failed")

    def broken_compile(fn, **kwargs):
        def compiled():
            if where == "forward":
                raise RuntimeError("forward compiler failed")
            loss, log_w = fn()  # draws samples before failing: the fallback must draw them again
            return FailingBackward.apply(loss), log_w

        return compiled

    flow, target = _setup()
    fast_flow = copy.deepcopy(flow)
    plain_losses, _, _ = _train(flow, target, _opts(fused_adam=False), steps=4)
    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.warns(RuntimeWarning, match="compiler failed"):
        fast_losses, oks, step = _train(fast_flow, target, _opts(compile=True), steps=4)
    assert all(oks)
    if where == "backward":
        assert not step.options.compile  # the whole step runs uncompiled from then on
    torch.testing.assert_close(fast_losses, plain_losses, rtol=1e-5, atol=1e-5)


class _HostSyncTarget(torch.nn.Module):
    """A standard normal whose log_prob reads a value on the host: it cannot be captured in a graph."""

    event_shape = (6,)

    def log_prob(self, x):
        scale = float(x.new_ones(()).item())
        return -0.5 * scale * (x * x).sum(-1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_uncapturable_target_trains_without_cuda_graphs():
    torch.manual_seed(0)
    flow = realnvp(6, layers=2, hidden=16).cuda()
    target = _HostSyncTarget().cuda()
    with pytest.warns(RuntimeWarning, match="cannot be captured"):
        losses, oks, step = _train(flow, target, _opts(cuda_graph=True), steps=8)
    assert step.graph is None and all(oks) and torch.isfinite(losses).all()
    torch.randn(3, device="cuda")  # the generator is usable afterwards
