"""Storage defects found in review: bfloat16 graphs, the writer lock, a full disk, checkpoints
after refresh/close, file mode and symlinks, strict JSON, and the CLI's argument checks."""
import json
import math
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import warnings

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from explanations import Gaussian, compile_model, explain
from explanations.events import Above
from storage import RunFileError, RunFileWriteError, WriterLock, open_run, read_graph, write_graph
from storage.runfile import append_checkpoint, create_run
from tracker import Tracker
from train.cli import main
from train.demo_tracked import drift_summary, track


def small_graph(seed: int):
    torch.manual_seed(seed)
    return compile_model(nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2)))


def small_run(path, steps=(1, 2)):
    """A run file of `steps` checkpoints written by the storage layer alone (no Tracker)."""
    create_run(path, {"method": "gaussian", "options": {}, "events": {"e": {"event": "above", "k": 0, "t": 1.0}}},
               np.zeros(3), np.eye(3))
    for step in steps:
        append_checkpoint(path, step, {"update": "full", "estimates": {"e": None}, "expectation": [0.0, 0.0],
                                       "output_sd": [1.0, 1.0]},
                          {"model": small_graph(step), "explained": "model"}, {"mean": np.full(2, float(step))})


def strict_json(text: str):
    """json.loads refusing the non-standard NaN / Infinity tokens."""
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=refuse)


# ---- 1: bfloat16 weights ------------------------------------------------------------------
def test_a_bfloat16_graph_is_stored_as_float32(tmp_path):
    graph = small_graph(0).to(dtype=torch.bfloat16)
    with h5py.File(tmp_path / "g.h5", "w") as f:
        write_graph(f.create_group("model"), graph)
    with h5py.File(tmp_path / "g.h5", "r") as f:
        back = read_graph(f["model"])
    assert back.dtype == torch.float32
    x = torch.randn(5, 3)
    assert torch.equal(back.forward(x), graph.to(dtype=torch.float32).forward(x))


def test_a_bfloat16_model_is_tracked_to_its_checkpoints(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2)).to(torch.bfloat16)
    optimizer = torch.optim.SGD(model.parameters(), 1e-2)
    path = tmp_path / "bf16.h5"
    with Tracker(model, optimizer, Gaussian.standard(4), "gaussian", {"e": Above(0, 2.0)}, budget=1.0,
                 path=path, every=5):
        for _ in range(10):
            optimizer.zero_grad()
            (model(torch.randn(64, 4, dtype=torch.bfloat16)).float() ** 2).mean().backward()
            optimizer.step()
    run = open_run(path)
    assert run.steps == [5, 10]
    assert run.last.model.dtype == torch.float32
    stored = run.last.state_dict()
    assert all(torch.equal(stored[k], v.float()) for k, v in model.state_dict().items())


# ---- 2: one writer per run file -----------------------------------------------------------
def write_lock(path, host, pid):
    (path.parent / f"{path.name}.lock").write_text(json.dumps({"host": host, "pid": pid}))


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    path = tmp_path / "run.h5"
    lock = WriterLock(path).acquire()
    assert json.loads((tmp_path / "run.h5.lock").read_text()) == {"host": socket.gethostname(), "pid": os.getpid()}
    with pytest.raises(RunFileError, match="run.h5 is being written by this process"):
        WriterLock(path).acquire()
    lock.release()
    assert not (tmp_path / "run.h5.lock").exists()
    WriterLock(path).acquire().release()                        # free again


def test_a_live_or_foreign_writers_lock_is_kept(tmp_path):
    path = tmp_path / "run.h5"
    write_lock(path, socket.gethostname(), os.getppid())         # a live process, not this one
    with pytest.raises(RunFileError, match=rf"process {os.getppid()} on this host"):
        WriterLock(path).acquire()
    WriterLock(path).release()                                   # not ours: left alone
    assert (tmp_path / "run.h5.lock").exists()
    write_lock(path, "elsewhere.example", dead_pid())            # cannot be checked from here
    with pytest.raises(RunFileError, match="on host elsewhere.example .*delete the lock"):
        WriterLock(path).acquire()


