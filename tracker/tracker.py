"""`Tracker`: keeps π current while a model trains, inside a FLOP budget, and saves it.

    with Tracker(model, optimizer, D, method="cumulant", events={"overshoot": Above(0, 4.0)},
                 budget=1.0, path="run.h5", every=50) as tr:
        for x, y in loader:
            ...; loss.backward(); optimizer.step()     # the step hook updates π
    tr.explanation, tr.ledger

Attachment: a forward pre-hook on the model counts the rows of every forward pass made
with gradients in training mode; an optimizer step post-hook then records the step's
training FLOPs (`costs.training_step_flops`, summed over ranks under torch.distributed)
and updates π. Nothing in the user's loop changes. A step that is skipped (GradScaler on
an overflow) fires no hook: its rows are counted with the next step; several forward
passes per step (gradient accumulation) are all counted. π explains the network as
`model.eval()` computes it (Dropout the identity, BatchNorm by its running statistics),
whatever mode the model trains in (`compile_model(..., inference=True)`).

Update policy, at every step, after the step's training FLOPs are recorded (ledger L,
headroom H = budget·training - explanation):
  predicted costs  upper bounds, so that nothing is spent that H does not cover: full =
                   `bounds.build_bound`, an event's query = `bounds.query_bound` (both
                   from the graph's shapes, computed before anything is spent and again
                   when the structure changes); head = `incremental.head_update_cost` (exact).
  at a save step   rebuild if H ≥ full, else head update if H ≥ head, else stay stale;
                   then each tracked event's probability if H ≥ its predicted query
                   (otherwise recorded as deferred), π's expectation, and the file.
                   With `event_samples=N` an event's probability is π-guided sampling
                   (`π.probability(event, flops=F)`, a 95% interval with it) capped at N
                   sample-equivalents beyond π's build, and its predicted query is that
                   cap: the sampler never passes it (its design search makes no pass that
                   would leave the draws fewer than their minimum).
  other steps      the same choice, but saving for the next save at an even pace, so
                   that rebuilds spread over the interval: spend only if
                   H - cost ≥ (k / every)·R, k the steps since the last save and
                   R = full + Σ queries the save's reserve. At the save H ≥ R whenever
                   the training of one step affords R / every.
  stale            when neither fits: π keeps its state, `ledger.stale_steps` grows.
  not explainable  while a parameter of the model or of a tracked detector is NaN or
                   infinite (a diverged run) there is no π to build: π keeps its last
                   state, the step counts as stale, no checkpoint is written, and a
                   RuntimeWarning names the parameter when it starts.
                   Training goes on untouched; tracking resumes once the parameters are
                   finite again, and every earlier checkpoint stays as it was.
Costs are charged as measured (`Ledger.charge`); a prediction that fell short would be
counted in `ledger.overruns`, so tests can assert the ratio held at every step.
Restoring π on resume is not charged: that π was paid for when it was built.

Structure changes (the model's compiled ops or shapes differ from the last step's: a
layer widened, a head replaced). With the same inputs and outputs the Tracker carries on:
training FLOPs and cost bounds follow the new structure, π is kept (stale) but gets no head
update across the change, and the next affordable rebuild explains the new model. A change
of the number of inputs or outputs stops tracking with a RuntimeWarning: the run file's
events, distribution and series are defined for the old outputs, and checkpoints of
another width would make them unreadable. Raising instead would kill the user's training
inside optimizer.step() for a bookkeeping reason; stopping keeps training and every
checkpoint written so far intact (track the new model with a new Tracker and path).

Storage (path given): a header at the start, a checkpoint every `every` steps and at
close (`storage.runfile`), atomic and readable while training runs. An existing file is
resumed: steps, ledger and π continue from its last checkpoint (load the parameters
with `open_run(path).last.state_dict()` first if the model was restarted). A resume is
refused (ValueError naming what differs) when the file's method, options, events (their
definitions), distribution or the model's structure differ from this Tracker's. Temporary
files of dead writers are deleted after those checks, never a live writer's. One Tracker
writes a file at a time: a second, while the first lives, gets RunFileError at once
(`storage.WriterLock`, released at close; a dead writer's lock is taken over). A save that
fails (a full disk) warns, leaves the file as it was, and training goes on.
Distributed: every rank counts its rows and the step's FLOPs are all-reduced; rank 0
alone builds π and writes (`explanation` is None on the other ranks; on resume only
rank 0 restores the step count and ledger).
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from explanations import METHODS, DivergedModel, Explanation, Gaussian, Graph, compile_model, explain
from explanations.events import Event
from explanations.estimate import Estimate
from explanations.explain import check_method
from explanations.graph import plain_array
from explanations.guided import GuidedSampling
from explanations.montecarlo import mean_estimate, probability_estimate, tally
from storage.events import event_to_plain
from storage.run import RESERVED_SERIES, open_run
from storage.runfile import RunFileError, WriterLock, append_checkpoint, create_run, remove_stale_temporaries

from .bounds import build_bound, query_bound
from .costs import trainable_paths, training_step_flops
from .incremental import head_update, head_update_cost, supports_head_update
from .ledger import Ledger
from .structure import structure, structure_difference

MIN_EVENT_SAMPLES = 1000


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def explanation_state(pi: Explanation) -> dict[str, np.ndarray]:
    """π's tensors by attribute name (the state a plain h5py reader sees)."""
    state = {name: value for name, value in vars(pi).items() if isinstance(value, Tensor)}
    if getattr(pi, "penultimate", None) is not None:
        for field in ("mean", "cov", "cross"):
            state[f"penultimate_{field}"] = getattr(pi.penultimate, field)
    return {name: plain_array(tensor) for name, tensor in state.items()}


