"""`pitrack replay run.h5` and `pitrack inspect run.h5`: a run file, read back.

replay:  a table over the saved steps (how π was updated, the ledger ratio, stale steps,
         π's E[y] and every tracked event's probability (and its 95% interval where π
         sampled it, Tracker(event_samples=N)), with the run's sampling checks
         beside them where recorded), and a PNG: E[y] per output and log10 P[event] over
         training, π as lines (with a band for its 95% interval where it sampled), sampling
         checks as points with their 95% intervals.
inspect: what the file holds: format, method, distribution, events, checkpoints, the
         last ledger, the model's structure.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from storage import Run, open_run
from storage.runfile import VERSION

from .figures import save, subplots


def _probability(value: float | None, log10: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "deferred"
    if value > 0:
        return f"{value:.3e}"
    return f"1e{log10:.2f}" if log10 is not None and math.isfinite(log10) else "0"


def replay_table(run: Run) -> str:
    """One row per checkpoint (module docstring)."""
    names = list(run.events)
    outputs = run.meta.get("n_outputs", 0)
    header = ["step", "update", "ratio", "stale"] + [f"E[y{k}]" for k in range(outputs)] + names
    rows = []
    for ck in run:
        checks = ck.meta.get("checks")
        row = [str(ck.step), ck.update, f"{ck.ledger['ratio']:.3f}", str(ck.ledger["stale_steps"])]
        for k, value in enumerate(ck.meta["expectation"]):
            cell = f"{value:+.4f}"
            if checks:
                cell += f" (MC {checks['expectation']['value'][k]:+.4f})"
            row.append(cell)
        for name in names:
            estimate = ck.estimates.get(name) or {}
            cell = _probability(estimate.get("value"), estimate.get("log10"))
            if estimate.get("lo") is not None and estimate.get("hi") is not None:
                cell += f" [{estimate['lo']:.1e}, {estimate['hi']:.1e}]"      # π sampled it
            if checks:
                check = checks["events"][name]
                cell += f" (MC {check['value']:.2e})"
            row.append(cell)
        rows.append(row)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    show = lambda r: "  ".join(c.rjust(w) for c, w in zip(r, widths))
    return "\n".join([show(header), show(["-" * w for w in widths])] + [show(r) for r in rows])


def replay_plot(run: Run, png: str | os.PathLike) -> Path:
    """E[y] and log10 P[event] over training (module docstring); returns the PNG's path."""
    png = Path(png)
    figure, (top, bottom) = subplots(png, 2, 1, figsize=(8, 7), sharex=True)
    mean = run.series("expectation")
    for k in range(mean.value.shape[1]):
        line, = top.plot(mean.steps, mean.value[:, k], marker="o", ms=3, label=f"π: E[y{k}]")
        if np.isfinite(mean.check_value[:, k]).any():
            top.errorbar(mean.steps, mean.check_value[:, k],
                         yerr=[mean.check_value[:, k] - mean.check_lo[:, k], mean.check_hi[:, k] - mean.check_value[:, k]],
                         fmt="x", color=line.get_color(), capsize=3, label=f"sampling: E[y{k}]")
    top.set_ylabel("expected output")
    top.legend(fontsize=8)
    for name in run.events:
        series = run.series(name)
        line, = bottom.plot(series.steps, series.log10, marker="o", ms=3, label=f"π: {name}")
        sampled = np.isfinite(series.lo) & np.isfinite(series.hi) & (series.hi > 0)
        if sampled.any():
            bottom.fill_between(series.steps[sampled], np.log10(np.maximum(series.lo[sampled], 1e-300)),
                                np.log10(series.hi[sampled]), color=line.get_color(), alpha=0.2,
                                label=f"π's 95% interval: {name}")
        checked = np.isfinite(series.check_value) & (series.check_value > 0)
        if checked.any():
            lo = np.log10(np.maximum(series.check_lo[checked], 1e-300))
            hi = np.log10(series.check_hi[checked])
            value = np.log10(series.check_value[checked])
            bottom.errorbar(series.steps[checked], value, yerr=[value - lo, hi - value], fmt="x",
                            color=line.get_color(), capsize=3, label=f"sampling: {name}")
    bottom.set_ylabel("log10 P[event]")
    bottom.set_xlabel("training step")
    bottom.legend(fontsize=8)
    figure.suptitle(f"{run.path.name}: method {run.method}, budget {run.meta.get('budget')}")
    save(figure, png, dpi=110)
    return png


def plot_or_note(run: Run, png: str | os.PathLike) -> str:
    """`replay_plot`'s path, or why there is no plot (matplotlib, an optional extra, missing)."""
    try:
        return str(replay_plot(run, png))
    except ImportError as error:
        return f"skipped: {error}"


def replay(path: str | os.PathLike, png: str | os.PathLike | None = None) -> None:
    """Print the table and write the plot (next to the run file by default)."""
    with open_run(path) as run:
        if not len(run):
            raise ValueError(f"{path} holds no checkpoint yet")
        print(replay_table(run))
        print(f"\nplot: {plot_or_note(run, png or Path(path).with_suffix('.png'))}")


def inspect(path: str | os.PathLike) -> str:
    """A summary of the file (module docstring)."""
    with open_run(path) as run:
        meta = run.meta
        lines = [f"file:          {run.path} ({run.path.stat().st_size / 1024:.1f} KiB, run format "
                 f"version {int(run.file.attrs['version'])}, this reader: {VERSION})",
                 f"method:        {run.method} {run.options or ''}",
                 f"budget:        {meta.get('budget')} × training FLOPs; checkpoint every {meta.get('every')} steps "
                 f"(as created); event_samples {meta.get('event_samples', 0)}, check_samples "
                 f"{meta.get('check_samples', 0)}; "
                 f"{meta.get('world_size', 1)} process(es)",
                 f"distribution:  Gaussian over {run.distribution.dim} inputs"
                 f"{' (standard)' if run.distribution.is_standard else ''}",
                 f"training FLOPs: {meta.get('training_flops')}",
                 "events:        " + ("; ".join(f"{n}: {e!r}" for n, e in run.events.items()) or "none")]
        if not len(run):
            lines.append("checkpoints:   none yet")
        else:
            last = run.last
            ledger = last.ledger
            updates = {}
            for ck in run:
                updates[ck.update] = updates.get(ck.update, 0) + 1
            lines += [f"checkpoints:   {len(run)} (steps {run.steps[0]}…{run.steps[-1]}); π at saves: "
                      + ", ".join(f"{k} {v}" for k, v in updates.items()),
                      f"model:         {last.model}",
                      f"ledger:        training {ledger['training_flops']:.4g} FLOPs, explanation "
                      f"{ledger['explanation_flops']:.4g} (ratio {ledger['ratio']:.3f} of budget {ledger['budget']}"
                      f"{'' if ledger['budget'] == meta.get('budget') else ', given on resuming'}), "
                      f"{ledger['steps']} steps, "
                      f"{ledger['full_updates']} rebuilds, {ledger['incremental_updates']} head updates, "
                      f"{ledger['stale_steps']} stale, {ledger['overruns']} overruns, checks "
                      f"{ledger['check_flops']:.4g} FLOPs",
                      f"wall time:     training loop {ledger.get('training_seconds', float('nan')):.3g} s, "
                      f"inside the Tracker {ledger.get('tracking_seconds', float('nan')):.3g} s (not budgeted)"]
    return "\n".join(lines)
