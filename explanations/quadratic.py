"""An event near a design point, from the network's least-squares quadratic there.

At a design point ξ* of a clause {v : A v > b} (`design`; v = (y, detector scores) at
whitened inputs ξ), write ξ = ξ* + u. Each margin row m_r(ξ) = a_r·v(ξ) - b_r is replaced by
    q_r(u) = c_r + B_r·u + ½ uᵀ H_r u,
fitted at 2P antithetic points u_k = ±s z_k, z_k ~ N(0, I), s = SCALE, P = `pairs(d)`:
the margins' gradients regressed on (1, u_k) give B_r (intercept) and H_r (slope,
symmetrised, its regression noise taken out of its spectrum by `denoised`), and c_r is
the mean of m_r(ξ* + u_k) - B_r·u_k - ½ u_kᵀ H_r u_k. In the limit H_r = E[∇²m_r] over
N(ξ*, s²I) (Stein: E[∇m(ξ* + u) uᵀ] = s² E[∇²m]): on a ReLU network, whose pointwise
Hessian is zero almost everywhere, the curvature its kinks make on the scale s. The
clause's mass in the mode's Voronoi cell C (points nearer ξ* than any other mode) is then
    P(clause ∩ C) ≈ P_{ξ ~ N(0, I)}(q(ξ - ξ*) > 0 row-wise, ξ ∈ C),
integrated along lines parallel to e = ξ*/|ξ*| (line sampling, Koutsourelakis, Pradlwarter
& Schuëller 2004): with ξ = t e + w, w ⊥ e, every q_r is a quadratic in t and every cell
wall linear, so each line's mass is a sum of Φ(t_hi) - Φ(t_lo) over the segments between
their roots, exact in log space; the lines' offsets w are randomised QMC (scrambled Sobol).
A margin linear in ξ gives the exact Φ(-β) on every line.

Why a quadratic and not π's Gaussian rebuilt at the mode (the tilted Gaussian this
replaced): that model takes the network's nonlinearity near ξ* as noise independent of ξ,
and where the failure set curves away from the origin (convex margins, the usual case)
the noise's tail puts mass where there is none (tail benchmark, 85 events: mean error
+0.78 dex, against -0.04 with these quadratics). SCALE = ½ and 4d points (at least 64)
were measured (s = 0.35, 0.5, 0.7: medians 0.16, 0.11, 0.10, worst 3.0, 3.2, ∞; a smaller
s sees only the point curvature, a larger one smooths the set's shape away; 32 points on
d = 16 left the regression under-determined). Each mode is fitted on its own clause only
(another clause's quadratic put spurious mass into unions); where the activations grow
linearly (ReLU, GELU), a single-row clause is refitted where its cell's mass lies
(`widened`).
Assumptions: the margins are near quadratic within a unit or two of the mode, where the
mass of its cell lies; a failure region of the cell far from the mode is seen only as
the quadratic extends to it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor
from torch.quasirandom import SobolEngine
from torch.special import ndtri

from .mvn import OrthantResult, _log_prob_between

SCALE = 0.5                          # s: the fit's neighbourhood N(ξ*, s²I)
LINE_RANGE = (32, 1024)              # QMC lines per replicate to start with (`line_count`)
MAX_LINES = 4096                     # ... and at most, after doubling
LINE_REPLICATES = 4                  # replicates give the spread
SPREAD_TARGET = 0.1                  # lines double while the spread exceeds this share of the estimate
DOUBLING_SHARE = 4                   # ... and the integral costs at most this many times the fit
TRACY_WIDOM = 2.0                    # the denoising threshold's margin, in units of τd^(-1/6) (`denoised`)
ROOT_FLOPS = 30                      # a quadratic's roots (discriminant, square root, division)
WIDE_TANGENTS = (0.5, 1.0)           # `widened`: the refit's tangent scales lie within these


def pairs(dim: int) -> int:
    """Antithetic pairs for a fit in `dim` inputs: 2·dim, at least 32 (4d points, ≥ 64)."""
    return max(32, 2 * dim)


@dataclass
class Quadratic:
    """q_r(u) = value_r + slope_r·u + ½ uᵀ curvature_r u for each margin row r."""
    value: Tensor        # [rows]
    slope: Tensor        # [rows, d]
    curvature: Tensor    # [rows, d, d], symmetric
    forwards: int        # margin evaluations of the fit (points)
    backwards: int       # gradient passes of the fit (points × rows)
    flops: int           # the regression's own arithmetic

    def cost(self, observe_flops: int) -> int:
        """The fit's FLOPs: its passes (a backward pass counts two forward ones, each
        `observe_flops`) and the regression."""
        return (self.forwards + 2 * self.backwards) * observe_flops + self.flops


def fit(margins: Callable[[Tensor], Tensor], point: Tensor, generator: torch.Generator,
        scale: float = SCALE) -> Quadratic:
    """The least-squares quadratic of `margins` (ξ batch → [batch, rows]) around `point`
    (module docstring), on N(ξ*, scale²I). Gradients by autograd, one backward pass per row
    over the batch."""
    d = point.shape[0]
    half = torch.randn(pairs(d), d, generator=generator, dtype=point.dtype).to(point.device) * scale
    u = torch.cat([half, -half])
    xi = (point.detach() + u).requires_grad_(True)
    with torch.inference_mode(False), torch.enable_grad():
        values = margins(xi)
        rows = values.shape[1]
        n = u.shape[0]
        design = torch.cat([u.new_ones(n, 1), u], dim=1)                  # [points, d + 1]
        if not values.requires_grad:                                      # piecewise constant (Step)
            return _fit_values(values.detach(), design)
        grads = torch.stack([torch.autograd.grad(values[:, r].sum(), xi, retain_graph=r < rows - 1)[0]
                             for r in range(rows)], dim=1).detach()       # [points, rows, d]
    values, targets = values.detach(), grads.reshape(n, rows * d)
    flat = _least_squares(design, targets)
    coefficients = flat.reshape(d + 1, rows, d)
    slope = coefficients[0]
    curvature = coefficients[1:].permute(1, 2, 0)                         # [rows, d (gradient), d (u)]
    curvature = (curvature + curvature.transpose(1, 2)) / 2
    residual_variance = ((targets - design @ flat) ** 2).sum(0).reshape(rows, d) / max(n - d - 1, 1)
    spread = torch.linalg.inv(design.T @ design).diagonal()[1:]          # Var(coefficient of u_k) / σ²
    curvature = torch.stack([denoised(h, float(v.mean() * spread.mean()) / 2)
                             for h, v in zip(curvature, residual_variance)])
    fitted = u @ slope.T + 0.5 * torch.einsum("nd,rde,ne->nr", u, curvature, u)
    value = (values - fitted).mean(0)
    return Quadratic(value, slope, curvature, n, n * rows, _gradients_flops(n, d, rows))


def widened(first: Quadratic, margins: Callable[[Tensor], Tensor], point: Tensor,
            generator: torch.Generator) -> Quadratic:
    """The quadratic refitted (`fit`) at `point` on a design spread where `first`'s cell
    integral spreads: u = L ũ with ũ `fit`'s isotropic design of scale s = ½, and L = I
    along the normal e = ξ*/|ξ*| and clamp(√S_ii, WIDE_TANGENTS)/s along the tangent
    eigenvectors of the offsets' law S (`_offset_law`; S_ii = 1 off its moved axes). The
    regression on ũ gives q̃(ũ) = c + b̃·ũ + ½ ũᵀH̃ũ for m(ξ* + L ũ), so B = b̃ L⁻¹ and
    H = L⁻ᵀ H̃ L⁻¹ (by Stein's identity as in the module docstring, H is then E[∇²m] over
    N(ξ*, s²LLᵀ): the curvature averaged where the cell's mass lies). The counts and FLOPs
    are both fits'.
    Why: where a network's output grows linearly along rays (ReLU, GELU), its failure set
    widens into a cone, whose curvature falls with the distance from the mode; at scale ½
    the fit sees the curvature next to the mode (on r13, 16 → 512 → 1 ReLU, Below at 1e-6:
    -0.48, -0.19, -0.10 dex at s = 0.3, 0.5, 0.7, three seeds each; refitted, -0.01)."""
    d = point.shape[0]
    e = _line_direction(first, point)
    axes, stretch, _ = _offset_law(first, point, e)
    low, high = WIDE_TANGENTS
    normal = torch.outer(e, e)
    eye = torch.eye(d, dtype=point.dtype, device=point.device)
    moved = stretch.rsqrt().clamp(low, high) - high
    design = (high * (eye - normal) + SCALE * normal + (axes * moved) @ axes.T) / SCALE      # L, symmetric
    inverse = torch.linalg.inv(design)
    second = fit(lambda xi: margins(point + (xi - point) @ design), point, generator)
    rows = first.value.shape[0]
    return Quadratic(second.value, second.slope @ inverse, inverse.T @ second.curvature @ inverse,
                     first.forwards + second.forwards, first.backwards + second.backwards,
                     first.flops + second.flops + widening_flops(d, rows))


def widening_flops(d: int, rows: int) -> int:
    """`widened`'s arithmetic beyond its fits: the offsets' law (as in `line_flops`), L and
    its inverse, the slopes' and curvatures' change of coordinates."""
    return 4 * rows * d * d + 14 * d ** 3 + 4 * d ** 3 + 2 * rows * d * d + 4 * rows * d ** 3


def denoised(curvature: Tensor, noise: float) -> Tensor:
    """The symmetric `curvature` [d, d] with its regression noise taken out of its spectrum.

    The fitted Hessian is H = S + N: S the curvature sought, N the regression's error,
    whose entries have variance `noise` = τ² off the diagonal and 2τ² on it, as in the
    Gaussian orthogonal ensemble. `fit` passes a conservative τ²: the gradients' whole
    residual variance times the design's (XᵀX)⁻¹ diagonal, halved by the symmetrisation.
    With antithetic points only the residual's odd part, (g(u_k) - g(-u_k))/2 - H u_k, is
    noise in H; the even part is the margin's third-order term, which leaves H unbiased
    but makes the curvature vary across the fit's neighbourhood by about as much, so a
    curvature within it is not trusted to extrapolate (with the odd part alone, 6, 8, 10
    tail-benchmark events were beyond 0.5 dex on seeds 0–2, against 4, 7, 10). Such noise
    spreads H's spectrum over the semicircle [-2τ√d, 2τ√d] (Wigner), and an eigenvalue θ
    of S shows as
    ℓ = θ + τ²d/θ if |θ| > τ√d and inside the semicircle otherwise (the spiked Wigner
    matrix: Péché 2006; Benaych-Georges & Nadakuditi, Adv. Math. 227, 2011). So each
    eigenvalue ℓ of H becomes θ = (ℓ + sgn(ℓ)√(ℓ² - 4τ²d))/2 outside the semicircle and 0
    inside it, with H's eigenvectors. At d = 16 the semicircle's edge is loose: the extreme
    noise eigenvalue is 2τ√d + τd^(-1/6)·TW₁ (Tracy & Widom, CMP 177, 1996), so the
    threshold is 2τ√d + TRACY_WIDOM·τd^(-1/6), about TW₁'s 99th percentile (tail benchmark,
    two seeds: median 0.116 and 0.094 dex with the bare edge, 0.102 and 0.084 with it).
    Why: the line integral's mass goes as Π(1 - βκ_i)^(-1/2) over the tangent curvatures
    κ_i, so noise that widens the spectrum biases it upward (a 16-input ReLU net read
    +0.4 to +2.6 dex over six seeds; denoised, -0.17 to +0.13 on five and +1.35 on one)."""
    if noise <= 0:
        return curvature
    d = curvature.shape[0]
    values, vectors = torch.linalg.eigh(curvature)
    edge = 2 * math.sqrt(noise * d)
    outside = (values * values - 4 * noise * d).clamp_min(0).sqrt()
    spikes = torch.where(values.abs() > edge + TRACY_WIDOM * math.sqrt(noise) * d ** (-1 / 6),
                         (values + values.sign() * outside) / 2, 0.0)
    return (vectors * spikes) @ vectors.T


def _fit_values(values: Tensor, design: Tensor) -> Quadratic:
    """Margins without gradients (a piecewise-constant network): the least-squares
    hyperplane of the values on `design` = (1, u), whose slope stands for the margin's jumps
    across the boundary. (A quadratic fitted to a step's values bends back across it: on a
    6 → 8 → Step → 1 net it put P = 7e-3 at 0.15, the hyperplane at 1.4e-2.)"""
    n, features = design.shape
    coefficients = _least_squares(design, values)                         # [d + 1, rows]
    rows, d = values.shape[1], features - 1
    return Quadratic(coefficients[0], coefficients[1:].T, design.new_zeros(rows, d, d), n, 0,
                     _values_flops(n, features, rows))


def fit_flops_bound(d: int, rows: int) -> int:
    """The arithmetic of `fit` beyond its passes, at most (either path)."""
    n = 2 * pairs(d)
    return max(_gradients_flops(n, d, rows), _values_flops(n, d + 1, rows))


def _gradients_flops(n: int, d: int, rows: int) -> int:
    """The gradient regression: Gram matrix, solve and inverse, right-hand sides and
    residuals, each row's eigendecomposition (≈ 10d³) and rebuild, fitted values."""
    return (2 * n * (d + 1) ** 2 + 4 * (d + 1) ** 3 + 4 * n * (d + 1) * rows * d + rows * 12 * d ** 3
            + n * rows * (2 * d * d + 4 * d))


