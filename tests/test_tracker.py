import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from explanations import Gaussian, compile_model, explain
from explanations.errors import InvalidModel
from explanations.events import Above, All, Below
from storage import open_run
from tracker import Tracker
from tracker.costs import training_step_flops
from tracker.incremental import head_update, hybrid_graph
from train.models import mlp
from train.tasks import RegressionTask, train_steps


def train(model, optimizer, task, steps, generator, check=None, batch=64):
    train_steps(model, optimizer, task, steps, batch, generator, check)


def setting(seed=0, widths=(6, 32, 32, 2)):
    model = mlp(list(widths), "relu", seed=seed, bias_std=0.1)
    D = Gaussian.standard(widths[0])
    return model, D, RegressionTask(D, widths[-1], seed=seed)


@pytest.mark.parametrize("method,budget,batch", [("gaussian", 1.0, 64), ("cumulant", 0.3, 256), ("auto", 0.2, 512)])
def test_budget_holds_at_every_step(tmp_path, method, budget, batch):
    model, D, task = setting()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    events = {"high": Above(0, 1.5), "both": All(Above(0, 1.0), Below(1, -1.0))}
    ratios = []
    with Tracker(model, optimizer, D, method=method, events=events, budget=budget,
                 path=tmp_path / "run.h5", every=20) as tr:
        def check():
            assert tr.ledger.explanation_flops <= budget * tr.ledger.training_flops
            ratios.append(tr.ledger.ratio)
        train(model, optimizer, task, 60, torch.Generator().manual_seed(1), check, batch)
    assert tr.ledger.overruns == 0 and tr.ledger.steps == 60 and len(ratios) == 60
    assert tr.ledger.ratio <= budget
    assert tr.ledger.full_updates >= 1 and tr.explanation is not None
    assert tr.ledger.stale_steps == 60 - tr.ledger.full_updates
    run = open_run(tmp_path / "run.h5")
    assert run.steps == [20, 40, 60]
    assert all(ck.ledger["explanation_flops"] <= budget * ck.ledger["training_flops"] for ck in run)


