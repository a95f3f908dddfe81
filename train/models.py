"""Model builders: multilayer perceptrons with seeded, named initialisations."""
from __future__ import annotations

import torch
from torch import nn

from explanations import activations


def mlp(widths: list[int], activation: str = "relu", *, seed: int = 0, bias_std: float = 0.0,
        dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """Linear → activation → … → Linear with widths [in, hidden…, out].

    Weights are He/Kaiming-normal, N(0, 2/fan_in) (He et al. 2015); biases N(0, bias_std²).
    """
    make_activation = activations.activation(activation).module       # ValueError for an unknown kind
    if len(widths) < 2:
        raise ValueError("an MLP needs at least an input and an output width")
    generator = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        linear = nn.Linear(fan_in, fan_out, dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(torch.randn(fan_out, fan_in, generator=generator) * (2.0 / fan_in) ** 0.5)
            linear.bias.copy_(torch.randn(fan_out, generator=generator) * bias_std)
        layers.append(linear)
        if i < len(widths) - 2:
            layers.append(make_activation())
    return nn.Sequential(*layers)