def _values_flops(n: int, features: int, rows: int) -> int:
    """The value regression on `features` columns."""
    return 2 * n * features * features + 2 * features ** 3 + 2 * n * features * rows


def _least_squares(design: Tensor, targets: Tensor) -> Tensor:
    """argmin_β |design β - targets|², with a ridge of 1e-10 of the Gram matrix's mean
    diagonal so that an under-determined fit (fewer points than features) stays solvable."""
    gram = design.T @ design
    gram = gram + 1e-10 * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram, design.T @ targets)


def log_cell_probability(quadratic: Quadratic, point: Tensor, others: list[Tensor], radius: float,
                         spend: float, seed: int) -> OrthantResult:
    """log P_{ξ ~ N(0, I)}(q(ξ - ξ*) > 0 row-wise, |ξ| ≥ radius, ξ nearer ξ* = `point` than
    every point in `others`), by lines along ξ*/|ξ*| in each of LINE_REPLICATES replicates
    (module docstring): `line_count(…, spend / DOUBLING_SHARE)` each to start with
    (`spend`: the most FLOPs the integral may take; `structured` gives it DOUBLING_SHARE
    times the fit's, or less under a budget), doubled (the Sobol sequences continued) while
    the replicates' spread (3 standard errors, the numerical error returned) exceeds
    SPREAD_TARGET of the estimate, up to MAX_LINES and `spend` in all; and FLOPs.
    `radius` is about β_min, the nearest mode's distance: the search takes the event to lie
    outside that ball (as the χ² cap does), and a quadratic fitted at the mode is not
    trusted back to the origin, where one bent the other way had put mass (measured: QMC
    estimates of one event 4 decades apart from 256 to 1024 lines)."""
    d = point.shape[0]
    e = _line_direction(quadratic, point)
    walls = torch.stack([point - q for q in others]) if others else point.new_zeros(0, d)
    offsets = torch.stack([(point @ point - q @ q) / 2 for q in others]) if others else point.new_zeros(0)
    axes, spikes = low_rank(quadratic.curvature)                           # H_r = V_r diag(θ_r) V_rᵀ
    axes_e = torch.einsum("rdk,d->rk", axes, e)
    square = torch.cat([0.5 * (spikes * axes_e ** 2).sum(1), point.new_ones(1)])   # t² coefficients, the ball's last
    law_axes, stretch, log_det = _offset_law(quadratic, point, e)

    def masses(z: Tensor) -> Tensor:
        """log(line mass × φ(w)/q(w)) for the lines of the normal draws z."""
        half = z.shape[0] // 2
        shaped = z[:half] + ((z[:half] @ law_axes) * (stretch.rsqrt() - 1)) @ law_axes.T   # z S^{1/2}
        w = torch.cat([shaped, z[half:]])                                  # half shaped, half N(0, I)
        w = w - (w @ e)[:, None] * e                                       # offsets ⊥ e: ξ = t e + w
        w_w = (w * w).sum(1)
        log_prior = -0.5 * w_w
        log_shaped = -0.5 * (w_w + ((stretch - 1) * (w @ law_axes) ** 2).sum(1)) + log_det
        log_weight = log_prior - torch.logaddexp(log_prior, log_shaped) + math.log(2)   # φ(w)/q(w) ≤ 2
        x0 = w - point                                                     # u at t = 0
        along = torch.einsum("nd,rdk->nrk", x0, axes)                      # V_rᵀ x0
        constant = quadratic.value + x0 @ quadratic.slope.T + 0.5 * (spikes * along ** 2).sum(-1)
        linear = quadratic.slope @ e + (spikes * along * axes_e).sum(-1)
        ball = w_w[:, None] - radius ** 2                                  # t² + |w|² - r² > 0
        wall_slope, wall_offset = walls @ e, w @ walls.T - offsets         # wall: slope·t + offset > 0
        return log_weight + _line_masses(torch.cat([constant, ball], 1), torch.cat([linear, torch.zeros_like(ball)], 1),
                                         square.expand(z.shape[0], -1), wall_slope, wall_offset)

    rows, cells = quadratic.value.shape[0], walls.shape[0]
    ranks = (spikes.shape[1], stretch.shape[0])
    engines = [SobolEngine(d, scramble=True, seed=seed + r) for r in range(LINE_REPLICATES)]
    drawn, sums, batch = 0, [[] for _ in engines], line_count(d, rows, cells, spend / DOUBLING_SHARE, *ranks)
    while True:
        for engine, parts in zip(engines, sums):
            z = ndtri(engine.draw(batch, dtype=torch.float64).clamp(1e-15, 1 - 1e-15)).to(point)
            parts.append(torch.logsumexp(masses(z), 0))
        drawn += batch
        logs = torch.stack([torch.logsumexp(torch.stack(parts), 0) for parts in sums]) - math.log(drawn)
        log_p = float(torch.logsumexp(logs, 0)) - math.log(LINE_REPLICATES)
        relative = 3 * float((logs - log_p).exp().std()) / math.sqrt(LINE_REPLICATES)   # scaled: no underflow
        if (relative <= SPREAD_TARGET or 2 * drawn > MAX_LINES        # (NaN where every line is empty)
                or line_flops(d, rows, cells, 2 * drawn, *ranks) > spend):
            break
        batch = drawn
    spread = relative * math.exp(log_p) if log_p > -math.inf else 0.0
    return OrthantResult(log_p, spread, line_flops(d, rows, cells, drawn, *ranks))


