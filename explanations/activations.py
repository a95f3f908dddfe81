"""The elementwise activations the formal language knows: f, f′ and a FLOP price.

GELU (erf form)  f(z) = z Φ(z),                   f′ = Φ(z) + z φ(z)
GELU (tanh form) f(z) = ½ z (1 + tanh(c(z + a z³))), c = √(2/π), a = 0.044715
tanh, sigmoid σ(z) = 1/(1+e^{-z}) with σ′ = σ(1-σ), ReLU max(z, 0) with f′ = 1[z > 0], and
the step 1[z ≥ 0] (f′ = 0 almost everywhere; `halfspaces` answers Linear → Step networks).
`flops` is the price of one evaluation in our FLOP convention: one per arithmetic or
transcendental operation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

_C = math.sqrt(2.0 / math.pi)
_A = 0.044715


def _gelu_tanh_derivative(z: Tensor) -> Tensor:
    t = torch.tanh(_C * (z + _A * z ** 3))
    return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * _C * (1 + 3 * _A * z * z)


class Step(torch.nn.Module):
    """The Heaviside step 1[z ≥ 0] as a module: y = 1 where the input is ≥ 0, else 0.
    Linear → Step with the event "every output is 1" is an intersection of halfspaces."""

    def forward(self, z: Tensor) -> Tensor:
        return (z >= 0).to(z.dtype)


def normal_pdf(z: Tensor) -> Tensor:
    """φ(z) = exp(-z²/2)/√(2π)."""
    return torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


@dataclass(frozen=True)
class Activation:
    name: str
    fn: Callable[[Tensor], Tensor]
    derivative: Callable[[Tensor], Tensor]
    flops: int


ACTIVATIONS: dict[str, Activation] = {
    a.name: a for a in (
        Activation("relu", torch.relu, lambda z: (z > 0).to(z.dtype), 1),
        Activation("gelu", torch.nn.functional.gelu,
                   lambda z: torch.special.ndtr(z) + z * normal_pdf(z), 4),
        Activation("gelu_tanh", lambda z: torch.nn.functional.gelu(z, approximate="tanh"),
                   _gelu_tanh_derivative, 8),
        Activation("tanh", torch.tanh, lambda z: 1 - torch.tanh(z) ** 2, 4),
        Activation("sigmoid", torch.sigmoid, lambda z: torch.sigmoid(z) * (1 - torch.sigmoid(z)), 4),
        Activation("step", lambda z: (z >= 0).to(z.dtype), torch.zeros_like, 1),
    )
}
