"""The training step, plain and fast.

One training step of reverse-KL training is

    loss = estimator(flow, target, batch_size).loss;  backward;  (all-reduce);
    clip the gradient norm;  Adam update unless the loss or a gradient is not finite.

:func:`make_step` builds it as a function ``step() -> StepResult``. The *plain* step is eager
PyTorch with a host-side finiteness check, as written above. The *fast* step gives the same result
(see docs/performance.md for the tolerances) with fewer launches and no host round trip:

* **TF32 matmuls** on CUDA (:func:`matmul_precision`, scoped to training): float32 inputs, matrix
  products with a 10-bit mantissa on the tensor cores; relative error about 3e-4 per product.
* **torch.compile** of the estimator (loss and log weights, forward and backward): fuses the
  elementwise work of the couplings (clamp, exp, multiply-add, ReLU) into few kernels. Random draws
  use the eager generator (inductor's ``fallback_random``), so the compiled step draws the same
  samples as the plain one. A compile error falls back to eager with a warning. With ``overlap``
  (on by default under torch.distributed) the flow is compiled layer by layer instead
  (:mod:`flowvi.training.overlap`), so that the backward pass yields each layer's gradients as soon as that
  layer is done and the data-parallel all-reduce overlaps the rest of the backward pass.
* **CUDA graphs**: after a few eager warm-up steps, the whole step (sampling, forward, backward,
  clipping, a fused Adam update) is captured once and replayed; the skip of a non-finite step
  happens on the device (Adam's ``found_inf``), so no step waits for the host.
* **Mixed precision** ``precision='bf16'|'fp16'``: autocast runs the conditioners' matrix products
  in 16 bits; their outputs are cast back to float32 in the coupling layers, so log-determinants,
  log-densities (the target runs with autocast off) and the loss stay float32. ``fp16`` adds a
  dynamic loss scale (``torch.amp.GradScaler``).
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from flowvi.training.distributed import COMM_DTYPES
from flowvi.training.overlap import compile_by_layer

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
WARMUP_STEPS = 3  # eager steps before a CUDA graph is captured (lazy init, compilation, allocator)
COMPILE_MIN_STEPS = 1000  # compile="auto" compiles only runs this long: compiling takes tens of seconds


@dataclass
class StepResult:
    loss: Tensor  # float32 scalar
    log_weights: Tensor  # detached (batch,) log p(x) - log q(x)
    ok: Tensor  # bool scalar: the step updated the parameters
    dropped: Tensor | None = None  # (2,) int64: draws dropped for a non-finite [log p, log q]


@dataclass
class StepOptions:
    """What :func:`make_step` switched on (after resolving ``'auto'``)."""

    compile: bool
    cuda_graph: bool
    precision: str
    tf32: bool
    fused_adam: bool
    overlap: bool = False  # compile the flow layer by layer (all-reduce overlaps the backward pass)
    overlap_layers: int = 1  # with overlap: consecutive layers per compiled region


def _flag(value, name: str) -> bool | str:
    if value in (True, False, "auto"):
        return value
    if isinstance(value, str) and value.lower() in ("true", "on", "yes", "1"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "off", "no", "0"):
        return False
    raise ValueError(f"unknown {name} option {value!r}; choose true, false or auto")


def resolve_options(cfg, device: torch.device, distributed: bool = False, eager_only: bool = False) -> StepOptions:
    """Decide the fast-path switches for a :class:`~flowvi.training.loop.TrainConfig` on ``device``.

    ``auto`` means: on a CUDA device, CUDA graphs, and compile for runs of at least
    ``COMPILE_MIN_STEPS`` steps (compiling takes tens of seconds); neither on the CPU; CUDA graphs not with fp16 (the loss scaler decides on the host) nor under
    torch.distributed (turn them on explicitly there). TF32 is used on CUDA unless ``tf32=False``.
    ``overlap`` (compile layer by layer, or ``overlap_layers`` layers per compiled region) applies to a
    compiled step; ``auto`` turns it on for CUDA devices under torch.distributed. ``eager_only`` (an estimator such as FAB, whose step has data-dependent
    control flow) turns ``auto`` compile and CUDA graphs off, and refuses them, and 16-bit precision, when asked.
    """
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"unknown precision {cfg.precision!r}; choose one of {', '.join(PRECISIONS)}")
    grad_comm = getattr(cfg, "grad_comm", "fp32")
    if grad_comm not in COMM_DTYPES:
        raise ValueError(f"unknown grad_comm {grad_comm!r}; choose one of {', '.join(COMM_DTYPES)}")
    overlap = _flag(getattr(cfg, "overlap", "auto"), "overlap")
    overlap_layers = getattr(cfg, "overlap_layers", 1)
    if isinstance(overlap_layers, bool) or not isinstance(overlap_layers, int) or overlap_layers < 1:
        raise ValueError(f"overlap_layers must be a positive integer, got {overlap_layers!r}")
    cuda = device.type == "cuda"
    comp = _flag(cfg.compile, "compile")
    graph = _flag(cfg.cuda_graph, "cuda_graph")
    if graph is True and not cuda:
        raise ValueError("cuda_graph=True needs the flow on a CUDA device")
    if graph is True and cfg.precision == "fp16":
        raise ValueError("cuda_graph=True does not combine with precision='fp16' (use bf16)")
    if eager_only:
        asked = [name for name, v in (("compile", comp), ("cuda_graph", graph)) if v is True]
        if cfg.precision != "fp32":
            asked.append(f"precision={cfg.precision!r}")
        if asked:
            raise ValueError(f"the {cfg.estimator!r} estimator runs eagerly in float32; drop {', '.join(asked)}")
        comp = graph = False
    if comp == "auto":
        comp = cuda and getattr(cfg, "step_limit", cfg.steps) >= COMPILE_MIN_STEPS
    if graph == "auto":
        graph = cuda and cfg.precision != "fp16" and not distributed
    fast = cuda or comp or graph or cfg.precision != "fp32"
    return StepOptions(
        compile=bool(comp),
        cuda_graph=bool(graph),
        precision=cfg.precision,
        tf32=bool(cuda and cfg.tf32),
        fused_adam=bool(fast),
        overlap=bool(comp and (overlap is True or (overlap == "auto" and distributed and cuda))),
        overlap_layers=overlap_layers,
    )


@contextlib.contextmanager
def matmul_precision(tf32: bool):
    """Within the block, float32 matrix products may use TF32 (``'high'``) or not (``'highest'``)."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