def low_rank(curvature: Tensor) -> tuple[Tensor, Tensor]:
    """H_r = V_r diag(θ_r) V_rᵀ over H_r's nonzero eigenvalues: V [rows, d, k] and θ
    [rows, k], k the largest rank (a row of smaller rank padded with θ = 0). A denoised fit
    keeps a few spikes, so a line's quadratic costs 2dk FLOPs a row in place of 2d²."""
    values, vectors = torch.linalg.eigh(curvature)
    order = values.abs().argsort(dim=1, descending=True)
    values = values.gather(1, order)
    vectors = vectors.gather(2, order[:, None, :].expand_as(vectors))
    rank = int((values.abs() > 1e-12 * values.abs().amax(1, keepdim=True)).sum(1).max()) if values.numel() else 0
    return vectors[:, :, :rank], values[:, :rank]


def line_count(d: int, rows: int, walls: int, spend: float, rank: int | None = None, law_rank: int | None = None) -> int:
    """Lines per replicate whose integral costs at most `spend` FLOPs (`log_cell_probability`
    starts at a DOUBLING_SHARE-th of its allowance), as a power of two (Sobol's points
    balance at powers of two) within LINE_RANGE. Measured on the tail benchmark (stop 19):
    64 lines gave median 0.13 dex and 256 gave 0.11."""
    lines = LINE_RANGE[0]
    while 2 * lines <= LINE_RANGE[1] and line_flops(d, rows, walls, 2 * lines, rank, law_rank) <= spend:
        lines *= 2
    return lines


