"""Plain Monte Carlo over x ~ D: the sampling baseline and the `samples=N` budget.

One pass draws N inputs in batches, runs the graph, and tallies Σ(y - c), Σ(y - c)²
(float64, c the first batch's mean, so the variance does not cancel when |E y| ≫ sd) and
the hit count of each event, so several estimates share the same forward passes.
Cost: N · (FLOPs of one forward pass + FLOPs of one draw + the events' detectors),
counted exactly.

Intervals (95%): for a mean, ȳ ± t s/√N with Student's t for N - 1 degrees of freedom
(`student_t_quantile`; 1.96 for large N); for a probability,
Wilson's score interval  (k + z²/2)/(N + z²) ± z/(N + z²) · √(k(N-k)/N + z²/4),
which stays inside [0, 1] and is informative at k = 0. Weighted estimates (importance
sampling, subset simulation) whose relative variance is 1/n (n their effective number of
hits) get Garwood's Poisson interval for n counts, scaled: p̂ · [G⁻¹_n(0.025), G⁻¹_{n+1}(0.975)]/n
with G_a the Gamma(a, 1) law (Garwood, Biometrika 28, 1936). At small n it is wider than
p̂(1 ± 1.96/√n), most on the upper side, where a missed part of the event puts p̂.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .distributions import Gaussian
from .errors import BudgetTooSmall
from .estimate import Estimate
from .events import Event
from .graph import Graph

Z95 = 1.959963984540054
PROGRESS_FROM = 1_000_000


@dataclass
class Tally:
    samples: int
    total: Tensor          # Σ (y - shift), float64 [outputs]
    total_squares: Tensor  # Σ (y - shift)², float64 [outputs]
    hits: list[int]
    flops: int
    shift: Tensor          # the first batch's mean: sums about it do not cancel


def draw_cost(graph: Graph, distribution: Gaussian) -> int:
    """FLOPs of one sample: a draw from D plus one forward pass."""
    return graph.flops_per_sample + distribution.sample_flops()


def detector_flops(events: list[Event]) -> int:
    """FLOPs per draw of the learned detectors that `events` read, each counted once."""
    detectors: list = []
    for event in events:
        detectors += [d for d in event.detectors() if all(d is not e for e in detectors)]
    return sum(d.graph.flops_per_sample for d in detectors)


def sample_count(samples: object, minimum: int = 1, purpose: str = "") -> int:
    """`samples` as an int, or a ValueError naming it: a bool, a fraction or fewer than
    `minimum` draws is not a sample count (numpy integers are)."""
    if isinstance(samples, bool) or not isinstance(samples, numbers.Integral) or samples < minimum:
        need = "a positive integer" if minimum == 1 else f"an integer ≥ {minimum}"
        raise ValueError(f"samples must be {need}{purpose}, got {samples!r}")
    return int(samples)


def flop_budget(flops: object) -> float:
    """A FLOP budget as a float: a positive, finite real number (Python or NumPy, or a
    one-element tensor or array of a real dtype); ValueError naming the value otherwise
    (a bool, a string, a Decimal or a complex number is not a budget)."""
    if hasattr(flops, "dtype") and hasattr(flops, "shape"):          # a tensor, or a NumPy value
        count = flops.numel() if isinstance(flops, torch.Tensor) else flops.size
        real = str(flops.dtype).removeprefix("torch.").startswith(("float", "int", "uint", "bfloat"))
        value = flops.item() if count == 1 and real else math.nan
    else:
        value = flops if isinstance(flops, numbers.Real) and not isinstance(flops, bool) else math.nan
    try:
        number = float(value)
    except OverflowError:
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"flops must be a positive number, got {flops!r}")
    return number


def draws_within(flops: float, fixed: float, per_draw: float, samples: int | None = None, minimum: int = 1) -> int:
    """How many draws a budget of `flops` buys after `fixed` FLOPs: ⌊(flops - fixed)/per_draw⌋.
    Give a FLOP budget or a sample count, not both; fewer than `minimum` draws is an error."""
    if samples is not None:
        raise ValueError("give either samples or flops, not both")
    flops = flop_budget(flops)
    draws = int((flops - fixed) // per_draw)
    if draws < minimum:
        raise BudgetTooSmall(f"a budget of {flops:.3g} FLOPs buys {max(draws, 0)} draws, this estimate needs "
                             f"{minimum}: the explanation's part costs {fixed:.3g} and one draw {per_draw:.3g}",
                             fixed + minimum * per_draw)
    return draws


def tally(graph: Graph, distribution: Gaussian, samples: int, events: list[Event] = (),
          seed: int = 0, batch: int = 1 << 16, progress: bool | None = None) -> Tally:
    """Draw `samples` inputs, run the graph, and count (see module docstring)."""
    samples = sample_count(samples)
    for event in events:
        event.check(graph.n_outputs)
    device = graph.device
    generator = torch.Generator(device=device).manual_seed(seed)
    total = torch.zeros(graph.n_outputs, dtype=torch.float64, device=device)
    squares = torch.zeros_like(total)
    shift = None
    hits = [torch.zeros((), dtype=torch.int64, device=device) for _ in events]
    show = samples >= PROGRESS_FROM if progress is None else progress
    with torch.no_grad(), tqdm(total=samples, disable=not show, unit="sample", unit_scale=True,
                               desc="sampling", leave=False) as bar:
        done = 0
        while done < samples:
            size = min(batch, samples - done)
            y = graph.forward(distribution.sample(size, generator=generator, dtype=graph.dtype))
            if shift is None:
                shift = y.to(torch.float64).mean(dim=0)
            y64 = y.to(torch.float64) - shift
            total += y64.sum(dim=0)
            squares += (y64 * y64).sum(dim=0)
            for i, event in enumerate(events):
                hits[i] += event.evaluate(y).sum()
            done += size
            bar.update(size)
    cost = draw_cost(graph, distribution) + detector_flops(events)
    return Tally(samples, total, squares, [int(h) for h in hits], samples * cost, shift)


def mean_estimate(counts: Tally, flops_per_sample: float) -> Estimate:
    """E[y] with a 95% interval ȳ ± t·s/√N per output, t Student's with N - 1 degrees of
    freedom (the normal's 1.96 beyond a few hundred draws; None from a single draw)."""
    n = counts.samples
    centred = counts.total / n
    mean = counts.shift + centred
    if n < 2:                   # no variance from one draw: no interval rather than a zero-width one
        return Estimate(mean, None, None, counts.flops, n, "sampling", flops_per_sample,
                        {"std": torch.full_like(mean, math.nan)})
    variance = ((counts.total_squares - n * centred * centred) / (n - 1)).clamp_min(0)
    half = student_t_quantile(0.975, n - 1) * torch.sqrt(variance / n)
    return Estimate(mean, None, (mean - half, mean + half), counts.flops, n, "sampling",
                    flops_per_sample, {"std": variance.sqrt()})


def wilson_interval(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a binomial proportion (module docstring)."""
    centre = (hits + z * z / 2) / (n + z * z)
    half = z / (n + z * z) * math.sqrt(hits * (n - hits) / n + z * z / 4)
    return (0.0 if hits == 0 else max(0.0, centre - half)), (1.0 if hits == n else min(1.0, centre + half))


def student_t_quantile(q: float, dof: int) -> float:
    """t with P(T ≤ t) = q for Student's t with `dof` degrees of freedom (q in (½, 1)): the
    interval multiplier for a mean of few independent replicates (dof + 1 of them), where
    the normal's 1.96 covers 85% (4 replicates) to 91% (8). Bisection on the closed form of
    A(t|ν) = P(|T| ≤ t) for integer ν (Abramowitz & Stegun, Handbook, 26.7.3–26.7.4), with
    θ = atan(t/√ν):
        ν odd:  A = (2/π)(θ + sin θ (cos θ + (2/3) cos³θ + … + (2·4⋯(ν-3))/(1·3⋯(ν-2)) cos^(ν-2) θ))
        ν even: A = sin θ (1 + ½ cos²θ + (1·3)/(2·4) cos⁴θ + … + (1·3⋯(ν-3))/(2·4⋯(ν-2)) cos^(ν-2) θ);
    beyond ν = 200, Fisher's expansion t ≈ z + (z³ + z)/(4ν) + (5z⁵ + 16z³ + 3z)/(96ν²)
    (A&S 26.7.5; error below 1e-7 there)."""
    if isinstance(dof, bool) or not isinstance(dof, int) or dof < 1:
        raise ValueError(f"degrees of freedom must be a positive integer, got {dof!r}")
    if not 0.5 < q < 1:
        raise ValueError(f"q must lie in (0.5, 1), got {q!r}")
    if dof > 200:
        z = float(torch.special.ndtri(torch.tensor(q, dtype=torch.float64)))
        return z + (z ** 3 + z) / (4 * dof) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * dof * dof)

    def two_sided(t: float) -> float:
        theta = math.atan(t / math.sqrt(dof))
        c, total, term = math.cos(theta), 0.0, 1.0
        if dof % 2:
            term = c
            for j in range(1, (dof - 1) // 2 + 1):          # cos θ, (2/3) cos³θ, …
                total += term
                term *= (2 * j) / (2 * j + 1) * c * c
            return 2 / math.pi * (theta + math.sin(theta) * total)
        for j in range(1, dof // 2 + 1):                     # 1, ½ cos²θ, …
            total += term
            term *= (2 * j - 1) / (2 * j) * c * c
        return math.sin(theta) * total

    target, lo, hi = 2 * q - 1, 0.0, 1.0
    while two_sided(hi) < target:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if two_sided(mid) < target else (lo, mid)
        if hi - lo <= 1e-13 * hi:
            break
    return (lo + hi) / 2


def gamma_quantile(shape: float, q: float) -> float:
    """x with P(Gamma(shape, 1) ≤ x) = q, by bisection on torch.special.gammainc."""
    a = torch.tensor(shape, dtype=torch.float64)
    lo, hi = 0.0, shape + 20 * math.sqrt(shape) + 50
    for _ in range(100):
        mid = (lo + hi) / 2
        if float(torch.special.gammainc(a, torch.tensor(mid, dtype=torch.float64))) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def effective_count_interval(log_p: float, effective: float) -> tuple[float, float]:
    """Garwood's 95% interval for a weighted estimate p = e^log_p with `effective` hits
    (module docstring), its ends taken from log space: for a p below float64's range
    (importance sampling far in a tail) the upper end is the smallest positive double,
    not 0, which would say that P is exactly 0."""
    if effective <= 0 or log_p == -math.inf:
        return 0.0, 0.0
    if math.isinf(effective):
        return math.exp(log_p), max(math.exp(log_p), math.ulp(0.0))
    low = math.exp(log_p + math.log(gamma_quantile(effective, 0.025) / effective))
    high = math.exp(min(log_p + math.log(gamma_quantile(effective + 1, 0.975) / effective), 0.0))
    return low, max(high, math.ulp(0.0))


def probability_estimate(hits: int, counts: Tally, flops_per_sample: float) -> Estimate:
    """hits/N with Wilson's interval; log10 = -inf when nothing was hit."""
    n = counts.samples
    log_p = math.log(hits / n) if hits else -math.inf
    return Estimate.probability(log_p, interval=wilson_interval(hits, n), flops=counts.flops,
                                samples=n, method="sampling", flops_per_sample=flops_per_sample,
                                details={"hits": hits})