def test_a_damaged_lock_is_refused_not_taken_over(tmp_path):
    """A lock that names no writer (a writer between creating and filling it, or a damaged
    file) cannot be checked: it is refused with what to do, and left in place."""
    path = tmp_path / "run.h5"
    (tmp_path / "run.h5.lock").write_text("{\"host\": ")
    with pytest.raises(RunFileError, match=r"names no writer .*delete the lock if no process writes the run"):
        WriterLock(path).acquire()
    assert (tmp_path / "run.h5.lock").read_text() == "{\"host\": "


def test_a_lock_taken_over_by_another_writer_first_is_left_to_it(tmp_path, monkeypatch):
    """Two writers find the same dead lock: the one whose rename finds it gone (the other
    renamed it first) retries and meets the winner's live lock."""
    path = tmp_path / "run.h5"
    write_lock(path, socket.gethostname(), dead_pid())
    rename = os.rename

    def winner_first(source, target):
        write_lock(path, socket.gethostname(), os.getppid())     # the other writer's fresh lock
        raise FileNotFoundError(source)
    monkeypatch.setattr(os, "rename", winner_first)
    with pytest.raises(RunFileError, match=rf"process {os.getppid()} on this host"):
        WriterLock(path).acquire()
    monkeypatch.setattr(os, "rename", rename)
    assert json.loads((tmp_path / "run.h5.lock").read_text())["pid"] == os.getppid()


def test_a_dead_writers_lock_is_taken_over(tmp_path):
    path = tmp_path / "run.h5"
    write_lock(path, socket.gethostname(), dead_pid())
    lock = WriterLock(path).acquire()
    assert json.loads(lock.lock.read_text())["pid"] == os.getpid()
    lock.release()
    assert list(tmp_path.iterdir()) == []


def test_a_symlinked_run_is_locked_at_its_target(tmp_path):
    (tmp_path / "data").mkdir()
    os.symlink(tmp_path / "data" / "run.h5", tmp_path / "link.h5")
    lock = WriterLock(tmp_path / "link.h5").acquire()
    assert lock.lock == tmp_path / "data" / "run.h5.lock"
    with pytest.raises(RunFileError, match="being written"):
        WriterLock(tmp_path / "data" / "run.h5").acquire()
    lock.release()


@pytest.mark.parametrize("stale, writers", [(False, 4), (True, 2)])
def test_of_writers_racing_for_a_lock_exactly_one_wins(tmp_path, stale, writers):
    """Writers acquire at the same instant, a free lock or a dead writer's."""
    path = tmp_path / "run.h5"
    if stale:
        write_lock(path, socket.gethostname(), dead_pid())
    read, write = os.pipe()
    start, children = time.time() + 0.3, []
    for _ in range(writers):
        pid = os.fork()
        if pid == 0:
            os.close(read)
            while time.time() < start:
                pass
            try:
                WriterLock(path).acquire()
                os.write(write, b"1")
                time.sleep(0.5)                                     # hold it while the others try
            except RunFileError:
                os.write(write, b"0")
            finally:
                os._exit(0)
        children.append(pid)
    os.close(write)
    for pid in children:
        os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as results:
        assert sorted(results.read()) == sorted(b"0" * (writers - 1) + b"1")


# ---- 3: a full disk during a save ---------------------------------------------------------
def test_a_save_on_a_full_disk_leaves_the_run_as_it_was(tmp_path):
    path = tmp_path / "run.h5"
    small_run(path, steps=(1,))
    before = path.read_bytes()
    big = {"mean": np.random.default_rng(0).standard_normal(100_000)}     # 800 kB, incompressible
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)               # writes fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) + 100_000, limits[1]))
    try:
        with pytest.raises(RunFileWriteError, match=r"run.h5: the checkpoint of step 2 was not written") as error:
            append_checkpoint(path, 2, {"update": "full", "estimates": {}}, {"model": small_graph(2)}, big)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert isinstance(error.value, OSError) and isinstance(error.value, RunFileError)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.h5"]       # no temporary left
    append_checkpoint(path, 2, {"update": "full", "estimates": {}}, {"model": small_graph(2)}, big)
    assert open_run(path).steps == [1, 2]                                 # the writer still works


