"""v = (y, detector scores): its moments under a Gaussian model of y, an event's clauses as
rows on v, and v itself at whitened inputs."""
from __future__ import annotations

from collections import Counter
from typing import Callable

import torch
from torch import Tensor

from .distributions import Gaussian
from .events import Clause, Event
from .graph import Graph
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


def input_map_flops(distribution: Gaussian) -> int:
    """FLOPs of x = μ + F ξ for one point: 2d² + d, and none for N(0, I), where x = ξ."""
    d = distribution.dim
    return 0 if distribution.is_standard else 2 * d * d + d


def observe_flops(graph: Graph, distribution: Gaussian, event: Event) -> int:
    """FLOPs of one ξ ↦ v for `event` (what `observer` counts), before an observer is built:
    the input map, the network and the event's detectors."""
    return input_map_flops(distribution) + graph.flops_per_sample + detector_flops([event])


def observer(graph: Graph, distribution: Gaussian, detectors: list, dtype: torch.dtype
             ) -> tuple[Callable[[Tensor], Tensor], int]:
    """ξ ↦ v = (y, detector scores) at x = μ + F ξ (F Fᵀ = Σ; x = ξ for N(0, I)) for a batch
    of whitened inputs [batch, d] → [batch, outputs + detectors], in `dtype` on the graph's
    device; and the FLOPs per point: the input map (`input_map_flops`), the network and
    the detectors."""
    graph = graph.to(dtype=dtype)
    detector_graphs = [d.score_graph().to(device=graph.device, dtype=dtype) for d in detectors]
    D = distribution.to(dtype=dtype)
    mean, factor, standard = D.mean, D.factor, D.is_standard

    def observe(xi: Tensor) -> Tensor:
        y = graph.forward(xi if standard else mean + xi @ factor.T)
        return torch.cat([y] + [g.forward(y) for g in detector_graphs], dim=1)

    return observe, (input_map_flops(distribution) + graph.flops_per_sample
                     + sum(g.flops_per_sample for g in detector_graphs))