def test_training_flops_agree_with_torch_flop_counter():
    model, D, task = setting()
    x, y = task.sample(64, torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        nn.functional.mse_loss(model(x), y).backward()
    ours = training_step_flops(compile_model(model), 64)
    # torch counts matrix products only and no input gradient for the first layer
    assert 1.0 <= ours / counter.get_total_flops() <= 1.25


def test_forward_without_gradients_is_not_training():
    model, D, task = setting()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    with Tracker(model, optimizer, D) as tr:
        with torch.no_grad():
            model(torch.randn(1000, 6))
        train(model, optimizer, task, 1, torch.Generator().manual_seed(0), batch=32)
    assert tr.ledger.training_flops == training_step_flops(tr.graph, 32)


@pytest.mark.parametrize("method", ["gaussian", "cumulant"])
def test_head_update_is_the_explanation_of_the_hybrid_graph(method):
    model, D, task = setting()
    pi = explain(model, D, method)
    old = compile_model(model)
    train(model, torch.optim.SGD(model.parameters(), lr=0.05), task, 3, torch.Generator().manual_seed(0))
    new = compile_model(model)
    updated = head_update(pi, new)
    reference = explain(hybrid_graph(old, new), D, method)
    assert torch.allclose(updated.expectation().value, reference.expectation().value, atol=1e-9)
    assert torch.allclose(updated.cov, reference.cov, atol=1e-9)
    x = torch.randn(5, 6)
    assert torch.allclose(updated.predict(x), reference.predict(x), atol=1e-6)
    event = Above(0, 1.0)
    assert updated.probability(event).log10 == pytest.approx(reference.probability(event).log10, abs=1e-6)


def test_small_budget_uses_head_updates_and_records_staleness():
    model, D, task = setting()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    with Tracker(model, optimizer, D, method="gaussian", budget=0.05) as tr:
        train(model, optimizer, task, 80, torch.Generator().manual_seed(2),
              lambda: tr.ledger.afford(0) or pytest.fail("ratio above budget"), batch=512)
    ledger = tr.ledger
    assert ledger.full_updates >= 1 and ledger.incremental_updates >= 1
    assert ledger.stale_steps == 80 - ledger.full_updates and ledger.overruns == 0


def test_resume_continues_the_file(tmp_path):
    path = tmp_path / "run.h5"
    model, D, task = setting()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    events = {"high": Above(0, 1.5)}
    with Tracker(model, optimizer, D, events=events, path=path, every=10) as tr:
        train(model, optimizer, task, 25, torch.Generator().manual_seed(3))
    first = tr.ledger
    last = open_run(path).last
    assert last.step == 25

    restarted, _, _ = setting(seed=5)
    restarted.load_state_dict(last.state_dict())
    assert torch.equal(compile_model(restarted).forward(torch.ones(2, 6)), last.model.forward(torch.ones(2, 6)))
    optimizer = torch.optim.Adam(restarted.parameters(), lr=3e-3)
    with Tracker(restarted, optimizer, D, events=events, path=path, every=10) as tr:
        assert tr.step == 25 and tr.ledger.training_flops == first.training_flops
        assert torch.allclose(tr.explanation.expectation().value, last.explanation.expectation().value)
        train(restarted, optimizer, task, 10, torch.Generator().manual_seed(4))
    assert open_run(path).steps == [10, 20, 25, 30, 35]
    assert tr.ledger.steps == 35 and tr.ledger.training_flops > first.training_flops

    with pytest.raises(ValueError, match="method"):
        Tracker(restarted, optimizer, D, method="cumulant", events=events, path=path)
    with pytest.raises(ValueError, match=r"differ in events \(file: \['high'\], here: \['low'\]\), distribution;"):
        Tracker(restarted, optimizer, Gaussian(torch.ones(6), torch.eye(6)), events={"low": Below(0, 0.0)}, path=path)
    with pytest.raises(FileExistsError):
        Tracker(restarted, optimizer, D, events=events, path=path, resume=False)


def test_bad_arguments_are_named():
    model, D, _ = setting()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="baseline"):
        Tracker(model, optimizer, D, method="sampling")
    with pytest.raises(ValueError, match="unknown method"):
        Tracker(model, optimizer, D, method="magic")
    with pytest.raises(ValueError, match="every"):
        Tracker(model, optimizer, D, every=0)
    with pytest.raises(ValueError, match="dimensions"):
        Tracker(model, optimizer, Gaussian.standard(3))
    with pytest.raises(ValueError, match="JSON"):
        Tracker(model, optimizer, D, options={"dtype": torch.float32})
    with pytest.raises(Exception, match="out of range"):
        Tracker(model, optimizer, D, events={"bad": Above(7, 1.0)})
    # before, these failed at the first optimizer.step(), inside the user's training loop
    with pytest.raises(TypeError, match="takes no option 'ordre'; its options: .*order"):
        Tracker(model, optimizer, D, method="cumulant", options={"ordre": 4})
    with pytest.raises(InvalidModel, match="needs a Linear → Step network"):
        Tracker(model, optimizer, D, method="halfspaces")
    with pytest.raises(ValueError, match="'polynomial' needs Affine → Act → Affine"):
        Tracker(model, optimizer, D, method="polynomial")          # a 3-layer net


