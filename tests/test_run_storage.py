import functools
import os
import random
import signal
import time
import warnings

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from explanations import Gaussian, compile_model
from explanations.errors import InvalidModel
from explanations.events import Above, All, Any, ArgMax, Below, Detector
from storage import RunFileError, open_run
from storage.events import event_from_plain, event_to_plain
from storage.runfile import append_checkpoint, create_run, remove_stale_temporaries
from tracker import Tracker
from train.models import mlp
from train.tasks import RegressionTask, train_steps


def test_events_round_trip_through_json():
    detector = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1), nn.Sigmoid())
    event = Any(All(Above(0, 1.5), Below(2, -0.5)), ArgMax(1), Detector(detector, threshold=0.7))
    graphs = []
    plain = event_to_plain(event, graphs)
    back = event_from_plain(plain, [g.to() for g in graphs])
    back.check(3)
    y = torch.randn(5000, 3) * 2
    assert torch.equal(back.evaluate(y), event.evaluate(y))
    with pytest.raises(ValueError, match="unknown stored event"):
        event_from_plain({"event": "exec", "code": "rm -rf /"}, [])


def tracked_run(path, steps=30, every=10, method="gaussian", check_samples=0):
    model = mlp([4, 16, 2], "tanh", seed=1, bias_std=0.1)
    D = Gaussian(torch.zeros(4), torch.eye(4) * 0.5 + 0.5 * torch.ones(4, 4) / 4)
    task = RegressionTask(D, 2, seed=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    events = {"y0 high": Above(0, 1.0), "y1 low": Below(1, -1.0),
              "flagged": Detector(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)), threshold=-0.5)}
    # (at threshold 0.5 this detector cannot fire on the tanh net's outputs: π says 0 exactly, `ranges`)
    with Tracker(model, optimizer, D, method=method, events=events, path=path, every=every,
                 check_samples=check_samples, budget=8.0) as tr:     # the queries' bounds fit by step 30
        train_steps(model, optimizer, task, steps, 512, generator)
    return tr, model, D


@pytest.mark.parametrize("method", ["gaussian", "auto"])       # auto: polynomial on this 2-layer net
def test_checkpoints_restore_the_explanation_without_the_model(tmp_path, method):
    path = tmp_path / "run.h5"
    tr, model, D = tracked_run(path, method=method, check_samples=20_000)
    run = open_run(path)
    assert run.steps == [10, 20, 30] and run.method == method and len(run) == 3
    ck = run.at(30)
    pi = ck.explanation
    assert torch.allclose(pi.expectation().value, tr.explanation.expectation().value, atol=1e-8)
    assert np.allclose(ck.meta["expectation"], ck.state["mean"])
    x = torch.randn(7, 4)
    assert torch.allclose(pi.predict(x), tr.explanation.predict(x), atol=1e-6)
    fresh = All(Above(0, 0.2), Above(1, 0.2))                           # not a tracked event
    assert pi.probability(fresh).log10 == pytest.approx(tr.explanation.probability(fresh).log10, abs=1e-6)
    assert torch.equal(ck.model.forward(x), compile_model(model).forward(x))
    y = torch.randn(1000, 2) * 2
    assert torch.equal(run.events["flagged"].evaluate(y), tr.events["flagged"].evaluate(y))
    flagged = run.series("flagged")                     # NaN where the budget deferred it
    assert np.isfinite(flagged.log10[-1]) and all(ck.estimates["flagged"] is None
                                                  for ck, v in zip(run, flagged.value) if np.isnan(v))
    series = run.series("y0 high")
    assert series.steps.tolist() == [10, 20, 30] and np.all(np.isfinite(series.log10))
    assert np.all((series.check_lo <= series.check_value) & (series.check_value <= series.check_hi))
    expectation = run.series("expectation")
    assert expectation.value.shape == (3, 2) and expectation.check_value.shape == (3, 2)
    with pytest.raises(KeyError, match="saved steps"):
        run.at(11)
    with pytest.raises(KeyError, match="tracked"):
        run.series("nothing")
    with h5py.File(path, "r") as plain:                                 # plain h5py sees the state
        assert plain.attrs["format"] == "pi-tracker run"
        assert plain["checkpoints/0000000030/state/cov"].shape == (2, 2)


