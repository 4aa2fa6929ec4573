"""Soft clamps for the log-scale of affine coupling layers.

The *asymmetric soft clamp* of Andrade (2024, arXiv 2402.16408, eq. 7) is

    c(s) = (2/pi) * alpha_pos * arctan(s / alpha_pos)   if s >= 0
    c(s) = (2/pi) * alpha_neg * arctan(s / alpha_neg)   if s <  0

so each layer can expand by at most exp(alpha_pos) (default 0.1) and shrink by at most
exp(-alpha_neg) (default 2.0): samples cannot explode through depth. The symmetric clamp is the
tanh-type ``alpha * tanh(s / alpha)`` used by Real NVP/Glow implementations.

Every clamp also gives its derivative ``c'(s)`` in closed form (``derivative(s)``), for layers that
write their own backward pass (:class:`flowvi.transforms.coupling.AffineCoupling`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

CLAMPS = ("none", "symmetric", "asymmetric")


class NoClamp(nn.Module):
    """The identity ``c(s) = s`` (an unclamped log-scale, as in the original Real NVP)."""

    def forward(self, s: Tensor) -> Tensor:
        return s

    def derivative(self, s: Tensor) -> Tensor:
        return torch.ones_like(s)

    def extra_repr(self):
        return "none"


class SymmetricClamp(nn.Module):
    """``c(s) = alpha * tanh(s / alpha)``: |c(s)| < alpha."""

    def __init__(self, alpha: float = 2.0):
        super().__init__()
        if alpha <= 0:
            raise ValueError(f"symmetric clamp needs alpha > 0, got {alpha}")
        self.alpha = float(alpha)

    def forward(self, s):
        return self.alpha * torch.tanh(s / self.alpha)

    def derivative(self, s):
        """``c'(s) = 1 - tanh^2(s / alpha)``."""
        u = torch.tanh(s / self.alpha)
        return 1 - u * u

    def extra_repr(self):
        return f"alpha={self.alpha}"


def _arctan_clamp_derivative(s: Tensor, alpha_pos: float, alpha_neg: float) -> Tensor:
    """``c'(s) = (2/pi) / (1 + (s / alpha(s))^2)`` of the asymmetric arctan clamp."""
    alpha = torch.where(s >= 0, alpha_pos, alpha_neg).to(s.dtype)
    u = s / alpha
    return (2.0 / math.pi) / (1 + u * u)


class _AsymmetricArctan(torch.autograd.Function):
    """``c(s) = (2/pi) alpha(s) arctan(s / alpha(s))`` with ``c'(s) = (2/pi) / (1 + (s / alpha(s))^2)``.

    Keeps only ``s`` for the backward pass (plain autograd would keep ``alpha(s)``, ``s / alpha`` and
    the arctan, three more tensors of the layer's size); the backward is written in differentiable
    operations, so higher derivatives work too."""

    @staticmethod
    def forward(ctx, s, alpha_pos: float, alpha_neg: float):
        ctx.save_for_backward(s)
        ctx.alphas = (alpha_pos, alpha_neg)
        alpha = torch.where(s >= 0, alpha_pos, alpha_neg).to(s.dtype)
        return (2.0 / math.pi) * alpha * torch.atan(s / alpha)

    @staticmethod
    def backward(ctx, grad):
        (s,) = ctx.saved_tensors
        return grad * _arctan_clamp_derivative(s, *ctx.alphas), None, None


class AsymmetricClamp(nn.Module):
    """Andrade's asymmetric arctan clamp: ``-alpha_neg < c(s) < alpha_pos``."""

    def __init__(self, alpha_pos: float = 0.1, alpha_neg: float = 2.0):
        super().__init__()
        if alpha_pos <= 0 or alpha_neg <= 0:
            raise ValueError(f"asymmetric clamp needs alpha_pos, alpha_neg > 0, got {alpha_pos}, {alpha_neg}")
        self.alpha_pos = float(alpha_pos)
        self.alpha_neg = float(alpha_neg)

    def forward(self, s):
        return _AsymmetricArctan.apply(s, self.alpha_pos, self.alpha_neg)

    def derivative(self, s):
        return _arctan_clamp_derivative(s, self.alpha_pos, self.alpha_neg)

    def extra_repr(self):
        return f"alpha_pos={self.alpha_pos}, alpha_neg={self.alpha_neg}"


def make_clamp(kind: str, **kwargs) -> nn.Module:
    """Build a clamp by name: ``none``, ``symmetric`` or ``asymmetric``."""
    if kind == "none":
        return NoClamp()
    if kind == "symmetric":
        return SymmetricClamp(**kwargs)
    if kind == "asymmetric":
        return AsymmetricClamp(**kwargs)
    raise ValueError(f"unknown clamp {kind!r}; choose one of {', '.join(CLAMPS)}")
