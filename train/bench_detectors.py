"""`pitrack bench detectors`: events on learned catastrophe detectors, against sampling.

Setting (per seed): torch.manual_seed(seed), then a residual net on x ~ N(0, I_6),
6 → 8 → (8 + ReLU-block(8)) → ReLU → 2, then a detector 2 → 4 → act → 1 → sigmoid for
act = ReLU, tanh, GELU (drawn in that order after the net). The event is the detector's
score above its q-quantile, q in QUANTILES (p ≈ 1e-2, 1e-3, 1e-4). Truth: `draws` plain
samples, the quantile taken from the first quarter of them and the truth from the other
three quarters; at p = 1e-4 and 4·10⁶ draws its relative standard error is 6%.
Per event: `cumulant`'s zero-sample estimate (the design-point path, `structured`) and,
with a budget of `budget` sample-equivalents, its design-guided sampled estimate with the
95% interval; |log10 p̂/p| and the cost of each.
Outputs: CSV (one row per event), PNG (estimate against truth) and a printed summary.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from explanations import Gaussian, explain
from explanations.events import Detector

from .figures import save, subplots
from .tables import write_csv

QUANTILES = (0.99, 0.999, 0.9999)
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}
COLUMNS = ["seed", "detector", "quantile", "true_p", "true_se", "zero_sample_p", "zero_sample_method",
           "zero_sample_dex", "zero_sample_cost", "sampled_p", "sampled_low", "sampled_high", "sampled_method",
           "sampled_dex", "sampled_cost"]


class Residual(nn.Module):
    """x + block(x): the residual block of the setting."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def setting(seed: int) -> tuple[nn.Module, dict[str, nn.Module]]:
    """The seed's network and its three detectors (module docstring)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), Residual(8), nn.ReLU(), nn.Linear(8, 2))
    detectors = {name: nn.Sequential(nn.Linear(2, 4), act(), nn.Linear(4, 1), nn.Sigmoid())
                 for name, act in ACTIVATIONS.items()}
    return model, detectors


def _dex(estimate: float, truth: float) -> float:
    return abs(math.log10(estimate / truth)) if estimate > 0 else math.inf


def run(seeds: range = range(6), quantiles: tuple[float, ...] = QUANTILES, draws: int = 4 * 10 ** 6,
        budget: float = 10_000, csv_path: Path = Path("out/bench_detectors.csv"),
        png_path: Path = Path("out/bench_detectors.png"), progress: bool = True) -> list[dict]:
    """Every (seed, detector, quantile) event: truth, zero-sample and sampled estimates."""
    rows = []
    D = Gaussian.standard(6)
    for seed in tqdm(seeds, desc="bench detectors", unit="net", disable=not progress):
        model, detectors = setting(seed)
        with torch.no_grad():
            y = model(D.sample(draws, generator=torch.Generator().manual_seed(2)).float())
        pi = explain(model, D, "cumulant")
        for name, scorer in detectors.items():
            with torch.no_grad():
                score = scorer(y)[:, 0]
            for q in quantiles:
                threshold = float(torch.quantile(score[: draws // 4], q))
                held_out = score[draws // 4:]
                truth = float((held_out > threshold).double().mean())
                event = Detector(scorer, threshold=threshold)
                zero = pi.probability(event)
                sampled = pi.probability(event, flops=budget * pi.flops_per_sample)
                rows.append({"seed": seed, "detector": name, "quantile": q, "true_p": truth,
                             "true_se": math.sqrt(truth * (1 - truth) / len(held_out)),
                             "zero_sample_p": zero.value, "zero_sample_method": zero.method,
                             "zero_sample_dex": _dex(zero.value, truth), "zero_sample_cost": zero.sample_equivalents,
                             "sampled_p": sampled.value, "sampled_low": sampled.interval[0],
                             "sampled_high": sampled.interval[1], "sampled_method": sampled.method,
                             "sampled_dex": _dex(sampled.value, truth), "sampled_cost": sampled.sample_equivalents})
    write_csv(rows, csv_path, COLUMNS)
    _plot(rows, png_path)
    for line in summary(rows):
        print(line)
    print(f"CSV: {csv_path}\nPNG: {png_path}")
    return rows


def summary(rows: list[dict]) -> list[str]:
    """Median, worst and share within 0.5 dex of each estimate, and the sampled intervals' coverage."""
    lines = [f"{'estimate':<12} {'events':>6} {'median dex':>10} {'worst':>6} {'≤0.5 dex':>8} {'max cost':>9}"]
    for kind in ("zero_sample", "sampled"):
        dex = [r[f"{kind}_dex"] for r in rows]
        cost = max(r[f"{kind}_cost"] for r in rows)
        lines.append(f"{kind.replace('_', '-'):<12} {len(dex):>6} {statistics.median(dex):>10.2f} {max(dex):>6.2f} "
                     f"{sum(d <= 0.5 for d in dex) / len(dex):>8.0%} {cost:>9,.0f}")
    covered = sum(r["sampled_low"] <= r["true_p"] <= r["sampled_high"] for r in rows)
    lines.append(f"sampled 95% intervals covering the truth: {covered}/{len(rows)}")
    return lines


def _plot(rows: list[dict], path: Path) -> None:
    figure, axis = subplots(path, 1, 1, figsize=(5.5, 5))
    truths = [r["true_p"] for r in rows]
    for kind, marker in (("zero_sample", "o"), ("sampled", "x")):
        axis.scatter(truths, [max(r[f"{kind}_p"], 1e-12) for r in rows], marker=marker, label=kind.replace("_", "-"))
    low, high = min(truths) / 10, max(truths) * 10
    axis.plot([low, high], [low, high], color="grey", linewidth=0.8)
    axis.fill_between([low, high], [low / 10 ** 0.5, high / 10 ** 0.5], [low * 10 ** 0.5, high * 10 ** 0.5],
                      color="grey", alpha=0.15, label="±0.5 dex")
    axis.set(xscale="log", yscale="log", xlabel="truth (sampling)", ylabel="cumulant estimate",
             title="Detector events: π's estimate against sampling")
    axis.legend()
    save(figure, path)
