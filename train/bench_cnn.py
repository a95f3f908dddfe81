"""`pitrack bench cnn`: π's E[y] on small convolutional nets against a sampling reference.

Nets (PyTorch default initialisation, x ~ N(0, I) over the flattened image):
  14×14 <f> <pool>  1 × 14 × 14 → conv 4 → f → pool 2 → conv 4 → f → pool 2 → 3 outputs,
                    f ∈ {ReLU, tanh, GELU}, pool ∈ {max, average}
  28×28 ReLU max    1 × 28 × 28 → conv 8 → ReLU → max pool → conv 16 → ReLU → max pool → 10
Reported per net and method: the worst output's |π - reference| in output standard
deviations, the reference's standard error in that unit, π's cost in sample-equivalents
(forward passes of the net) and seconds. The README's CNN table is this bench's output.
"""
from __future__ import annotations

import csv
import time
from pathlib import Path

import torch
from torch import nn

from explanations import Gaussian, compile_model, explain

ACTIVATIONS = {"ReLU": nn.ReLU, "tanh": nn.Tanh, "GELU": nn.GELU}
POOLS = {"max": nn.MaxPool2d, "average": nn.AvgPool2d}


def small(activation: str, pool: str, seed: int = 1) -> nn.Sequential:
    torch.manual_seed(seed)
    act, down = ACTIVATIONS[activation], POOLS[pool]
    return nn.Sequential(nn.Conv2d(1, 4, 3), act(), down(2), nn.Conv2d(4, 4, 3), act(), down(2),
                         nn.Flatten(), nn.Linear(16, 3))


def mnist_sized(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 10))


def nets(quick: bool) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """(name, model, input shape) of the bench; `quick`: the 14×14 ReLU max-pool net only."""
    found = [(f"14x14 {a} {p}", small(a, p), (1, 14, 14)) for a in ACTIVATIONS for p in POOLS]
    if quick:
        return found[:1]
    return found + [("28x28 ReLU max", mnist_sized(), (1, 28, 28))]


def reference_moments(model: nn.Module, shape: tuple[int, ...], draws: int, batch: int = 20_000,
                      seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and sd of each output over `draws` standard normal images, by the module's own
    forward pass (its convolutions, not the graph's dense matrices)."""
    generator = torch.Generator().manual_seed(seed)
    total = squares = 0.0
    with torch.no_grad():
        for start in range(0, draws, batch):
            y = model(torch.randn(min(batch, draws - start), *shape, generator=generator, dtype=torch.float64))
            total, squares = total + y.sum(0), squares + (y * y).sum(0)
    mean = total / draws
    return mean, (squares / draws - mean * mean).clamp_min(0).sqrt()


def run(reference: int = 400_000, quick: bool = False, methods: tuple[str, ...] = ("gaussian", "cumulant"),
        csv_path: str | None = "out/bench_cnn.csv") -> list[dict]:
    rows = []
    print(f"{'net':<18} {'method':<9} {'worst |err|/sd':>14} {'ref s.e./sd':>11} {'cost':>10} {'seconds':>8}")
    for name, model, shape in nets(quick):
        model = model.double().eval()
        graph = compile_model(model, input_shape=shape)
        D = Gaussian.standard(graph.n_inputs)
        mean, sd = reference_moments(model, shape, reference)
        for method in methods:
            started = time.perf_counter()
            estimate = explain(graph, D, method).expectation()
            seconds = time.perf_counter() - started
            error = float(((estimate.value - mean).abs() / sd).max())
            row = {"net": name, "method": method, "error_sd": error, "reference_se_sd": reference ** -0.5,
                   "cost": estimate.sample_equivalents, "seconds": seconds}
            rows.append(row)
            print(f"{name:<18} {method:<9} {error:>14.3f} {reference ** -0.5:>11.4f} {row['cost']:>10,.0f} "
                  f"{seconds:>8.1f}")
    if csv_path:
        Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
        with open(csv_path, "w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"CSV: {csv_path}")
    return rows
