"""Regression tests for the review of the Tracker and run files: budget bounds before the
first build and query, structure changes, resume checks, frozen parameters, state_dict,
temporaries of live writers, damaged files, penalty inputs, argument checks."""
import subprocess
import sys

import h5py
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from explanations import Gaussian, compile_model, explain
from explanations.events import Above, All, Any, ArgMax, Below
from storage import RunFileError, open_run
from storage.runfile import remove_stale_temporaries
from tracker import Tracker
from tracker.bounds import build_bound, query_bound
from train.catastrophe import CatastrophePenalty
from train.cli import main


def mlp(widths=(8, 16, 16, 2), seed=0, act=nn.ReLU):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), act()]
    return nn.Sequential(*layers[:-1])


def steps(model, optimizer, n, rows=64, seed=1, check=None):
    generator = torch.Generator().manual_seed(seed)
    n_in = next(model.parameters()).shape[1]
    for _ in range(n):
        x = torch.randn(rows, n_in, generator=generator)
        loss = (model(x) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if check is not None:
            check()


# ---- 1: the ratio holds from the first build and query on ---------------------------------
def test_ratio_holds_at_the_first_build():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 256), nn.ReLU(), nn.Linear(256, 1))
    optimizer = torch.optim.SGD(model.parameters(), 1e-3)
    with Tracker(model, optimizer, Gaussian.standard(2), method="gaussian") as tr:
        steps(model, optimizer, 60, rows=256, check=lambda: tr.ledger.ratio <= 1.0 or pytest.fail(str(tr.ledger)))
    assert tr.ledger.full_updates >= 1 and tr.ledger.overruns == 0


def test_ratio_holds_at_the_first_query(tmp_path):
    model = mlp((8, 16, 16, 4))
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    events = {"any": Any(*[Above(k, 2.5) for k in range(4)])}
    with Tracker(model, optimizer, Gaussian.standard(8), method="cumulant", events=events,
                 budget=3.0, path=tmp_path / "run.h5", every=20) as tr:
        steps(model, optimizer, 100, rows=512, check=lambda: tr.ledger.ratio <= 3.0 or pytest.fail(str(tr.ledger)))
    assert tr.ledger.overruns == 0
    assert any(ck.estimates["any"] is not None for ck in open_run(tmp_path / "run.h5"))


@pytest.mark.parametrize("method", ["gaussian", "cumulant", "auto"])
@pytest.mark.parametrize("widths,act,standard", [((4, 8, 2), nn.ReLU, True), ((6, 16, 16, 3), nn.Tanh, False),
                                                 ((3, 24, 8, 8, 2), nn.GELU, True)])
def test_cost_bounds_hold(method, widths, act, standard):
    graph = compile_model(mlp(widths, act=act), inference=True)
    d = widths[0]
    D = Gaussian.standard(d) if standard else Gaussian(torch.full((d,), 0.2), 0.7 * torch.eye(d) + 0.1)
    pi = explain(graph, D, method)
    assert pi.build_flops <= build_bound(graph, D, method, {})
    for event in (Above(0, 1.0), Above(0, 3.0), Any(Above(0, 2.5), Below(1, -2.5)),
                  All(Above(0, 0.5), Above(1, 0.5)), ArgMax(1)):
        query = pi.probability(event).flops - pi.build_flops
        assert query <= query_bound(graph, D, method, {}, event), event


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.inner = nn.Conv2d(2, 2, 3, padding=1), nn.Sequential(nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1))

    def forward(self, x):
        return x + self.inner(self.conv(x))


CNNS = {
    "max pools": lambda: nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3),
                                       nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, 3)),
    "gelu, average pool, batch norm": lambda: nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.GELU(),
                                                            nn.AvgPool2d(2), nn.Flatten(), nn.Linear(108, 2)),
    "residual": lambda: nn.Sequential(nn.Conv2d(1, 2, 3), Block(), nn.ReLU(), nn.Flatten(), nn.Linear(288, 2)),
}


@pytest.mark.parametrize("method", ["gaussian", "cumulant"])
@pytest.mark.parametrize("net", sorted(CNNS))
def test_cost_bounds_hold_and_stay_close_on_cnns(method, net):
    """Convolutions' sparse maps and independent distant units make π's cost a few percent
    of a dense count; a dense bound (30-370x the cost measured) would keep a CNN's Tracker
    from ever rebuilding."""
    torch.manual_seed(0)
    graph = compile_model(CNNS[net]().eval(), input_shape=(1, 14, 14), inference=True)
    D = Gaussian.standard(196)
    pi = explain(graph, D, method)
    assert pi.build_flops <= build_bound(graph, D, method, {}) <= 3 * pi.build_flops


