"""The main job's training phase: the embedded default model trained with the Tracker.

The default ReLU MLP (8 → 64 → 64 → 2) learns `RegressionTask` (seed 0) by Adam
(lr 3e-3, batch 256, fresh draws every step) while a Tracker keeps π (method "auto",
budget 1.0) current, tracks three events by π-guided sampling (`event_samples`: 5,000
sample-equivalents each per save, with 95% intervals) and saves a checkpoint every 50
steps, with a plain-sampling check of 10⁵ draws at each save. The same training is run once without
the Tracker first (same seeds) to measure the wall-time overhead of tracking.

Reported: the final ledger (ratio ≤ budget held at every step, asserted), the overhead,
freshness at every checkpoint — |E_π[y] - E_fresh[y]| / sd_fresh[y] with `fresh` a new
explain() on the checkpoint's parameters (rebuilt from the file) — and the same
deviation at every step (measured outside the timing), which shows how far π drifts
between rebuilds. Event thresholds come from one 4·10⁶-sample run (seed 9) on the model
after 300 steps: about 1e-3, 1e-4 and 1e-4 there; earlier in training they differ.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from explanations import Gaussian, explain
from explanations.events import Above, Below, Event
from storage import Run, WriterLock, open_run
from tracker import Tracker

from .demo import DEFAULT_WIDTHS, default_model
from .replay import plot_or_note, replay_table
from .tasks import RegressionTask, train_steps

METHOD, BUDGET, EVERY, BATCH, LR = "auto", 1.0, 50, 256, 3e-3
EVENT_SAMPLES = 5_000       # zero-sample estimates of these events are 0.2-0.4 dex high; sampled, within their noise


def tracked_events() -> dict[str, Event]:
    return {"y0 > 2.07": Above(0, 2.07), "y1 > 2.96": Above(1, 2.96), "y1 < -2.92": Below(1, -2.92)}


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, after_step=None) -> float:
    """Adam on fresh draws (module docstring); returns the wall time of the loop less the
    time spent in `after_step` (a diagnostic, not part of training or tracking)."""
    D = Gaussian.standard(DEFAULT_WIDTHS[0])
    task = RegressionTask(D, DEFAULT_WIDTHS[-1], seed=0)
    generator = torch.Generator().manual_seed(0)
    outside = 0.0

    def timed_after_step() -> None:
        nonlocal outside
        tic = time.perf_counter()
        after_step()
        outside += time.perf_counter() - tic

    started = time.perf_counter()
    train_steps(model, optimizer, task, steps, BATCH, generator, timed_after_step if after_step else None)
    return time.perf_counter() - started - outside


def deviation_in_sds(pi_mean: torch.Tensor, fresh) -> float:
    """max_k |E_π[y_k] - E_fresh[y_k]| / sd_fresh[y_k]."""
    sd = fresh.cov.diagonal().clamp_min(1e-300).sqrt()
    return float(((pi_mean.to(sd.dtype) - fresh.mean).abs() / sd).max())


def checkpoint_freshness(run: Run) -> str:
    """max |E_π - E_fresh| / sd over the run's checkpoints with a π, in words."""
    explained = [ck for ck in run if ck.has_explanation]
    if not explained:
        return f"none of the {len(run)} checkpoints has a π yet"
    worst = max(deviation_in_sds(torch.tensor(ck.meta["expectation"]), explain(ck.model, run.distribution, run.method))
                for ck in explained)
    return (f"at every checkpoint with a π ({len(explained)} of {len(run)}), max |E_π - E_fresh| = {worst:.2e} "
            f"output sds (fresh explain() on the saved parameters)")


def drift_summary(drift: list[float]) -> str:
    """The deviations of π from a fresh explain() over the steps with a π, in words."""
    if not drift:
        return "between checkpoints: no step had a π yet (the budget had not allowed a build)"
    return (f"between checkpoints, over all {len(drift)} steps with a π: max {max(drift):.3f} sd, "
            f"median {sorted(drift)[len(drift) // 2]:.4f} sd, {sum(d > 0.01 for d in drift)} steps above 0.01 sd")


def track(steps: int = 300, path: str | Path = "out/demo_run.h5", png: str | Path = "out/demo_run.png",
          check_samples: int = 100_000) -> nn.Module:
    """Train with the Tracker, write the run file and its replay plot; returns the model. An
    earlier run file at `path` is replaced, unless a live Tracker writes it (RunFileError)."""
    path = Path(path)
    WriterLock(path).acquire().release()      # refuses a file another Tracker is writing
    path.unlink(missing_ok=True)
    D = Gaussian.standard(DEFAULT_WIDTHS[0])
    baseline_model = default_model()
    baseline = _train(baseline_model, torch.optim.Adam(baseline_model.parameters(), lr=LR), steps)

    model = default_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    drift: list[float] = []
    started = time.perf_counter()                       # the Tracker's start and last save included
    with Tracker(model, optimizer, D, method=METHOD, events=tracked_events(), budget=BUDGET, path=path,
                 every=EVERY, check_samples=check_samples, event_samples=EVENT_SAMPLES) as tracker:
        entered = time.perf_counter() - started

        def monitor() -> None:
            ledger = tracker.ledger
            assert ledger.explanation_flops <= ledger.budget * ledger.training_flops, "budget broken"
            if tracker.explanation is not None:
                drift.append(deviation_in_sds(tracker.explanation.mean, explain(model, D, METHOD)))
        tracked = _train(model, optimizer, steps, monitor)
        closing = time.perf_counter()
    tracked += entered + time.perf_counter() - closing
    ledger = tracker.ledger

    print(f"training: {steps} Adam steps of batch {BATCH} on the default model, tracked by π ({METHOD}), "
          f"budget {BUDGET}, checkpoint every {EVERY} steps, events by π-guided sampling of "
          f"{EVENT_SAMPLES:,} sample-equivalents → {path}")
    print(f"ledger: training {ledger.training_flops:.4g} FLOPs (forward + backward where gradients flow, from the graph), "
          f"explanation {ledger.explanation_flops:.4g}: ratio {ledger.ratio:.3f} ≤ {BUDGET} at every step; "
          f"{ledger.full_updates} rebuilds, {ledger.incremental_updates} head updates, {ledger.stale_steps} stale "
          f"steps, {ledger.overruns} overruns; sampling checks {ledger.check_flops:.3g} FLOPs (outside the ratio)")
    print(f"wall time: {baseline:.2f} s untracked, {tracked:.2f} s tracked: overhead {tracked / baseline - 1:+.0%} "
          f"(checkpoint writing and checks included)")
    with open_run(path) as run:
        print(f"freshness: {checkpoint_freshness(run)}; {drift_summary(drift)}\n")
        print(replay_table(run))
        print(f"\nreplay plot: {plot_or_note(run, png)}\n")
    return model
