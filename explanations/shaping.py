"""Mixture components shaped to the failure set's curvature at the design points: the
importance sampler's proposal where the set is a thin needle (`guided`).

At a mode ξ* = β e of a one-row clause (a boundary point that the search's short descents
bring near the design point, not onto it), the least-squares quadratic of its margin
(`quadratic.fit`, on N(ξ*, ¼I)) is q(u) = c + B·u + ½ uᵀHu. With λ = B·e the margin's slope
along e, and on the tangent space e⊥ the curvature axes a_i, the curvatures
κ_i = eigenvalues of -TᵀHT/λ (T an orthonormal basis of e⊥) and the lean b_i = a_i·B/λ,
the set is near {t ≥ t_s(w)} for ξ = ξ* + t e + Σ w_i a_i, with
t_s(w) = -c/λ - b·w + ½ Σ κ_i w_i². Integrating N(0, I)'s density ∝ e^{-βt - t²/2 - |w|²/2}
over t ≥ t_s(w) to first order in t leaves the tangent law
∝ exp(β b·w - ½ Σ (1 + βκ_i) w_i²): normal, with variances 1/(1 + βκ_i) and means
μ_i = β b_i/(1 + βκ_i) (Breitung, "Asymptotic approximations for multinormal integrals",
J. Eng. Mech. 110, 1984, where b = 0 at the design point; the importance density of
Hohenbichler & Rackwitz, "Improvement of second-order reliability estimates by importance
sampling", J. Eng. Mech. 114, 1988). The shaped component is
    N(ξ* + t̄ e + Σ_i μ_i a_i, e eᵀ + Σ_i σ_i² a_i a_iᵀ),
    σ_i² = clamp(1/(1 + βκ_i), MIN_TANGENT_VARIANCE, 1),   μ_i = β b_i σ_i²,
(σ_i² = 1 where 1 + βκ_i ≤ 0: the set opens wider than the Gaussian, and the unit
component already covers it; |μ| at most MAX_SHIFT), and t̄ = min(max(t̄_s, 0) + 1/(β +
max(t̄_s, 0)), MAX_SHIFT) the mean of t beyond the surface, t̄_s = E t_s(w) = -c/λ - b·μ +
½ Σ κ_i (μ_i² + σ_i²) the surface's mean offset (1/(β + t̄_s): the exponential excess of t
past it). Each shaped mode keeps its unit component N(ξ*, I) too, with SHAPED_SPLIT = ¾ of
its share of the mixture (`importance`), the shaped one taking the rest: the quadratic is
the set's shape averaged over the fit's scale, and the unit component still bounds the
weight near ξ* where the needle is wider, or elsewhere, than the fit says.

Where it is used: networks with an activation that saturates (tanh, sigmoid: not
`Search.linear_growth`), on one-row clauses. Deep tanh networks' failure sets near their
design points are needles: on r12 (8 → 256⁴ → 1 tanh) at p = 1e-6 the nearest design point
has β = 2.5 (Φ(-β) = 6e-3), and a unit component's draws hit the set about once in 1,000;
the pilot then finds too few hits and the budget goes to subset simulation, whose chains
miss scattered needles. Where the activations grow linearly (ReLU, GELU) the set opens
into a cone, whose curvature at the fit's scale overstates the needle; in a prototype
that shaped every network, ReLU events' 95% intervals covered 89.4% instead of 91.3%, and
no ReLU or GELU event gained. A clause of several rows is a wedge whose faces one row's
curvature does not describe: shaped by the binding row without the lean (below), r06 and
r09 All events' medians fell to 0.03–0.11 of the truth; with it (seeds 0–39, tanh cases),
r09 All at 9e-8 1.68 → 1.13 and r06 All at 1e-7 1.50 → 0.87, but r09 All at 2e-5 0.48 →
0.60 and r06 All at 3e-5 0.44 → 0.52, the same 10 events above 0.3: not taken.
Measured on `pitrack bench sampling` (106 events at 10⁴ sample-equivalents, 40 repeats
each, seeds 0–39; the 30 tanh events, the only ones it changes): relative RMSE above 0.3
on 13 → 10 tanh events, 95% coverage of their runs 94.1% → 93.3% (seeds 40–59, held out:
13 → 12, 94.7% → 90.2%; the whole bench's pooled figures are in docs/notes/experiments.md). Without the lean (μ = 0, the centre on the ray
through ξ*): 11 events and 91.6%; the modes' slopes lean off e by up to 65° (cos(B, e)
0.42–0.99 on the tests' tanh nets), and the needle then lies beside the ray. With the
shaped components at half of each share: 11 events and 90.1% (the unit components' heavy
hits come too rarely, and the truncation cuts them). The price is a low median where a
needle is not all of the set (r06 Any at 1e-6: 0.79 → 0.42 of the truth over seeds 0–59):
subset simulation's runs there were right in the median but scattered up to several
times the truth.
Cost: one fit per mode tried (`structured.fit_cost`; a fit that gives no shape is charged
too), nearest mode first, while the fits stay within SHAPE_SHARE = 15% of the budget and
leave the draws their minimum (`guided`), and the shape's algebra (`shape_flops`); each
draw's weight then takes a quadratic form per shaped component
(`importance.importance_draw_flops`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .quadratic import Quadratic

if TYPE_CHECKING:
    from .design import Mode

SHAPE_SHARE = 0.15              # of the budget, at most, for the fits
MIN_TANGENT_VARIANCE = 0.01     # σ_i² ≥ this: a needle narrower than 0.1 is no longer a quadratic's
MAX_SHIFT = 3.0                 # t̄ and |μ| ≤ this: a shift beyond is an extrapolation of the fit


@dataclass(frozen=True)
class Shape:
    """N(center, factor factorᵀ) with precision = (factor factorᵀ)⁻¹."""
    center: Tensor               # [d]
    factor: Tensor               # [d, d]
    precision: Tensor            # [d, d]
    log_det_precision: float


def shape_of(local: Quadratic, mode: Mode) -> Shape | None:
    """The shaped component of the module docstring from the mode's one-row quadratic
    `local`; None where the margin does not rise along e (λ ≤ 0) or the fit is not finite."""
    slope, curvature, value = local.slope[0], local.curvature[0], float(local.value[0])
    e = mode.point / mode.beta
    rise = float(slope @ e)
    if not (rise > 0 and math.isfinite(value) and bool(torch.isfinite(slope).all())
            and bool(torch.isfinite(curvature).all())):
        return None
    d = e.shape[0]
    eye = torch.eye(d, dtype=e.dtype, device=e.device)
    tangent = torch.linalg.qr(torch.cat([e[:, None], eye], dim=1))[0][:, 1:d]     # T: e⊥, orthonormal
    bending = -(tangent.T @ curvature @ tangent) / rise
    kappa, rotation = torch.linalg.eigh((bending + bending.T) / 2)
    precision_tangent = 1 + mode.beta * kappa
    variance = torch.where(precision_tangent > 0, 1 / precision_tangent.clamp(min=1e-12),
                           torch.ones_like(kappa)).clamp(MIN_TANGENT_VARIANCE, 1.0)
    axes = tangent @ rotation
    lean = axes.T @ slope / rise                                        # b = B_T/λ on the axes
    across = variance * mode.beta * lean                                # the tangent mean μ
    reach = float(across.norm())
    across = across * min(1.0, MAX_SHIFT / reach) if reach > 0 else across
    offset = -value / rise - float(lean @ across) + 0.5 * float((kappa * (across ** 2 + variance)).sum())
    shift = min(max(offset, 0.0) + 1 / (mode.beta + max(offset, 0.0)), MAX_SHIFT)
    return Shape(center=mode.point + shift * e + axes @ across,
                 factor=torch.cat([e[:, None], axes * variance.sqrt()], dim=1),
                 precision=torch.outer(e, e) + (axes / variance) @ axes.T,
                 log_det_precision=-float(variance.log().sum()))


def shape_flops(d: int) -> int:
    """FLOPs of `shape_of` past the fit, at most: the QR of a d × (d + 1) matrix (≈ 2d³), the
    tangent curvature's products (≈ 4d³) and eigendecomposition (≈ 9d³), the factor and
    the precision (≈ 2d³)."""
    return 17 * d ** 3


def with_shape(mode: Mode, local: Quadratic) -> Mode:
    """`mode` with the shaped component of its one-row quadratic `local` (`shape_of`), or as it
    is where that gives none."""
    shape = shape_of(local, mode)
    return mode if shape is None else replace(mode, shape=shape)
