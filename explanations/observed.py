"""v = (y, detector scores) under a Gaussian model of y: its moments, and an event's clauses as rows on v."""
from __future__ import annotations

from collections import Counter

import torch
from torch import Tensor

from .events import Clause
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
