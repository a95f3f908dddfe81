"""The elementwise activations the formal language knows: f, f′, a FLOP price, a module.

Fixed kinds:
GELU (erf form)  f(z) = z Φ(z),                   f′ = Φ(z) + z φ(z)
GELU (tanh form) f(z) = ½ z (1 + tanh(c(z + a z³))), c = √(2/π), a = 0.044715
SiLU (swish)     f(z) = z σ(z),                   f′ = σ(z)(1 + z(1 - σ(z)))
Mish             f(z) = z tanh(softplus(z)),      f′ = tanh(sp) + z σ(z)(1 - tanh²(sp))
tanh, sigmoid σ(z) = 1/(1+e^{-z}) with σ′ = σ(1-σ), ReLU max(z, 0) with f′ = 1[z > 0], and
the step 1[z ≥ 0] (f′ = 0 almost everywhere; `halfspaces` answers Linear → Step networks).
Families with a parameter, named "family:value":
leaky_relu:a     f(z) = max(z, 0) + a min(z, 0) = a z + (1 - a) max(z, 0)   (ReLU is a = 0)
elu:α            f(z) = z for z > 0, α(e^z - 1) otherwise
softplus:β       f(z) = log(1 + e^{βz})/β,         f′ = σ(βz)
(torch's Softplus turns linear past βz > threshold = 20, where the two differ by < 2e-9·|z|.)
clamp:l,h,s,o    f(z) = s·clamp(z + o, l, h)  (ReLU6, Hardtanh, Hardsigmoid inside a composition;
                 alone, `spatial.expand_clamps` writes a clamp as the ReLU network it is)
compose:k1|k2|…  f = f_k2 ∘ f_k1 ∘ …, f′ by the chain rule, the parts' prices summed: a run of
                 elementwise layers (ReLU → Dropout → ReLU; a max pool's moved ReLU and the
                 model's next one), which `spatial.fuse_elementwise` makes one activation. A
                 composition of the ReLU family is in it, leak a1·a2 (a1 if a1 < 0: the
                 inner part's negative side is then positive, which the outer one passes).
The ReLU family (`Activation.leak` set) has closed-form moments (`moments`, `skew`,
`edgeworth`); the others go through Gauss–Legendre quadrature and Hermite series.
`flops` is the price of one evaluation in our FLOP convention: one per arithmetic or
transcendental operation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import torch
import torch.nn.functional as F
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
    name: str                             # the kind, as Act and the file formats spell it
    fn: Callable[[Tensor], Tensor]
    derivative: Callable[[Tensor], Tensor]
    flops: int
    module: Callable[[], torch.nn.Module]   # a torch module computing fn
    leak: float | None = None             # ReLU family: f = leak·z + (1 - leak)·max(z, 0)
    increasing: bool = False              # non-decreasing, so max_i f(z_i) = f(max_i z_i)
    quasiconvex: bool = False             # falls, then rises (one minimum), so max_i f(z_i) =
                                          # max(f(max_i z_i), f(min_i z_i))


def _leaky_relu(a: float) -> Activation:
    return Activation(f"leaky_relu:{a!r}", lambda z: F.leaky_relu(z, a),
                      lambda z: torch.where(z > 0, 1.0, a).to(z.dtype), 2,
                      lambda: torch.nn.LeakyReLU(a), leak=a, increasing=a >= 0, quasiconvex=a < 0)


def _elu(alpha: float) -> Activation:
    return Activation(f"elu:{alpha!r}", lambda z: F.elu(z, alpha),
                      lambda z: torch.where(z > 0, torch.ones_like(z), alpha * torch.exp(z.clamp_max(0))), 3,
                      lambda: torch.nn.ELU(alpha), increasing=alpha >= 0, quasiconvex=alpha < 0)


def _softplus(beta: float) -> Activation:
    if not beta > 0:
        raise ValueError(f"softplus needs β > 0, got {beta!r}")
    return Activation(f"softplus:{beta!r}", lambda z: F.softplus(z, beta),
                      lambda z: torch.sigmoid(beta * z), 4, lambda: torch.nn.Softplus(beta), increasing=True)


CLAMP_FLOPS = 4    # per unit, as `spatial.expand_clamps` charges: 2 comparisons and 2 ReLU units


class ScaledClamp(torch.nn.Module):
    """s·clamp(z + o, l, h) elementwise: the module of a "clamp:l,h,s,o" activation."""

    def __init__(self, low: float, high: float, scale: float, offset: float) -> None:
        super().__init__()
        self.low, self.high, self.scale, self.offset = low, high, scale, offset

    def forward(self, z: Tensor) -> Tensor:
        return self.scale * torch.clamp(z + self.offset, self.low, self.high)


def clamp_kind(low: float, high: float, scale: float, offset: float) -> str:
    return f"clamp:{float(low)!r},{float(high)!r},{float(scale)!r},{float(offset)!r}"


def _clamp(values: str) -> Activation:
    low, high, scale, offset = (float(v) for v in values.split(","))
    if not (low < high and all(map(math.isfinite, (low, high, scale, offset)))):
        raise ValueError(f"a clamp needs finite low < high, scale and offset, got {values!r}")
    inside = lambda z: ((z + offset > low) & (z + offset < high)).to(z.dtype)
    return Activation(clamp_kind(low, high, scale, offset), lambda z: scale * torch.clamp(z + offset, low, high),
                      lambda z: scale * inside(z), CLAMP_FLOPS, lambda: ScaledClamp(low, high, scale, offset),
                      increasing=scale >= 0)


def compose(kinds: list[str]) -> Activation:
    """The activation f_kn ∘ … ∘ f_k1 of `kinds` (innermost first; compositions spliced in):
    the module docstring's "compose" kind."""
    parts = [part for kind in kinds for part in _parts(activation(kind))]
    leak = parts[0].leak
    for part in parts[1:]:
        leak = None if leak is None or part.leak is None else leak * part.leak if leak >= 0 else leak

    def fn(z: Tensor) -> Tensor:
        for part in parts:
            z = part.fn(z)
        return z

    def derivative(z: Tensor) -> Tensor:
        slope = torch.ones_like(z)
        for part in parts:
            slope, z = slope * part.derivative(z), part.fn(z)
        return slope

    rising = [part.increasing for part in parts]
    return Activation("compose:" + "|".join(part.name for part in parts), fn, derivative,
                      sum(part.flops for part in parts), lambda: torch.nn.Sequential(*(p.module() for p in parts)),
                      leak=leak, increasing=all(rising), quasiconvex=parts[0].quasiconvex and all(rising[1:]))