def test_foreign_truncated_and_newer_files_are_refused(tmp_path):
    path = tmp_path / "run.h5"
    tracked_run(path, steps=10)
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f.create_dataset("x", data=[1, 2, 3])
    with pytest.raises(RunFileError, match="not a π-tracker run"):
        open_run(tmp_path / "foreign.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(RunFileError, match="not a readable HDF5"):
        open_run(tmp_path / "text.h5")
    data = path.read_bytes()
    for fraction in (0.1, 0.5, 0.99):
        (tmp_path / "truncated.h5").write_bytes(data[: int(len(data) * fraction)])
        with pytest.raises(RunFileError, match="truncated"):
            open_run(tmp_path / "truncated.h5")
    newer = tmp_path / "newer.h5"
    newer.write_bytes(data)
    with h5py.File(newer, "a") as f:
        f.attrs["version"] = 99
    with pytest.raises(RunFileError, match="version 99"):
        open_run(newer)
    with pytest.raises(FileNotFoundError):
        open_run(tmp_path / "missing.h5")


@functools.lru_cache(maxsize=None)
def small_graph(step):
    torch.manual_seed(step)
    return compile_model(nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2)))


def write_forever(path, start, report):
    """Child process: append checkpoints start, start+1, … and report each once durable."""
    step = start
    while True:
        state = {"mean": np.full(2, float(step)), "cov": np.eye(2) * step}
        append_checkpoint(path, step, {"update": "full", "estimates": {}}, {"model": small_graph(step)}, state)
        os.write(report, f"{step}\n".encode())
        step += 1


def verify(path, committed):
    run = open_run(path)
    assert set(committed) <= set(run.steps)
    for step in run.steps:
        ck = run.at(step)
        assert ck.state["mean"].tolist() == [float(step)] * 2
        x = torch.ones(1, 3)
        assert torch.equal(ck.model.forward(x), small_graph(step).forward(x))
    run.close()
    return run.steps


def create_small_run(path):
    create_run(path, {"method": "gaussian", "options": {}, "events": {}}, np.zeros(3), np.eye(3))


def test_checkpoints_survive_sigkill_at_random_moments(tmp_path):
    path = tmp_path / "run.h5"
    create_small_run(path)
    rng = random.Random(0)
    committed: list[int] = []
    kills = mid_save = 0
    while mid_save < 10 and kills < 400:          # a fast disk makes mid-save kills rarer: kill until 10
        read, write = os.pipe()
        start = committed[-1] + 1 if committed else 0
        pid = os.fork()
        if pid == 0:                                                    # the writer
            os.close(read)
            try:
                write_forever(path, start, write)
            finally:
                os._exit(1)
        os.close(write)
        reports = os.fdopen(read)
        # every fifth writer first makes one checkpoint durable, so the file grows on a loaded machine
        first = reports.readline() if kills % 5 == 0 else ""
        time.sleep(rng.uniform(0.0, 0.08))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        kills += 1
        leftovers = list(tmp_path.glob(".run.h5.*.tmp"))
        mid_save += bool(leftovers)                                     # killed while writing a save
        remove_stale_temporaries(path)
        with reports:
            committed += [int(line) for line in (first + reports.read()).split()]
        steps = verify(path, committed)                                 # every earlier checkpoint intact
        assert steps[: len(committed)] == committed
    print(f"kills {kills}, mid-save {mid_save}, checkpoints {len(committed)}")
    assert mid_save >= 10 and len(committed) >= 10, (kills, mid_save, committed)


def test_a_reader_follows_a_run_while_it_is_written(tmp_path):
    path = tmp_path / "run.h5"
    create_small_run(path)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            for step in range(40):
                state = {"mean": np.full(2, float(step)), "cov": np.eye(2) * step}
                append_checkpoint(path, step, {"update": "full", "estimates": {}}, {"model": small_graph(step)}, state)
        finally:
            os._exit(0)
    os.close(write)
    seen = set()
    with open_run(path) as run:
        while True:
            done = os.waitpid(pid, os.WNOHANG)[0] != 0
            run.refresh()
            for ck in run:
                assert ck.state["mean"][0] == ck.step                    # complete, consistent snapshots
            seen.add(len(run))
            if done:
                break
    os.close(read)
    assert len(run.refresh()) == 40 and len(seen) > 2


