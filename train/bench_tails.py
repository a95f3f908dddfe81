"""`pitrack bench tails`: tail-probability estimators against ground truth over a zoo.

Zoo (`zoo`): seeded random MLPs (`train.models.mlp`, He-normal weights, biases N(0, 0.1²);
1–4 hidden layers of width 32–512; ReLU, GELU, tanh) and 2-layer MLPs trained by Adam on a
`train.tasks.RegressionTask`, on x ~ N(0, I) or a correlated Gaussian N(μ, AAᵀ/n + 0.1 I)
(A and μ seeded). Each case carries event families {S(z) > γ} over the standardised
outputs z = (y - μ_y)/σ_y (`Spec`), with target probabilities from 1e-2 to 1e-8; the
level γ is set so that the probability is near the target: a quantile of a plain-sampling
pilot where it holds ≥ 200 hits, else the cross-entropy quantile search below. What is
recorded is the truth measured afterwards at the chosen thresholds, never the target.

Ground truth, per event (`Reference`, independent of every explanation method):
- plain sampling (`explanations.montecarlo.tally`, seeded) where the case's budget
  (10¹² FLOPs, at most 4·10⁷ draws) expects ≥ 1000 hits and the target is ≥ 1e-5;
  standard error √(p(1-p)/N), Wilson's 95% interval;
- below, importance sampling (IS) in the whitened input space ξ ~ φ = N(0, I),
  x = μ + Lξ (L = distribution.factor). Per clause c of the event's DNF (an intersection
  of halfspaces; score S_c = min over its halfspaces of the margin divided by the
  margin's standard deviation under D, so the clause is {S_c > 0}), the cross-entropy
  method (Rubinstein & Kroese, "The Cross-Entropy Method", 2004, ch. 3; Kroese, Taimre &
  Botev, "Handbook of Monte Carlo Methods", 2011, §13.3) adapts a proposal q over levels:
  draw from q, put γ_t = the (1-ρ) sample quantile of S_c, and refit to the elite draws
  {S_c ≥ γ_t} weighted by w = φ/q — weighted maximum likelihood (EM; Kurtz & Song,
  Structural Safety 43, 2013), which minimises the cross entropy to φ(ξ | S_c > γ_t), the
  zero-variance proposal for that level — until γ_t ≥ 0 (then the elites are {S_c > 0}).
  Two K-component mixtures are fitted to the same elites: one with identity covariances
  (mean shift: broad, never collapses) and one with full covariances (follows the shape
  of the event); q = 0.3·shift + 0.7·shape. Full covariances alone shrink level after
  level (the elites of a narrow proposal cannot show a wider target) and stall, and
  mean shifts alone crawl along thin regions. The final proposal is the defensive mixture
  q = α φ + (1-α) Σ_c (p̂_c / Σ p̂) q_c (Hesterberg, Technometrics 37, 1995), so w ≤ 1/α
  and no clause is left uncovered; then p̂ = (1/N) Σ w_i 1[event(ξ_i)] with
  se = √((mean(w²1) - p̂²)/(N-1)), all weights in log space (float64), N doubled until
  se/p̂ < 5% (or the cap). Two independent runs per event (each adapting its own
  proposal) are averaged, and their disagreement z = Δ/√(se_1² + se_2²) is reported:
  an IS standard error is only as honest as the proposal's coverage of the event, and a
  proposal that misses a mode of the event understates both p and its error. Measured:
  in 8 input dimensions, run-to-run spread matched the reported errors; in 16 it needed
  ≥ 2500 draws per level and input dimension; in 32 (deep ReLU) runs disagreed by far more
  than their errors, so the zoo keeps n ≤ 16 (n ≤ 8 for nets of 3–4 hidden layers).
  Checked against plain sampling on every event that both cover (1e-5 ≤ target ≤ 1e-4 on
  cheap nets; z = Δ/√(se_s² + se_IS²) reported) and against the closed form of a linear
  network (tests/test_bench_tails.py);
- where both ran and agree (1e-5 ≤ target ≤ 1e-4), their inverse-variance weighted mean
  (`_truth`; derived again from the cached measurements on every load).
  Quantile search: the same iteration on the score of a `Spec`, stopped once the weighted
  tail mass of the top ρN draws is at most the target; the level is then the weighted
  sample quantile P̂(S > γ) ≈ target, with at least ρN draws beyond it.

Cache: one JSON file per case under `.pitrack-cache/bench-tails/`, named by the SHA-256 of
the case definition, the digests of the network's parameters and of D, the event targets
and the reference settings; it holds the levels, thresholds and measured truths, so a
warm rerun draws nothing for ground truth.

Per case, method and event: p̂ (from Estimate.log10), the truth and its interval,
|log10(p̂/p)|, the cost in sample-equivalents, and plain sampling with the same FLOPs
(N = ⌊flops / draw_cost⌋, capped at the case's sampling budget). Outputs: a CSV, a PNG
(estimated against true p) and a summary over events with 1e-8 ≤ p ≤ 1e-3.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from explanations import METHODS, Gaussian, compile_model, explain
from explanations.events import Above, All, Any, Below, Event, Halfspace
from explanations.graph import Graph
from explanations.montecarlo import Z95, draw_cost, tally, wilson_interval

from .figures import save, subplots
from .models import mlp
from .tables import write_csv
from .tasks import RegressionTask, fit_regression

CACHE_VERSION = 1
DEFAULT_CACHE = Path(".pitrack-cache/bench-tails")
DEFAULT_CSV = Path("out/bench_tails.csv")
DEFAULT_PNG = Path("out/bench_tails.png")
SUMMARY_RANGE = (1e-8, 1e-3)
CHEAP = 1e4          # sample-equivalents counted as "cheap" in the summary
BATCH = 1 << 16
LOG_2PI = math.log(2 * math.pi)


# ---------------------------------------------------------------------------------------
# Reference settings

@dataclass(frozen=True)
class Settings:
    """How ground truth is measured; every field is part of the cache key."""
    pilot: int = 1_000_000               # plain-sampling pilot draws (moments, quantiles)
    pilot_hits: int = 200                # a pilot quantile needs this many draws beyond it
    sampling_flops: float = 1e12         # per-case plain-sampling budget
    sampling_cap: int = 40_000_000       # at most this many plain draws per case
    min_hits: int = 1000                 # plain sampling is the truth from this many hits
    sampling_from: float = 1e-5          # ... and for targets ≥ this
    importance_below: float = 1e-4       # IS runs for targets ≤ this (both run in between)
    level_samples: int = 10_000          # draws per cross-entropy level, at least
    level_samples_per_input: int = 2500  # ... and this many per input dimension
    rho: float = 0.1                     # elite fraction
    components: int = 4                  # Gaussian components per clause
    defensive: float = 0.05              # weight α of φ in the final proposal
    shift_weight: float = 0.3            # share of the mean-shift mixture in each clause's part
    final_samples: int = 20_000          # first final IS batch (then doubled)
    max_final_samples: int = 1_280_000
    max_rel_se: float = 0.05
    replicates: int = 2                  # independent IS runs per event
    max_levels: int = 40


QUICK = Settings(pilot=200_000, sampling_cap=2_000_000, level_samples=4000, level_samples_per_input=1000,
                 final_samples=8000, max_final_samples=128_000)
AGREE = 3.0     # two references agree within this many standard errors (`_truth`); not in the key


# ---------------------------------------------------------------------------------------
# Gaussian mixtures on the whitened inputs and their weighted EM fit

@dataclass
class Mixture:
    """q(ξ) = Σ_k π_k N(ξ; m_k, C_k C_kᵀ), C_k lower triangular (float64)."""
    weights: Tensor   # [K]
    means: Tensor     # [K, n]
    factors: Tensor   # [K, n, n]

    @classmethod
    def standard(cls, n: int) -> "Mixture":
        """φ = N(0, I_n)."""
        return cls(torch.ones(1, dtype=torch.float64), torch.zeros(1, n, dtype=torch.float64),
                   torch.eye(n, dtype=torch.float64)[None])

    @classmethod
    def combine(cls, parts: list[tuple[float, "Mixture"]]) -> "Mixture":
        """Σ_j a_j q_j for (a_j, q_j) with Σ a_j = 1."""
        return cls(torch.cat([a * q.weights for a, q in parts]), torch.cat([q.means for _, q in parts]),
                   torch.cat([q.factors for _, q in parts]))

    def sample(self, count: int, generator: torch.Generator) -> Tensor:
        which = torch.multinomial(self.weights, count, replacement=True, generator=generator)
        z = torch.randn(count, self.means.shape[1], generator=generator, dtype=torch.float64)
        for k in range(len(self.weights)):
            rows = which == k
            z[rows] = self.means[k] + z[rows] @ self.factors[k].T
        return z

    def component_log_densities(self, xi: Tensor) -> Tensor:
        """log π_k + log N(ξ; m_k, C_k C_kᵀ): [N, K]."""
        n = xi.shape[1]
        columns = []
        for weight, mean, factor in zip(self.weights, self.means, self.factors):
            r = torch.linalg.solve_triangular(factor, (xi - mean).T, upper=False)
            columns.append(weight.log() - 0.5 * (r * r).sum(0) - factor.diagonal().log().sum() - 0.5 * n * LOG_2PI)
        return torch.stack(columns, dim=1)

    def log_density(self, xi: Tensor) -> Tensor:
        return torch.logsumexp(self.component_log_densities(xi), dim=1)


def log_standard_normal(xi: Tensor) -> Tensor:
    """log φ(ξ) for φ = N(0, I)."""
    return -0.5 * (xi * xi).sum(1) - 0.5 * xi.shape[1] * LOG_2PI


def fit_mixture(xi: Tensor, log_w: Tensor, components: int, init: Mixture | None,
                generator: torch.Generator, full: bool = True, iterations: int = 25) -> Mixture:
    """Weighted maximum likelihood of a Gaussian mixture by EM: maximise Σ_i w_i log q(ξ_i).

    E-step r_ik ∝ π_k N(ξ_i; m_k, S_k); M-step with a_ik = w_i r_ik / Σ_i w_i:
    π_k = Σ_i a_ik, m_k = Σ_i a_ik ξ_i / π_k, and (if `full`, else S_k = I)
    S_k = Σ_i a_ik (ξ_i - m_k)(ξ_i - m_k)ᵀ / π_k plus a ridge of 10⁻³·tr(S_k)/n (keeps S_k
    invertible when few draws carry the weight). Components whose mass falls under 10⁻³
    are dropped. `init` seeds the means (and covariances, if `full`); without it, distinct
    draws picked by weight seed the means.
    """
    w = torch.softmax(log_w, dim=0)
    n = xi.shape[1]
    eye = torch.eye(n, dtype=torch.float64)
    if init is None:
        k = min(components, int((w > 0).sum()))
        means = xi[torch.multinomial(w, k, replacement=False, generator=generator)]
        weights = torch.full((k,), 1.0 / k, dtype=torch.float64)
    else:
        means, weights = init.means, init.weights
    covs = eye.expand(len(weights), n, n)
    if full and init is not None:
        covs = init.factors @ init.factors.mT
    for _ in range(iterations):
        factors = torch.linalg.cholesky(covs + _ridge(covs, eye)) if full else covs
        r = torch.softmax(Mixture(weights, means, factors).component_log_densities(xi), dim=1)
        a = w[:, None] * r
        mass = a.sum(0)
        keep = mass > 1e-3
        a, mass = a[:, keep], mass[keep]
        means = (a.T @ xi) / mass[:, None]
        weights = mass / mass.sum()
        if full:
            centred = xi[None] - means[:, None]                      # [K, N, n]
            covs = (centred.mT * a.T[:, None]) @ centred / mass[:, None, None]
        else:
            covs = eye.expand(len(weights), n, n)
    return Mixture(weights, means, torch.linalg.cholesky(covs + _ridge(covs, eye)) if full else covs)


def _ridge(covs: Tensor, eye: Tensor) -> Tensor:
    return (1e-3 * covs.diagonal(dim1=-2, dim2=-1).mean(-1) + 1e-12)[:, None, None] * eye


# ---------------------------------------------------------------------------------------
# Ground truth: plain sampling and cross-entropy importance sampling

@dataclass
class Importance:
    """An IS estimate of P[event]: p̂, its standard error, draws spent (levels included)."""
    p: float
    se: float
    draws: int
    samples: int          # final IS draws
    hits: int
    ess: float            # effective sample size of the hit weights: (Σw)²/Σw²
    levels: list[int]     # cross-entropy levels per clause

    @property
    def rel_se(self) -> float:
        return self.se / self.p if self.p > 0 else math.inf


def margin_terms(y: Tensor, halfspace: Halfspace) -> Tensor:
    """Σ coef · v_key - threshold for outputs y (float64 result); keys are outputs or detectors."""
    total = torch.zeros(y.shape[0], dtype=torch.float64)
    for key, coefficient in halfspace.terms:
        value = y[:, key] if isinstance(key, int) else key.score(y)
        total += coefficient * value.to(torch.float64)
    return total - halfspace.threshold


class Reference:
    """Ground truth on (graph, D), by draws in the whitened space ξ ~ N(0, I) only."""

    def __init__(self, graph: Graph, distribution: Gaussian, settings: Settings, seed: int) -> None:
        self.graph, self.settings = graph, settings
        self.mean = distribution.mean.to(torch.float64)
        self.factor = distribution.factor.to(torch.float64)
        self.dim = distribution.dim
        self.level_samples = max(settings.level_samples, settings.level_samples_per_input * self.dim)
        self.generator = torch.Generator().manual_seed(seed)
        self.draws = 0

    def outputs(self, xi: Tensor) -> Tensor:
        """M(μ + Lξ) in the model's dtype, in batches."""
        self.draws += xi.shape[0]
        with torch.no_grad():
            return torch.cat([self.graph.forward((self.mean + chunk @ self.factor.T).to(self.graph.dtype))
                              for chunk in xi.split(BATCH)])

    def plain(self, count: int) -> Tensor:
        """Outputs on `count` draws x ~ D."""
        return torch.cat([self.outputs(torch.randn(min(BATCH, count - done), self.dim, generator=self.generator,
                                                   dtype=torch.float64))
                          for done in range(0, count, BATCH)])

    def cross_entropy(self, score: Callable[[Tensor], Tensor],
                      target: float | None = None) -> tuple[Mixture | None, Mixture | None, float, int]:
        """Proposals for {score > 0} (module docstring): the mean-shift mixture and the
        full-covariance mixture fitted at the last level, the estimate of the event's
        probability there, and the number of levels. With `target`, the quantile search:
        the returned float is instead the level γ with P̂[score > γ] ≈ target."""
        st = self.settings
        proposal, shift, shape, best, stalls = Mixture.standard(self.dim), None, None, -math.inf, 0
        for level in range(1, st.max_levels + 1):
            xi = proposal.sample(self.level_samples, self.generator)
            s = score(self.outputs(xi)).to(torch.float64)
            log_w = log_standard_normal(xi) - proposal.log_density(xi)
            gamma = torch.quantile(s, 1 - st.rho).item()
            if target is not None:
                order = torch.argsort(s, descending=True)
                tail = torch.cumsum(log_w[order].exp(), 0) / len(s)          # P̂[S ≥ s_(i)]
                if tail[int(st.rho * len(s)) - 1] <= target:
                    return shift, shape, s[order[int(torch.searchsorted(tail, target))]].item(), level
            final = target is None and gamma >= 0
            elite = s > 0 if final else s >= gamma
            shift = fit_mixture(xi[elite], log_w[elite], st.components, shift, self.generator, full=False)
            shape = fit_mixture(xi[elite], log_w[elite], st.components, shape, self.generator, full=True)
            if final:
                return shift, shape, torch.logsumexp(log_w[elite], 0).exp().item() / len(s), level
            stalls = stalls + 1 if gamma <= best else 0
            if stalls >= 5:
                raise RuntimeError(f"cross-entropy stalled at level {best:.4g}")
            best = max(best, gamma)
            proposal = Mixture.combine([(st.shift_weight, shift), (1 - st.shift_weight, shape)])
        goal = "the event" if target is None else f"probability {target:g}"
        raise RuntimeError(f"cross-entropy did not reach {goal} in {st.max_levels} levels")

    def quantile(self, score: Callable[[Tensor], Tensor], target: float) -> float:
        """γ with P[score > γ] ≈ target (module docstring)."""
        return self.cross_entropy(score, target)[2]

    def importance(self, event: Event) -> Importance:
        """P[event] by cross-entropy importance sampling (module docstring)."""
        st, start = self.settings, self.draws
        event.check(self.graph.n_outputs)
        clauses = event.dnf()
        y = self.plain(self.level_samples)
        scales = {h: margin_terms(y, h).std().clamp_min(1e-12).item() for c in clauses for h in c}

        def clause_score(clause: tuple[Halfspace, ...]) -> Callable[[Tensor], Tensor]:
            return lambda out: torch.stack([margin_terms(out, h) / scales[h] for h in clause]).min(0).values

        fits = [self.cross_entropy(clause_score(c)) for c in clauses]
        mass = sum(p for _, _, p, _ in fits)
        parts = [(st.defensive, Mixture.standard(self.dim))]
        for shift, shape, p, _ in fits:
            share = (1 - st.defensive) * p / mass
            parts += [(share * st.shift_weight, shift), (share * (1 - st.shift_weight), shape)]
        proposal = Mixture.combine(parts)
        hit_log_w, samples, batch = [], 0, st.final_samples
        while True:
            xi = proposal.sample(batch, self.generator)
            hits = event.evaluate(self.outputs(xi))
            hit_log_w.append(log_standard_normal(xi[hits]) - proposal.log_density(xi[hits]))
            samples += batch
            p, se, ess = _weighted_mean(torch.cat(hit_log_w), samples)
            if (p > 0 and se < st.max_rel_se * p) or samples >= st.max_final_samples:
                return Importance(p, se, self.draws - start, samples, int(sum(len(h) for h in hit_log_w)), ess,
                                  [level for *_, level in fits])
            batch = min(samples, st.max_final_samples - samples)