def test_a_layer_initialised_at_zero_does_not_lower_the_bounds(tmp_path):
    """Bounds come from the maps' structural supports, not the weights' current zeros: a
    zero-initialised layer once gave a bound below what its trained weights cost (20
    overruns, ratio 1.06)."""
    model = mlp((16, 128, 128, 2))
    with torch.no_grad():
        model[2].weight.zero_()
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    with Tracker(model, optimizer, Gaussian.standard(16), method="gaussian") as tr:
        for _ in range(60):
            steps(model, optimizer, 1, rows=64)
            assert tr.ledger.ratio <= 1.0
    assert tr.ledger.overruns == 0 and tr.ledger.full_updates > 0
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(800, 2))
    graph = compile_model(conv, input_shape=(1, 14, 14))
    with torch.no_grad():
        conv[2].weight.zero_()
    zeroed = compile_model(conv, input_shape=(1, 14, 14))
    assert build_bound(zeroed, Gaussian.standard(196), "gaussian", {}) == build_bound(graph, Gaussian.standard(196), "gaussian", {})


@pytest.mark.parametrize("method, options, widths", [("polynomial", {"design": False}, (110, 64, 1)),
                                                     ("cumulant", {"design": False, "order": 4}, (42, 64, 64, 1))])
def test_query_bounds_count_the_exact_tetrahedral_diagrams(method, options, widths):
    """κ4's tetrahedral diagrams, summed exactly up to 64 units, cost n⁴ per marginal:
    about 19,000 sample-equivalents here, beyond the 8,000 the bound allowed before."""
    graph = compile_model(mlp(widths), inference=True)
    D = Gaussian.standard(widths[0])
    pi = explain(graph, D, method, **options)
    event = Above(0, 1.0)
    assert pi.probability(event).flops - pi.build_flops <= query_bound(graph, D, method, options, event)


def test_a_step_network_is_tracked_and_its_small_budget_queries_bounded(tmp_path):
    from explanations.activations import Step
    model = nn.Sequential(nn.Linear(10, 10), Step())
    graph = compile_model(model)
    pi = explain(graph, Gaussian.standard(10), "halfspaces", budget=1)
    event = All(*[Above(i, 0.5) for i in range(10)])
    assert pi.probability(event).flops - pi.build_flops <= query_bound(graph, Gaussian.standard(10), "halfspaces",
                                                                       {"budget": 1}, event)
    optimizer = torch.optim.SGD(model.parameters(), 1e-3)
    with Tracker(model, optimizer, Gaussian.standard(10), method="auto", path=tmp_path / "run.h5", every=5,
                 events={"all": event}):
        for _ in range(10):               # the save once asked the halfspace explanation for a covariance
            loss = model[0](torch.randn(64, 10)).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    assert open_run(tmp_path / "run.h5").steps == [5, 10]


# ---- 2: structure changes -----------------------------------------------------------------
def test_a_model_that_grows_mid_training_is_rebuilt_not_crashed():
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), 1e-3)
    tr = Tracker(model, optimizer, Gaussian.standard(8), method="gaussian")
    steps(model, optimizer, 40, rows=128)
    assert tr.explanation is not None
    model[2], model[4] = nn.Linear(16, 32), nn.Linear(32, 2)
    optimizer.add_param_group({"params": list(model[2].parameters()) + list(model[4].parameters())})
    steps(model, optimizer, 200, rows=128)       # no shape error inside optimizer.step()
    tr.close()
    assert tr.explanation.graph.chain[-1].weight.shape == (2, 32)
    assert tr.ledger.ratio <= 1.0 and tr.ledger.overruns == 0


def test_a_new_number_of_outputs_stops_tracking_and_keeps_the_file_readable(tmp_path):
    model = mlp()
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    with Tracker(model, optimizer, Gaussian.standard(8), events={"e": Above(1, 2.0)},
                 path=tmp_path / "run.h5", every=5, budget=5.0) as tr:
        steps(model, optimizer, 10, rows=1024)
        model[4] = nn.Linear(16, 3)
        optimizer.add_param_group({"params": model[4].parameters()})
        with pytest.warns(RuntimeWarning, match="tracking stopped.*3 outputs"):
            steps(model, optimizer, 10, rows=1024)
    assert tr.stopped is not None and tr.step == 10
    run = open_run(tmp_path / "run.h5")
    assert run.steps == [5, 10] and run.series("expectation").value.shape == (2, 2)