def test_replay_prints_a_table_and_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from train.cli import main

    path = tmp_path / "run.h5"
    tracked_run(path, steps=20, check_samples=5_000)
    main(["replay", str(path), "--png", str(tmp_path / "plot.png")])
    table = capsys.readouterr().out
    assert "y0 high" in table and "(MC " in table and len(table.splitlines()) >= 4
    assert (tmp_path / "plot.png").stat().st_size > 10_000
    main(["inspect", str(path)])
    summary = capsys.readouterr().out
    assert "checkpoints:   2 (steps 10…20)" in summary and "ratio" in summary
    with pytest.raises(SystemExit):
        main(["inspect", str(tmp_path / "missing.h5")])


def fit(path, model, steps, seed):
    """Train a small regression model under a Tracker writing to `path`."""
    D = Gaussian.standard(4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02)
    generator = torch.Generator().manual_seed(seed)
    with Tracker(model, optimizer, D, events={"high": Above(0, 1.0)}, path=path, every=3) as tr:
        train_steps(model, optimizer, RegressionTask(D, 2, seed=2), steps, 512, generator)
    return tr


def fit_until_killed(path: str) -> None:
    """A spawned child (not forked: a fork of a process whose torch thread pool has run can
    deadlock in its first parallel operation)."""
    torch.set_num_threads(1)
    fit(path, mlp([4, 16, 2], "relu", seed=3), 10_000, 0)


def test_a_killed_tracker_resumes_from_its_last_checkpoint(tmp_path):
    path = tmp_path / "run.h5"
    child = torch.multiprocessing.get_context("spawn").Process(target=fit_until_killed, args=(str(path),))
    child.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not path.exists() or len(open_run(path)) < 3):
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    last = open_run(path).last
    assert last is not None and last.step >= 9
    model = mlp([4, 16, 2], "relu", seed=3)
    model.load_state_dict(last.state_dict())
    tr = fit(path, model, 6, 1)
    run = open_run(path)
    assert tr.step == last.step + 6 and run.last.step == tr.step
    assert run.steps[-3:] == [last.step, last.step + 3, last.step + 6]
    assert not list(tmp_path.glob(".run.h5.*.tmp"))
    assert run.last.ledger["training_flops"] > last.ledger["training_flops"]


def test_a_diverged_model_leaves_pi_stale_and_the_file_intact(tmp_path):
    """NaN parameters mid-run, in the model or in a tracked detector (a diverged training):
    the step hook does not raise into the user's loop, warns once per streak, keeps π and
    every earlier checkpoint, and tracking resumes once the parameters are finite again.
    Before: InvalidModel from optimizer.step() and again at close."""
    path = tmp_path / "run.h5"
    model = mlp([4, 16, 1], "tanh", seed=1)
    D = Gaussian.standard(4)
    task = RegressionTask(D, 1, seed=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    first = model[0].weight
    scorer = nn.Sequential(nn.Linear(1, 3), nn.ReLU(), nn.Linear(3, 1))
    events = {"high": Above(0, 1.0), "flagged": Detector(scorer, threshold=0.5)}
    with Tracker(model, optimizer, D, events=events, path=path, every=5, budget=50.0) as tr:
        train_steps(model, optimizer, task, 10, 512, generator)
        for parameter, owner in ((first, "the model's parameter '0.weight'"),
                                 (scorer[0].bias, "the detector of 'flagged''s parameter '0.bias'")):
            kept = tr.explanation
            assert kept is not None
            saved = parameter.detach().clone()
            with torch.no_grad():
                parameter[0] = float("nan")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                for _ in range(5):
                    optimizer.step()               # no gradients: the weights stay NaN
            assert len(caught) == 1 and str(caught[0].message).endswith(f"{owner} has NaN or infinite entries")
            assert tr.explanation is kept and tr.unexplainable
            assert open_run(path).steps == [5, 10]     # no checkpoint without a π
            with torch.no_grad():
                parameter.copy_(saved)
            train_steps(model, optimizer, task, 1, 512, generator)
            assert tr.unexplainable is None
        train_steps(model, optimizer, task, 3, 512, generator)
        assert tr.step == 25 and tr.explanation is not kept
    run = open_run(path)
    assert run.steps == [5, 10, 25] and run.last.ledger["stale_steps"] >= 10
    with torch.no_grad():
        first[0, 0] = float("inf")
    with pytest.raises(InvalidModel, match="weight of '0' has NaN or infinite"):    # at the start: an error
        Tracker(model, optimizer, D, events={"high": Above(0, 1.0)}, path=path, every=5)
    assert open_run(path).steps == [5, 10, 25]