def _weighted_mean(log_w: Tensor, n: int) -> tuple[float, float, float]:
    """(1/n) Σ w over hits (the other n - len draws weigh 0), its standard error, the ESS."""
    if len(log_w) == 0:
        return 0.0, 0.0, 0.0
    top = log_w.max()
    scaled = (log_w - top).exp()
    s1, s2 = scaled.sum().item(), (scaled * scaled).sum().item()
    scale = math.exp(top.item())
    mean = scale * s1 / n
    variance = scale * scale * max(s2 / n - (s1 / n) ** 2, 0.0) / max(n - 1, 1)
    return mean, math.sqrt(variance), s1 * s1 / s2


# ---------------------------------------------------------------------------------------
# The zoo

@dataclass(frozen=True)
class Spec:
    """The event family {S(z) > γ} over standardised outputs z_k = (y_k - μ_k)/σ_k, with
    S = s·z_k ("one"), min_i s_i z_{k_i} ("all") or max_i s_i z_{k_i} ("any"); sign s = +1
    gives Above(k, μ_k + γσ_k), s = -1 gives Below(k, μ_k - γσ_k)."""
    combine: str
    terms: tuple[tuple[int, int], ...]
    target: float

    def score(self, z: Tensor) -> Tensor:
        parts = torch.stack([sign * z[:, k] for k, sign in self.terms], dim=1)
        return parts.max(1).values if self.combine == "any" else parts.min(1).values

    def event(self, level: float, mean: list[float], sd: list[float]) -> Event:
        parts = [Above(k, mean[k] + level * sd[k]) if sign > 0 else Below(k, mean[k] - level * sd[k])
                 for k, sign in self.terms]
        return parts[0] if self.combine == "one" else (All if self.combine == "all" else Any)(*parts)


