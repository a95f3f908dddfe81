"""Intersections of halfspaces P[a_i·x + c_i ≥ 0 for every i] under N(μ, Σ) and the cube.

A network Linear(n, k) → Step with the event All(Above(i, t_i)) (0 ≤ t_i < 1: output i is
1) or Below(i, t_i) (0 < t_i ≤ 1: output i is 0, i.e. a_i·x + c_i < 0) is such an
intersection; `from_network` reads the constraints off the graph and the event.

Gaussian inputs (``gaussian_log_probability``): w = A x + c is exactly N(Aμ + c, A Σ Aᵀ),
so p = P(w > 0) is a k-dimensional orthant probability. It is integrated halfspace by
halfspace by Genz's separation of variables (`mvn.log_orthant`): after the pivoted
Cholesky factorisation w = m + L y, constraint j bounds the j-th latent y_j given
y_{<j}, the factor e_j = P(constraint j | constraints < j, y_{<j}) is exact, and
p = E[Π_j e_j] over the conditioned draws (randomised QMC, log space).
Cost: 2nk² for A Σ Aᵀ (plus 2n²k when Σ ≠ I), the factorisation, and ≈ (k² + 47k) per
QMC point.

``hermite_log_probability`` is the reference structured method ("keep the running
intersection as a polynomial"): H_0 = 1 and H_t = Proj_1(H_{t-1} · 1[v_t·z ≥ β_t]), the
L² projection onto Hermite polynomials of degree ≤ 1 in the whitened input z, with
v_t = a_t/|a_t| and β_t = -(a_t·μ + c_t)/|a_t|. For H = h₀ + h·z, Q = Φ(-β) and
E[z zᵀ 1[v·z ≥ β]] = Q I + β φ(β) v vᵀ:
    h₀ ← h₀ Q + (h·v) φ(β),     h ← Q h + φ(β) (h₀ + β (h·v)) v,
and p̂ = h₀ after the last constraint; cost ≈ 8n per constraint. With the budget
n^d ≤ 1/ε² of that method and n ≥ 100, d = 1 is what it can afford. Measured in
`pitrack bench halfspaces` it is far from the truth once the constraints correlate;
explanations use the separation of variables.

``exact_cube_log_probability`` enumerates {-1, 1}^n (n ≤ 26) in chunks: ground truth.

``replicate_interval`` is the 95% interval of both randomised estimators (the Gaussian
QMC and the cube's SMC): R independent unbiased replicates p̂_r, p̂ their mean, s their
sample standard deviation, p̂ ± t_{0.975, R-1} s/√R with Student's t for R - 1 degrees of
freedom (the spread is itself estimated from R values: the normal's 1.96 covered 84–90%
of the cube's intervals at R = 4 and 87–94% of the Gaussian's at R = 8, measured on
200–300 seeds; t covers 92–97%), its ends formed from log p̂ so that a p̂ below 1e-308
keeps an upper end above 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.special import log_ndtr
from tqdm.auto import tqdm

from .distributions import Gaussian
from .errors import InvalidEvent
from .events import Event, Halfspace
from .graph import Act, Affine, Graph
from .montecarlo import student_t_quantile
from .mvn import OrthantResult, _log_prob_between, _sov_qmc, _step_flops, _step_limits, _Step

MAX_EXACT_CUBE = 26
_ROW_TOL = 1e-12   # residual norm, relative to the row's, below which a row is dependent


@dataclass(frozen=True)
class Halfspaces:
    """The set {x : a_i·x + c_i ≥ 0 (> 0 where strict_i) for every row i}.

    weight [k, n], offset [k] (float64), strict [k] (bool). k = 0 is the whole space;
    `empty` marks a set known to be empty (an impossible output constraint).
    """

    weight: Tensor
    offset: Tensor
    strict: Tensor
    empty: bool = False

    @property
    def k(self) -> int:
        return self.weight.shape[0]

    @property
    def n(self) -> int:
        return self.weight.shape[1]

    def contains(self, x: Tensor) -> Tensor:
        """Boolean [batch]: which rows of x [batch, n] lie in every halfspace."""
        s = x.to(self.weight.dtype) @ self.weight.T + self.offset
        inside = torch.where(self.strict, s > 0, s >= 0).all(dim=1)
        return inside & (not self.empty)


def is_step_network(graph: Graph) -> bool:
    """Linear → Step: the outputs are the indicators 1[a_i·x + c_i ≥ 0]."""
    chain = graph.chain
    return (len(chain) == 2 and isinstance(chain[0], Affine) and isinstance(chain[1], Act)
            and chain[1].kind == "step")


def from_network(graph: Graph, event: Event) -> Halfspaces:
    """The halfspaces that `event` on the outputs of a Linear → Step `graph` means.

    The event must be one clause (an intersection) of one-output conditions y_i > t or
    y_i < t; y_i ∈ {0, 1} turns each into y_i = 1, y_i = 0, always or never.
    Raises InvalidEvent otherwise (use samples=N for other events).
    """
    if not is_step_network(graph):
        raise InvalidEvent("the halfspace method needs a Linear → Step network")
    clauses = event.dnf()
    if len(clauses) != 1:
        raise InvalidEvent(f"the halfspace method answers intersections; {event!r} is a union of "
                           f"{len(clauses)} clauses (use samples=N)")
    affine = graph.chain[0]
    weight, bias = affine.weight.to(torch.float64), affine.bias.to(torch.float64)
    rows, offsets, strict, empty = [], [], [], False
    for half in clauses[0]:
        sign, index, threshold = _one_output(half)
        if sign > 0:   # y_i > t: certain for t < 0, y_i = 1 for 0 ≤ t < 1, impossible for t ≥ 1
            if threshold >= 1:
                empty = True
            elif threshold >= 0:
                rows.append(weight[index]), offsets.append(bias[index]), strict.append(False)
        else:          # y_i < t with threshold = -t: y_i = 0 for 0 < t ≤ 1
            t = -threshold
            if t <= 0:
                empty = True
            elif t <= 1:
                rows.append(-weight[index]), offsets.append(-bias[index]), strict.append(True)
    n = graph.n_inputs
    if not rows:
        return Halfspaces(weight.new_zeros(0, n), weight.new_zeros(0),
                          torch.zeros(0, dtype=torch.bool, device=weight.device), empty)
    return Halfspaces(torch.stack(rows), torch.stack(offsets),
                      torch.tensor(strict, device=weight.device), empty)


def _one_output(half: Halfspace) -> tuple[float, int, float]:
    if len(half.terms) != 1 or not isinstance(half.terms[0][0], int):
        raise InvalidEvent("the halfspace method takes conditions on single outputs (Above, Below)")
    (index, coef), = half.terms
    return math.copysign(1.0, coef), index, half.threshold / abs(coef)


def gaussian_log_probability(halfspaces: Halfspaces, distribution: Gaussian, *, points: int = 1024,
                             replicates: int = 8, seed: int = 0) -> OrthantResult:
    """log P[x ∈ halfspaces] for x ~ N(μ, Σ) by separation of variables (module docstring)."""
    if halfspaces.empty:
        return OrthantResult(-math.inf, 0.0, 0)
    n, k = halfspaces.n, halfspaces.k
    a = halfspaces.weight @ distribution.factor.to(halfspaces.weight)   # x = μ + F z
    c = halfspaces.weight @ distribution.mean.to(a) + halfspaces.offset
    flops = 2 * k * n + (0 if distribution.is_standard else 2 * k * n * n)
    norms = a.norm(dim=1)
    constant = norms <= _ROW_TOL * norms.max().clamp_min(1e-300) if k else norms.bool()
    if bool((c[constant] < 0).any()) or bool(((c[constant] == 0) & halfspaces.strict[constant]).any()):
        return OrthantResult(-math.inf, 0.0, flops)
    a, c = a[~constant], c[~constant]
    if len(c) == 0:
        return OrthantResult(0.0, 0.0, flops)
    steps, factor_flops = row_sov_factor(a, c)
    flops += factor_flops
    if len(steps) == 1:
        log_e = _log_prob_between(*_step_limits(steps[0], c.new_zeros(1, 0)))
        return OrthantResult(float(log_e), 0.0, flops + _step_flops(steps[0], False, 1))
    log_p, abs_error, relative_se, qmc_flops = _sov_qmc(steps, points, replicates, seed)
    return OrthantResult(log_p, abs_error, flops + qmc_flops, relative_se, replicates)


def row_sov_factor(a: Tensor, c: Tensor) -> tuple[list[_Step], int]:
    """Separation-of-variables steps for P(A u < c), u ~ N(0, I_n), and their FLOPs.

    The constraints are taken one at a time (Genz & Bretz's order: the one with the
    smallest expected conditional probability, earlier latents at their truncated
    means) and their normals orthonormalised by modified Gram–Schmidt: q_j is the
    chosen row's residual direction, y_j = q_j·u ~ N(0, 1) independent, L_ij = a_i·q_j,
    so A u = L y. A row whose residual norm falls below 1e-12 of its norm is a
    combination of the earlier pivots and becomes a bound on y_j at that step (k > n
    is common; after n pivots every row is). Working with the residual rows (not the Cholesky factor of A Aᵀ) keeps
    conditional variances = squared norms ≥ 0, so rank-deficient sets are stable.
    Cost: ≈ 8kn + 2kj + 4nj per pivot j.
    """
    k, n = a.shape
    residual = a.clone()
    scale = a.norm(dim=1)
    chol = a.new_zeros(k, min(k, n))
    basis = a.new_zeros(min(k, n), n)
    y_mean = a.new_zeros(min(k, n))
    active = torch.ones(k, dtype=torch.bool, device=a.device)
    steps, flops = [], 0
    for j in range(min(k, n)):
        if not bool(active.any()):
            break
        sd = residual.norm(dim=1)
        expected = (c - chol[:, :j] @ y_mean[:j]) / sd.clamp_min(1e-300)
        pivot = int(torch.where(active, expected, math.inf).argmin())
        q = residual[pivot] - basis[:j].T @ (basis[:j] @ residual[pivot])   # re-orthogonalised
        q = q / q.norm()
        basis[j] = q
        chol[:, j] = torch.where(active, residual @ q, chol[:, j])
        chol[pivot, j] = sd[pivot]
        active[pivot] = False
        residual = torch.where(active[:, None], residual - chol[:, j:j + 1] * q, 0.0)
        dependent = active & ((residual.norm(dim=1) <= _ROW_TOL * scale) | (j == n - 1))
        active &= ~dependent
        rows = torch.cat([c.new_tensor([pivot], dtype=torch.long), dependent.nonzero().flatten()])
        steps.append(_Step(chol[rows, :j].clone(), chol[rows, j].clone(), c[rows]))
        b = expected[pivot]
        y_mean[j] = -torch.exp(-b * b / 2 - math.log(2 * math.pi) / 2 - log_ndtr(b))
        flops += 8 * k * n + 2 * k * j + 4 * n * j + 4 * k + 12
    if bool(active.any()):
        raise ValueError("row factorisation left constraints unassigned (non-finite weights?)")
    return steps, flops


def sov_points(k: int, n: int, flops: float, replicates: int = 8) -> int:
    """QMC points per replicate that spend about `flops` on k constraints in n dimensions,
    a power of two between 64 and 2^16. With r = min(k, n) pivots a point costs
    ≈ r² + 2(k - r) r + 46r (`mvn._step_flops`: the k - r dependent rows are bounds at
    the last pivot)."""
    r = min(k, n)
    per_point = r * r + 2 * (k - r) * r + 46 * r
    points = max(64, int(flops / (replicates * per_point)))
    return min(1 << 16, 1 << (points.bit_length() - 1))


def sov_points_within(k: int, n: int, flops: float, standard: bool, replicates: int = 8) -> int:
    """The most QMC points per replicate, a power of two up to 2^16, whose whole
    `gaussian_log_probability` (k constraints, n dimensions) is sure to cost at most
    `flops` (`sov_flops_bound`); 0 when not even one point fits."""
    fixed = sov_flops_bound(k, n, 0, standard, replicates)
    per_point = sov_flops_bound(k, n, 1, standard, replicates) - fixed      # one more in every replicate
    points = int((flops - fixed) // per_point) if flops >= fixed else 0
    return min(1 << 16, 1 << (points.bit_length() - 1)) if points else 0


def sov_flops_bound(k: int, n: int, points: int, standard: bool, replicates: int = 8) -> int:
    """An upper bound on the FLOPs of `gaussian_log_probability` with `points` per replicate:
    the affine map (2kn, + 2kn² for Σ ≠ I), at most r = min(k, n) pivots of `row_sov_factor`
    (8kn + 2kj + 4nj + 4k + 12 at pivot j) and the QMC of `mvn._sov_qmc` over N = points ×
    replicates points, whose steps cost N (rows (2j + 6) + 41) + 2 rows (`mvn._step_flops`)
    with one pivot row at each j < r and the other k - r rows at j ≤ r - 1, plus N + 5R."""
    r = min(k, n)
    fixed = 2 * k * n + (0 if standard else 2 * k * n * n)
    factor = r * (8 * k * n + 4 * k + 12) + (2 * k + 4 * n) * r * (r - 1) // 2
    per_point = r * (r - 1) + 6 * r + (k - r) * (2 * r + 4) + 41 * r + 1
    total = points * replicates
    return fixed + factor + total * per_point + 2 * k + 5 * replicates


def hermite_log_probability(halfspaces: Halfspaces, distribution: Gaussian) -> OrthantResult:
    """log p̂ by the degree-1 Hermite projection of the running intersection (module
    docstring); -inf when the projection's constant term is ≤ 0."""
    if halfspaces.empty:
        return OrthantResult(-math.inf, 0.0, 0)
    standard = distribution.is_standard
    a = halfspaces.weight if standard else halfspaces.weight @ distribution.factor.to(halfspaces.weight)
    shift = halfspaces.weight @ distribution.mean.to(a) + halfspaces.offset    # a_i·x = (Fᵀa_i)·z + a_i·μ
    norms = a.norm(dim=1)
    h0, h = 1.0, torch.zeros(halfspaces.n, dtype=torch.float64, device=a.device)
    for row, norm, s in zip(a, norms, shift):
        if norm == 0:
            h0, h = (h0, h) if bool(s >= 0) else (0.0, 0 * h)
            continue
        v, beta = row / norm, float(-s / norm)
        q, phi = 0.5 * math.erfc(beta / math.sqrt(2)), math.exp(-beta * beta / 2) / math.sqrt(2 * math.pi)
        hv = float(h @ v)
        h0, h = h0 * q + hv * phi, q * h + phi * (h0 + beta * hv) * v
    return OrthantResult(math.log(h0) if h0 > 0 else -math.inf, math.nan,
                         hermite_flops(halfspaces.k, halfspaces.n, standard), relative_se=math.nan)