def parameters_state(module: nn.Module) -> dict[str, np.ndarray]:
    """The module's state_dict as arrays (`graph.plain_array`: bfloat16 and other types numpy
    lacks as float32), stored with each checkpoint so that `load_state_dict(ck.state_dict())`
    restores it. Entries that are not tensors (a module's `get_extra_state`) have no array
    form and are left out: load such a model with `strict=False`."""
    return {name: plain_array(tensor) for name, tensor in module.state_dict().items()
            if isinstance(tensor, torch.Tensor)}


def _event_difference(old: Event, new: Event) -> str | None:
    """How two definitions of an event differ, in words, or None when they are the same:
    the same JSON and detectors of the same structure (their weights may have trained
    since the file was written)."""
    graphs_old: list[Graph] = []
    graphs_new: list[Graph] = []
    plain_old, plain_new = event_to_plain(old, graphs_old), event_to_plain(new, graphs_new)
    if plain_old != plain_new or len(graphs_old) != len(graphs_new):
        return f"file: {old!r}, here: {new!r}"
    return next((f"detector {i}'s {structure_difference(structure(a), structure(b))}"
                 for i, (a, b) in enumerate(zip(graphs_old, graphs_new)) if structure(a) != structure(b)), None)


def _plain_estimate(estimate) -> dict:
    lo, hi = estimate.interval if estimate.interval is not None else (None, None)
    return {"value": float(estimate.value), "log10": estimate.log10, "flops": float(estimate.flops),
            "samples": estimate.samples, "method": estimate.method, "lo": lo, "hi": hi,
            "degenerate": bool(estimate.details.get("degenerate", False))}