def _specs(n_outputs: int, flip: bool) -> tuple[Spec, ...]:
    """Events with targets 1e-2 … 1e-8: tails of one output (upper and lower), and on
    2-output nets conjunctions and a union."""
    s = -1 if flip else 1
    if n_outputs == 1:
        return (Spec("one", ((0, s),), 1e-2), Spec("one", ((0, -s),), 1e-3), Spec("one", ((0, s),), 5e-5),
                Spec("one", ((0, -s),), 1e-6), Spec("one", ((0, s),), 1e-8))
    return (Spec("one", ((0, s),), 1e-2), Spec("one", ((1, -s),), 1e-4), Spec("all", ((0, 1), (1, 1)), 3e-5),
            Spec("any", ((0, -1), (1, 1)), 1e-6), Spec("all", ((0, s), (1, -s)), 1e-7),
            Spec("one", ((1, s),), 1e-8))


@dataclass(frozen=True)
class Case:
    """A network, its input distribution and its events. train_steps > 0: a 2-layer MLP
    trained by `fit_regression` (Adam, lr 3e-3, batch 256) on `RegressionTask(D, seed)`."""
    name: str
    widths: tuple[int, ...]
    activation: str
    inputs: str                  # "standard" or "correlated"
    seed: int
    specs: tuple[Spec, ...]
    train_steps: int = 0

    @property
    def architecture(self) -> str:
        return "-".join(map(str, self.widths))


