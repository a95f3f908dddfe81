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
read the current file into memory, add the checkpoint there (HDF5 never writes to disk,
so a full disk cannot leave it half-flushed), write the bytes to `.<name>.<pid>.tmp` in
the same folder with the run file's permission bits, fsync, `os.replace` onto the run
file (a symlink's target: the link stays), fsync the folder. A process killed at any
moment leaves either the old file or the new one, never a torn one; a failed write
removes the temporary and raises RunFileWriteError (SWMR would avoid the copy but leaves
a crashed file unopenable until `h5clear -s`). Readers that hold the old file open keep
a consistent snapshot; `Run.refresh()` reopens to see new checkpoints. `WriterLock`
keeps a second writer off the same run. Cost: each save reads and writes the whole
file (bytes, at disk speed, and the file's size in memory); arrays are gzip-compressed.
Nothing is pickled: JSON in datasets (attributes over ~64 KB fail), arrays as datasets.
"""
from __future__ import annotations

import io
import json
import os
import socket
import stat
import time
from contextlib import contextmanager, suppress
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
    """A file that is not a readable π-tracker run (foreign, truncated, newer version), or
    a run that another live writer holds (`WriterLock`)."""


class RunFileWriteError(RunFileError, OSError):
    """A save that failed on an OSError (a full disk, a lost mount): the run file is as it
    was before the save. Both a RunFileError and an OSError, for callers catching either."""


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
def _replacing(path: Path, what: str, copy: bool) -> Iterator[h5py.File]:
    """An HDF5 file open for writing that atomically becomes `path` on success (module
    docstring). It is built in memory (from the current file's bytes when `copy`), so that
    HDF5 never meets a failed write; its bytes then go to the temporary file in plain
    writes. On any error the temporary is removed and `path` is untouched; an OSError
    (a full disk, say) is raised again as a RunFileWriteError saying `what` was not written."""
    target = _target(path)                       # a symlink stays one: its target is replaced
    try:
        buffer = io.BytesIO(target.read_bytes() if copy else b"")
        with h5py.File(buffer, "a" if copy else "w") as file:
            yield file
        _install(target, buffer.getbuffer())
    except OSError as error:
        raise RunFileWriteError(f"{path}: {what} was not written ({type(error).__name__}: {error}); "
                                f"the file on disk was left as it was") from error


def _install(target: Path, data: memoryview) -> None:
    """Write `data` to `.<name>.<pid>.tmp` beside `target` with `target`'s permission bits,
    fsync it, rename it over `target` and fsync the folder; the temporary is removed on error."""
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if target.exists():
            os.chmod(temporary, stat.S_IMODE(target.stat().st_mode))
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    folder = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _target(path: str | os.PathLike) -> Path:
    """The file `path` names: a symlink's target, whose folder holds the temporaries and
    the lock, and which a save replaces (the link itself stays)."""
    return Path(os.path.realpath(path))


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
    path = _target(path)
    prefix = f".{path.name}."
    for leftover in path.parent.glob(f"{prefix}*.tmp"):
        pid = leftover.name[len(prefix):-len(".tmp")]
        if pid.isdigit() and not _alive(int(pid)):
            leftover.unlink(missing_ok=True)


class WriterLock:
    """The one-writer lock of run file `path`: `<path>.lock` (of the symlink's target when
    `path` is one), created atomically and holding the writer's host name and pid as JSON.

        lock = WriterLock(path).acquire()    # RunFileError while another live writer holds it
        ...                                  # write the run
        lock.release()

    A lock left by a writer that died (same host, process gone) is taken over; one held
    on another host cannot be checked and is refused, naming the file to delete."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        target = _target(path)
        self.lock = target.with_name(f"{target.name}.lock")

    @property
    def owner(self) -> str:
        """The lock text of this process: its host name and pid as JSON."""
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid()})

    def acquire(self) -> "WriterLock":
        """Create the lock (and its folder), taking over a dead writer's; RunFileError if a
        live writer holds it."""
        self.lock.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                descriptor = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over()
                continue
            try:
                with os.fdopen(descriptor, "w") as handle:
                    handle.write(self.owner)
            except BaseException:                       # a full disk: leave no empty lock behind
                self.lock.unlink(missing_ok=True)
                raise
            return self

    def release(self) -> None:
        """Remove the lock if this writer holds it (another writer's is left alone)."""
        if self._holder() == self.owner:
            self.lock.unlink(missing_ok=True)

    def _holder(self) -> str | None:
        """The lock file's text; None if there is none."""
        try:
            return self.lock.read_text()
        except FileNotFoundError:
            return None

    def _take_over(self) -> None:
        """Remove the existing lock if its writer is dead, else raise RunFileError naming it.
        The lock is first renamed aside, so that of two writers taking it over at once only
        one removes it; the other finds the winner's fresh lock there and puts it back.
        (A third writer creating the lock in that instant would hold it too: a dead lock
        met by three new writers at once is not covered.)"""
        holder = self._holder()
        if holder is None:
            return                                      # released meanwhile: try again
        self._refuse_if_alive(holder)
        aside = self.lock.with_name(f".{self.lock.name}.{os.getpid()}.dead")
        try:
            os.rename(self.lock, aside)
        except FileNotFoundError:
            return                                      # another writer took it over first
        if aside.read_text() != holder:
            with suppress(FileExistsError):
                os.link(aside, self.lock)
        aside.unlink()

    def _refuse_if_alive(self, holder: str) -> None:
        """RunFileError unless lock text `holder` names a dead process on this host."""
        try:
            owner = json.loads(holder)
            host, pid = str(owner["host"]), int(owner["pid"])
        except (ValueError, KeyError, TypeError):
            raise RunFileError(f"{self.path} is locked by {self.lock}, which names no writer ({holder[:80]!r}: "
                               f"one is starting, or the lock is damaged): delete the lock if no process "
                               f"writes the run") from None
        if host != socket.gethostname():
            raise RunFileError(f"{self.path} is being written by process {pid} on host {host} "
                               f"(lock {self.lock}): if that process is gone, delete the lock")
        if pid == os.getpid():
            raise RunFileError(f"{self.path} is being written by this process (lock {self.lock}): a Tracker on it "
                               f"was not closed; call its close(), or use it in a `with` block")
        if _alive(pid):
            raise RunFileError(f"{self.path} is being written by process {pid} on this host ({host}, "
                               f"lock {self.lock}): two writers would lose each other's checkpoints; "
                               f"wait for it to finish or choose another path")


def create_run(path: str | os.PathLike, meta: dict, mean: np.ndarray, cov: np.ndarray,
               detectors: list[Graph] = ()) -> None:
    """Write a new run file with its header; refuses to overwrite an existing file."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; open it to resume, or choose another path")
    _target(path).parent.mkdir(parents=True, exist_ok=True)
    with _replacing(path, "the new run file", copy=False) as file:
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
    with _replacing(path, f"the checkpoint of step {step}", copy=True) as file:
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