def line_flops(d: int, rows: int, walls: int, lines: int, rank: int | None = None, law_rank: int | None = None) -> int:
    """FLOPs of `log_cell_probability` (`rank`: the curvatures' common rank k, `law_rank`:
    the offsets' law's, each d at most and by default): the offsets' law (multipliers, M and
    its eigenvectors: 2d²·rows + 2d²·rows + 4d³ + 10d³) and the curvatures' eigenvectors
    (10d³·rows); per line the normal draw, its map by S^{1/2} and weight (20d + 6d·k_m + 10d),
    each row's quadratic in t (2d + 2dk + 5k) and roots, the ball (2d), the walls (2d + 2
    each), and on each of the segments between the sorted breaks every condition at a probe."""
    k = d if rank is None else rank
    k_law = d if law_rank is None else law_rank
    conditions = rows + 1
    breaks = 2 * conditions + walls
    per_line = (32 * d + 6 * d * k_law + rows * (2 * d + 2 * d * k + 5 * k + 4) + conditions * ROOT_FLOPS
                + walls * (2 * d + 2) + breaks * math.ceil(math.log2(breaks + 1))
                + (breaks + 1) * (conditions * 6 + walls * 2 + 2 * ROOT_FLOPS))
    return 4 * rows * d * d + 10 * rows * d ** 3 + 14 * d ** 3 + LINE_REPLICATES * lines * per_line