_ZOO = [  # name, widths, activation, inputs, training steps
    ("r01", (8, 32, 1), "relu", "standard", 0),
    ("r02", (8, 64, 2), "gelu", "correlated", 0),
    ("r03", (16, 128, 1), "tanh", "standard", 0),
    ("r04", (16, 32, 32, 2), "relu", "correlated", 0),
    ("r05", (8, 128, 128, 1), "gelu", "standard", 0),
    ("r06", (16, 64, 64, 2), "tanh", "standard", 0),
    ("r07", (8, 128, 128, 128, 1), "relu", "standard", 0),
    ("r08", (8, 256, 256, 256, 1), "gelu", "correlated", 0),
    ("r09", (8, 32, 32, 32, 2), "tanh", "correlated", 0),
    ("r10", (8, 64, 64, 64, 64, 1), "relu", "correlated", 0),
    ("r11", (8, 128, 128, 128, 128, 2), "gelu", "standard", 0),
    ("r12", (8, 256, 256, 256, 256, 1), "tanh", "standard", 0),
    ("r13", (16, 512, 1), "relu", "standard", 0),
    ("r14", (8, 512, 512, 2), "gelu", "standard", 0),
    ("r15", (8, 512, 512, 512, 1), "tanh", "correlated", 0),
    ("r16", (8, 512, 512, 512, 512, 1), "relu", "standard", 0),
    ("r17", (4, 32, 2), "gelu", "standard", 0),
    ("r18", (16, 256, 256, 2), "relu", "correlated", 0),
    ("t01", (8, 64, 1), "relu", "standard", 1500),
    ("t02", (8, 64, 2), "gelu", "correlated", 1500),
    ("t03", (16, 128, 1), "tanh", "standard", 1500),
    ("t04", (16, 32, 2), "relu", "correlated", 1500),
    ("t05", (4, 256, 1), "gelu", "standard", 1500),
    ("t06", (8, 512, 2), "tanh", "correlated", 1500),
]


