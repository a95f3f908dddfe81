"""Gaussian (mean/covariance) propagation through a chain, tracking cross-covariances.

State: the mean μ and covariance Σ of the current layer h, and C = Cov(r, h) for a fixed
reference vector r (the input x, or the outputs y when propagating into a detector).

    Affine h ↦ W h + b:   μ ↦ W μ + b,  Σ ↦ W Σ Wᵀ,  C ↦ C Wᵀ                (exact)
                           (a W that is mostly zeros, as convolution, pooling and padding
                           matrices are, multiplies as a sparse matrix: 2·nnz(W) FLOPs a column)
    Activation f:          μ, Σ from `moments`; C ↦ C · diag(E[f′(z)])       (Stein's lemma)
    Residual Σ_i b_i(h):   μ = Σ μ_i,  Σ = Σ_i Σ_i + Σ_{i≠j} Cov(b_i, b_j),  C = Σ_i C_i
with Cov(b_i, h) tracked through each branch (the skip branch has Cov(h, h) = Σ exactly)
and, between two non-skip branches, the joint-Gaussian regression on h:
Cov(b_i, b_j) ≈ Cov(b_i, h) Σ⁺ Cov(h, b_j).
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass

import torch
from torch import Tensor

from .graph import Act, Affine, Chain
from .edgeworth import corrected_moments
from .moments import activation_moments, split_deterministic
from .skew import Source, start_source, third_fourth, through_activation, through_affine


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


SPARSE_DENSITY = 0.1     # a weight matrix with at most this share of nonzeros multiplies as sparse


class WeightProduct:
    """Left products W @ M, W an affine map's weight, counted in `flops["affine"]`.

    Where at most SPARSE_DENSITY of W's entries are nonzero (convolutions, pooling and
    padding are such matrices) W is held in CSR form and W @ M costs 2·nnz(W) FLOPs per
    column of M instead of 2·m·n; finding the nonzeros costs m·n. Exact either way. A W
    that carries gradients (a live graph) stays dense: CSR products do not differentiate
    in W."""

    def __init__(self, weight: Tensor, flops: Counter) -> None:
        m, n = weight.shape
        nonzero = int(torch.count_nonzero(weight))
        flops["affine"] += m * n
        self.flops = flops
        self.sparse = nonzero <= SPARSE_DENSITY * m * n and not weight.requires_grad
        if self.sparse:
            with warnings.catch_warnings():          # torch flags its CSR support as beta
                warnings.simplefilter("ignore", UserWarning)
                self.matrix = weight.to_sparse_csr()
        else:
            self.matrix = weight
        self.per_column = 2 * (nonzero if self.sparse else m * n)

    def __matmul__(self, other: Tensor) -> Tensor:
        self.flops["affine"] += self.per_column * (other.shape[1] if other.dim() == 2 else 1)
        return self.matrix @ (other.contiguous() if self.sparse else other)


def _affine(op: Affine, state: GaussianState, flops: Counter) -> GaussianState:
    weight = WeightProduct(op.weight.to(state.mean.dtype), flops)
    return finish_affine(op, state, weight @ state.cov, flops, weight)


def finish_affine(op: Affine, state: GaussianState, weighted: Tensor, flops: Counter,
                  weight: WeightProduct | None = None) -> GaussianState:
    """The state after `op` given W Σ (`weighted`, already paid for): μ ↦ Wμ + b,
    Σ ↦ W (WΣ)ᵀ (= W Σ Wᵀ, Σ being symmetric), C ↦ (W Cᵀ)ᵀ."""
    dtype = state.mean.dtype
    weight = weight or WeightProduct(op.weight.to(dtype), flops)
    cov = weight @ weighted.T
    flops["affine"] += op.weight.shape[0] + cov.numel()
    return GaussianState(weight @ state.mean + op.bias.to(dtype), (cov + cov.T) / 2,
                         (weight @ state.cross.T).T)


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


def carries_skew(chain: Chain) -> bool:
    """Does `propagate_skewed` carry cumulants through `chain` (no residual sum, no max pool)?"""
    return all(isinstance(op, Affine) or isinstance(op, Act) and not op.in_max_pool for op in chain)


def propagate_skewed(chain: Chain, state: GaussianState, flops: Counter,
                     input_factor: Tensor | None = None) -> tuple[GaussianState, list[Source], tuple | None]:
    """Like `propagate`, but each activation's moments carry the Edgeworth correction from
    the third and fourth cumulants that earlier activations put into its input (`skew`,
    `edgeworth`). Returns the state, the sources seen by the last layer, and the pending
    source (a final activation's input, for `sources_through_affine`; None otherwise).
    Chains with residual sums are propagated as Gaussian (branches would mix sources), and
    so are chains with max pools: their tournaments' ReLU units cancel in pairs, which the
    per-unit corrections do not respect (measured on 1 × 14 × 14 CNNs with two max pools:
    0.17–0.23 sd off against 0.06–0.09 as Gaussian).
    `input_factor` F with Cov(x) = F Fᵀ lets the first layers keep a low-rank correlation."""
    if not carries_skew(chain):
        return propagate(chain, state, flops), [], None
    sources: list[Source] = []
    pending = None                     # (kind, mean, cov, sd, factor) of the last activation's input
    factor = input_factor              # F with cov = F Fᵀ while that is low-rank
    for op in chain:
        if isinstance(op, Affine):
            weight = op.weight.to(state.mean.dtype)
            sources_through_affine(weight, sources, pending, flops)
            pending = None
            if factor is not None and 2 * factor.shape[1] <= weight.shape[0]:
                factor = weight @ factor
                flops["skew sources"] += 2 * factor.numel() * weight.shape[1]
            else:
                factor = None
            state = _affine(op, state, flops)
        else:
            _, deterministic, sd = split_deterministic(state.mean, state.cov)
            pending = (op.kind, state.mean, state.cov, sd, deterministic, factor)
            factor = None
            state = skewed_activation(op.kind, state, sources, flops)
    return state, sources, pending


def sources_through_affine(weight: Tensor, sources: list[Source], pending: tuple | None, flops: Counter) -> None:
    """The sources as seen after the affine map `weight`, a pending one started there."""
    for source in sources:
        flops["skew sources"] += through_affine(source, weight)
    if pending is not None:
        source, cost = start_source(*pending, weight)
        sources.append(source)
        flops["skew sources"] += cost


def skewed_activation(kind: str, state: GaussianState, sources: list[Source], flops: Counter) -> GaussianState:
    """One activation with the Edgeworth correction from the cumulants that `sources` put
    into its input (none on deterministic units); the sources then see the layer through
    its slopes."""
    base = activation_moments(kind, state.mean, state.cov)
    flops["activation moments"] += base.flops
    if sources:
        third, fourth, cost = third_fourth(sources, state.mean, full=True)
        flops["skew cumulants"] += cost
        corrected = corrected_moments(kind, state.mean, state.cov, third, fourth, base)
        flops["edgeworth"] += corrected.flops - base.flops
        base = corrected
    for source in sources:
        flops["skew sources"] += through_activation(source, base.slope)
    flops["cross-covariance"] += state.cross.numel()
    return GaussianState(base.mean, base.cov, state.cross * base.slope)
