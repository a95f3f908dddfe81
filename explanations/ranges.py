"""What a network's outputs can reach at all, and the events that this settles.

Interval arithmetic over x ∈ ℝ^d (Moore, "Interval Analysis", 1966): a box [l, h] goes
through an affine map as [W⁺l + W⁻h + b, W⁺h + W⁻l + b] (W⁺, W⁻ the positive and negative
parts, a zero weight contributing 0 even against an infinite end), through a
non-decreasing activation as [f(l), f(h)], through one that falls, then rises (GELU, SiLU,
Mish) as [min(f(l), f(h), min f), max(f(l), f(h))], through any other as ℝ, and through a
residual sum as the sum of its branches' boxes. The box holds every output the network can
produce, so a clause {v : A v > b} (v = (y, detector scores)) whose rows cannot all hold on
it, some row's largest value Σ_i max(a_i l_i, a_i h_i) at most b, is impossible, and one
whose every row's smallest value exceeds b is certain. Zero-sample estimates are models of
the output's law and do not know its range: P(tanh(z) > 1.0) had come out 0.06 and
P(relu(z) < -0.2) 0.26 (review). `settled` decides such events exactly, with the box's cost.
Rounding is taken outward, in the precision the network computes in (ε of the graph's and
detectors' coarsest dtype: a float32 sigmoid reaches 1.0 where float64 stays below), so that
the box holds every output the network can compute: a dot product of k terms is widened by
γ_k Σ|a_i x_i|, γ_k = k ε/(1 - k ε) (Higham, "Accuracy and Stability of Numerical
Algorithms", 2002, §3.1; none for a single term with coefficient ±1, which is exact), an
activation's value at a finite end by 4 ε of it. At an infinite end an activation's limit
is its value at ±10³⁰ where that equals its value at ±2·10³⁰ (tanh → 1, GELU → 0), else
±∞ (a leaky ReLU). So P(tanh(z) > 1) is 0 and P(tanh(z) > 1 - 1e-16) is left to the
estimators. Events on a detector whose final activation is inverted into its threshold
(`Detector.score_graph`) are not settled: the inverse is exact arithmetic, and a saturating
final activation's rounding fires where it says the detector cannot. Graphs with more than MAX_WEIGHTS
weights in all are not boxed (the box holds about six float64 copies of a weight matrix).
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

from .activations import activation
from .events import Event
from .graph import Act, Affine, Chain, Graph, iter_ops
from .observed import clause_rows

_FAR = 1e30        # an activation's limit at ±∞ is read at ±_FAR and ±2·_FAR (GELU(-∞) is nan in torch)
MAX_WEIGHTS = 2_000_000   # the box holds about six float64 copies of a weight matrix at once


def chain_box(chain: Chain, low: Tensor, high: Tensor, eps: float) -> tuple[Tensor, Tensor, int]:
    """The box of `chain`'s outputs for inputs in [low, high], rounding taken outward at
    machine epsilon `eps`, and its FLOPs (6 per weight of an affine map: two products, the
    rounding bound; 4 per unit of an activation)."""
    flops = 0
    for op in chain:
        if isinstance(op, Affine):
            low, high = _affine_box(op.weight.to(low.dtype), op.bias.to(low.dtype), low, high, eps)
            flops += 6 * op.weight.numel()
        elif isinstance(op, Act):
            low, high = _activation_box(op.kind, low, high, eps)
            flops += 4 * low.numel()
        else:
            boxes = [chain_box(branch, low, high, eps) for branch in op.branches]
            low, high = sum(b[0] for b in boxes), sum(b[1] for b in boxes)
            flops += sum(b[2] for b in boxes) + 2 * low.numel() * len(boxes)
    return low, high, flops


def _affine_box(weight: Tensor, bias: Tensor, low: Tensor, high: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """[W⁺l + W⁻h + b, W⁺h + W⁻l + b], each end moved out by its dot product's rounding bound."""
    positive, negative = weight.clamp_min(0), weight.clamp_max(0)
    error = _rounding(torch.cat([weight, bias[:, None]], dim=1),
                      torch.cat([torch.maximum(low.abs(), high.abs()), bias.new_ones(1)]), eps)
    return (_product(positive, low) + _product(negative, high) + bias - error,
            _product(positive, high) + _product(negative, low) + bias + error)


def _rounding(coefficients: Tensor, magnitudes: Tensor, eps: float) -> Tensor:
    """γ_k Σ_i |a_i| |x_i| per row over its k nonzero terms (finite magnitudes only; an
    infinite end makes the sum infinite anyway), 0 for a row that is a single ±1 term."""
    nonzero = (coefficients != 0).sum(dim=1)
    gamma = nonzero * eps / (1 - nonzero * eps)
    exact = (nonzero == 1) & ((coefficients.abs() == 1).sum(dim=1) == 1)
    size = coefficients.abs() @ torch.where(torch.isfinite(magnitudes), magnitudes, 0.0)
    return torch.where(exact, 0.0, gamma * size)