def zoo(quick: bool = False) -> list[Case]:
    """The benchmark's cases (module docstring); `quick`: three small ones."""
    if quick:
        return [Case("q1", (4, 16, 1), "relu", "standard", 1, (Spec("one", ((0, 1),), 1e-2),
                     Spec("one", ((0, -1),), 1e-3), Spec("one", ((0, 1),), 1e-6))),
                Case("q2", (4, 16, 2), "gelu", "correlated", 2, (Spec("one", ((1, 1),), 1e-2),
                     Spec("all", ((0, 1), (1, 1)), 1e-5), Spec("any", ((0, -1), (1, 1)), 1e-7))),
                Case("q3", (4, 16, 1), "tanh", "standard", 3, (Spec("one", ((0, -1),), 1e-3),
                     Spec("one", ((0, 1),), 1e-7)), train_steps=200)]
    return [Case(name, widths, act, inputs, i, _specs(widths[-1], flip=i % 2 == 1), steps)
            for i, (name, widths, act, inputs, steps) in enumerate(_ZOO)]


def input_distribution(n: int, kind: str, seed: int) -> Gaussian:
    """N(0, I_n), or N(μ, AAᵀ/n + 0.1 I) with A_ij ~ N(0, 1), μ_i ~ N(0, ¼) seeded."""
    if kind == "standard":
        return Gaussian.standard(n)
    generator = torch.Generator().manual_seed(10_000 + seed)
    a = torch.randn(n, n, generator=generator, dtype=torch.float64)
    mean = torch.randn(n, generator=generator, dtype=torch.float64) / 2
    return Gaussian(mean, a @ a.T / n + 0.1 * torch.eye(n, dtype=torch.float64))


def build(case: Case) -> tuple[nn.Module, Gaussian, float | None]:
    """The case's model, input distribution and final training loss (None if untrained)."""
    model = mlp(list(case.widths), case.activation, seed=case.seed, bias_std=0.1)
    D = input_distribution(case.widths[0], case.inputs, case.seed)
    if not case.train_steps:
        return model, D, None
    losses = fit_regression(model, RegressionTask(D, case.widths[-1], seed=case.seed), case.train_steps,
                            lr=3e-3, batch=256, seed=case.seed)
    return model, D, statistics.fmean(losses[-50:])


# ---------------------------------------------------------------------------------------
# Ground truth per case, cached

def case_key(case: Case, graph: Graph, D: Gaussian, settings: Settings) -> str:
    """SHA-256 of everything the truth depends on."""
    digest = hashlib.sha256()
    _, arrays = graph.to_plain()
    for name in sorted(arrays):
        digest.update(name.encode() + np.ascontiguousarray(arrays[name]).tobytes())
    for tensor in (D.mean, D.cov):
        digest.update(tensor.to(torch.float64).contiguous().numpy().tobytes())
    definition = {"version": CACHE_VERSION, "case": dataclasses.asdict(case),
                  "settings": dataclasses.asdict(settings), "parameters": digest.hexdigest()}
    return hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()