class Float32Target:
    """A view of a target whose ``log_prob`` runs in float32 with autocast off, so mixed precision
    never lowers the precision of log-densities. Other attributes are the target's own."""

    def __init__(self, target):
        self._target = target

    def log_prob(self, x):
        with torch.autocast(x.device.type, enabled=False):
            return self._target.log_prob(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x)

    def __getattr__(self, name):
        return getattr(self._target, name)


def _loss_fn(estimator, flow, target, batch_size: int):
    def loss_and_log_weights():
        est = estimator(flow, target, batch_size)
        dropped = est.dropped if est.dropped is not None else est.log_weights.new_zeros(2, dtype=torch.long)
        return est.loss, (est.log_weights, dropped)

    return loss_and_log_weights


def _rng_snapshot():
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def _rng_restore(snapshot):
    torch.set_rng_state(snapshot[0])
    if snapshot[1] is not None:
        torch.cuda.set_rng_state_all(snapshot[1])


# What a compiled backward pass keeps. By default AOTAutograd's partitioner does not recompute a value that
# the backward pass must materialize, or one whose inputs were computed far earlier, so for every coupling
# layer it keeps exp(c(s)) and c'(s), two tensors of half the layer's width, instead of s. With these two
# bans lifted it keeps the copy of s that the layer makes and recomputes the clamp and exp inside the
# backward kernels, as the eager node does: 1 x batch x d/2 floats less per layer, 150 MiB at d = 5000,
# batch 1024, 16 layers. Random draws are never recomputed (the partitioner always saves them).
PARTITIONER_OPTIONS = {"ban_recompute_materialized_backward": False, "ban_recompute_used_far_apart": False}