def _offset_law(quadratic: Quadratic, point: Tensor, e: Tensor) -> tuple[Tensor, Tensor, float]:
    """The lines' offsets w ⊥ e come half from N(0, I) and half from a shaped law N(0, S),
    S = M⁻¹ over the offsets, weighted by φ/q for the mixture q (Hesterberg's defensive
    mixture: weights ≤ 2, so a law narrower than the integrand's tails cannot blow up the
    variance). M = P(I - Σ_r λ_r H_r + β² GᵀG)P + eeᵀ, P = I - eeᵀ:
    - λ ≥ 0 are the multipliers of ξ* = Σ_r λ_r B_r (KKT at the design point): along a line
      at offset w the clause starts near t = β - wᵀ(Σλ_r H_r)w/2, so its mass goes as
      exp(-½ wᵀ(I - ΣλH)w) (Breitung's SORM factor); a set thinner than the unit normal is
      otherwise crossed by few lines (a κ = 1 paraboloid in d = 8: a 27% spread with 1,024
      lines, under 1% at 256 with this law);
    - G's rows are the rows' slopes across the lines, P B_r / (B_r·e): a wedge's faces move
      the entry point by G w, where the density falls by e^{-β} per unit.
    M's eigenvalues are kept within [¼, 10⁴]. M = I + Σ_i (m_i - 1) u_i u_iᵀ over the
    eigenvectors u_i whose eigenvalue m_i is not 1 (a few: M - I has the rank of the
    curvatures and slopes), so S^{1/2} = I + Σ_i (m_i^(-1/2) - 1) u_i u_iᵀ and
    log ψ(w) = -½(|w|² + Σ_i (m_i - 1)(u_i·w)²) + ½ log det M + log φ's constant. Returns
    the u_i [d, k], the m_i and ½ log det M."""
    d = point.shape[0]
    eye = torch.eye(d, dtype=point.dtype, device=point.device)
    multipliers = torch.linalg.lstsq(quadratic.slope.T, point[:, None]).solution[:, 0].clamp_min(0)
    project = eye - torch.outer(e, e)
    along = quadratic.slope @ e
    tilt = torch.where(along[:, None] > 0, quadratic.slope @ project / along.clamp_min(1e-300)[:, None], 0.0)
    wedge = float(point @ point) * tilt.T @ tilt
    m = project @ (eye - torch.einsum("r,rde->de", multipliers, quadratic.curvature) + wedge) @ project \
        + torch.outer(e, e)
    values, vectors = torch.linalg.eigh((m + m.T) / 2)
    values = values.clamp(0.25, 1e4)
    moved = (values - 1).abs() > 1e-12
    return vectors[:, moved], values[moved], 0.5 * float(values.log().sum())