# ---- 5: checkpoints outlive refresh() and close() -----------------------------------------
def test_checkpoints_stay_readable_after_refresh_and_close(tmp_path):
    path = tmp_path / "run.h5"
    small_run(path)
    run = open_run(path)
    first = run.at(1)
    run.refresh()
    assert torch.equal(first.model.chain[0].weight, small_graph(1).chain[0].weight)
    assert first.state["mean"].tolist() == [1.0, 1.0] and "0.weight" in first.state_dict()
    with open_run(path) as other:
        last = other.last
    assert last.has_explanation and last.state["mean"].tolist() == [2.0, 2.0]
    D = Gaussian(torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64))
    assert torch.allclose(last.explanation.mean, explain(small_graph(2), D, "gaussian").mean)
    run.close()
    assert run.steps == [1, 2]
    with pytest.raises(RunFileError, match="run.h5 was closed; reopen it with open_run"):
        run.at(2)


def test_a_checkpoint_rewritten_since_it_was_read_is_refused(tmp_path):
    path = tmp_path / "run.h5"
    small_run(path)
    with open_run(path) as run:
        old = run.at(2)
    append_checkpoint(path, 2, {"update": "stale", "estimates": {}}, {"model": small_graph(7)}, {"mean": np.zeros(2)})
    with pytest.raises(RunFileError, match="no longer holds step 2 as it was read"):
        old.model


# ---- 8: file mode and symlinks ------------------------------------------------------------
def test_a_save_keeps_the_file_mode_and_a_symlink(tmp_path):
    path = tmp_path / "run.h5"
    small_run(path, steps=(1,))
    os.chmod(path, 0o600)
    append_checkpoint(path, 2, {"update": "full", "estimates": {}}, {"model": small_graph(2)}, {})
    assert os.stat(path).st_mode & 0o777 == 0o600
    (tmp_path / "data").mkdir()
    target = tmp_path / "data" / "target.h5"
    small_run(target, steps=(1,))
    os.symlink(target, tmp_path / "link.h5")
    append_checkpoint(tmp_path / "link.h5", 2, {"update": "full", "estimates": {}}, {"model": small_graph(2)}, {})
    assert (tmp_path / "link.h5").is_symlink() and open_run(target).steps == [1, 2]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["target.h5"]


# ---- 12: strict JSON ----------------------------------------------------------------------
def test_non_finite_numbers_are_written_as_null_and_read_as_nan(tmp_path):
    path = tmp_path / "run.h5"
    small_run(path, steps=())
    meta = {"update": "stale", "expectation": [math.nan, math.inf], "output_sd": [math.nan, 1.0],
            "estimates": {"e": {"value": 0.0, "log10": -math.inf, "flops": 1.0}}}
    append_checkpoint(path, 1, meta, {"model": small_graph(1)}, {})
    with h5py.File(path, "r") as f:
        stored = strict_json(f["checkpoints/0000000001/meta"].asstr()[()])
    assert stored["expectation"] == [None, None] and stored["estimates"]["e"]["log10"] is None
    run = open_run(path)
    assert np.isnan(run.last.meta["expectation"]).all() and run.last.meta["output_sd"][1] == 1.0
    assert np.isnan(run.series("expectation").value).all()
    assert run.series("e").log10.tolist() == [-math.inf]


def test_files_with_nan_tokens_still_read(tmp_path):
    path = tmp_path / "run.h5"
    small_run(path, steps=(1,))
    with h5py.File(path, "a") as f:
        del f["checkpoints/0000000001/meta"]
        f["checkpoints/0000000001"].create_dataset(
            "meta", data='{"step": 1, "update": "stale", "estimates": {}, "expectation": [NaN, 0.5], '
                         '"output_sd": [NaN, Infinity]}', dtype=h5py.string_dtype())
    ck = open_run(path).last
    assert math.isnan(ck.meta["expectation"][0]) and ck.meta["output_sd"][1] == math.inf


