"""A flow compiled layer by layer, so that the gradient all-reduce of data-parallel training
overlaps a compiled backward pass.

``torch.compile`` of the whole loss turns the backward pass into one compiled autograd node: every
parameter gradient appears at its end, so the bucketed all-reduce of
:class:`flowvi.training.distributed.GradientAverager` (which starts a bucket when its last gradient has been
accumulated) can only start after the whole backward pass, and its time adds to the step.

Compiled layer by layer instead (*regional compilation*), the backward pass is a chain of compiled
nodes, one per layer, which autograd runs from the last layer to the first; the gradients of layer
``k`` are accumulated, and the averager's hooks fire, as soon as its node is done, while layers
``k-1, ..., 0`` still have their backward to run. The buckets of the last layers are then on the wire
while the first layers are differentiated. The price is that the compiler no longer fuses across
layer boundaries (the log-determinant sum and the sampling run eagerly between the compiled layers),
a few small kernels per layer. Layers of the same type and configuration share one compiled graph
(parameters are graph inputs), so compiling 16 couplings costs about as much as compiling two.

Under a CUDA graph capture the all-reduces started by the hooks are captured with the step and
replayed on NCCL's stream, in the same order, overlapping the replayed backward kernels.
"""

from __future__ import annotations

from torch import nn

from flowvi.core.flow import Flow
from flowvi.transforms import Compose, Transform


class CompiledLayer(Transform):
    """``layer`` with its ``forward`` and ``inverse`` run through ``compile_fn`` (for example
    ``torch.compile``); the parameters are the layer's own.

    ``forward_with_score`` (the fast path gradient) runs eagerly: it takes a vector-Jacobian product
    inside the layer (``torch.autograd.grad`` of the conditioner's outputs with respect to its input),
    where dynamo breaks the graph, and the input handed out by the compiled part before the break is
    not connected to the outputs computed from it, so the product comes back as zero (torch 2.13) and
    the score would be wrong. Eagerly the layers still hand out their gradients one by one.
    """

    def __init__(self, layer: nn.Module, compile_fn):
        super().__init__()
        self.layer = layer
        self._forward = compile_fn(layer.forward)
        self._inverse = compile_fn(layer.inverse)

    def forward(self, z):
        return self._forward(z)

    def inverse(self, x):
        return self._inverse(x)

    def forward_with_score(self, z, score):
        return self.layer.forward_with_score(z, score)


def compile_by_layer(flow, compile_fn, layers_per_region: int = 1) -> Flow | None:
    """A :class:`~flowvi.core.flow.Flow` that shares ``flow``'s base distribution and layers (the same
    parameter tensors) and runs its :class:`~flowvi.transforms.Compose` as consecutive regions of
    ``layers_per_region`` layers, each compiled by ``compile_fn`` (the last region may be shorter). None when
    ``flow`` is not a ``Flow`` of a ``Compose`` of at least two layers (other flows keep one compiled region).

    More layers per region fuse more (fewer eager joins between regions) but hand out their gradients in
    fewer, later groups, so less of the all-reduce overlaps the backward pass."""
    if layers_per_region < 1:
        raise ValueError(f"layers_per_region must be a positive integer, got {layers_per_region!r}")
    if type(flow) is not Flow or not isinstance(flow.transform, Compose) or len(flow.transform) < 2:
        return None
    layers = list(flow.transform)
    regions = [layers[i : i + layers_per_region] for i in range(0, len(layers), layers_per_region)]
    return Flow(
        flow.base,
        Compose([CompiledLayer(r[0] if len(r) == 1 else Compose(r), compile_fn) for r in regions]),
    )