def _line_direction(quadratic: Quadratic, point: Tensor) -> Tensor:
    """ξ*/|ξ*|; at a mode on the origin, the first row's slope (any direction gives the same
    integral, only its spread changes)."""
    for candidate in (point, quadratic.slope[0]):
        if float(candidate.norm()) > 1e-12:
            return candidate / candidate.norm()
    return torch.eye(point.shape[0], dtype=point.dtype, device=point.device)[0]


def _line_masses(a: Tensor, b: Tensor, c: Tensor, wall_slope: Tensor, wall_offset: Tensor) -> Tensor:
    """Per line: log of the standard normal mass of {t : a_r + b_r t + c_r t² > 0 for every
    row r, wall_slope_j t + wall_offset_j > 0 for every wall j}. a, b, c: [lines, rows];
    wall_slope [walls], wall_offset [lines, walls]."""
    roots = [_quadratic_roots(a, b, c)]
    if wall_slope.numel():
        roots.append(torch.where(wall_slope != 0, -wall_offset / wall_slope, math.nan).expand_as(wall_offset))
    breaks = torch.cat([r.reshape(a.shape[0], -1) for r in roots], dim=1)
    breaks = torch.where(torch.isnan(breaks), math.inf, breaks).sort(dim=1).values
    inf = breaks.new_full((a.shape[0], 1), math.inf)
    lo, hi = torch.cat([-inf, breaks], dim=1), torch.cat([breaks, inf], dim=1)   # the segments
    probe = torch.where(lo.isinf() & hi.isinf(), 0.0,
                        torch.where(lo.isinf(), hi - 1, torch.where(hi.isinf(), lo + 1, (lo + hi) / 2)))
    inside = (a[:, None, :] + probe[..., None] * (b[:, None, :] + probe[..., None] * c[:, None, :]) > 0).all(-1)
    if wall_slope.numel():
        inside &= (probe[..., None] * wall_slope + wall_offset[:, None, :] > 0).all(-1)
    masses = torch.where(inside & (lo < hi), _log_prob_between(lo, hi), -math.inf)
    return torch.logsumexp(masses, dim=1)


def _quadratic_roots(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """The real roots of a + b t + c t² (NaN where there is none), [..., 2]; the stable
    form t = 2a / (-b ∓ √Δ), t = (-b ∓ √Δ) / 2c, so that c → 0 leaves the linear root -a/b."""
    disc = b * b - 4 * a * c
    root = disc.clamp_min(0).sqrt()
    big = -b - torch.where(b >= 0, root, -root)                           # -b - sign(b)√Δ: no cancellation
    first = torch.where(big != 0, 2 * a / big, math.nan)
    second = torch.where(c != 0, big / (2 * c), math.nan)
    both = torch.stack([first, second], dim=-1)
    return torch.where((disc >= 0)[..., None], both, math.nan)
