"""Gaussian (mean/covariance) propagation through a chain, tracking cross-covariances.

State: the mean μ and covariance Σ of the current layer h, and C = Cov(r, h) for a fixed
reference vector r (the input x, or the outputs y when propagating into a detector).

    Affine h ↦ W h + b:   μ ↦ W μ + b,  Σ ↦ W Σ Wᵀ,  C ↦ C Wᵀ                (exact)
    Activation f:          μ, Σ from `moments`; C ↦ C · diag(E[f′(z)])       (Stein's lemma)
    Residual Σ_i b_i(h):   μ = Σ μ_i,  Σ = Σ_i Σ_i + Σ_{i≠j} Cov(b_i, b_j),  C = Σ_i C_i
with Cov(b_i, h) tracked through each branch (the skip branch has Cov(h, h) = Σ exactly)
and, between two non-skip branches, the joint-Gaussian regression on h:
Cov(b_i, b_j) ≈ Cov(b_i, h) Σ⁺ Cov(h, b_j).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from torch import Tensor

from .graph import Act, Affine, Chain
from .moments import activation_moments


@dataclass(frozen=True)
class GaussianState:
    mean: Tensor    # [n]
    cov: Tensor     # [n, n]
    cross: Tensor   # [r, n]  Cov(reference, h)


def propagate(chain: Chain, state: GaussianState, flops: Counter) -> GaussianState:
    """The state after `chain`; FLOPs spent are added to `flops` by kind."""
    for op in chain:
        if isinstance(op, Affine):
            state = _affine(op, state, flops)
        elif isinstance(op, Act):
            moments = activation_moments(op.kind, state.mean, state.cov)
            flops["activation moments"] += moments.flops
            flops["cross-covariance"] += state.cross.numel()
            state = GaussianState(moments.mean, moments.cov, state.cross * moments.slope)
        else:
            state = _residual(op.branches, state, flops)
    return state


def _affine(op: Affine, state: GaussianState, flops: Counter) -> GaussianState:
    w, b = op.weight.to(state.mean.dtype), op.bias.to(state.mean.dtype)
    m, n = w.shape
    r = state.cross.shape[0]
    cov = w @ state.cov @ w.T
    flops["affine"] += 2 * m * n + m + 2 * m * n * n + 2 * m * m * n + 2 * r * n * m
    return GaussianState(w @ state.mean + b, (cov + cov.T) / 2, state.cross @ w.T)


def _residual(branches: tuple[Chain, ...], state: GaussianState, flops: Counter) -> GaussianState:
    r, n = state.cross.shape
    extended = GaussianState(state.mean, state.cov, torch.cat([state.cross, state.cov]))
    outs = [propagate(branch, extended, flops) for branch in branches]
    with_input = [out.cross[r:] for out in outs]                       # Cov(h, b_i): [n, m]
    mean = sum(out.mean for out in outs)
    cov = sum(out.cov for out in outs)
    pinv = None
    for i in range(len(branches)):
        for j in range(i + 1, len(branches)):
            if not branches[j]:
                between = with_input[i].T
            elif not branches[i]:
                between = with_input[j]
            else:
                if pinv is None:
                    pinv = torch.linalg.pinv(state.cov, hermitian=True)
                    flops["residual"] += 10 * n ** 3
                between = with_input[i].T @ pinv @ with_input[j]
                flops["residual"] += 2 * n * n * with_input[j].shape[1] + 2 * n * with_input[i].shape[1] ** 2
            cov = cov + between + between.T
    flops["residual"] += 2 * len(branches) * cov.numel()
    return GaussianState(mean, cov, sum(out.cross[:r] for out in outs))