def _parts(act: Activation) -> list[Activation]:
    family, _, value = act.name.partition(":")
    return [activation(kind) for kind in value.split("|")] if family == "compose" else [act]


def _mish_derivative(z: Tensor) -> Tensor:
    t = torch.tanh(F.softplus(z))
    return t + z * torch.sigmoid(z) * (1 - t * t)


_FAMILIES: dict[str, Callable[[float], Activation]] = {
    "leaky_relu": _leaky_relu, "elu": _elu, "softplus": _softplus}
_DEFAULTS = {"leaky_relu": 0.01, "elu": 1.0, "softplus": 1.0}     # torch's, for a bare family name

ACTIVATIONS: dict[str, Activation] = {
    a.name: a for a in (
        Activation("relu", torch.relu, lambda z: (z > 0).to(z.dtype), 1, torch.nn.ReLU, leak=0.0, increasing=True),
        Activation("gelu", F.gelu, lambda z: torch.special.ndtr(z) + z * normal_pdf(z), 4, torch.nn.GELU,
                   quasiconvex=True),
        Activation("gelu_tanh", lambda z: F.gelu(z, approximate="tanh"), _gelu_tanh_derivative, 8,
                   lambda: torch.nn.GELU(approximate="tanh"), quasiconvex=True),
        Activation("tanh", torch.tanh, lambda z: 1 - torch.tanh(z) ** 2, 4, torch.nn.Tanh, increasing=True),
        Activation("sigmoid", torch.sigmoid, lambda z: torch.sigmoid(z) * (1 - torch.sigmoid(z)), 4,
                   torch.nn.Sigmoid, increasing=True),
        Activation("silu", F.silu, lambda z: torch.sigmoid(z) * (1 + z * (1 - torch.sigmoid(z))), 5,
                   torch.nn.SiLU, quasiconvex=True),
        Activation("mish", F.mish, _mish_derivative, 8, torch.nn.Mish, quasiconvex=True),
        Activation("step", lambda z: (z >= 0).to(z.dtype), torch.zeros_like, 1, Step, increasing=True),
    )
}


@lru_cache(maxsize=None)
def activation(kind: str) -> Activation:
    """The activation named `kind`: a fixed name of ACTIVATIONS, "family:value" (module
    docstring) or a bare family name (torch's default value). ValueError names the kinds known."""
    if kind in ACTIVATIONS:
        return ACTIVATIONS[kind]
    family, colon, value = str(kind).partition(":")
    try:
        if family == "compose" and colon:
            return compose(value.split("|"))
        if family == "clamp" and colon:
            return _clamp(value)
    except ValueError as error:
        raise ValueError(f"unknown activation {kind!r}: {error}") from None
    try:
        parameter = float(value) if colon else _DEFAULTS[family]
    except (ValueError, KeyError):
        parameter = math.nan
    if family not in _FAMILIES or not math.isfinite(parameter):
        raise ValueError(f"unknown activation {kind!r}; known: {', '.join(ACTIVATIONS)}, "
                         f"and {', '.join(f + ':<value>' for f in _FAMILIES)}")
    return _FAMILIES[family](parameter)