def test_resume_refuses_a_model_of_another_structure(tmp_path):
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), 1e-3)
    with Tracker(model, optimizer, Gaussian.standard(8), path=tmp_path / "run.h5", every=5):
        steps(model, optimizer, 5)
    other = mlp((8, 32, 16, 2))
    with pytest.raises(ValueError, match="compiled model differs from this one in op 0.*8→16 against an affine map 8→32"):
        Tracker(other, torch.optim.SGD(other.parameters(), 1e-3), Gaussian.standard(8), path=tmp_path / "run.h5")


# ---- 3, 4: resume checks ----------------------------------------------------------------------
def test_resume_compares_event_definitions(tmp_path):
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), 1e-3)
    with Tracker(model, optimizer, Gaussian.standard(8), events={"hi": Above(0, 2.0)}, path=tmp_path / "run.h5",
                 every=5):
        steps(model, optimizer, 5)
    with pytest.raises(ValueError, match="definition of event 'hi'"):
        Tracker(model, optimizer, Gaussian.standard(8), events={"hi": Below(1, -50.0)}, path=tmp_path / "run.h5")
    Tracker(model, optimizer, Gaussian.standard(8), events={"hi": Above(0, 2.0)}, path=tmp_path / "run.h5").close()


def test_resume_before_pi_was_built(tmp_path):
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), 1e-3)
    with Tracker(model, optimizer, Gaussian.standard(8), path=tmp_path / "run.h5", every=2) as tr:
        steps(model, optimizer, 4, rows=4)
    assert tr.explanation is None and not open_run(tmp_path / "run.h5").last.has_explanation
    resumed = Tracker(model, optimizer, Gaussian.standard(8), path=tmp_path / "run.h5", every=2)
    assert resumed.step == 4 and resumed.explanation is None
    steps(model, optimizer, 2, rows=4)
    resumed.close()
    assert open_run(tmp_path / "run.h5").steps == [2, 4, 6]


# ---- 5: frozen parameters ------------------------------------------------------------------------
@pytest.mark.parametrize("frozen", [False, True])
def test_training_flops_follow_the_trainable_parameters(frozen):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 2))
    if frozen:
        for p in list(model[0].parameters()) + list(model[2].parameters()):
            p.requires_grad_(False)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], 1e-3)
    tr = Tracker(model, optimizer, Gaussian.standard(64))
    x = torch.randn(32, 64)
    with FlopCounterMode(display=False) as counter:
        loss = (model(x) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
    optimizer.step()
    tr.close()
    assert 1.0 <= tr.ledger.training_flops / counter.get_total_flops() <= 1.05


# ---- 6: state_dict for every model ------------------------------------------------------------------
@pytest.mark.parametrize("make,shape", [
    (lambda: nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2)), None),
    (lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(32, 2)), (1, 6, 6)),
])
def test_the_resume_recipe_restores_any_model(tmp_path, make, shape):
    torch.manual_seed(0)
    model = make()
    optimizer = torch.optim.SGD(model.parameters(), 1e-2)
    n_in = 36 if shape else 8
    with Tracker(model, optimizer, Gaussian.standard(n_in), path=tmp_path / "run.h5", every=5, input_shape=shape):
        for _ in range(5):
            loss = (model(torch.randn(64, *(shape or (n_in,)))) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    torch.manual_seed(1)
    restored = make()
    restored.load_state_dict(open_run(tmp_path / "run.h5").last.state_dict())
    model.eval(), restored.eval()
    x = torch.randn(4, *(shape or (n_in,)))
    assert torch.equal(model(x), restored(x))


# ---- 7: a live writer's temporary file survives ----------------------------------------------------
def test_only_dead_writers_temporaries_are_removed(tmp_path):
    path = tmp_path / "run.h5"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live = tmp_path / f".run.h5.{sleeper.pid}.tmp"
        dead_process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                                      capture_output=True, text=True)
        dead = tmp_path / f".run.h5.{int(dead_process.stdout)}.tmp"
        live.write_bytes(b"x")
        dead.write_bytes(b"x")
        remove_stale_temporaries(path)
        assert live.exists() and not dead.exists()
        model = mlp()
        with pytest.raises(FileExistsError):
            path.write_bytes(b"")
            Tracker(model, torch.optim.SGD(model.parameters(), 0.1), Gaussian.standard(8), path=path, resume=False)
        assert live.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


# ---- 8: damaged files --------------------------------------------------------------------------------
def _written(tmp_path):
    model = mlp((8, 16, 16, 3))
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    with Tracker(model, optimizer, Gaussian.standard(8), path=tmp_path / "run.h5", every=5, budget=5.0):
        steps(model, optimizer, 10, rows=512)
    return tmp_path / "run.h5"


