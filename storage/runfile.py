"""Writing a run file: a header, then one checkpoint group per save, each save atomic.

Layout (docs/FORMAT.md has the full, versioned description):

    /                      attrs format = "pi-tracker run", version = 1
    /run/meta              JSON: method, options, events, every, budget, flop convention, …
    /run/distribution/     mean, cov (float64)
    /run/detectors/<i>/    graphs of the learned detectors the events use (`write_graph`)
    /checkpoints/<step>/   step zero-padded to 10 digits:
        meta               JSON: step, explained_step, update, ledger, expectation,
                           estimates of every tracked event, sampling checks, times
        model/             the parameters at this step (`write_graph`)
        explained/         the parameters π explains (a soft link to model/ when π is fresh)
        state/<name>       π's state arrays (output mean, cov, cross-covariance, …)
        parameters/<name>  the model's state_dict at this step (parameters and buffers)

Durability: every save writes a complete new file next to the old one and swaps it in:
copy the current file to `.<name>.<pid>.tmp` in the same folder, add the checkpoint,
close, fsync, `os.replace` onto the run file, fsync the folder. A process killed at any
moment leaves either the old file or the new one, never a torn one (SWMR would avoid the
copy but leaves a crashed file unopenable until `h5clear -s`). Readers that hold the old
file open keep a consistent snapshot; `Run.refresh()` reopens to see new checkpoints.
Cost: each save copies the file (bytes, at disk speed); arrays are gzip-compressed.
Nothing is pickled: JSON in datasets (attributes over ~64 KB fail), arrays as datasets.
"""
from __future__ import annotations

import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from explanations.graph import Graph

from .graphs import write_graph
from .plain import write_json

FORMAT = "pi-tracker run"
VERSION = 1
COMPRESSION = "gzip"


class RunFileError(ValueError):
    """A file that is not a readable π-tracker run (foreign, truncated, newer version)."""


def checkpoint_name(step: int) -> str:
    return f"{step:010d}"


def parameter_key(name: str) -> str:
    """A state_dict name as an HDF5 link name: '%' and '/' (which HDF5 reads as a path, and
    torch allows in module names) percent-encoded; `parameter_name` inverts it."""
    return name.replace("%", "%25").replace("/", "%2F")


def parameter_name(key: str) -> str:
    return key.replace("%2F", "/").replace("%25", "%")


def write_arrays(group: h5py.Group, arrays: dict[str, np.ndarray]) -> None:
    for name, array in arrays.items():
        array = np.asarray(array)
        chunked = array.ndim > 0 and array.size > 1
        group.create_dataset(name, data=array, compression=COMPRESSION if chunked else None,
                             shuffle=chunked)


@contextmanager
def _replacing(path: Path, copy: bool) -> Iterator[h5py.File]:
    """An HDF5 file open for writing that atomically becomes `path` on success (module
    docstring); on any error the temporary file is removed and `path` is untouched."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if copy:
            shutil.copyfile(path, temporary)
        with h5py.File(temporary, "a" if copy else "w") as file:
            yield file
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _alive(pid: int) -> bool:
    """Is process `pid` running on this machine (this one included)?"""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # another user's process: running
        pass
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> None:
    """Delete temporary files `.<name>.<pid>.tmp` that writers of `path` killed mid-save
    left behind: only those whose process is gone (a live writer's save is in progress);
    never the run itself."""
    path = Path(path)
    prefix = f".{path.name}."
    for leftover in path.parent.glob(f"{prefix}*.tmp"):
        pid = leftover.name[len(prefix):-len(".tmp")]
        if pid.isdigit() and not _alive(int(pid)):
            leftover.unlink(missing_ok=True)


def create_run(path: str | os.PathLike, meta: dict, mean: np.ndarray, cov: np.ndarray,
               detectors: list[Graph] = ()) -> None:
    """Write a new run file with its header; refuses to overwrite an existing file."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; open it to resume, or choose another path")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _replacing(path, copy=False) as file:
        file.attrs["format"] = FORMAT
        file.attrs["version"] = VERSION
        run = file.create_group("run")
        write_json(run, "meta", {**meta, "created": time.time()})
        write_arrays(run.create_group("distribution"), {"mean": mean, "cov": cov})
        graphs = run.create_group("detectors")
        for i, graph in enumerate(detectors):
            write_graph(graphs.create_group(str(i)), graph, compression=COMPRESSION)
        file.create_group("checkpoints")


def append_checkpoint(path: str | os.PathLike, step: int, meta: dict, graphs: dict[str, Graph | str],
                      state: dict[str, np.ndarray], parameters: dict[str, np.ndarray] | None = None) -> None:
    """Add checkpoint `step` atomically (module docstring); an existing one is replaced.
    A graph given as the name of another key is stored as an HDF5 soft link to it;
    `parameters` is the model's state_dict (names → arrays), stored under `parameters/`."""
    path = Path(path)
    with _replacing(path, copy=True) as file:
        checkpoints = file["checkpoints"]
        name = checkpoint_name(step)
        if name in checkpoints:
            del checkpoints[name]
        group = checkpoints.create_group(name)
        group.attrs["step"] = step
        write_json(group, "meta", {**meta, "step": step})
        for key, graph in graphs.items():
            if isinstance(graph, str):
                group[key] = h5py.SoftLink(f"{group.name}/{graph}")
            else:
                write_graph(group.create_group(key), graph, compression=COMPRESSION)
        write_arrays(group.create_group("state"), state)
        if parameters is not None:
            write_arrays(group.create_group("parameters"), {parameter_key(k): v for k, v in parameters.items()})