def measure_truth(case: Case, graph: Graph, D: Gaussian, settings: Settings) -> dict:
    """Levels, thresholds and the measured truth of every event of the case (module docstring)."""
    started = time.perf_counter()
    reference = Reference(graph, D, settings, seed=1000 * case.seed + 1)
    budget = min(settings.sampling_cap, int(settings.sampling_flops // draw_cost(graph, D)))
    pilot_n = min(settings.pilot, max(budget // 4, 10_000))
    y = reference.plain(pilot_n).to(torch.float64)
    centre, scale = y.mean(0), y.std(0)
    mean, sd = centre.tolist(), scale.tolist()
    standardise = lambda out: (out.to(torch.float64) - centre) / scale
    levels = []
    for spec in case.specs:
        if spec.target * pilot_n >= settings.pilot_hits:
            scores = torch.sort(spec.score(standardise(y)), descending=True).values
            levels.append(scores[int(spec.target * pilot_n)].item())
        else:
            levels.append(reference.quantile(lambda out, spec=spec: spec.score(standardise(out)), spec.target))
    events = [spec.event(level, mean, sd) for spec, level in zip(case.specs, levels)]
    sampled = [i for i, spec in enumerate(case.specs)
               if spec.target >= settings.sampling_from and spec.target * budget >= settings.min_hits]
    counts, sampling_draws = None, 0
    if sampled:
        n = min(budget, math.ceil(2 * settings.min_hits / min(case.specs[i].target for i in sampled)))
        counts = tally(graph, D, n, [events[i] for i in sampled], seed=1000 * case.seed + 2)
        sampling_draws = n
    entries = []
    for i, (spec, event) in enumerate(zip(case.specs, events)):
        entry = {"event": repr(event), "level": levels[i], "sampling": None, "importance": None}
        if i in sampled:
            hits, n = counts.hits[sampled.index(i)], counts.samples
            p = hits / n
            entry["sampling"] = {"p": p, "se": math.sqrt(p * (1 - p) / n), "hits": hits, "n": n,
                                 "interval": list(wilson_interval(hits, n))}
        if i not in sampled or spec.target <= settings.importance_below:
            entry["importance"] = replicated_importance(reference, event, settings.replicates)
        entry.update(_truth(entry, settings))
        entries.append(entry)
    return {"case": dataclasses.asdict(case), "mean": mean, "sd": sd, "events": entries,
            "draws": {"pilot_and_importance": reference.draws, "sampling": sampling_draws},
            "seconds": time.perf_counter() - started}


def replicated_importance(reference: Reference, event: Event, count: int) -> dict:
    """`count` independent IS runs, each adapting its own proposal: p = their mean, se =
    √(Σ se_r²)/count, and z = (p_1 - p_2)/√(se_1² + se_2²) between the first two — a check
    that the runs' standard errors are honest (runs whose proposals miss different parts of
    the event disagree by more than their errors)."""
    runs = [reference.importance(event) for _ in range(count)]
    p = statistics.fmean(r.p for r in runs)
    se = math.sqrt(sum(r.se ** 2 for r in runs)) / count
    z = (runs[0].p - runs[1].p) / math.hypot(runs[0].se, runs[1].se) if count > 1 else None
    return {"p": p, "se": se, "rel_se": se / p if p > 0 else math.inf, "replicate_z": z,
            "runs": [dict(dataclasses.asdict(r), rel_se=r.rel_se) for r in runs]}


def _truth(entry: dict, settings: Settings) -> dict:
    """Plain sampling where it has ≥ min_hits hits, else IS (interval p ± 1.96 se), else
    sampling with fewer hits. Where both references hold (1e-5 ≤ p ≤ 1e-4) and agree —
    |Δ|/√(se_s² + se_IS²) ≤ AGREE and the IS runs' own |z| ≤ AGREE — their inverse-variance
    weighted mean p = (p_s/se_s² + p_IS/se_IS²)/(1/se_s² + 1/se_IS²), se = (1/se_s² + 1/se_IS²)^{-1/2}:
    two independent unbiased estimates, so the truth's error shrinks (plain sampling's 1.6–3%
    relative error is then no longer the largest term in a 20-repeat coverage count)."""
    sampling, importance = entry["sampling"], entry["importance"]
    if importance is not None and (sampling is None or sampling["hits"] < settings.min_hits):
        return _normal_truth(importance["p"], importance["se"], "importance")
    if importance is not None and importance["se"] > 0 and sampling["se"] > 0:
        gap = abs(sampling["p"] - importance["p"]) / math.hypot(sampling["se"], importance["se"])
        if gap <= AGREE and abs(importance.get("replicate_z") or 0.0) <= AGREE:
            precision = sampling["se"] ** -2 + importance["se"] ** -2
            p = (sampling["p"] * sampling["se"] ** -2 + importance["p"] * importance["se"] ** -2) / precision
            return _normal_truth(p, precision ** -0.5, "combined")
    return {"p": sampling["p"], "se": sampling["se"], "interval": sampling["interval"], "source": "sampling"}


def _normal_truth(p: float, se: float, source: str) -> dict:
    """A truth p ± se with the normal 95% interval (clipped at 0)."""
    return {"p": p, "se": se, "interval": [max(p - Z95 * se, 0.0), p + Z95 * se], "source": source}


def ground_truth(case: Case, graph: Graph, D: Gaussian, settings: Settings, cache: Path) -> tuple[dict, bool]:
    """The case's truth from the cache, or measured and stored; and whether it was measured."""
    path = cache / f"{case.name}-{case_key(case, graph, D, settings)[:24]}.json"
    if path.exists():
        truth = json.loads(path.read_text())
        for entry in truth["events"]:          # the rule above may be newer than the file
            entry.update(_truth(entry, settings))
        return truth, False
    truth = measure_truth(case, graph, D, settings)
    cache.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(truth, indent=1))
    os.replace(temporary, path)
    return truth, True


# ---------------------------------------------------------------------------------------
# Methods against the truth

COLUMNS = ["case", "architecture", "activation", "inputs", "trained", "event", "target_p", "true_p",
           "true_lo", "true_hi", "true_se", "truth_source", "sampling_p", "sampling_se", "sampling_hits",
           "sampling_n", "importance_p", "importance_se", "importance_replicate_z", "agreement_z", "method",
           "estimate_method", "estimate_p", "estimate_log10", "abs_log10_ratio", "sample_equivalents", "equal_flops_n", "equal_flops_drawn",
           "equal_flops_hits", "equal_flops_p", "seconds", "note"]


def agreement(entry: dict) -> float | None:
    """z = (p_sampling - p_IS) / √(se_s² + se_IS²) where both were measured."""
    s, i = entry["sampling"], entry["importance"]
    if s is None or i is None:
        return None
    combined = math.hypot(s["se"], i["se"])
    return (s["p"] - i["p"]) / combined if combined > 0 else math.inf


def parse_method(method: str, flops_per_sample: int = 1) -> tuple[str, int | None, float | None]:
    """"auto" → zero-sample; "auto@3000" → probability(event, samples=3000); "auto@10000se" →
    probability(event, flops=10000 sample-equivalents), everything (π's build too) paid
    from it. Returns (method, samples, flops); a ValueError names an unknown method or a
    budget that is not a positive count."""
    name, _, budget = method.partition("@")
    if name not in (*METHODS, "auto", "guide"):
        raise ValueError(f"unknown method {name!r}; available: auto, guide, {', '.join(sorted(METHODS))}")
    if not budget:
        return name, None, None
    equivalents = budget.endswith("se")
    try:
        value = float(budget[:-2]) if equivalents else int(budget)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value <= 0:
        raise ValueError(f"the budget in {method!r} is not a positive count: give draws (auto@3000) "
                         f"or sample-equivalents (auto@10000se)")
    return (name, None, value * flops_per_sample) if equivalents else (name, value, None)


def evaluate(case: Case, model: nn.Module, graph: Graph, D: Gaussian, truth: dict, methods: list[str],
             settings: Settings, trained_loss: float | None, seed: int = 0) -> tuple[list[dict], list[str]]:
    """One CSV row per (event, method) and notes on skipped methods; `seed` is π's (its
    searches, fits and draws)."""
    rows, notes = [], []
    unit = draw_cost(graph, D)
    budget = min(settings.sampling_cap, int(settings.sampling_flops // unit))
    events = [spec.event(entry["level"], truth["mean"], truth["sd"])
              for spec, entry in zip(case.specs, truth["events"])]
    for method in methods:
        name, samples, flops = parse_method(method, graph.flops_per_sample)
        try:
            pi = explain(model, D, method=name, seed=seed)
        except ValueError as error:
            notes.append(f"{case.name}: {method} skipped ({error})")
            continue
        for j, (event, entry) in enumerate(zip(events, truth["events"])):
            s, i = entry["sampling"], entry["importance"]
            row = {"case": case.name, "architecture": case.architecture, "activation": case.activation,
                   "inputs": case.inputs, "trained": "" if trained_loss is None else f"loss {trained_loss:.4f}",
                   "event": repr(event), "target_p": case.specs[j].target, "true_p": entry["p"],
                   "true_lo": entry["interval"][0], "true_hi": entry["interval"][1], "true_se": entry["se"],
                   "truth_source": entry["source"], "sampling_p": s and s["p"], "sampling_se": s and s["se"],
                   "sampling_hits": s and s["hits"], "sampling_n": s and s["n"], "importance_p": i and i["p"],
                   "importance_se": i and i["se"], "importance_replicate_z": i and i["replicate_z"],
                   "agreement_z": agreement(entry), "method": method}
            started = time.perf_counter()
            try:
                estimate = pi.probability(event, samples=samples, flops=flops)
            except (ValueError, NotImplementedError) as error:
                rows.append(dict(row, note=f"failed: {error}"))
                continue
            seconds = time.perf_counter() - started
            log10 = estimate.log10
            if log10 is None:
                log10 = math.log10(estimate.value) if estimate.value > 0 else -math.inf
            wanted = int(estimate.flops // unit)
            drawn = min(wanted, budget)
            hits = tally(graph, D, drawn, [event], seed=1000 * case.seed + 3 + j).hits[0] if drawn else 0
            rows.append(dict(row, estimate_method=estimate.method, estimate_p=10.0 ** log10, estimate_log10=log10,
                             abs_log10_ratio=abs(log10 - math.log10(entry["p"])) if entry["p"] > 0 else math.nan,
                             sample_equivalents=estimate.sample_equivalents, equal_flops_n=wanted,
                             equal_flops_drawn=drawn, equal_flops_hits=hits,
                             equal_flops_p=hits / drawn if drawn else math.nan, seconds=seconds,
                             note="equal-FLOPs sampling capped at the case budget" if drawn < wanted else ""))
    return rows, notes


def summarise(rows: list[dict]) -> list[dict]:
    """Per method: median and worst |log10(p̂/p)| over events with p in SUMMARY_RANGE, the
    largest cost, the fraction of queries under CHEAP sample-equivalents, and how often
    sampling at equal FLOPs saw no hit in that range."""
    lo, hi = SUMMARY_RANGE
    table = []
    for method in dict.fromkeys(r["method"] for r in rows):
        done = [r for r in rows if r["method"] == method and not r["note"].startswith("failed")]
        tail = [r for r in done if lo <= r["true_p"] <= hi]
        errors = [r["abs_log10_ratio"] for r in tail]
        costs = [r["sample_equivalents"] for r in done]
        table.append({"method": method, "events": len(tail),
                      "median": statistics.median(errors) if errors else math.nan,
                      "worst": max(errors) if errors else math.nan,
                      "within_half_dex": sum(e <= 0.5 for e in errors) / len(errors) if errors else math.nan,
                      "max_cost": max(costs) if costs else math.nan,
                      "cheap": sum(c < CHEAP for c in costs) / len(costs) if costs else math.nan,
                      "equal_flops_zero": (sum(r["equal_flops_hits"] == 0 for r in tail) / len(tail)
                                           if tail else math.nan),
                      "failed": sum(r["method"] == method for r in rows) - len(done)})
    return table


def plot(rows: list[dict], path: Path) -> None:
    """Estimated against true p, log-log, the diagonal and a ±0.5 dex band, a marker per method."""
    figure, axes = subplots(path, figsize=(6.5, 6))
    truths = [r["true_p"] for r in rows if r["true_p"] > 0]
    if truths:
        line = np.logspace(math.log10(min(truths)) - 0.5, math.log10(max(truths)) + 0.5, 50)
        axes.fill_between(line, line / 10 ** 0.5, line * 10 ** 0.5, color="0.9", label="±0.5 dex")
        axes.plot(line, line, color="0.4", linewidth=1, label="p̂ = p")
    for method, marker in zip(dict.fromkeys(r["method"] for r in rows), "osD^vPX*<>"):
        shown = [r for r in rows if r["method"] == method and r["true_p"] > 0
                 and math.isfinite(r.get("estimate_log10", math.nan))]
        missing = sum(r["method"] == method for r in rows) - len(shown)
        label = method + (f" ({missing} not shown: p̂ = 0 or failed)" if missing else "")
        axes.scatter([r["true_p"] for r in shown], [r["estimate_p"] for r in shown], marker=marker,
                     s=22, alpha=0.8, label=label)
    axes.set(xscale="log", yscale="log", xlabel="true p (sampling or IS reference)", ylabel="estimated p̂",
             title="tail probabilities: estimate vs ground truth")
    axes.legend(loc="upper left", fontsize=8)
    save(figure, path)


# ---------------------------------------------------------------------------------------
# Driver

@dataclass
class Report:
    rows: list[dict]
    summary: list[dict]
    truths: dict[str, dict]
    truth_draws: int          # draws spent on ground truth in this run (0 on a warm cache)
    notes: list[str]


def run(quick: bool = False, methods: list[str] | None = None, cache: Path = DEFAULT_CACHE,
        csv_path: Path = DEFAULT_CSV, png_path: Path = DEFAULT_PNG, progress: bool = True,
        seed: int = 0) -> Report:
    """Build the zoo, measure (or load) ground truth, query every method (π built with
    `seed`), write and print."""
    if methods is None:
        methods = [m for m in METHODS if m != "sampling"] + ["auto"]
    for method in methods:
        parse_method(method)                 # a bad name or budget fails before any work
    settings = QUICK if quick else Settings()
    cache, rows, notes, truths, truth_draws, zoo_lines = Path(cache), [], [], {}, 0, []
    for case in tqdm(zoo(quick), desc="bench tails", unit="case", disable=not progress):
        model, D, loss = build(case)
        graph = compile_model(model)
        truth, measured = ground_truth(case, graph, D, settings, cache)
        if measured:
            truth_draws += sum(truth["draws"].values())
        truths[case.name] = truth
        case_rows, case_notes = evaluate(case, model, graph, D, truth, methods, settings, loss, seed)
        rows += case_rows
        notes += case_notes
        zoo_lines.append(f"{case.name:<4} {case.architecture:<22} {case.activation:<5} {case.inputs:<10} "
                         f"{'trained, loss %.4f' % loss if loss is not None else 'random':<20} "
                         f"{graph.flops_per_sample:>10,} {len(case.specs):>3} "
                         f"{sum(truth['draws'].values()):>13,} {truth['seconds']:>8.1f}"
                         + ("" if measured else "  (cached)"))
    write_csv(rows, Path(csv_path), COLUMNS)
    plot(rows, Path(png_path))
    summary = summarise(rows)
    print(format_report(zoo_lines, truths, summary, notes, Path(csv_path), Path(png_path)))
    return Report(rows, summary, truths, truth_draws, notes)


def format_report(zoo_lines: list[str], truths: dict[str, dict], summary: list[dict], notes: list[str],
                  csv_path: Path, png_path: Path) -> str:
    lines = ["zoo (flops = one forward pass; truth cost = draws and seconds spent on ground truth):",
             f"{'case':<4} {'widths':<22} {'act':<5} {'inputs':<10} {'network':<20} {'flops':>10} {'ev':>3}"
             f" {'truth draws':>13} {'seconds':>8}", *zoo_lines]
    draws = sum(sum(t["draws"].values()) for t in truths.values())
    seconds = sum(t["seconds"] for t in truths.values())
    sources = [e["source"] for t in truths.values() for e in t["events"]]
    lines += [f"ground truth: {draws:,} draws, {seconds:.0f} s when measured; {sources.count('sampling')} events"
              f" by sampling, {sources.count('importance')} by importance sampling, {sources.count('combined')}"
              f" by both (inverse-variance weighted where they agree)", "",
              "IS reference vs plain sampling where both ran (z = Δ/√(se_s² + se_IS²)):"]
    for name, truth in truths.items():
        for entry in truth["events"]:
            z = agreement(entry)
            if z is not None:
                s, i = entry["sampling"], entry["importance"]
                lines.append(f"  {name:<4} {entry['event']:<42} sampling {s['p']:.3e} ± {s['se']:.1e}"
                             f" ({s['hits']} hits)  IS {i['p']:.3e} ± {i['se']:.1e}  z = {z:+.2f}")
    runs = [(name, e["event"], e["importance"]) for name, t in truths.items() for e in t["events"] if e["importance"]]
    zs = [abs(i["replicate_z"]) for *_, i in runs if i["replicate_z"] is not None]
    if zs:
        rel = [i["rel_se"] for *_, i in runs]
        lines.append(f"IS replicates (two independent runs per event, {len(zs)} events): |z| median"
                     f" {statistics.median(zs):.2f}, max {max(zs):.2f}; |z| > 2 in {sum(z > 2 for z in zs)},"
                     f" > 3 in {sum(z > 3 for z in zs)}; relative se of the mean: median"
                     f" {statistics.median(rel):.1%}, max {max(rel):.1%}")
    lines += [f"  check: {name} {event}: IS relative se {i['rel_se']:.1%}, replicate z {i['replicate_z']:+.2f}"
              for name, event, i in runs if i["rel_se"] > 0.05 or abs(i["replicate_z"] or 0) > 3]
    lo, hi = SUMMARY_RANGE
    lines += ["", f"summary over events with {lo:g} ≤ p ≤ {hi:g} (|log10 p̂/p|), costs over all queries:",
              f"{'method':<12} {'events':>6} {'median':>7} {'worst':>7} {'≤0.5dex':>8} {'max cost [samples]':>19}"
              f" {'<1e4 samples':>13} {'equal-FLOPs sampling: 0 hits':>29}"]
    for s in summary:
        lines.append(f"{s['method']:<12} {s['events']:>6} {s['median']:>7.2f} {s['worst']:>7.2f}"
                     f" {s['within_half_dex']:>8.0%} {s['max_cost']:>19,.0f} {s['cheap']:>13.0%}"
                     f" {s['equal_flops_zero']:>29.0%}" + (f"  ({s['failed']} failed)" if s["failed"] else ""))
    lines += ["", f"CSV: {csv_path}", f"PNG: {png_path}"] + [f"note: {n}" for n in notes]
    return "\n".join(lines)