def _product(weight: Tensor, ends: Tensor) -> Tensor:
    """weight @ ends with 0 · (±∞) = 0: infinite ends only meet the weights that are nonzero."""
    finite = torch.where(torch.isfinite(ends), ends, 0.0)
    infinite = torch.where(torch.isfinite(ends), 0.0, ends)
    out = weight @ finite
    reached = (weight != 0).to(weight.dtype) @ torch.isinf(infinite).to(weight.dtype) > 0
    signs = torch.sign(weight) @ torch.where(torch.isinf(infinite), torch.sign(infinite), 0.0)
    return torch.where(reached, torch.where(signs > 0, math.inf, torch.where(signs < 0, -math.inf, math.nan)), out)


def _activation_box(kind: str, low: Tensor, high: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    act = activation(kind)

    def f(z: Tensor) -> tuple[Tensor, Tensor]:    # the value (a limit at ±∞), and 4 ε of it at a finite end
        finite = torch.isfinite(z)
        far = torch.where(z > 0, _FAR, -_FAR).to(z.dtype)
        at_far, further = act.fn(far), act.fn(2 * far)
        limit = torch.where(at_far == further, at_far, torch.sign(further - at_far) * math.inf)
        value = torch.where(finite, act.fn(torch.where(finite, z, 0.0)), limit)
        return value, torch.where(finite, 4 * eps * value.abs(), 0.0)

    def lower(z: Tensor) -> Tensor:
        value, ulps = f(z)
        return value - ulps

    def upper(z: Tensor) -> Tensor:
        value, ulps = f(z)
        return value + ulps

    if act.increasing:
        return lower(low), upper(high)
    if act.quasiconvex:
        bottom = torch.minimum(torch.minimum(lower(low), lower(high)), low.new_tensor(_global_min(kind)))
        return bottom, torch.maximum(upper(low), upper(high))
    return torch.full_like(low, -math.inf), torch.full_like(high, math.inf)


@lru_cache(maxsize=None)
def _global_min(kind: str) -> float:
    """A lower bound on min f for a falling-then-rising activation: its minimum located on a
    grid over [-20, 20] and refined by ternary search between the grid point's neighbours
    (f is unimodal there), less 1e-9 of its size for rounding; -∞ where the grid's minimum
    is at an end (the minimum may lie beyond)."""
    f = activation(kind).fn
    z = torch.linspace(-20, 20, 40_001, dtype=torch.float64)
    values = f(z)
    i = int(values.argmin())
    if i in (0, len(z) - 1):
        return -math.inf
    lo, hi = float(z[i - 1]), float(z[i + 1])
    for _ in range(200):
        a, b = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        fa, fb = (float(f(torch.tensor(v, dtype=torch.float64))) for v in (a, b))
        lo, hi = (lo, b) if fa < fb else (a, hi)
    low = min(float(f(torch.tensor(v, dtype=torch.float64))) for v in (lo, hi, float(z[i])))
    return low - 1e-9 * (1 + abs(low))


def settled(event: Event, graph: Graph, dtype: torch.dtype = torch.float64) -> tuple[bool | None, int]:
    """(False, flops) where the event cannot happen for any input, (True, flops) where it
    always happens, (None, flops) otherwise (module docstring)."""
    if sum(op.weight.numel() for op in iter_ops(graph.chain) if isinstance(op, Affine)) > MAX_WEIGHTS:
        return None, 0
    detectors = event.detectors()
    if any(d.score_graph() is not d.graph for d in detectors):
        return None, 0      # a final activation inverted into the threshold: near saturation its rounding
                            # fires where the inverse says it cannot (float32 sigmoid(16.7) = 1 > 1 - 5e-8)
    eps = max(torch.finfo(g.dtype).eps for g in [graph, *(d.graph for d in detectors)])
    infinite = torch.full((graph.n_inputs,), math.inf, dtype=dtype, device=graph.device)
    low, high, flops = chain_box(graph.chain, -infinite, infinite, eps)
    for detector in detectors:
        d_low, d_high, d_flops = chain_box(detector.score_graph().chain, low[:graph.n_outputs],
                                           high[:graph.n_outputs], eps)
        low, high, flops = torch.cat([low, d_low]), torch.cat([high, d_high]), flops + d_flops
    possible, certain = False, False
    for clause in event.dnf():
        a, b = clause_rows(clause, detectors, graph.n_outputs, low)
        smallest, largest = _affine_box(a, a.new_zeros(len(a)), low, high, eps)    # each row's reach over the box
        flops += 6 * a.numel()
        if bool((largest > b).all()):
            possible = True
            certain = certain or bool((smallest > b).all())
    return (None if possible and not certain else certain), flops
