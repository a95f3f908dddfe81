"""`pitrack bench penalty`: catastrophe-aware training (`train.catastrophe`) against sampling.

Setting (per seed): torch.manual_seed(seed), a 4 → 32 → 32 → 2 ReLU net fitting
y = (x0 + ½ sin 2x1, x2 + 0.3 x0) on x ~ N(0, I_4) by `steps` Adam steps (lr 3e-3) of 256
fresh rows each, loss = MSE + CatastrophePenalty(event, target, weight) (no penalty where
the weight is 0). After training: P(event) from `draws` plain samples (its 95% Wilson
interval; 0 hits give an upper bound), the penalty's own FORM value log10 P, the fit's MSE
on 10⁵ fresh rows, and the penalty's FLOPs per step in sample-equivalents of the model.
CONFIGS are the README's table: Above(0, 3) and All(Above(0, 2), Above(1, 2)) without a
penalty and with targets 1e-4 and 1e-5.
Outputs: CSV (one row per config and seed), a PNG (sampled P after training per config,
the target marked) and a printed table.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from explanations import Gaussian, compile_model
from explanations.events import Above, All, Event
from explanations.montecarlo import wilson_interval

from .catastrophe import CatastrophePenalty
from .figures import save, subplots
from .tables import write_csv

ROWS, LEARNING_RATE = 256, 3e-3
CONFIGS: list[tuple[str, Event, float | None, float]] = [       # (label, event, target, weight)
    ("y0 > 3", Above(0, 3.0), None, 0.0),
    ("y0 > 3", Above(0, 3.0), 1e-4, 0.01),
    ("y0 > 3", Above(0, 3.0), 1e-4, 0.03),
    ("y0 > 3", Above(0, 3.0), 1e-4, 0.1),
    ("y0 > 3", Above(0, 3.0), 1e-5, 0.1),
    ("All(y0 > 2, y1 > 2)", All(Above(0, 2.0), Above(1, 2.0)), None, 0.0),
    ("All(y0 > 2, y1 > 2)", All(Above(0, 2.0), Above(1, 2.0)), 1e-4, 0.1),
    ("All(y0 > 2, y1 > 2)", All(Above(0, 2.0), Above(1, 2.0)), 1e-5, 0.1),
]
COLUMNS = ["event", "target", "weight", "seed", "sampled_p", "sampled_low", "sampled_high", "hits", "draws",
           "form_log10", "mse", "penalty_per_step"]


def task(x: torch.Tensor) -> torch.Tensor:
    """The regression targets of the module docstring."""
    return torch.stack([x[:, 0] + 0.5 * torch.sin(2 * x[:, 1]), x[:, 2] + 0.3 * x[:, 0]], dim=1)


def train_one(event: Event, target: float | None, weight: float, seed: int, steps: int, draws: int) -> dict:
    """One config and seed (module docstring): train, then sample the event."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    optimizer = torch.optim.Adam(model.parameters(), LEARNING_RATE)
    D = Gaussian.standard(4)
    penalty = CatastrophePenalty(model, D, event, target=target, weight=weight, seed=seed) if weight else None
    for _ in range(steps):
        x = torch.randn(ROWS, 4)
        loss = ((model(x) - task(x)) ** 2).mean() + (penalty() if penalty is not None else 0.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    generator = torch.Generator().manual_seed(10_000 + seed)
    hits = 0
    with torch.no_grad():
        for start in range(0, draws, 500_000):
            x = torch.randn(min(500_000, draws - start), 4, generator=generator)
            hits += int(event.evaluate(model(x).double()).sum())
        x = torch.randn(100_000, 4, generator=generator)
        mse = float(((model(x) - task(x)) ** 2).mean())
    low, high = wilson_interval(hits, draws)
    unit = compile_model(model).flops_per_sample
    return {"target": target, "weight": weight, "seed": seed, "sampled_p": hits / draws, "sampled_low": low,
            "sampled_high": high, "hits": hits, "draws": draws,
            "form_log10": penalty.log10_probability if penalty is not None else None, "mse": mse,
            "penalty_per_step": penalty.flops / steps / unit if penalty is not None else None}


def run(seeds: int = 4, steps: int = 400, draws: int = 4_000_000, csv_path: Path = Path("out/bench_penalty.csv"),
        png_path: Path = Path("out/bench_penalty.png"), progress: bool = True) -> list[dict]:
    """Every config of CONFIGS over `seeds` seeds; prints the table, writes CSV and PNG."""
    jobs = [(config, seed) for config in CONFIGS for seed in range(seeds)]
    rows = [{"event": label, **train_one(event, target, weight, seed, steps, draws)}
            for (label, event, target, weight), seed in tqdm(jobs, desc="bench penalty", disable=not progress)]
    write_csv(rows, Path(csv_path), COLUMNS)
    plot(rows, Path(png_path))
    print(report(rows))
    print(f"CSV: {csv_path}  PNG: {png_path}")
    return rows


def _config_rows(rows: list[dict]) -> list[tuple[tuple, list[dict]]]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["event"], row["target"], row["weight"]), []).append(row)
    return list(groups.items())