class Tracker:
    """Tracks π during training (module docstring)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, distribution: Gaussian,
                 method: str = "gaussian", events: dict[str, Event] | None = None, budget: float = 1.0,
                 path: str | os.PathLike | None = None, every: int = 50, *, options: dict | None = None,
                 check_samples: int = 0, event_samples: int = 0, resume: bool = True,
                 input_shape: tuple[int, ...] | None = None) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive number of steps, got {every!r}")
        if isinstance(check_samples, bool) or not isinstance(check_samples, int) or check_samples < 0 or check_samples == 1:
            raise ValueError(f"check_samples must be 0 or an integer ≥ 2 (a mean's interval needs two draws), "
                             f"got {check_samples!r}")
        if (isinstance(event_samples, bool) or not isinstance(event_samples, int)
                or event_samples != 0 and event_samples < MIN_EVENT_SAMPLES):
            raise ValueError(f"event_samples must be 0 (zero-sample estimates) or at least {MIN_EVENT_SAMPLES:,} "
                             f"sample-equivalents (the design search and a pilot come first), got {event_samples!r}")
        if method == "sampling":
            raise ValueError("method 'sampling' is the baseline π is checked against: track an explanation "
                             "(gaussian, cumulant, polynomial, auto) and pass check_samples=N to sample beside it")
        if method != "auto" and method not in METHODS:
            raise ValueError(f"unknown method {method!r}; available: auto, "
                             f"{', '.join(sorted(m for m in METHODS if m != 'sampling'))}")
        if not isinstance(distribution, Gaussian):
            raise TypeError(f"the input distribution must be an explanations.Gaussian, got {type(distribution).__name__}")
        self.module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        self.optimizer, self.distribution = optimizer, distribution
        self.method, self.options = method, dict(options or {})
        try:
            json.dumps(self.options)
        except TypeError as error:
            raise ValueError(f"options must be plain JSON values (they are stored in the run file): {error}") from None
        self.events = dict(events or {})
        self.input_shape = input_shape
        self.graph = compile_model(self.module, input_shape=input_shape, inference=True)
        check_method(self.graph, distribution, method, self.options)     # fails now, not in a training step
        for name, event in self.events.items():
            if not isinstance(name, str) or not isinstance(event, Event):
                raise TypeError(f"events maps names (str) to Events, got {name!r}: {event!r}")
            if name in RESERVED_SERIES:
                raise ValueError(f"an event may not be named {name!r}: run.series({name!r}) is reserved "
                                 f"for π's {name}; choose another name")
            event.check(self.graph.n_outputs)
            event.dnf()                        # fails now, not inside a training step
        if distribution.dim != self.graph.n_inputs:
            raise ValueError(f"the distribution has {distribution.dim} dimensions, the model takes "
                             f"{self.graph.n_inputs} inputs")
        self.every, self.check_samples, self.event_samples = every, check_samples, event_samples
        self.path = Path(path) if path is not None else None
        self.rank, self.world = _rank_and_world()
        self.ledger = Ledger(budget=budget)
        self.step = 0
        self.explanation: Explanation | None = None
        self.explained: Graph | None = None       # the graph π explains
        self.explained_step: int | None = None     # the step of π's body (its last rebuild)
        self.last_update = "stale"
        self.structure = structure(self.graph)
        self._bounds: dict[str | None, float] = {}  # cost bounds for `structure`: None the build, names the queries
        self.saved_step: int | None = None
        self.unexplainable: str | None = None     # why the model cannot be explained now, if it cannot
        self.stopped: str | None = None            # why tracking stopped (module docstring), if it did
        self._deferred: set[str] = set()           # events whose deferral was warned of
        self._rows = 0
        self.started = self._left = time.perf_counter()
        self._lock: WriterLock | None = None
        if self.path is not None and self.rank == 0:
            self._open_file(resume)
        self._hooks = [self.module.register_forward_pre_hook(self._count_rows, with_kwargs=True),
                       optimizer.register_step_post_hook(self._after_step)]

    # ---- hooks -------------------------------------------------------------------------
    def _count_rows(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Rows of a training forward pass: its first tensor argument's, positional or keyword."""
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)), None)
        if torch.is_grad_enabled() and module.training and first is not None:
            self._rows += first.shape[0] if first.dim() > 1 else 1

    def _after_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        entered = time.perf_counter()
        self.ledger.training_seconds += entered - self._left
        try:
            self._step()
        finally:
            self._left = time.perf_counter()
            self.ledger.tracking_seconds += self._left - entered

    def _step(self) -> None:
        rows, self._rows = self._rows, 0
        if self.world > 1:
            total = torch.tensor([rows], dtype=torch.float64)
            dist.all_reduce(total)               # every rank, every step, stopped or not: collectives match
            rows = int(total.item())
        if self.stopped is not None:
            return
        with torch.no_grad():
            current = self._current() if self.rank == 0 else None
        if current is not None and not self._follow(current):
            return
        self.ledger.train(training_step_flops(self.graph, rows, trainable_paths(self.module)))
        self.step += 1
        if self.rank != 0:
            return
        with torch.no_grad():
            if current is None:
                self.last_update = "stale"
                self.ledger.skip()
                return
            save = self.path is not None and self.step % self.every == 0
            self._update(current, save)
            if save:
                self._save_or_warn(current)

    def _current(self) -> Graph | None:
        """The model's formal graph now, or None while a parameter of the model or of a
        tracked detector is not finite, or its outputs overflow (module docstring: not
        explainable), with a warning when that starts."""
        owners = [("the model", self.module)] + [(f"the detector of '{name}'", detector.module)
                                                 for name, event in self.events.items()
                                                 for detector in event.detectors()]
        reason = next((f"{owner}'s {kind} '{name}' has NaN or infinite entries"
                       for owner, module in owners
                       for kind, named in (("parameter", module.named_parameters()), ("buffer", module.named_buffers()))
                       for name, value in named
                       if value.is_floating_point() and not bool(torch.isfinite(value).all())), None)
        graph = None
        if reason is None:
            try:
                graph = compile_model(self.module, input_shape=self.input_shape, inference=True)
            except DivergedModel as error:
                reason = str(error)
        if reason is not None and self.unexplainable is None:
            warnings.warn(f"step {self.step}: π is left stale until it is finite again: {reason}",
                          RuntimeWarning, stacklevel=2)
        self.unexplainable = reason
        return graph

    def _follow(self, current: Graph) -> bool:
        """Follow the model's graph `current`, whose structure may have changed (module
        docstring); False when tracking had to stop because its inputs or outputs changed."""
        change = structure_difference(self.structure, structure(current))
        if change is None:
            return True
        if current.n_inputs != self.graph.n_inputs or current.n_outputs != self.graph.n_outputs:
            self.stopped = (f"the model's structure changed at step {self.step + 1} ({change}): it now maps "
                            f"{current.n_inputs} inputs to {current.n_outputs} outputs, where the tracked "
                            f"events{' and run file' if self.path else ''} expect {self.graph.n_inputs} → "
                            f"{self.graph.n_outputs}")
            warnings.warn(f"tracking stopped: {self.stopped}; training is untouched and every checkpoint "
                          f"written so far stays readable; track the new model with a new Tracker"
                          f"{' and another path' if self.path else ''}", RuntimeWarning, stacklevel=4)
            return False
        self.graph, self.structure, self._bounds = current, structure(current), {}
        return True

    @property
    def predicted_full(self) -> float:
        """Upper bound on the FLOPs of a rebuild of the current structure (`bounds`)."""
        if None not in self._bounds:
            self._bounds[None] = build_bound(self.graph, self.distribution, self.method, self.options)
        return self._bounds[None]

    def _predicted_query(self, name: str) -> float:
        """Upper bound on the FLOPs of tracked event `name`'s probability (`bounds`; with
        `event_samples`, the cap the sampled estimate is given)."""
        if self.event_samples:
            return self.event_samples * self.graph.flops_per_sample
        if name not in self._bounds:
            self._bounds[name] = query_bound(self.graph, self.distribution, self.method, self.options,
                                             self.events[name])
        return self._bounds[name]

    def _reserve(self) -> float:
        """FLOPs the next save needs: a rebuild and every tracked event's query."""
        if self.path is None:
            return 0.0
        return self.predicted_full + sum(self._predicted_query(name) for name in self.events)

    def _head_applies(self) -> bool:
        """Can π's head be updated: it keeps a head state and explains this structure?"""
        return (supports_head_update(self.explanation) and self.explained is not None
                and structure(self.explained) == self.structure)

    def _may_spend(self, cost: float, save: bool) -> bool:
        if save or self.path is None:
            return self.ledger.afford(cost)
        saved = (self.step % self.every) / self.every     # the share of the reserve put by so far
        return self.ledger.afford(cost) and self.ledger.headroom - cost >= saved * self._reserve()

    def _update(self, current: Graph, save: bool, stale_counts: bool = True) -> None:
        """Rebuild, head update or stay stale (module docstring) for the model's graph
        `current`; `stale_counts` is False for the refresh at close, which is no training step."""
        if self._may_spend(self.predicted_full, save):
            pi = explain(current, self.distribution, self.method, **self.options)
            self.ledger.charge(pi.build_flops)
            self.explanation, self.explained, self.explained_step = pi, current, self.step
            self.ledger.full_updates += 1
            self.last_update = "full"
        elif self._head_applies() and self._may_spend(head_update_cost(self.explanation), save):
            self.ledger.charge(head_update_cost(self.explanation))
            self.explanation = head_update(self.explanation, current)
            self.explained = self.explanation.graph
            self.ledger.incremental_updates += 1
            self.last_update = "incremental"
        else:
            self.last_update = "stale"
        if stale_counts and self.last_update != "full":
            self.ledger.skip()              # π's body is behind the model at this step

    # ---- saving ------------------------------------------------------------------------
    def _open_file(self, resume: bool) -> None:
        """Hold the run's writer lock (`storage.WriterLock`: RunFileError while another live
        Tracker writes it), then resume the file or create it; the lock is released on any
        error here and at `close`."""
        lock = WriterLock(self.path).acquire()
        try:
            self._resume_or_create(resume)
        except BaseException:
            lock.release()
            raise
        self._lock = lock
        remove_stale_temporaries(self.path)         # dead writers' only, after the resume checks

    def _resume_or_create(self, resume: bool) -> None:
        if self.path.exists():
            if not resume:
                raise FileExistsError(f"{self.path} exists; pass resume=True to continue it or choose another path")
            self._resume()
            return
        graphs: list[Graph] = []
        events = {name: event_to_plain(event, graphs) for name, event in self.events.items()}
        meta = {"method": self.method, "options": self.options, "events": events, "every": self.every,
                "budget": self.ledger.budget, "world_size": self.world, "n_inputs": self.graph.n_inputs,
                "n_outputs": self.graph.n_outputs, "flops_per_sample": self.graph.flops_per_sample,
                "training_flops": "rows x (forward + weight gradients of trainable maps + input gradients "
                                  "below a trainable map), from the formal graph",
                "check_samples": self.check_samples, "event_samples": self.event_samples}
        D = self.distribution
        create_run(self.path, meta, D.mean.double().cpu().numpy(), D.cov.double().cpu().numpy(), graphs)

    def _resume(self) -> None:
        """Continue a run file from its last checkpoint: step, ledger, π (module docstring)."""
        with open_run(self.path) as run:
            mismatches = [what for what, same in (
                (f"method (file: {run.method}, here: {self.method})", run.method == self.method),
                (f"options (file: {run.options}, here: {self.options})", run.options == self.options),
                (f"event_samples (file: {run.meta.get('event_samples', 0)}, here: {self.event_samples})",
                 run.meta.get("event_samples", 0) == self.event_samples),
                (f"events (file: {sorted(run.events)}, here: {sorted(self.events)})",
                 sorted(run.events) == sorted(self.events)),
                (f"the model's inputs and outputs (file: {run.meta.get('n_inputs')} → {run.meta.get('n_outputs')}, "
                 f"here: {self.graph.n_inputs} → {self.graph.n_outputs})",
                 (run.meta.get("n_inputs"), run.meta.get("n_outputs")) == (self.graph.n_inputs, self.graph.n_outputs)),
                ("distribution", run.distribution.dim == self.distribution.dim and bool(
                    torch.allclose(run.distribution.mean, self.distribution.mean.double().cpu()) and
                    torch.allclose(run.distribution.cov, self.distribution.cov.double().cpu())))) if not same]
            if sorted(run.events) == sorted(self.events):
                differences = {name: _event_difference(run.events[name], event) for name, event in self.events.items()}
                mismatches += [f"the definition of event {name!r} ({difference})"
                               for name, difference in differences.items() if difference is not None]
            if mismatches:
                empty = " (it holds no checkpoint yet: delete it to start over)" if run.last is None else ""
                raise ValueError(f"cannot resume {self.path}: the file and this Tracker differ in "
                                 f"{', '.join(mismatches)}; choose another path{empty}")
            last = run.last
            if last is None:
                return
            change = structure_difference(structure(last.model), self.structure)
            if change is not None:
                raise ValueError(f"cannot resume {self.path}: its compiled model differs from this one in {change} "
                                 f"(another model, or a file written by a π-tracker that compiled it differently); "
                                 f"choose another path")
            if last.ledger.get("ratio", 0.0) > self.ledger.budget:
                raise ValueError(f"cannot resume {self.path} with budget {self.ledger.budget}: its ledger already "
                                 f"stands at ratio {last.ledger['ratio']:.3g}; give a budget of at least that")
            self.step = self.saved_step = last.step
            self.ledger = Ledger.from_plain({**last.ledger, "budget": self.ledger.budget})
            self.last_update = last.update
            if last.has_explanation:
                self.explanation, self.explained = last.explanation, last.explained
                self.explained_step = last.meta.get("explained_step")

    def _estimates(self, last: bool = False) -> dict[str, dict | None]:
        """Each tracked event's estimate, or None where the budget does not cover its
        predicted query yet (deferred, with a warning the first time; at the `last` save,
        which training will not pay for again, always)."""
        out: dict[str, dict | None] = {}
        pi = self.explanation
        for name, event in self.events.items():
            if pi is None or not self.ledger.afford(self._predicted_query(name)):
                out[name] = None                  # deferred: the budget does not cover it yet
                if pi is not None and (last or name not in self._deferred):
                    self._deferred.add(name)
                    left = self.ledger.budget * self.ledger.training_flops - self.ledger.explanation_flops
                    later = ("the last checkpoint goes without it; a larger budget, batch or `every` would have "
                             "paid for it" if last else
                             "it comes at a save whose headroom covers it after π's rebuild, which may be never "
                             "at this budget, batch and `every`; a larger one of them, or `event_samples`, helps")
                    warnings.warn(f"step {self.step}: the estimate of '{name}' is deferred: its cost bound "
                                  f"({self._predicted_query(name):.3g} FLOPs) is more than the budget leaves "
                                  f"({left:.3g}); {later}", RuntimeWarning, stacklevel=5)
                continue
            if self.event_samples:
                estimate, query = self._sampled(pi, name)
                if estimate is None:
                    out[name] = None
                    continue
            else:
                estimate = pi.probability(event)
                query = max(estimate.flops - pi.build_flops, 0.0)
            self.ledger.charge(query)
            out[name] = {**_plain_estimate(estimate), "query_flops": query}
        return out

    def _sampled(self, pi: Explanation, name: str) -> tuple[Estimate | None, float]:
        """Event `name`'s π-guided estimate and its cost beyond π's build, capped at
        `event_samples` sample-equivalents of the model: `pi.probability(event, flops=F)`,
        where F counts π's build for explanations that guide their draws (GuidedSampling)
        and only the draws otherwise. A cap too small to buy the draws (ValueError) records
        the estimate as missing, charged the cap, with a warning."""
        cap = self._predicted_query(name)
        own = pi.build_flops if isinstance(pi, GuidedSampling) else 0
        try:
            estimate = pi.probability(self.events[name], flops=own + cap)
        except ValueError as error:
            self.ledger.charge(cap)
            warnings.warn(f"step {self.step}: no estimate of '{name}': {error}", RuntimeWarning, stacklevel=6)
            return None, cap
        return estimate, max(estimate.flops - own, 0.0)

    def _checks(self, graph: Graph) -> dict:
        """Plain sampling of the current model: the run's independent check of π."""
        counts = tally(graph, self.distribution, self.check_samples, list(self.events.values()), seed=self.step)
        self.ledger.check_flops += counts.flops
        unit = graph.flops_per_sample
        mean = mean_estimate(counts, unit)
        lo, hi = mean.interval
        events = {}
        for i, name in enumerate(self.events):
            p = probability_estimate(counts.hits[i], counts, unit)
            events[name] = {"value": p.value, "lo": p.interval[0], "hi": p.interval[1], "hits": counts.hits[i]}
        return {"samples": self.check_samples, "flops": counts.flops, "events": events,
                "expectation": {"value": mean.value.tolist(), "lo": lo.tolist(), "hi": hi.tolist(),
                                "sd": mean.details["std"].tolist()}}

    def _save_or_warn(self, current: Graph, last: bool = False) -> None:
        """`_save` (`last` at close), where an I/O error (a full disk, a lost mount) does not stop training: the
        checkpoint is not written, a RuntimeWarning says so, every earlier checkpoint stays
        as it was, and the next save tries again."""
        try:
            self._save(current, last)
        except (OSError, RunFileError) as error:
            warnings.warn(f"step {self.step}: the checkpoint was not written ({error}); training goes on, "
                          f"earlier checkpoints in {self.path} are intact and the next save tries again",
                          RuntimeWarning, stacklevel=3)

    def _save(self, current: Graph, last: bool = False) -> None:
        """Write this step's checkpoint of the model's graph `current` (π's estimates first,
        so the ledger is final; `last` at close)."""
        pi = self.explanation
        estimates = self._estimates(last)
        meta = {"update": self.last_update, "explained_step": self.explained_step,
                "estimates": estimates, "wall_time": time.perf_counter() - self.started, "time": time.time()}
        if self.check_samples:
            meta["checks"] = self._checks(current)
        if pi is not None:
            expectation = pi.expectation()
            meta["expectation"] = expectation.value.tolist()
            cov = getattr(pi, "cov", None)           # `halfspaces` has no output covariance
            meta["output_sd"] = (cov.diagonal().clamp_min(0).sqrt().tolist() if cov is not None
                                 else [math.nan] * self.graph.n_outputs)
        else:
            meta["expectation"] = meta["output_sd"] = [math.nan] * self.graph.n_outputs
        meta["ledger"] = self.ledger.to_plain()
        graphs: dict[str, Graph | str] = {"model": current}
        if self.explained is not None:
            fresh = self.last_update == "full" and self.explained_step == self.step
            graphs["explained"] = "model" if fresh else self.explained
        append_checkpoint(self.path, self.step, meta, graphs, explanation_state(pi) if pi is not None else {},
                          parameters_state(self.module))
        self.saved_step = self.step

    # ---- lifetime ----------------------------------------------------------------------
    def close(self) -> None:
        """Detach the hooks and save a last checkpoint (refreshing π if affordable), unless
        the model cannot be explained now (module docstring)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        try:
            if (self.rank == 0 and self.path is not None and self.step > 0 and self.saved_step != self.step
                    and self.stopped is None):
                self._last_save()
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def _last_save(self) -> None:
        """The checkpoint at close: π refreshed if affordable (no training step is counted),
        unless the model cannot be explained now or its inputs or outputs changed."""
        entered = time.perf_counter()
        with torch.no_grad():
            current = self._current()
            if current is None or not self._follow(current):
                return
            if self.last_update != "full":
                self._update(current, save=True, stale_counts=False)
            self.ledger.tracking_seconds += time.perf_counter() - entered   # (what the checkpoint stores)
            written = time.perf_counter()
            self._save_or_warn(current, last=True)
            self.ledger.tracking_seconds += time.perf_counter() - written

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, kind: type | None, *exc: object) -> None:
        """close(); where the block already raised, a failing last save only warns, so the
        block's own error is the one that propagates."""
        if kind is None:
            self.close()
            return
        try:
            self.close()
        except Exception as error:
            warnings.warn(f"the Tracker's last checkpoint was not written at close ({error})", RuntimeWarning,
                          stacklevel=2)

    def __repr__(self) -> str:
        return (f"Tracker(step={self.step}, method={self.method!r}, ratio={self.ledger.ratio:.3g}/"
                f"{self.ledger.budget}, stale_steps={self.ledger.stale_steps})")
