"""Reading a run file: `open_run(path)` → `Run` of `Checkpoint`s, no torch model needed.

    run = open_run("run.h5")
    for ck in run: ...                  # checkpoints in step order
    ck = run.at(step=500)               # exactly that step (KeyError naming the steps there)
    ck.explanation                      # π restored: explain(ck's explained graph, D, method)
    run.series("overshoot")             # that event's estimates over training, as arrays
    run.refresh()                       # see checkpoints written since opening; checkpoints
                                        # taken before stay readable (also after run.close())

A checkpoint's π is the one the tracker held at that step: π is always
explain(explained graph, D, method, **options) (a head update is the explanation of the
graph whose head is new and whose body is stale, see tracker/incremental.py), so
rebuilding it from the stored graph gives the same state; the stored state arrays let a
plain h5py reader see it without rebuilding.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
import torch

from explanations import Explanation, Gaussian, Graph, explain
from explanations.events import Event
from explanations.graph import Affine, iter_ops

from .events import event_from_plain
from .graphs import read_graph
from .plain import numbers, read_json
from .runfile import FORMAT, VERSION, RunFileError, parameter_name

RESERVED_SERIES = ("expectation",)    # series names that are not events


@contextmanager
def reading(path: Path, what: str) -> Iterator[None]:
    """Turn any failure to read `what` of run file `path` (h5py's OSError on a damaged
    chunk, a missing dataset, malformed JSON or arrays) into a RunFileError naming both."""
    try:
        yield
    except RunFileError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, IndexError) as error:
        raise RunFileError(f"{path}: {what} is damaged or malformed ({type(error).__name__}: {error})") from None


@dataclass
class Series:
    """One tracked quantity over training: row i belongs to steps[i].

    For an event: value, log10 (π's probability), flops (its cost), lo and hi (its 95%
    interval where it was sampled, Tracker(event_samples=N); NaN otherwise), and where
    sampling checks were recorded check_value, check_lo, check_hi (NaN where none).
    For "expectation": value and sd are [steps, outputs], check_* likewise.
    """
    name: str
    steps: np.ndarray
    value: np.ndarray
    log10: np.ndarray | None
    flops: np.ndarray | None
    sd: np.ndarray | None
    check_value: np.ndarray
    check_lo: np.ndarray
    check_hi: np.ndarray
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None


class Checkpoint:
    """One saved step: metadata, parameters, and π restored on demand. Its arrays are read
    when first asked for: from the snapshot its run had open, or, once the run was
    refreshed or closed, from the file reopened read-only by path, which must still hold
    this checkpoint as it was read."""

    def __init__(self, run: "Run", group: h5py.Group) -> None:
        self.run = run
        self._file, self._name = run.file, group.name       # the snapshot it was read from
        with reading(run.path, f"checkpoint '{group.name}'"):
            self.meta = _with_nan(read_json(group, "meta", RunFileError))
            self.step: int = int(self.meta["step"])
            # was π built by this step (the budget allows the first build only after a while)?
            self.has_explanation: bool = "explained" in group
        self._fingerprint = json.dumps(self.meta)           # to recognise it in a reopened file

    @property
    def update(self) -> str:
        """How π was brought to this step: "full", "incremental" or "stale"."""
        return self.meta["update"]

    @property
    def ledger(self) -> dict:
        return self.meta["ledger"]

    @property
    def estimates(self) -> dict[str, dict]:
        """The tracked events' estimates recorded at this step, by name."""
        return self.meta["estimates"]

    @contextmanager
    def _group(self, what: str) -> Iterator[h5py.Group]:
        """This checkpoint's HDF5 group, to read `what` from (failures become RunFileError
        naming it): in the run's snapshot while it is open, else in the file reopened."""
        with reading(self.run.path, what):
            if self._file:                                  # the snapshot is still open
                yield self._file[self._name]
                return
            with self._reopened() as file:
                yield file[self._name]

    @contextmanager
    def _reopened(self) -> Iterator[h5py.File]:
        """The run file reopened read-only, checked to hold this checkpoint unchanged."""
        try:
            file = h5py.File(self.run.path, "r")
        except OSError as error:
            raise RunFileError(f"{self.run.path} cannot be reopened to read step {self.step} "
                               f"(its run was refreshed or closed): {error}") from None
        with file:
            group = file.get(self._name)
            if group is None or json.dumps(_with_nan(read_json(group, "meta", RunFileError))) != self._fingerprint:
                raise RunFileError(f"{self.run.path} no longer holds step {self.step} as it was read (the file "
                                   f"was replaced since): reopen it with open_run and take the checkpoint again")
            yield file

    @cached_property
    def model(self) -> Graph:
        """The network's parameters at this step, as a formal graph."""
        with self._group(f"the model graph of step {self.step}") as group:
            return read_graph(group["model"])

    @cached_property
    def explained(self) -> Graph:
        """The parameters π explains (equal to `model` when π was fresh)."""
        if not self.has_explanation:
            raise LookupError(f"no π at step {self.step} of {self.run.path}: the budget had not yet "
                              f"allowed building it")
        with self._group(f"the explained graph of step {self.step}") as group:
            return read_graph(group["explained"])

    @cached_property
    def state(self) -> dict[str, np.ndarray]:
        """π's stored state arrays by name (mean, cov, cross, …)."""
        with self._group(f"π's state at step {self.step}") as group:
            return {name: np.asarray(data[()]) for name, data in group["state"].items()}

    @cached_property
    def explanation(self) -> Explanation:
        """π at this step, rebuilt from the explained graph without the torch model (the
        graph is read under `reading`; what explain() raises is its own)."""
        return explain(self.explained, self.run.distribution, self.run.method, **self.run.options)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The model's state_dict at this step (parameters and buffers, as the Tracker stored
        them), for `model.load_state_dict(ck.state_dict())` when resuming. Files written
        before checkpoints stored it give the affine maps of the compiled graph keyed
        "<path>.weight" / "<path>.bias", which is the state_dict only of models made of
        Linear layers and activations."""
        with self._group(f"the parameters of step {self.step}") as group:
            if "parameters" in group:
                return {parameter_name(key): torch.as_tensor(np.asarray(data[()]))
                        for key, data in group["parameters"].items()}
        return {key: tensor for op in iter_ops(self.model.chain) if isinstance(op, Affine)
                for key, tensor in ((f"{op.path}.weight", op.weight), (f"{op.path}.bias", op.bias))}

    def __repr__(self) -> str:
        return f"Checkpoint(step={self.step}, update={self.update!r})"


def _with_nan(meta: dict) -> dict:
    """Checkpoint `meta` with its number lists (π's E[y] and output sds, the sampling
    check of E[y]) as floats, null (a non-finite number, `plain.write_json`) as NaN."""
    for key in ("expectation", "output_sd"):
        if key in meta:
            meta[key] = numbers(meta[key])
    check = (meta.get("checks") or {}).get("expectation") or {}
    for key in ("value", "lo", "hi", "sd"):
        if key in check:
            check[key] = numbers(check[key])
    return meta


class Run:
    """A run file opened for reading (module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.file: h5py.File | None = None
        self.refresh()

    def refresh(self) -> "Run":
        """Reopen the file: the latest complete snapshot the writer has swapped in."""
        self.close()
        if not self.path.exists():
            raise FileNotFoundError(f"no run file at {self.path}")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as error:
            raise RunFileError(f"{self.path} is not a readable HDF5 file (truncated or foreign?): {error}") from None
        try:
            self._read_header()
        except BaseException:
            self.close()
            raise
        return self

    def _read_header(self) -> None:
        """Check the format and version, read the run's metadata and index the checkpoints."""
        attrs = self.file.attrs
        found = attrs.get("format")
        if found != FORMAT:
            raise RunFileError(f"{self.path} is not a π-tracker run file (format attribute: {found!r})")
        with reading(self.path, "the version attribute"):
            version = int(attrs.get("version", -1))
        if version > VERSION:
            raise RunFileError(f"{self.path} was written in run format version {version}; this π-tracker "
                               f"reads up to version {VERSION}: upgrade π-tracker to read it")
        if version < 1 or "run" not in self.file or "checkpoints" not in self.file:
            raise RunFileError(f"{self.path} has a malformed π-tracker layout (version {version})")
        with reading(self.path, "the run header (run/)"):
            self.meta = read_json(self.file["run"], "meta", RunFileError)
            distribution = self.file["run/distribution"]
            self.distribution = Gaussian(torch.as_tensor(distribution["mean"][()]),
                                         torch.as_tensor(distribution["cov"][()]))
            detectors = self.file["run/detectors"]
            graphs = [read_graph(detectors[str(i)]) for i in range(len(detectors))]
            self.events: dict[str, Event] = {name: event_from_plain(plain, graphs)
                                             for name, plain in self.meta["events"].items()}
            self.meta["method"], self.meta["options"]
        with reading(self.path, "the checkpoint index (checkpoints/)"):
            self._checkpoints = {int(g.attrs["step"]): g for g in self.file["checkpoints"].values()}
        self._cache: dict[int, Checkpoint] = {}

    @property
    def method(self) -> str:
        return self.meta["method"]

    @property
    def options(self) -> dict:
        return self.meta["options"]

    @property
    def steps(self) -> list[int]:
        return sorted(self._checkpoints)

    def at(self, step: int) -> Checkpoint:
        """The checkpoint saved at `step` (checkpoints taken stay readable after `refresh`
        and `close`; a closed run gives no new ones)."""
        if self.file is None:
            raise RunFileError(f"the run file {self.path} was closed; reopen it with open_run (or run.refresh())")
        if step not in self._checkpoints:
            raise KeyError(f"no checkpoint at step {step} in {self.path}; saved steps: {self.steps}")
        if step not in self._cache:
            self._cache[step] = Checkpoint(self, self._checkpoints[step])
        return self._cache[step]

    @property
    def last(self) -> Checkpoint | None:
        return self.at(self.steps[-1]) if self._checkpoints else None

    def __iter__(self) -> Iterator[Checkpoint]:
        return (self.at(step) for step in self.steps)

    def __len__(self) -> int:
        return len(self._checkpoints)

    def series(self, name: str) -> Series:
        """A tracked event's estimates over the saved steps (or name="expectation")."""
        if name != "expectation" and name not in self.events:
            raise KeyError(f"no tracked event {name!r} in {self.path}; tracked: {sorted(self.events)}")
        with reading(self.path, f"the series {name!r}"):
            return self._series(name)

    def _series(self, name: str) -> Series:
        """`series` for a name known to be tracked."""
        checkpoints = list(self)
        steps = np.array([ck.step for ck in checkpoints], dtype=np.int64)
        nan = float("nan")
        if name == "expectation":
            outputs = len(checkpoints[0].meta["expectation"]) if checkpoints else 0
            value = np.array([ck.meta["expectation"] for ck in checkpoints], dtype=float).reshape(-1, outputs)
            sd = np.array([ck.meta["output_sd"] for ck in checkpoints], dtype=float).reshape(-1, outputs)
            checks = [ck.meta.get("checks", {}).get("expectation") for ck in checkpoints]
            pick = lambda key: np.array([c[key] if c else [nan] * outputs for c in checks],
                                        dtype=float).reshape(-1, outputs)
            return Series(name, steps, value, None, None, sd, pick("value"), pick("lo"), pick("hi"))
        rows = [ck.estimates.get(name) or {} for ck in checkpoints]
        get = lambda key: np.array([nan if row.get(key) is None else row[key] for row in rows], dtype=float)
        checks = [ck.meta.get("checks", {}).get("events", {}).get(name) for ck in checkpoints]
        pick = lambda key: np.array([nan if not c or c[key] is None else c[key] for c in checks], dtype=float)
        value, log10 = get("value"), get("log10")
        log10[np.isnan(log10) & (value == 0)] = -np.inf     # log10 of a zero estimate, stored as null
        return Series(name, steps, value, log10, get("flops"), None,
                      pick("value"), pick("lo"), pick("hi"), get("lo"), get("hi"))

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, method={self.method!r}, checkpoints={len(self)})"


def open_run(path: str | os.PathLike) -> Run:
    """Open a run file for reading (see `Run`); RunFileError if it is not one."""
    return Run(path)
