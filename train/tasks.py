"""Seeded synthetic tasks for training the networks that benchmarks and tests explain.

`RegressionTask`: inputs x ~ D (an `explanations.Gaussian`), targets

    y_k = Σ_j V_kj tanh(u_j·x/√n + c_j) + ¼ (r_k·x)²/n + σ ε_k,    ε ~ N(0, I),

a fixed random teacher (u_j, r_k ~ N(0, I_n), V_kj ~ N(0, 1/h), c_j ~ N(0, ¼); h hidden
teacher units) plus Gaussian label noise. The quadratic term makes the targets skewed, so
a trained student has tails that a Gaussian fit misses. Every draw comes from a caller's
seeded generator: the task and each training run are reproducible.

`fit_regression` trains a model on fresh draws each step (online learning, no fixed
training set) by Adam (Kingma & Ba, "Adam: A Method for Stochastic Optimization", 2015)
on the mean squared error.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from explanations import Gaussian


class RegressionTask:
    """y = teacher(x) + noise·ε with x ~ distribution (module docstring)."""

    def __init__(self, distribution: Gaussian, n_outputs: int = 1, *, seed: int = 0,
                 hidden: int = 16, noise: float = 0.1) -> None:
        n = distribution.dim
        generator = torch.Generator().manual_seed(seed)
        draw = lambda *shape: torch.randn(*shape, generator=generator, dtype=torch.float64)
        self.distribution, self.n_outputs, self.noise = distribution, n_outputs, noise
        self.u = draw(hidden, n) / math.sqrt(n)
        self.c = draw(hidden) / 2
        self.v = draw(n_outputs, hidden) / math.sqrt(hidden)
        self.r = draw(n_outputs, n)

    @property
    def n_inputs(self) -> int:
        return self.distribution.dim

    def teacher(self, x: Tensor) -> Tensor:
        """The noiseless target [batch, n_outputs] for inputs x: [batch, n_inputs] (float64)."""
        x = x.to(torch.float64)
        return torch.tanh(x @ self.u.T + self.c) @ self.v.T + (x @ self.r.T) ** 2 / (4 * self.n_inputs)

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """n pairs (x, y) as float32 tensors [n, n_inputs], [n, n_outputs]."""
        x = self.distribution.sample(n, generator=generator)
        y = self.teacher(x) + self.noise * torch.randn(n, self.n_outputs, generator=generator,
                                                       dtype=torch.float64)
        return x.float(), y.float()


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, task: RegressionTask, steps: int,
                batch: int, generator: torch.Generator, after_step: Callable[[], None] | None = None) -> list[float]:
    """`steps` optimizer steps on the mean squared error over fresh draws from `task`,
    calling `after_step` after each; returns the loss of every step."""
    losses = []
    for _ in range(steps):
        x, y = task.sample(batch, generator)
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if after_step is not None:
            after_step()
    return losses


def fit_regression(model: nn.Module, task: RegressionTask, steps: int = 1500, lr: float = 3e-3,
                   batch: int = 256, seed: int = 0) -> list[float]:
    """Train `model` in place by Adam on the mean squared error over fresh draws from `task`;
    returns the loss of every step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    return train_steps(model, optimizer, task, steps, batch, torch.Generator().manual_seed(seed))