def test_a_network_training_with_dropout_and_batch_norm_is_explained_as_in_eval_mode(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    D = Gaussian.standard(6)
    with Tracker(model, optimizer, D, events={"high": Above(0, 1.5)}, path=tmp_path / "run.h5", every=10) as tr:
        train(model, optimizer, RegressionTask(D, 2, seed=0), 30, torch.Generator().manual_seed(1), batch=256)
        assert model.training
    fresh = explain(model.eval(), D)
    torch.testing.assert_close(tr.explanation.expectation().value, fresh.expectation().value)
    torch.testing.assert_close(open_run(tmp_path / "run.h5").last.explanation.expectation().value,
                               fresh.expectation().value)


def test_sampled_event_estimates_hold_the_budget_and_carry_intervals(tmp_path):
    """event_samples=N: each save estimates every tracked event by π-guided sampling capped
    at N sample-equivalents, inside the budget, with a 95% interval that the series and the
    plot show. The last estimate's interval covers 10⁶ plain draws of the saved model."""
    from explanations.montecarlo import tally
    from train.replay import replay_plot
    model, D, task = setting()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    events = {"high": Above(0, 1.6), "both": All(Above(0, 0.8), Below(1, -0.5))}
    with Tracker(model, optimizer, D, method="auto", events=events, budget=1.0, path=tmp_path / "run.h5",
                 every=20, event_samples=2000) as tr:
        def check():
            assert tr.ledger.explanation_flops <= tr.ledger.training_flops
        train(model, optimizer, task, 60, torch.Generator().manual_seed(1), check, batch=512)
    assert tr.ledger.overruns == 0
    run = open_run(tmp_path / "run.h5")
    unit = run.meta["flops_per_sample"]
    assert run.meta["event_samples"] == 2000
    for name in events:
        series = run.series(name)
        sampled = [row[name] for row in (ck.estimates for ck in run) if row[name] is not None]
        assert sampled and all(0 < r["samples"] and r["query_flops"] <= 2000 * unit for r in sampled)
        assert all(r["lo"] <= r["value"] <= r["hi"] for r in sampled)
        assert (series.lo <= series.value).all() and (series.value <= series.hi).all()
    last = run.last
    counts = tally(last.explained, D, 1_000_000, list(events.values()), seed=7)
    for i, name in enumerate(events):
        estimate = last.estimates[name]
        assert estimate["lo"] <= counts.hits[i] / 1_000_000 <= estimate["hi"], name
    assert replay_plot(run, tmp_path / "run.png").exists()
    with pytest.raises(ValueError, match="event_samples"):
        Tracker(model, optimizer, D, events=events, path=tmp_path / "run.h5")
    for bad in (-1, 10, 1.5, True):
        with pytest.raises(ValueError, match="event_samples must be 0"):
            Tracker(model, optimizer, D, event_samples=bad)


def test_a_sampled_estimate_the_cap_cannot_buy_is_missing_and_charged(tmp_path, monkeypatch):
    import tracker.tracker as tracking
    monkeypatch.setattr(tracking, "MIN_EVENT_SAMPLES", 1)
    model, D, task = setting()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    with pytest.warns(RuntimeWarning, match="no estimate of 'high'"):
        with Tracker(model, optimizer, D, events={"high": Above(0, 2.5)}, path=tmp_path / "run.h5", every=10,
                     event_samples=1) as tr:
            train(model, optimizer, task, 10, torch.Generator().manual_seed(1), batch=256)
    assert open_run(tmp_path / "run.h5").last.estimates["high"] is None
    assert tr.ledger.overruns == 0 and tr.ledger.ratio <= 1.0


def test_a_keyword_input_is_counted_as_training_rows():
    class Keyworded(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = mlp([6, 16, 2], "relu", seed=0)

        def forward(self, input):
            return self.body(input)

    model, D = Keyworded(), Gaussian.standard(6)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with Tracker(model, optimizer, D) as tr:
        loss = model(input=torch.randn(32, 6)).square().mean()
        loss.backward()
        optimizer.step()
    assert tr.ledger.training_flops == training_step_flops(tr.graph, 32, {"body.0", "body.2"}) > 0


def test_resume_refusals_say_what_differs(tmp_path):
    from explanations.events import Detector
    path = tmp_path / "run.h5"
    model, D, _ = setting()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    Tracker(model, optimizer, D, events={"high": Above(0, 1.5)}, path=path).close()      # a header, no checkpoint
    wider, _, _ = setting(widths=(6, 32, 32, 3))
    with pytest.raises(ValueError, match="inputs and outputs \\(file: 6 → 2, here: 6 → 3\\).*holds no checkpoint yet"):
        Tracker(wider, torch.optim.SGD(wider.parameters(), lr=0.01), D, events={"high": Above(0, 1.5)}, path=path)
    detector = lambda width: Detector(nn.Sequential(nn.Linear(2, width), nn.ReLU(), nn.Linear(width, 1)), 1.0)
    other = tmp_path / "detector.h5"
    Tracker(model, optimizer, D, events={"d": detector(4)}, path=other).close()
    with pytest.raises(ValueError, match="definition of event 'd' \\(detector 0's op 0 of the compiled chain"):
        Tracker(model, optimizer, D, events={"d": detector(5)}, path=other)


def test_structure_differences_are_named():
    """Inputs, an activation, a longer chain and a residual block are each named where they
    first differ (a run file written for another model is refused with these words)."""
    from tracker.structure import structure, structure_difference

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.inner, self.head = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)

        def forward(self, x):
            h = torch.relu(self.stem(x))
            return self.head(h + torch.relu(self.inner(h)))

    def signature(*layers):
        return structure(compile_model(nn.Sequential(*layers) if len(layers) > 1 else layers[0]))
    base = signature(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    assert structure_difference(base, base) is None
    assert structure_difference(base, signature(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))) == "the inputs: 4 against 5"
    assert structure_difference(base, signature(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))) == \
        "op 1 of the compiled chain: activation relu against activation tanh"
    assert structure_difference(base, signature(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2), nn.ReLU())) == \
        "op 3 of the compiled chain: nothing against activation relu"
    assert structure_difference(base, signature(Residual())) == \
        "op 2 of the compiled chain: an affine map 8→2 against a residual block of 2 branches"