def test_a_damaged_chunk_raises_run_file_error(tmp_path, capsys):
    path = _written(tmp_path)
    with h5py.File(path, "r") as f:
        name = sorted(f["checkpoints"])[-1]
        offset = f[f"checkpoints/{name}/state/cov"].id.get_chunk_info(0).byte_offset
    data = bytearray(path.read_bytes())
    data[offset:offset + 64] = bytes(range(64))
    path.write_bytes(bytes(data))
    run = open_run(path)
    with pytest.raises(RunFileError, match="run.h5.*state at step 10"):
        run.at(10).state


def test_malformed_files_raise_run_file_error(tmp_path, capsys):
    path = _written(tmp_path)
    with h5py.File(path, "a") as f:
        del f[f"checkpoints/{sorted(f['checkpoints'])[0]}"].attrs["step"]
    with pytest.raises(RunFileError, match="checkpoint index"):
        open_run(path)
    with pytest.raises(SystemExit):
        main(["inspect", str(path)])
    assert "checkpoint index" in capsys.readouterr().err
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f.attrs["format"], f.attrs["version"] = "pi-tracker run", "one"
    with pytest.raises(RunFileError, match="version"):
        open_run(tmp_path / "v.h5")


# ---- 9, 10: penalty inputs, argument checks ------------------------------------------------------------
def test_penalty_inputs_have_the_models_dtype():
    model = mlp((4, 16, 2))
    penalty = CatastrophePenalty(model, Gaussian(torch.zeros(4), torch.eye(4)), Above(0, 3.0), target=1e-3)
    penalty()
    x = penalty.inputs(8, torch.Generator().manual_seed(0))
    assert x.dtype == torch.float32 and model(x).shape == (8, 2)


def test_reserved_event_names_are_refused():
    model = mlp()
    with pytest.raises(ValueError, match="may not be named 'expectation'"):
        Tracker(model, torch.optim.SGD(model.parameters(), 0.1), Gaussian.standard(8),
                events={"expectation": Above(0, 1.0)})


@pytest.mark.parametrize("argv", [["demo", "--steps", "0"], ["demo", "--steps", "-3"],
                                  ["bench", "halfspaces", "--quick", "--repeats", "0"]])
def test_cli_counts_must_be_positive(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and "positive integer" in capsys.readouterr().err


def test_resume_refuses_a_budget_below_the_ledger_it_restores(tmp_path):
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), 1e-3)
    with Tracker(model, optimizer, Gaussian.standard(8), path=tmp_path / "run.h5", every=5, budget=5.0) as tr:
        steps(model, optimizer, 20, rows=1024)
    ratio = tr.ledger.ratio
    assert ratio > 0.05
    with pytest.raises(ValueError, match="ledger already stands at ratio"):
        Tracker(model, optimizer, Gaussian.standard(8), path=tmp_path / "run.h5", budget=ratio / 2)


def test_state_dicts_with_extra_state_and_slashes_round_trip(tmp_path):
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleDict({"enc/0": torch.nn.Linear(8, 16), "out": torch.nn.Linear(16, 2)})

        def forward(self, x):
            return self.layers["out"](torch.relu(self.layers["enc/0"](x)))

        def get_extra_state(self):
            return {"note": "not a tensor"}

        def set_extra_state(self, state):
            pass

    model = Block()
    optimizer = torch.optim.SGD(model.parameters(), 1e-3)
    with Tracker(model, optimizer, Gaussian.standard(8), path=tmp_path / "run.h5", every=5):
        steps(model, optimizer, 5)
    restored = Block()
    restored.load_state_dict(open_run(tmp_path / "run.h5").last.state_dict(), strict=False)
    for name, tensor in model.state_dict().items():
        if isinstance(tensor, torch.Tensor):
            torch.testing.assert_close(restored.state_dict()[name], tensor)


