"""Cumulants κ1..κ4 of s = Σ_j a_j g_j(u_j), u jointly Gaussian, by the diagram formula.

Setting. u_1..u_n are N(0, 1) with correlations ρ_ij = v_i·v_j (rows of v unit vectors;
the Gram diagonal is set to ρ_ii = 1), and g_j = Σ_{k≤K} c_jk h_k with h_k = He_k/√k!.

Diagram formula (Janson, "Gaussian Hilbert Spaces", Thm 7.33 and §1.4; Peccati & Taqqu,
"Wiener Chaos: Moments, Cumulants and Diagrams", Prop. 7.3.1 and Thm 7.3.5): He_k(u) is the
Wick power :u^k:, so for vertices v = 1..r (units j_v, not necessarily distinct)
    E[Π_v h_{k_v}(u_{j_v})] = Σ_γ Π_v √(k_v!) Π_e ρ_e^{m_e} / m_e!,
the sum over multigraphs γ without self-loops on the labelled vertices 1..r with degrees
k_v, m_e the multiplicity of edge e. The joint cumulant keeps the connected γ only. As
cumulants are multilinear and h_0 = 1 drops out of every joint cumulant of order ≥ 2,
with B_{k,i} = a_i c_ik √(k!) (k ≥ 1) and E^m = G^{∘m}/m! (G the Gram matrix, E^0 = 1):
    κ1 = Σ_i a_i c_i0,      κ2 = Σ_k Σ_ij B_{k,i} E^k_ij B_{k,j},
    κ_r = Σ over connected labelled shapes on r vertices, each summed over all edge
          multiplicities m_e ≥ 1 and all units i, j, ... of Π_v B_{k_v} Π_e E^{m_e}.
Vertex degrees above K give B = 0: truncating g at degree K truncates the diagrams there.
Labelled connected shapes: r = 3: 3 paths + 1 triangle; r = 4: 4 stars, 12 paths, 3 four-
cycles, 12 paws (triangle + pendant), 6 diamonds (K4 minus an edge), 1 tetrahedron (K4).

Contractions, with w_k = E^k B_k (leaf of degree k seen from its neighbour) and the
"middle vertex" matrices N^{qs} = E^q diag(B_{q+s}) E^s (a degree-2 vertex between two
others, N^{sq} = (N^{qs})ᵀ):
    path₃ + triangle:  Σ_{q,s≥1} Σ_{p≥0} Σ_ij B_{p+q,i} B_{p+s,j} E^p_ij N^{qs}_ij  (p = 0: path)
    path₄ + paw:       the same with B_{p+q,i} → Z_{p+q,i} = Σ_{e≥1} B_{p+q+e,i} w_{e,i}
    4-cycle + diamond: Σ_{x,y} Σ_{a≥0} Σ_ij B_{a+x1+y1,i} B_{a+x2+y2,j} E^a_ij N^x_ij N^y_ij
                       (x = (x1, x2), y pairs of multiplicities; a = 0: 4-cycle)
    star:              Σ_t Σ_i B_{t,i} Σ_{a+b+c=t} w_{a,i} w_{b,i} w_{c,i}
    tetrahedron:       Q_ijk = Σ_l E^c_il E^e_jl E^f_kl B_{c+e+f,l} (l's three edges), then
                       Σ_ij B_{a+b+c,i} B_{a+d+e,j} E^a_ij Σ_k Q_ijk E^b_ik E^d_jk B_{b+d+f,k}.
                       The sum over (a, b, d) is invariant under permuting (c, e, f) (relabel
                       i, j, k), so only sorted triples c ≤ e ≤ f are contracted, weighted by
                       their number of distinct permutations; Q is one [n², n]·[n, mn] matrix
                       product, and (a, b, d) go through batched matrix products in blocks of b
                       of at most 2²² numbers per intermediate.
The other contractions go through opt_einsum (path "optimal", cached per shape); no d^k
or n⁴ tensor is formed.
The Gram form (n² entries per power) is used rather than the factored form ρ^m =
v_i^{⊗m}·v_j^{⊗m}, whose factors have d^m entries: it is cheaper whenever d^m > n, i.e. for
every power above the first unless n is large and d small.

Tetrahedra cost O(n⁴) and are contracted when n ≤ `tetrahedra_up_to` (default 64). Above,
they are left out of κ4 and bounded instead: with |ρ_kl|^f ≤ 1,
    |tetrahedra| ≤ Σ_{f≥1} (1/f!) Σ_{x,y} Σ_{a≥1} Σ_ij |B_{a+x1+y1,i}| |B_{a+x2+y2,j}| |E^a_ij|
                                                       · Ñ^x_ij Ñ^y_ij,
Ñ^{qs} = |E^q| diag(|B_{q+s+f}|) |E^s| (a diamond of absolute values), returned per row.

Cost (FLOPs in opt_einsum's convention: a pairwise contraction costs the size of its index
space times (terms - 1 + [an index is summed]), i.e. 2·m·n·p for a matrix product and one
per element for elementwise products; elementwise work outside opt_einsum is counted one
per output element), for m rows, n units, input dimension d, degree K:
    Gram 2n²d; powers 2Kn²; w 2mKn²; middles N ≈ (K²/4)·2mn³ (κ3, κ4);
    path/triangle/paw ≈ (K²/2)·4mKn²; cycle/diamond ≈ (K⁴/16)·4mKn² (κ4);
    tetrahedra ≈ T_K·2mn⁴ + V_K·2mn³ with T_K the number of sorted triples (c, e, f),
    c + e + f ≤ K (T_6 = 7, T_8 = 16, T_10 = 31), V_K the (c, e, f, b, d) blocks (V_6 = 52,
    V_8 = 236, V_10 = 768, zero padding included); the bound instead ≈ K/3 times
    the middle and diamond costs. Memory: the middles, ≈ (K²/2)·mn² numbers, and m·n³ for Q.
Measured (one CPU thread, m = 2, K = 10): n = 32: 0.1 s (2.9e8 FLOPs); n = 64: 0.4 s (3.2e9);
n = 128: 6 s (4.1e10, tetrahedra included), 0.9 s with tetrahedra bounded instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import opt_einsum
import torch
from torch import Tensor

TETRAHEDRA_UP_TO = 64
_BLOCK = 2 ** 22
_WEIGHTS = {"path3": 3, "star": 4, "path4": 12, "cycle": 3, "paw": 12, "diamond": 6, "tetrahedron": 1}


@dataclass(frozen=True)
class DiagramCumulants:
    """values: [m, order] κ1..κ_order per row; flops spent; tetrahedra_bound: [m] bound on the
    |κ4| contribution of the tetrahedral diagrams left out (0 where they were contracted)."""
    values: Tensor
    flops: int
    tetrahedra_bound: Tensor


@lru_cache(maxsize=None)
def _plan(equation: str, *shapes: tuple[int, ...]) -> tuple[opt_einsum.contract.ContractExpression, int]:
    path, info = opt_einsum.contract_path(equation, *shapes, shapes=True, optimize="optimal")
    return opt_einsum.contract_expression(equation, *shapes, optimize=path), int(info.opt_cost)


class _Contractor:
    """opt_einsum contractions with cached paths, summing their FLOPs."""

    def __init__(self) -> None:
        self.flops = 0

    def __call__(self, equation: str, *operands: Tensor) -> Tensor:
        expression, cost = _plan(equation, *(tuple(t.shape) for t in operands))
        self.flops += cost
        return expression(*operands)


def _middles(ein: _Contractor, E: Tensor, B_mid: Tensor, K: int, shift: int) -> dict[tuple[int, int], Tensor]:
    """N^{qs} = E^q diag(B_mid[q+s+shift]) E^s for q, s ≥ 1 with q + s + shift ≤ K: [m, n, n]."""
    middles = {}
    for q in range(1, K):
        for s in range(q, K - q - shift + 1):
            middles[q, s] = ein("ik,rk,jk->rij", E[q], B_mid[:, q + s + shift], E[s])
            middles[s, q] = middles[q, s].transpose(1, 2)
    return middles


def _pair_sums(ein: _Contractor, E: Tensor, B: Tensor, middles: dict, K: int) -> tuple[Tensor, Tensor]:
    """Σ_{x,y} Σ_ij B_{a+x1+y1,i} B_{a+x2+y2,j} E^a_ij N^x_ij N^y_ij split into a = 0 and a ≥ 1: [m] each."""
    keys = list(middles)
    zero = B.new_zeros(B.shape[0])
    positive = B.new_zeros(B.shape[0])
    for index, x in enumerate(keys):
        for y in keys[index:]:
            t1, t2 = x[0] + y[0], x[1] + y[1]
            if t1 > K or t2 > K:
                continue
            top = min(K - t1, K - t2)
            product = middles[x] * middles[y]
            ein.flops += product.numel()
            sums = ein("rai,raj,aij,rij->ra", B[:, t1:t1 + top + 1], B[:, t2:t2 + top + 1], E[:top + 1], product)
            weight = 1 if x == y else 2
            zero = zero + weight * sums[:, 0]
            positive = positive + weight * sums[:, 1:].sum(1)
    return zero, positive


def _tetrahedra(ein: _Contractor, E: Tensor, B: Tensor, K: int) -> Tensor:
    """Σ over tetrahedral diagrams (module docstring), [m]. Edges ij:a, ik:b, il:c, jk:d, jl:e,
    kl:f. For each sorted (c, e, f): Q by one matrix product, then blocks of b (at most
    _BLOCK numbers per intermediate) with all (a, d) at once by batched matrix products;
    degree limits are enforced by B_t = 0 for t > K."""
    m, _, n = B.shape
    padded = torch.cat([B, B.new_zeros(m, 2 * K, n)], 1)
    per_b = max(1, _BLOCK // (m * n ** 3))
    total = B.new_zeros(m)
    for c in range(1, K - 1):
        for e in range(c, (K - c) // 2 + 1):
            for f in range(e, K - c - e + 1):
                weight = 6 // math.prod(math.factorial((c, e, f).count(t)) for t in {c, e, f})
                pair = E[c][:, None, :] * E[e][None, :, :]                               # [i, j, l]
                leaf = E[f][None] * B[:, c + e + f, None, :]                              # [r, k, l]
                q = (pair.reshape(n * n, n) @ leaf.reshape(m * n, n).T).reshape(n, n, m, n)   # [i, j, r, k]
                ein.flops += n ** 3 + m * n * n + 2 * m * n ** 4
                depth, top = min(K - 1 - f, K - 1 - e), K - 1 - c                        # d ≤ depth, a ≤ top
                near_index = torch.arange(1, top + 1, device=B.device)
                far_index = torch.arange(1, depth + 1, device=B.device)
                corner = padded[:, near_index[:, None] + far_index[None, :] + e]           # [r, a, d, j]
                for start in range(1, min(K - c, K - f), per_b):
                    bs = torch.arange(start, min(start + per_b, K - c, K - f), device=B.device)
                    nb = len(bs)
                    tilted = q[None] * E[bs][:, :, None, None, :]                            # [b, i, j, r, k]
                    far_weights = padded[:, bs[:, None] + f + far_index, None, :]            # [r, b, d, 1, k]
                    far = E[1:depth + 1][None, None] * far_weights                          # [r, b, d, j, k]
                    s = tilted.permute(0, 3, 2, 1, 4) @ far.permute(1, 0, 3, 4, 2)          # [b, r, j, i, d]
                    near = padded[:, bs[:, None] + c + near_index, :, None] * E[1:top + 1]  # [r, b, a, i, j]
                    t = near.permute(1, 0, 4, 2, 3) @ s                                       # [b, r, j, a, d]
                    total = total + weight * torch.einsum("brjad,radj->r", t, corner)
                    ein.flops += (nb * m * n ** 3 * (1 + 2 * depth) + nb * m * n * n * (depth + top + 2 * top * depth)
                                  + 2 * nb * m * top * depth * n)
    return total


def _tetrahedra_bound(ein: _Contractor, E: Tensor, B: Tensor, K: int) -> Tensor:
    """Upper bound on |Σ tetrahedra| by dropping the edge kl (module docstring), [m]."""
    E, B = E.abs(), B.abs()
    ein.flops += E.numel() + B.numel()
    bound = B.new_zeros(B.shape[0])
    for f in range(1, K - 1):
        middles = _middles(ein, E, B, K, f)
        bound = bound + _pair_sums(ein, E, B, middles, K)[1] / math.factorial(f)
    return bound


def _check(a: Tensor, c: Tensor, v: Tensor, order: int) -> None:
    if order not in (1, 2, 3, 4):
        raise ValueError(f"order must be 1, 2, 3 or 4, got {order!r}")
    if a.dim() != 2 or c.dim() != 2 or v.dim() != 2:
        raise ValueError(f"a, c, v must be matrices, got shapes {tuple(a.shape)}, {tuple(c.shape)}, "
                         f"{tuple(v.shape)}")
    n = a.shape[1]
    if c.shape[0] != n or v.shape[0] != n or c.shape[1] < 1:
        raise ValueError(f"a [m, n], c [n, K+1], v [n, d] disagree: {tuple(a.shape)}, {tuple(c.shape)}, "
                         f"{tuple(v.shape)}")


def diagram_cumulants(a: Tensor, c: Tensor, v: Tensor, order: int = 4, *,
                      tetrahedra_up_to: int = TETRAHEDRA_UP_TO) -> DiagramCumulants:
    """κ1..κ_order of s = Σ_j a_j g_j(u_j) for each row of a (module docstring)."""
    _check(a, c, v, order)
    a, c, v = (t.to(torch.float64) for t in (a, c, v))
    (m, n), K = a.shape, c.shape[1] - 1
    ein = _Contractor()
    kappa = [ein("rj,j->r", a, c[:, 0])]
    bound = a.new_zeros(m)
    if order >= 2:
        gram = ein("id,jd->ij", v, v).clamp(-1.0, 1.0)
        gram.fill_diagonal_(1.0)
        E = [torch.ones_like(gram)]
        for k in range(1, K + 1):
            E.append(E[-1] * gram / k)
        E = torch.stack(E)                                                    # [K+1, n, n]
        scale = torch.tensor([math.sqrt(math.factorial(k)) for k in range(K + 1)], dtype=a.dtype, device=a.device)
        scale[0] = 0.0                                                        # h_0 drops out
        B = ein("ri,ik,k->rki", a, c, scale)                                  # [m, K+1, n]
        w = ein("kij,rkj->rki", E, B)
        ein.flops += 2 * K * n * n
        kappa.append(ein("rki,rki->r", B, w))
    if order >= 3:
        middles = _middles(ein, E, B, K, 0)
        vertex = B[None]
        if order == 4:
            Z = torch.zeros_like(B)
            for t in range(1, K):
                Z[:, t] = (B[:, t + 1:] * w[:, 1:K - t + 1]).sum(1)
            ein.flops += 2 * m * n * K * K
            vertex = torch.stack([B, Z])                                      # [2, m, K+1, n]
        sums = a.new_zeros(vertex.shape[0], m, 2)                              # (p = 0, p ≥ 1)
        for (q, s), middle in middles.items():
            top = min(K - q, K - s)
            t = ein("xrpi,rpj,pij,rij->xrp", vertex[:, :, q:q + top + 1], B[:, s:s + top + 1], E[:top + 1], middle)
            sums = sums + torch.stack([t[..., 0], t[..., 1:].sum(-1)], -1)
        kappa.append(_WEIGHTS["path3"] * sums[0, :, 0] + sums[0, :, 1])
    if order == 4:
        nothing = torch.zeros_like(w[:, 0])
        pairs = [(w[:, 1:t] * w[:, 1:t].flip(1)).sum(1) if t >= 2 else nothing for t in range(K + 1)]   # Σ_{a+b=t}
        triples = [sum((w[:, j] * pairs[t - j] for j in range(1, t - 1)), nothing) for t in range(K + 1)]
        star = sum(((B[:, t] * triples[t]).sum(1) for t in range(3, K + 1)), a.new_zeros(m))
        ein.flops += 3 * m * n * K * K
        cycle, diamond = _pair_sums(ein, E, B, middles, K)
        if n <= tetrahedra_up_to:
            tetrahedra = _tetrahedra(ein, E, B, K)
        else:
            tetrahedra = a.new_zeros(m)
            bound = _tetrahedra_bound(ein, E, B, K)
        kappa.append(_WEIGHTS["star"] * star + _WEIGHTS["path4"] * sums[1, :, 0] + _WEIGHTS["paw"] * sums[1, :, 1]
                     + _WEIGHTS["cycle"] * cycle + _WEIGHTS["diamond"] * diamond
                     + _WEIGHTS["tetrahedron"] * tetrahedra)
    return DiagramCumulants(torch.stack(kappa, 1), ein.flops, bound)


def hermite_cumulants(a: Tensor, c: Tensor, v: Tensor, order: int = 4, *,
                      tetrahedra_up_to: int = TETRAHEDRA_UP_TO) -> tuple[Tensor, int]:
    """κ1..κ_order of s = Σ_j a_j Σ_k c_jk h_k(u_j), corr(u_i, u_j) = v_i·v_j, per row of a.

    a: [m, n], c: [n, K+1], v: [n, d]. Returns ([m, order], FLOPs). κ4 omits the tetrahedral
    diagrams when n > tetrahedra_up_to (see `diagram_cumulants` for their bound).
    """
    result = diagram_cumulants(a, c, v, order, tetrahedra_up_to=tetrahedra_up_to)
    return result.values, result.flops