def test_a_failed_save_warns_and_training_goes_on(tmp_path, monkeypatch):
    import tracker.tracker as tracking
    model, D, task = setting()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    written = tracking.append_checkpoint
    failing = {"step": 20}

    def append(path, step, *args, **kwargs):
        if step == failing["step"]:
            raise OSError(28, "No space left on device")
        return written(path, step, *args, **kwargs)

    monkeypatch.setattr(tracking, "append_checkpoint", append)
    with pytest.warns(RuntimeWarning, match="step 20: the checkpoint was not written"):
        with Tracker(model, optimizer, D, path=tmp_path / "run.h5", every=10) as tr:
            train(model, optimizer, task, 30, torch.Generator().manual_seed(1))
    assert tr.step == 30 and open_run(tmp_path / "run.h5").steps == [10, 30]


def test_the_dtype_option_is_named_and_checked_when_the_tracker_is_built():
    model, D, task = setting()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        Tracker(model, optimizer, D, options={"dtype": "float33"})
    with Tracker(model, optimizer, D, options={"dtype": "float32"}) as tr:
        train(model, optimizer, task, 2, torch.Generator().manual_seed(1), batch=256)
    assert tr.explanation is not None and tr.explanation.mean.dtype == torch.float32


def test_a_second_tracker_on_a_live_run_is_refused_and_the_lock_goes_at_close(tmp_path):
    from storage.runfile import RunFileError
    model, D, task = setting()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    path = tmp_path / "run.h5"
    with Tracker(model, optimizer, D, path=path, every=10):
        with pytest.raises(RunFileError, match="being written by this process .*was not closed"):
            Tracker(model, optimizer, D, path=path)
        train(model, optimizer, task, 10, torch.Generator().manual_seed(1))
    assert not (tmp_path / "run.h5.lock").exists()
    with pytest.raises(ValueError, match="differ in method"):
        Tracker(model, optimizer, D, method="cumulant", path=path)     # refused on resume: lock released
    with Tracker(model, optimizer, D, path=path, every=10) as tr:
        assert tr.step == 10


def test_a_failing_block_surfaces_its_own_error_and_the_last_save_only_warns(tmp_path):
    """A bad option value raises at the first build, inside the loop; the last save at close
    would raise it again, and now only warns, so the block's error is the one seen."""
    model, D, task = setting()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    with pytest.warns(RuntimeWarning, match="last checkpoint was not written at close"):
        with pytest.raises(ValueError, match="order must be 2, 3 or 4"):
            with Tracker(model, optimizer, D, method="cumulant", options={"order": 7}, budget=100.0,
                         path=tmp_path / "run.h5", every=10):
                train(model, optimizer, task, 2, torch.Generator().manual_seed(1), batch=256)
    assert not (tmp_path / "run.h5.lock").exists()
