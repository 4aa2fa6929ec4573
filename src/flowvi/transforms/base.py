"""The transform protocol and composition.

A transform is a bijection ``f: z -> x`` acting on tensors of shape ``(batch, *event_shape)``.

* ``forward(z)`` returns ``(x, log|det df/dz|)`` with the log-determinant of shape ``(batch,)``;
* ``inverse(x)`` returns ``(z, log|det df^{-1}/dx|)``;
* ``forward_with_score(z, score)`` is the per-layer step of the *fast path gradient*
  (Vaitl et al. 2024, arXiv 2403.15881, sec. 3.1). Given ``score = d log q_in(z) / dz`` of the
  density of ``z`` (a detached tensor), it returns ``(x, logdet, score_x)`` where ``x`` keeps the
  autograd graph to the parameters and

      score_x = d log q_out(x) / dx = J_f(z)^{-T} (score - d log|det J_f(z)| / dz)

  is detached. It follows from ``log q_out(f(z)) = log q_in(z) - log|det J_f(z)|``.
  A transform that cannot do this raises :class:`PathGradientUnsupported`; flowvi never
  falls back to a slower method silently.

A transform that acts on the two blocks ``lo = z[..., :k]`` and ``hi = z[..., k:]`` of the last
dimension (a coupling layer) may also define ``halves_split = k`` and
``forward_halves(lo, hi) -> (lo', hi', logdet)`` / ``inverse_halves``. :class:`Compose` then hands
consecutive such transforms (same ``k``) the two blocks directly and joins them once after the run,
instead of every layer concatenating its untouched block into a new tensor: a copy of half the
tensor per layer, forward and backward, and concatenated tensors that autograd would keep.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PathGradientUnsupported(TypeError):
    """Raised by a transform that has no fast path-gradient recursion."""


class Transform(nn.Module):
    """Base class of all bijections (``forward`` maps base space to sample space).

    A subclass defines ``forward(z) -> (x, log|det dx/dz|)`` and ``inverse(x) -> (z, log|det dz/dx|)`` on
    batches (batch, *event_shape), the log-determinants of shape (batch,); optionally ``forward_with_score``.
    """

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - interface
        """``(x, log|det J_f(z)|)``: ``x = f(z)`` of the same shape as ``z``, the log-determinant (batch,)."""
        raise PathGradientUnsupported  # replaced by every subclass

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - interface
        """``(z, log|det J_{f^-1}(x)|)``: ``z = f^-1(x)``, the log-determinant (batch,)."""
        raise PathGradientUnsupported

    def forward_with_score(self, z: Tensor, score: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(x, log|det J|, score_x)`` where ``score_x = J^-T (score - d log|det J|/dz)`` is ``d log q(x)/dx``
        given ``score = d log q(z)/dz`` (the fast path gradient, Vaitl et al. 2024, arXiv 2403.15881)."""
        raise PathGradientUnsupported(
            f"{type(self).__name__} does not implement the fast path gradient "
            "(forward_with_score); use estimator='reparam' or 'reinforce'"
        )


def sum_except_batch(t: Tensor) -> Tensor:
    """Sum over every dimension but the first."""
    return t.reshape(t.shape[0], -1).sum(-1)


class Compose(Transform):
    """``f = f_n o ... o f_1``; ``transforms[0]`` acts first on base samples."""

    def __init__(self, transforms):
        super().__init__()
        self.transforms = nn.ModuleList(transforms)

    def forward(self, z):
        return _chain(self.transforms, z, inverse=False)

    def inverse(self, x):
        return _chain(list(self.transforms)[::-1], x, inverse=True)

    def forward_with_score(self, z, score):
        logdet = z.new_zeros(z.shape[0])
        for t in self.transforms:
            z, ld, score = t.forward_with_score(z, score)
            logdet = logdet + ld
        return z, logdet, score

    def __len__(self):
        return len(self.transforms)

    def __iter__(self):
        return iter(self.transforms)

    def __getitem__(self, i):
        return self.transforms[i]


def _chain(transforms, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
    """Apply ``transforms`` in order (their ``inverse`` if ``inverse``), summing log-determinants; runs of
    transforms with the same ``halves_split`` pass the two blocks along without joining them (see the
    module docstring)."""
    logdet = x.new_zeros(x.shape[0])
    halves, split = None, None
    for t in transforms:
        k = getattr(t, "halves_split", None)
        if halves is not None and k != split:
            x, halves = torch.cat(halves, dim=-1), None
        if k is not None:
            if halves is None:
                halves, split = (x[..., :k], x[..., k:]), k
            lo, hi, ld = t.inverse_halves(*halves) if inverse else t.forward_halves(*halves)
            halves = (lo, hi)
        else:
            x, ld = t.inverse(x) if inverse else t(x)
        logdet = logdet + ld
    if halves is not None:
        x = torch.cat(halves, dim=-1)
    return x, logdet


def input_requiring_grad(t: Tensor) -> Tensor:
    """``t`` itself when it is part of a graph, else a leaf copy that records one.

    The fast path gradient needs vector-Jacobian products with respect to a layer's input.
    """
    return t if t.requires_grad else t.detach().requires_grad_(True)


def vjp(outputs, inputs: Tensor, cotangents) -> Tensor:
    """``sum_k cotangent_k^T d output_k / d inputs`` without touching parameter gradients."""
    (g,) = torch.autograd.grad(outputs, inputs, cotangents, retain_graph=True, allow_unused=True)
    return torch.zeros_like(inputs) if g is None else g
