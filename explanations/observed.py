"""v = (y, detector scores): its moments under a Gaussian model of y, an event's clauses as
rows on v, and v itself at whitened inputs."""
from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Callable

import torch
from torch import Tensor

from .distributions import Gaussian
from .events import Clause, Event
from .graph import Affine, Graph
from .montecarlo import detector_flops
from .propagate import GaussianState, propagate


def observed(mean: Tensor, cov: Tensor, detectors: list) -> tuple[Tensor, Tensor, int]:
    """Mean and covariance of v = (y, detector scores) when y ~ N(mean, cov), and FLOPs.

    Each detector's score is propagated from N(mean, cov) through its graph with
    Cov(y, score) tracked (Stein's lemma); two scores are related through y by the
    joint-Gaussian regression Cov(d_a, d_b) ≈ Cov(d_a, y) Σ_y⁺ Cov(y, d_b).
    """
    flops = Counter()
    means, crosses, variances = [mean], [cov], []
    for detector in detectors:
        graph = detector.score_graph().to(device=mean.device, dtype=mean.dtype)
        out = propagate(graph.chain, GaussianState(mean, cov, cov), flops)
        means.append(out.mean)
        crosses.append(out.cross)
        variances.append(out.cov[0, 0])
    n = mean.shape[0]
    joint = torch.cat(crosses, dim=1)                           # [outputs, outputs + detectors]
    joint = torch.cat([joint, joint.new_zeros(len(detectors), joint.shape[1])])
    joint[n:, :n] = joint[:n, n:].T
    if detectors:
        between = joint[:n, n:].T @ torch.linalg.pinv(cov, hermitian=True) @ joint[:n, n:]
        between.diagonal().copy_(torch.stack(variances))
        joint[n:, n:] = between
        flops["detectors"] += 10 * n ** 3 + 2 * n * n * len(detectors)
    return torch.cat(means), joint, sum(flops.values())


def clause_rows(clause: Clause, detectors: list, n_outputs: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """(A, b) with the clause = {v : A v > b}, v = (y, detector scores)."""
    def column(key: object) -> int:
        return key if isinstance(key, int) else n_outputs + next(i for i, d in enumerate(detectors) if d is key)

    a = like.new_zeros(len(clause), n_outputs + len(detectors))
    for r, half in enumerate(clause):
        for key, coefficient in half.terms:
            a[r, column(key)] += coefficient
    return a, like.new_tensor([half.threshold for half in clause])


def clause_margins(observe: Callable[[Tensor], Tensor], clauses: list[tuple[Tensor, Tensor]]) -> list:
    """Per clause {v : A v > b}, ξ batch ↦ A v(ξ) - b [batch, rows]: what the design search
    descends on."""
    return [lambda xi, a=a, b=b: observe(xi) @ a.T - b for a, b in clauses]


def foldable(graph: Graph, distribution: Gaussian) -> bool:
    """Can x = μ + F ξ be folded into the network's first map (`observer`): a dense affine
    map (a Linear's) under a Gaussian other than N(0, I)?"""
    first = graph.chain[0] if graph.chain else None
    return (not distribution.is_standard and isinstance(first, Affine) and first.flops is None
            and first.support is None)


def fold_flops(graph: Graph, distribution: Gaussian) -> int:
    """FLOPs of folding x = μ + F ξ into the first affine map, once (`observer`): W F and
    W μ, 2md² + 2md for its m outputs; 0 where nothing is folded."""
    if not foldable(graph, distribution):
        return 0
    m, d = graph.chain[0].n_out, distribution.dim
    return 2 * m * d * d + 2 * m * d


def input_map_flops(distribution: Gaussian, graph: Graph | None = None) -> int:
    """FLOPs of x = μ + F ξ for one point: 2d² + d; none for N(0, I), where x = ξ, nor where
    the map is folded into `graph`'s first affine map (`fold_flops`, once)."""
    d = distribution.dim
    if distribution.is_standard or graph is not None and foldable(graph, distribution):
        return 0
    return 2 * d * d + d


def observe_flops(graph: Graph, distribution: Gaussian, event: Event) -> int:
    """FLOPs of one ξ ↦ v for `event` (what `observer` counts), before an observer is built:
    the input map, the network and the event's detectors."""
    return input_map_flops(distribution, graph) + graph.flops_per_sample + detector_flops([event])


def observer(graph: Graph, distribution: Gaussian, detectors: list, dtype: torch.dtype
             ) -> tuple[Callable[[Tensor], Tensor], int]:
    """ξ ↦ v = (y, detector scores) at x = μ + F ξ (F Fᵀ = Σ; x = ξ for N(0, I)) for a batch
    of whitened inputs [batch, d] → [batch, outputs + detectors], in `dtype` on the graph's
    device; and the FLOPs per point: the input map (`input_map_flops`), the network and
    the detectors. Where the first map is a dense affine W x + b (`foldable`), the input
    map is folded into it, W F ξ + (W μ + b), at `fold_flops` once (the caller's to charge):
    a 32-input correlated Gaussian on a 32 → 8 → 3 net had cost 2,080 FLOPs a point for
    the map against 560 for the network."""
    graph = graph.to(dtype=dtype)
    detector_graphs = [d.score_graph().to(device=graph.device, dtype=dtype) for d in detectors]
    D = distribution.to(dtype=dtype)
    mean, factor, standard = D.mean, D.factor, D.is_standard
    unit = (input_map_flops(distribution, graph) + graph.flops_per_sample
            + sum(g.flops_per_sample for g in detector_graphs))
    folded = foldable(graph, D)
    if folded:
        first = graph.chain[0]
        first = replace(first, weight=first.weight @ factor, bias=first.bias + first.weight @ mean)
        graph = Graph((first,) + graph.chain[1:], graph.n_inputs, graph.input_shape)

    def observe(xi: Tensor) -> Tensor:
        y = graph.forward(xi if standard or folded else mean + xi @ factor.T)
        return torch.cat([y] + [g.forward(y) for g in detector_graphs], dim=1)

    return observe, unit
