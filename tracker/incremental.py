"""Cheap updates of π between full rebuilds: the head update, and the costs that decide.

Gaussian-family π (methods gaussian, cumulant, and auto on deeper nets) keep the state
entering the network's final affine map y = W h + b (the head): h ~ N(μ_h, Σ_h) with
C_h = Cov(x, h). A training step changes every layer. The head update keeps the body's
state from the last full build (stale) and applies the head's current parameters exactly:

    μ_y = W μ_h + b,   Σ_y = W Σ_h Wᵀ,   C = C_h Wᵀ,         cost 2mn² + 2m²n + 2rmn + 2mn

(m outputs, n hidden units, r inputs), then π's predict regression (free for N(0, I)).
The result is exactly π of the hybrid graph (body from the last rebuild, head from now),
so `explain(hybrid graph)` restores it. It is exact when only the head moved and
approximate otherwise: its error is the body's drift since the last rebuild, which the
tracker bounds by rebuilding whenever the budget allows (always at checkpoints).

Why not low-rank corrections: an SGD step on a batch of B rows changes W by a rank-≤B
matrix ΔW = U Vᵀ, and W'ΣW'ᵀ = WΣWᵀ + ΔWΣWᵀ + WΣΔWᵀ + ΔWΣΔWᵀ costs O(B n² ) through
VᵀΣ, against O(m n²) for the direct product: it pays only where B < m, never for the
narrow heads tracked here; in the body, every activation's pairwise moments must be
recomputed anyway once its input covariance moved; and Adam's per-coordinate scaling
makes ΔW full rank. So the update is direct, and its cost is counted exactly.
"""
from __future__ import annotations

import copy
from collections import Counter

from explanations import Explanation, Graph
from explanations.graph import Affine
from explanations.propagate import GaussianState


def supports_head_update(pi: Explanation | None) -> bool:
    """Does π keep the state entering a final affine map?"""
    return pi is not None and getattr(pi, "penultimate", None) is not None


def hybrid_graph(body: Graph, current: Graph) -> Graph:
    """`body`'s chain with the final affine map of `current`."""
    return Graph(body.chain[:-1] + current.chain[-1:], body.n_inputs, current.input_shape)


def head_update_cost(pi: Explanation) -> int:
    """FLOPs of `head_update` (module docstring), predict's regression included."""
    m, n = pi.mean.shape[0], pi.penultimate.mean.shape[0]
    r = pi.penultimate.cross.shape[0]
    cost = 2 * m * n * n + 2 * m * m * n + 2 * r * m * n + 2 * m * n
    if not pi.distribution.is_standard:
        cost += 10 * r ** 3 + 2 * r * r * m
    return cost


def head_update(pi: Explanation, current: Graph) -> Explanation:
    """π with the head of `current` applied to its stale body state (module docstring)."""
    head = current.chain[-1]
    if not isinstance(head, Affine):
        raise ValueError("the head update needs a network ending in an affine map")
    updated = copy.copy(pi)
    updated.graph = hybrid_graph(pi.graph, current)
    updated.flops = Counter(pi.flops)
    if hasattr(updated, "mean_flops"):     # cumulant: the mean now needs the whole build plus the update
        updated.mean_flops = None
    dtype = pi.dtype
    w, b = head.weight.to(dtype), head.bias.to(dtype)
    h = pi.penultimate
    state = GaussianState(w @ h.mean + b, w @ h.cov @ w.T, h.cross @ w.T)
    if getattr(pi, "last", None) is not None:          # cumulant: κ3, κ4 read the head too
        updated.last = Affine(w, b, head.path, head.flops)
    before = sum(updated.flops.values())
    updated._finish(state)
    updated.flops["head update"] += head_update_cost(pi) - (sum(updated.flops.values()) - before)
    return updated