def report(rows: list[dict]) -> str:
    """Per config: the range of sampled P after training (and how many seeds end above the
    target), of FORM's log10 P, of the MSE, and the penalty's mean cost per step."""
    lines = [f"{'event':<21} {'target':>7} {'weight':>6}  {'sampled P after training':<34} "
             f"{'FORM log10 P':<15} {'MSE':<15} {'cost/step':>9}"]
    for (label, target, weight), group in _config_rows(rows):
        ps = [r["sampled_p"] for r in group]
        above = f" ({sum(p > target for p in ps)} of {len(ps)} above)" if target else ""
        forms = [r["form_log10"] for r in group if r["form_log10"] is not None]
        form = f"{min(forms):.2f} to {max(forms):.2f}" if forms else "-"
        mses = [r["mse"] for r in group]
        costs = [r["penalty_per_step"] for r in group if r["penalty_per_step"] is not None]
        cost = f"{statistics.fmean(costs):9.0f}" if costs else f"{'-':>9}"
        lines.append(f"{label:<21} {target or '-':>7} {weight:>6}  {min(ps):.1e}–{max(ps):.1e}{above:<20} "
                     f"{form:<15} {min(mses):.4f}–{max(mses):.4f} {cost}")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Sampled P after training (Wilson intervals) per config, the target dashed."""
    groups = _config_rows(rows)
    figure, axis = subplots(path, figsize=(9, 4.5))
    for i, ((label, target, weight), group) in enumerate(groups):
        for j, row in enumerate(group):
            x = i + (j - (len(group) - 1) / 2) * 0.12
            low = max(row["sampled_low"], 1 / row["draws"] / 10)
            value = row["sampled_p"] if row["sampled_p"] > 0 else low
            axis.errorbar([x], [value], yerr=[[value - low], [max(row["sampled_high"] - value, 0)]], fmt="o",
                          color="C0" if row["sampled_p"] > 0 else "C3", ms=4, capsize=2)
            if row["form_log10"] is not None and math.isfinite(row["form_log10"]):
                axis.plot([x], [10 ** row["form_log10"]], "x", color="C1", ms=5)
        if target:
            axis.hlines(target, i - 0.35, i + 0.35, colors="k", linestyles="dashed", lw=1)
    axis.set_yscale("log")
    axis.set_xticks(range(len(groups)), [f"{label}\n{target or 'none'}, w={weight}"
                                          for label, target, weight in (key for key, _ in groups)], fontsize=7)
    axis.set_ylabel("P(event) after training")
    axis.set_title("catastrophe-aware training: sampled P (dots, red: no hit), FORM (x), target (dashed)")
    save(figure, path)