def test_bounds_hold_on_live_graphs_and_high_degree_marginals():
    """A live graph's W stays dense and its moments compute every pair; an order-4 marginal
    pays its tetrahedral diagrams (exact up to 64 units, `_tetrahedra_bound`'s middles and
    pair sums beyond), which the gate's estimate leaves out: 8.3e9 FLOPs against a bound of
    4.4e9 once (65 units, degree 20). The bound mirrors both counts."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(200, 2))
    live = compile_model(model, input_shape=(1, 12, 12), live=True)
    D = Gaussian.standard(144)
    assert explain(live, D, "gaussian").build_flops <= build_bound(live, D, "gaussian", {})
    from explanations.hermite_cumulants import _Contractor, _tetrahedra, _tetrahedra_bound
    from tracker import bounds
    for n, degree in ((70, 9), (12, 20)):
        E, B = torch.rand(degree + 1, n, n, dtype=torch.float64), torch.rand(1, degree + 1, n, dtype=torch.float64)
        counted, exact = _Contractor(), _Contractor()
        _tetrahedra_bound(counted, E, B, degree)
        assert counted.flops <= bounds._tetrahedra_bound(n, degree)
        _tetrahedra(exact, E, B, degree)
        assert exact.flops <= bounds._tetrahedra(n, degree)


def test_a_parametrised_convolution_is_charged_its_current_weights():
    conv = nn.utils.parametrizations.weight_norm(nn.Conv2d(1, 4, 3))
    with torch.no_grad():
        conv.parametrizations.weight.original0.zero_()
    before = compile_model(nn.Sequential(conv), input_shape=(1, 12, 12)).flops_per_sample
    with torch.no_grad():
        conv.parametrizations.weight.original0.fill_(1.0)
    after = compile_model(nn.Sequential(conv), input_shape=(1, 12, 12)).flops_per_sample
    assert before < after == 2 * 9 * 400 + 400


def test_a_model_whose_outputs_overflow_is_left_stale_not_raised(tmp_path):
    """A learning-rate blow-up leaves finite weights near 1e29 whose forward pass overflows:
    the step once raised the compile check's InvalidModel into the training loop."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e30)
    with pytest.warns(RuntimeWarning, match="not finite on standard normal inputs"):
        with Tracker(model, optimizer, Gaussian.standard(16), path=tmp_path / "run.h5", every=5) as tr:
            for x in torch.randn(3, 64, 16):
                loss = (model(x) ** 2).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if tr.unexplainable is not None:
                    break
    assert tr.unexplainable is not None and tr.ledger.ratio <= 1.0


def test_a_deferred_event_is_warned_of_once(tmp_path):
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), 1e-3)
    with pytest.warns(RuntimeWarning, match="estimate of 'far' is deferred") as caught:
        with Tracker(model, optimizer, Gaussian.standard(8), method="cumulant", events={"far": Above(0, 3.0)},
                     path=tmp_path / "run.h5", every=2):
            steps(model, optimizer, 40, rows=8)
    assert sum("deferred" in str(w.message) for w in caught) == 1


def test_a_deferral_at_the_last_save_says_the_checkpoint_goes_without_it(tmp_path):
    """At close no later training pays for the estimate: the warning must not promise it."""
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), 1e-3)
    with pytest.warns(RuntimeWarning, match="deferred") as caught:
        with Tracker(model, optimizer, Gaussian.standard(8), method="cumulant", events={"far": Above(0, 3.0)},
                     path=tmp_path / "run.h5", every=2) as tr:
            steps(model, optimizer, 41, rows=8)
    messages = [str(w.message) for w in caught if "deferred" in str(w.message)]
    assert len(messages) == 2 and "may be never" in messages[0], messages
    assert "step 41" in messages[1] and "the last checkpoint goes without it" in messages[1], messages
    assert tr.saved_step == 41 and open_run(tmp_path / "run.h5").last.estimates["far"] is None


def test_explain_takes_inference_and_prints_intervals_apart():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1)).train()
    pi = explain(model, Gaussian.standard(4), inference=True)
    assert pi.graph.n_outputs == 1
    estimate = pi.probability(Above(0, float(pi.mean[0])), samples=20_000)
    low, high = str(estimate).split("95% in [")[1].split("]")[0].split(", ")
    assert low != high


@pytest.mark.parametrize("ending", [[nn.Sigmoid()], [nn.ReLU(), nn.ReLU6()]])
def test_a_model_ending_in_an_activation_is_tracked_with_events(tmp_path, ending):
    """The cumulant query bound read the last op's n_in, which an activation has not: the
    first save raised AttributeError (a final ReLU → ReLU6 is one activation since fusion)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2), *ending)
    optimizer = torch.optim.SGD(model.parameters(), 1e-3)
    with Tracker(model, optimizer, Gaussian.standard(6), method="auto", events={"high": Above(0, 0.6)},
                 path=tmp_path / "run.h5", every=2, budget=5.0) as tr:
        for _ in range(6):
            loss = model(torch.randn(512, 6)).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    assert tr.ledger.overruns == 0 and open_run(tmp_path / "run.h5").series("high").value.size == 3