def hermite_flops(k: int, n: int, standard: bool) -> int:
    """FLOPs of `hermite_log_probability`: the map (2n²k for Σ ≠ I), the norms and shifts
    (3nk) and ≈ 8n + 20 per constraint."""
    return (0 if standard else 2 * n * n * k) + 3 * n * k + k * (8 * n + 20)


def replicate_interval(log_p: float, relative_se: float, replicates: int) -> tuple[float, float] | None:
    """The 95% interval for p from the mean p̂ = e^log_p of `replicates` independent
    unbiased replicates with relative standard error `relative_se` (module docstring):
    p̂ (1 ± h), h = t_{0.975, R-1} · relative_se, each end e^(log p̂ + log(1 ± h)); the lower
    end 0 when h ≥ 1, the upper at most 1 and at least the smallest positive double.
    replicates = 0 means p is exact: [p̂, p̂] (upper end again at least that double unless
    p̂ = 0, a set known to be empty). None where no honest interval exists: relative_se
    unknown (nan), or p̂ = 0 from replicates that all found nothing."""
    if not math.isfinite(relative_se):
        return None
    if replicates == 0:
        p = math.exp(log_p)
        return p, (p if log_p == -math.inf else max(p, math.ulp(0.0)))
    if log_p == -math.inf:
        return None
    half = student_t_quantile(0.975, replicates - 1) * relative_se
    low = math.exp(log_p + math.log1p(-half)) if half < 1 else 0.0
    high = math.exp(min(log_p + math.log1p(half), 0.0))
    return low, max(high, math.ulp(0.0))


def exact_cube_log_probability(halfspaces: Halfspaces, chunk: int = 1 << 16,
                               progress: bool | None = None) -> float:
    """log of the exact fraction of {-1, 1}^n inside the halfspaces, by enumeration."""
    n = halfspaces.n
    if n > MAX_EXACT_CUBE:
        raise ValueError(f"exact enumeration of {{-1, 1}}^{n} is too large (n ≤ {MAX_EXACT_CUBE})")
    if halfspaces.empty:
        return -math.inf
    total, count = 1 << n, 0
    bits = torch.arange(n, device=halfspaces.weight.device)
    with tqdm(total=total, disable=not (progress if progress is not None else total >= 1 << 22),
              unit="pt", unit_scale=True, desc="enumerating", leave=False) as bar:
        for start in range(0, total, chunk):
            index = torch.arange(start, min(start + chunk, total), device=bits.device)
            x = (((index[:, None] >> bits) & 1) * 2 - 1).to(torch.float64)
            count += int(halfspaces.contains(x).sum())
            bar.update(len(index))
    return math.log(count) - n * math.log(2) if count else -math.inf