# ---- 9: the demo with fewer steps than a save's interval -----------------------------------
def test_the_tracked_demo_runs_for_a_few_steps(tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        track(steps=3, path=tmp_path / "d.h5", png=tmp_path / "d.png", check_samples=0)
    out = capsys.readouterr().out
    assert "freshness: at every checkpoint with a π (1 of 1)" in out and "no step had a π yet" in out
    assert drift_summary([0.5, 0.25, 0.001]).startswith("between checkpoints, over all 3 steps with a π: max 0.500")


# ---- 10: command-line checks --------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["bench", "sampling", "--budget", "-5"], "--budget: must be a positive integer, got -5"),
    (["bench", "sampling", "--budget", "0"], "--budget: must be a positive integer, got 0"),
    (["demo", "--reference", "0"], "--reference: must be a positive integer, got 0"),
    (["demo", "--reference", "-5"], "--reference: must be a positive integer, got -5"),
    (["bench", "expectation", "--reference", "0"], "--reference: must be a positive integer"),
    (["bench", "halfspaces", "--budget", "-1"], "--budget: must be a positive number, got -1"),
    (["bench", "halfspaces", "--budget", "nan"], "--budget: must be a positive number, got nan"),
    (["bench", "expectation", "--methods", "gaussian,bogus"],
     "unknown 'bogus'; known methods: auto, guide, cumulant, gaussian"),
    (["demo", "--run-file", "/proc/nope/x.h5"], "demo --run-file /proc/nope/x.h5: cannot create its folder"),
    (["demo", "--untrained", "--reference", "1"], "a reference needs at least 2 samples"),
    (["bench", "detectors", "--budget", "inf"], "--budget: must be a positive number, got inf"),
    (["bench", "sampling", "--openturns-repeats", "0"], "must be a positive integer, got 0"),
    (["demo", "--run-file", "/tmp/plot.png"], "the replay plot goes to the run file with .png"),
    (["bench", "cnn", "--quick", "--csv", "/tmp"], "--csv /tmp: is a folder"),
    (["bench", "tails", "--quick", "--cache", "/etc/hostname"], "--cache /etc/hostname: is a file"),
    (["bench", "halfspaces", "--quick", "--budget", "50"], "bench halfspaces: "),
])
def test_bad_arguments_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err


def test_bench_pool_names_a_file_that_is_not_csv(tmp_path, capsys):
    small_run(tmp_path / "run.h5", steps=())
    with pytest.raises(SystemExit):
        main(["bench", "pool", str(tmp_path / "run.h5")])
    assert f"bench pool: {tmp_path / 'run.h5'} is not a readable CSV text file" in capsys.readouterr().err


def test_demo_leaves_a_run_file_another_tracker_writes(tmp_path, capsys):
    """The demo deleted its run file before taking the lock: a live writer's file was lost."""
    from storage import WriterLock
    path = tmp_path / "live.h5"
    path.write_bytes(b"held")
    lock = WriterLock(path).acquire()
    try:
        with pytest.raises(SystemExit):
            main(["demo", "--steps", "2", "--reference", "1000", "--run-file", str(path)])
    finally:
        lock.release()
    assert path.read_bytes() == b"held" and "demo" not in capsys.readouterr().out


def test_a_plot_without_matplotlib_is_skipped_with_a_note(tmp_path, monkeypatch, capsys):
    import builtins
    from explanations import Gaussian
    from tracker import Tracker
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with Tracker(model, optimizer, Gaussian.standard(3), path=tmp_path / "run.h5", every=1):
        for _ in range(2):
            model(torch.randn(64, 3)).square().mean().backward()
            optimizer.step()
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ModuleNotFoundError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    main(["replay", str(tmp_path / "run.h5"), "--png", str(tmp_path / "plot")])
    assert "plot: skipped: plots need matplotlib" in capsys.readouterr().out
