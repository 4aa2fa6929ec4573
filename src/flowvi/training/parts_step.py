"""What a by-parts step saves, made measurable: a per-phase clock, a cache of frozen parts' outputs, and the
memory a step holds per part.

**Prefix cache.** A step that trains part k alone needs the output of the frozen parts < k on its batch. That
output is a deterministic function of the parts' parameters and of the part-0 input, which for images is the
*dequantized* example y = (x + u) / levels. With fresh noise u every step the input never repeats, so an exact
cache would never hit. :class:`PrefixCache` therefore stores the prefix output per training example for as long
as the parts < k are unchanged, and a cached example keeps the noise draw of its first use: while the prefix is
frozen, part k is trained on one fixed dequantization of the examples it has met, not a fresh one each time.
That is still an unbiased draw of the dequantized objective for each example (u was drawn uniformly and
independently of the parameters), but part k can revisit the same noisy example many times, as when training
for several epochs on one dequantized copy of the data. The cache is emptied whenever a part < k takes an
optimizer step. It pays only when examples recur before that happens: in ``sequential`` (the prefix stays frozen
for steps / K steps) and in ``alternate`` with a ``switch_every`` of about an epoch (N_train / batch steps); with
``switch_every = 1`` the prefix changes every K steps and the cache almost never hits.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import torch
from torch import Tensor


class StepClock:
    """Wall time per phase label: ``mark(label)`` charges the time since the previous mark to ``label``
    (synchronising CUDA devices first, so each phase's kernels are counted in it)."""

    def __init__(self, devices=()):
        self.cuda = sorted({torch.device(d) for d in devices if torch.device(d).type == "cuda"}, key=str)
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self._current: dict[str, float] = {}
        self.last: dict[str, float] = {}  # the phases of the last finished step
        self._last = None

    def _now(self) -> float:
        for d in self.cuda:
            torch.cuda.synchronize(d)
        return time.perf_counter()

    def start(self) -> None:
        self._current = {}
        self._last = self._now()

    def mark(self, label: str) -> None:
        now = self._now()
        self._current[label] = self._current.get(label, 0.0) + now - self._last
        self._last = now

    def stop(self) -> dict[str, float]:
        """End one step: its phase times (seconds), also appended to ``seconds``."""
        for label, t in self._current.items():
            self.seconds[label].append(t)
        self.last = dict(self._current)
        return self.last


class PrefixCache:
    """Outputs of the frozen parts < k per training example (see the module docstring), on part k's device."""

    def __init__(self, n_examples: int):
        self.n = n_examples
        self.key = None  # (k, number of optimizer steps of each part < k)
        self.values: Tensor | None = None
        self.valid: Tensor | None = None
        self.hits = 0
        self.misses = 0

    def inputs(self, key, idx: Tensor, x: Tensor, compute) -> Tensor:
        """Part k's input for the examples ``idx`` (batch ``x``): cached rows where valid, ``compute(x[miss])``
        for the others (stored for later steps)."""
        if key != self.key:
            self.key, self.values, self.valid = key, None, None
        miss = torch.ones(len(idx), dtype=torch.bool) if self.valid is None else ~self.valid[idx.cpu()]
        fresh = compute(x[miss.to(x.device)]) if bool(miss.any()) else None
        if self.values is None:
            self.values = fresh.new_empty((self.n, *fresh.shape[1:]))
            self.valid = torch.zeros(self.n, dtype=torch.bool)
        out = self.values[idx.to(self.values.device)]
        if fresh is not None:
            out[miss.to(out.device)] = fresh  # a miss gets its own noise draw's output (also for repeated rows)
            rows = idx.cpu()[miss]
            self.values[rows.to(self.values.device)] = fresh
            self.valid[rows] = True
        self.misses += int(miss.sum())
        self.hits += len(idx) - int(miss.sum())
        return out


@contextmanager
def saved_tensor_bytes():
    """Count the bytes autograd saves for the backward pass inside the block (each storage once):
    ``with saved_tensor_bytes() as saved: ...; saved["bytes"]``."""
    seen: dict[int, int] = {}
    out = {"bytes": 0}

    def pack(t: Tensor):
        storage = t.untyped_storage()
        seen.setdefault(storage.data_ptr(), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield out
    out["bytes"] = sum(seen.values())


def state_bytes(params, optimizer=None) -> dict[str, int]:
    """Bytes of a part's parameters, their gradients (same size) and its optimizer state."""
    p = sum(q.numel() * q.element_size() for q in params)
    opt = 0
    if optimizer is not None:
        for state in optimizer.state.values():
            opt += sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v))
    return {"parameters": p, "gradients": p, "optimizer": opt}


def layer_costs(layers, x: Tensor) -> list[int]:
    """Bytes each layer saves for the backward pass on the batch ``x`` (normalizing direction): the activation
    memory a part holds in a step, and a proxy of its arithmetic (both scale with the layer's activations)."""
    from flowvi.flows.multiscale import normalize_layer

    costs = []
    with torch.enable_grad():
        h = x
        for layer in layers:
            with saved_tensor_bytes() as saved:
                h, _ = normalize_layer(layer, h.detach())
            costs.append(saved["bytes"])
    return costs