def partitioner_options():
    """A context that applies :data:`PARTITIONER_OPTIONS` (those this torch has) while a graph is compiled."""
    from torch._functorch import config

    return config.patch(**{k: v for k, v in PARTITIONER_OPTIONS.items() if hasattr(config, k)})


def _compile(fn):
    compiled = torch.compile(fn, options={"fallback_random": True})

    def call(*args, **kwargs):
        # The forward and backward graphs are partitioned when the first call compiles them.
        with partitioner_options():
            return compiled(*args, **kwargs)

    return call


def _compiled(fn, compiled=None):
    """``compiled`` (default ``torch.compile(fn)``) that falls back to ``fn`` (with a warning) when
    compilation fails."""
    state = {"fn": compiled if compiled is not None else _compile(fn)}

    def call():
        if state["fn"] is fn:
            return fn()
        rng = _rng_snapshot()
        try:
            return state["fn"]()
        except Exception as e:  # noqa: BLE001  (any compiler failure: fall back, say why)
            _rng_restore(rng)
            warnings.warn(
                f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                "training continues without compile (pass compile=False to silence this)",
                RuntimeWarning,
                stacklevel=2,
            )
            state["fn"] = fn
            return fn()

    return call


def target_capture_error(target, batch_size: int, device, dtype, stream=None) -> str | None:
    """Why ``target.log_prob`` and its gradient cannot be captured in a CUDA graph, or None if they can.

    Probed on a throwaway graph that draws no random numbers: a capture that fails inside the real
    step would leave the CUDA generator in capture mode. Host synchronisations (``.item()``, data-
    dependent shapes) and some solver paths (for example batched complex LU of large matrices, as in
    fermion determinants) cannot be captured; such targets train with compile but without CUDA graphs.
    ``stream``: the side stream to probe on (default: a new one).
    """
    event_shape = getattr(target, "event_shape", None)
    if event_shape is None:
        return None
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn((batch_size, *event_shape), generator=g, device=device, dtype=dtype).requires_grad_(True)

    def log_prob_and_grad():
        lp = target.log_prob(x)
        return torch.autograd.grad(lp.sum(), x)[0]

    try:
        side = stream if stream is not None else torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            log_prob_and_grad()  # eager first: lazy initialisation must not happen under capture
        torch.cuda.current_stream(device).wait_stream(side)
        torch.cuda.synchronize(device)
        with torch.cuda.graph(torch.cuda.CUDAGraph(), stream=side):
            log_prob_and_grad()
    except Exception as e:  # noqa: BLE001  (whatever the reason, the step runs without graphs)
        torch.cuda.synchronize(device)
        _end_generator_capture(device)
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def _end_generator_capture(device) -> None:
    """Take the CUDA generator out of capture mode after a failed capture.

    Beginning a capture puts the device's default generator in capture mode; only a capture that
    ends cleanly takes it out again, so after a failed one every later draw would fail. A fresh copy
    of the generator's state (same seed and offset, not capturing) replaces the stuck one."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    gen = torch.cuda.default_generators[index]
    if hasattr(gen, "clone_state") and hasattr(gen, "graphsafe_set_state"):
        gen.graphsafe_set_state(gen.clone_state())


def make_optimizer(params, cfg, options: StepOptions):
    """Adam; on the fast path the fused kernel with a tensor learning rate (graph-capturable)."""
    if options.fused_adam:
        device = params[0].device
        return torch.optim.Adam(
            params,
            lr=torch.tensor(cfg.lr, device=device),
            weight_decay=cfg.weight_decay,
            fused=True,
            capturable=options.cuda_graph,
        )
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def load_optimizer_state(optimizer, state_dict) -> None:
    """``optimizer.load_state_dict`` that keeps this run's kind of Adam (plain or fused, capturable,
    learning rate as a float or a device tensor), whichever kind wrote the checkpoint."""
    kinds = [{k: g.get(k) for k in ("fused", "capturable", "foreach", "lr")} for g in optimizer.param_groups]
    optimizer.load_state_dict(state_dict)
    for group, kind in zip(optimizer.param_groups, kinds, strict=True):
        for key in ("fused", "capturable", "foreach"):
            group[key] = kind[key]
        if isinstance(kind["lr"], Tensor):
            group["lr"] = torch.as_tensor(float(group["lr"]), dtype=kind["lr"].dtype, device=kind["lr"].device)
        else:
            group["lr"] = float(group["lr"])
        on_device = bool(kind["fused"] or kind["capturable"])
        for param in group["params"]:
            st = optimizer.state.get(param, {})
            if "step" in st:
                device = param.device if on_device else torch.device("cpu")
                st["step"] = torch.as_tensor(float(st["step"]), dtype=torch.float32, device=device)


def plain_step(flow, target, estimator, optimizer, params, cfg, grad_hook=None):
    """The reference step: eager, checks finiteness on the host, skips the update if needed."""

    def step() -> StepResult:
        optimizer.zero_grad(set_to_none=True)
        est = estimator(flow, target, cfg.batch_size)
        ok = bool(torch.isfinite(est.loss))
        if ok or grad_hook is not None:  # under torch.distributed every rank joins the all-reduce
            est.loss.backward()
            if grad_hook is not None:
                grad_hook(params)
            # One host read for all gradients: their total norm is finite exactly when they are
            # (clip_grad_norm_ computes the same norm, then scales by it).
            grads = [p.grad for p in params if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads) if grads else None
            ok = ok and (norm is None or bool(torch.isfinite(norm)))
            if grad_hook is not None and hasattr(grad_hook, "agree"):
                ok = bool(grad_hook.agree(torch.tensor(ok, device=est.loss.device)))
        if ok:
            if cfg.clip and norm is not None:
                torch.nn.utils.clip_grads_with_norm_(params, cfg.clip, norm)
            optimizer.step()
        return StepResult(est.loss.detach(), est.log_weights, torch.tensor(ok), est.dropped)

    return step


class FastStep:
    """The fast training step (see the module docstring). Call it once per step."""

    def __init__(self, flow, target, estimator, optimizer, params, cfg, options: StepOptions, grad_hook=None):
        self.optimizer, self.params, self.cfg, self.options = optimizer, params, cfg, options
        self.grad_hook = grad_hook
        self.device = params[0].device
        self.autocast_dtype = PRECISIONS[options.precision]
        if self.autocast_dtype is not None:
            target = Float32Target(target)
        self.eager_loss_fn = _loss_fn(estimator, flow, target, cfg.batch_size)
        self.loss_fn = self.eager_loss_fn
        if options.compile:
            by_layer = compile_by_layer(flow, _compile, options.overlap_layers) if options.overlap else None
            if options.overlap and by_layer is None:
                warnings.warn(
                    f"overlap needs a Flow of at least two layers, got {type(flow).__name__}; the step is compiled "
                    "in one region and the all-reduce follows the backward pass (pass overlap=False to silence this)",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self.options.overlap = False
            by_layer_fn = _loss_fn(estimator, by_layer, target, cfg.batch_size) if by_layer is not None else None
            self.loss_fn = _compiled(self.eager_loss_fn, by_layer_fn)
        self.scaler = (
            torch.amp.GradScaler(self.device.type, init_scale=2.0**10) if options.precision == "fp16" else None
        )
        self.calls = 0
        self.graph = None
        self.static = None
        # One side stream for the probe, the warm-up steps and the capture: cuBLAS keeps a workspace
        # (32 MiB on Hopper) for every stream it has run on, for the life of the process.
        self.side = torch.cuda.Stream(self.device) if options.cuda_graph else None
        if options.cuda_graph:
            dtype = next(iter(params)).dtype
            reason = target_capture_error(target, cfg.batch_size, self.device, dtype, self.side)
            if reason is not None:
                warnings.warn(
                    f"the target cannot be captured in a CUDA graph ({reason}); training continues without "
                    "CUDA graphs (pass cuda_graph=False to silence this)",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self.options.cuda_graph = False

    def _forward(self):
        if self.autocast_dtype is None:
            return self.loss_fn()
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, cache_enabled=False):
            return self.loss_fn()

    def _body(self):
        """One step with no host synchronisation; returns (loss, log_weights, ok, dropped) device tensors."""
        loss, (log_w, dropped) = self._forward()
        loss = loss.float()
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.grad_hook is not None:
            self.grad_hook(self.params)
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads, foreach=True) if grads else loss.new_zeros(())
        ok = torch.isfinite(loss) & torch.isfinite(norm)
        if self.grad_hook is not None and hasattr(self.grad_hook, "agree"):
            ok = self.grad_hook.agree(ok)
        if self.scaler is not None:
            if self.cfg.clip and grads:
                torch.nn.utils.clip_grads_with_norm_(self.params, self.cfg.clip, norm, foreach=True)
            # The scaler skips the update on overflowing gradients (and lowers the scale); a
            # non-finite loss skips it too.
            if bool(ok):
                self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if self.cfg.clip and grads:
                # Clipping inside the fused Adam kernel: it divides each gradient by grad_scale (and
                # stores the result in .grad, as clip_grads_with_norm_ would) while it updates, which
                # saves a read and a write of every gradient. clip_grads_with_norm_ multiplies by
                # min(clip / (norm + 1e-6), 1); grad_scale is its reciprocal.
                self.optimizer.grad_scale = ((norm + 1e-6) / self.cfg.clip).clamp_min(1.0)
            self.optimizer.found_inf = (~ok).float()
            self.optimizer.step()
        return loss.detach(), log_w.detach(), ok, dropped

    def _first_body(self):
        """``_body``; on the first compiled step, a failure to compile the backward pass (which
        compiles lazily, at the first backward) falls back to the uncompiled step with a warning."""
        if not (self.options.compile and self.calls == 1):
            return self._body()
        rng = _rng_snapshot()
        try:
            return self._body()
        except Exception as e:  # noqa: BLE001  (any compiler failure: fall back, say why)
            _rng_restore(rng)
            self.optimizer.zero_grad(set_to_none=True)
            self.loss_fn, self.options.compile = self.eager_loss_fn, False
            warnings.warn(
                f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                "training continues without compile (pass compile=False to silence this)",
                RuntimeWarning,
                stacklevel=3,
            )
            return self._body()

    def _capture(self):
        self.optimizer.zero_grad(set_to_none=True)
        rng = torch.cuda.get_rng_state(self.device)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self.side):
                static = self._body()
        except Exception as e:  # noqa: BLE001  (anything that cannot be captured: run uncaptured, say why)
            torch.cuda.synchronize(self.device)
            _end_generator_capture(self.device)
            torch.cuda.set_rng_state(rng, self.device)
            self.optimizer.zero_grad(set_to_none=True)
            warnings.warn(
                f"CUDA graph capture of the training step failed ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); training continues without CUDA graphs "
                "(pass cuda_graph=False to silence this)",
                RuntimeWarning,
                stacklevel=3,
            )
            self.options.cuda_graph = False
            return None
        self.graph, self.static = graph, static
        return graph

    def __call__(self) -> StepResult:
        self.calls += 1
        if self.options.cuda_graph and self.graph is None and self.calls > WARMUP_STEPS:
            self._capture()
        if self.graph is not None:
            self.graph.replay()
            return StepResult(*(t.clone() for t in self.static))
        if self.options.cuda_graph:
            # Warm-up on the side stream, as graph capture requires.
            side = self.side
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self.optimizer.zero_grad(set_to_none=True)
                out = self._first_body()
            torch.cuda.current_stream(self.device).wait_stream(side)
            return StepResult(*out)
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(*self._first_body())


def make_step(flow, target, estimator, optimizer, params, cfg, options: StepOptions, grad_hook=None):
    """The step function for ``options`` (see :func:`resolve_options`). ``grad_hook(params)`` runs
    after the backward pass (the data-parallel all-reduce)."""
    if not options.fused_adam:
        return plain_step(flow, target, estimator, optimizer, params, cfg, grad_hook)
    return FastStep(flow, target, estimator, optimizer, params, cfg, options, grad_hook)
