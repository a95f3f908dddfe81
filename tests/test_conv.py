"""Convolutional models: convolutions, pooling, padding and BatchNorm2d compile to the affine
maps they are on flattened inputs (`compile_model(..., input_shape=...)`)."""
import math

import pytest
import torch
from torch import nn

from explanations import Gaussian, InvalidModel, UnsupportedModule, compile_model, explain, spatial
from explanations.events import Above
from explanations.graph import Act, Affine, iter_ops
from storage import open_run
from tracker import Tracker

F64 = torch.float64


def images(seed: int = 0) -> nn.Sequential:
    """Every supported layer kind on 2 × 9 × 9 inputs, statistics made non-trivial."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.ZeroPad2d(1), nn.Conv2d(2, 4, 3, stride=2, dilation=1), nn.BatchNorm2d(4), nn.ReLU(),   # 4×5×5
        nn.Conv2d(4, 4, 3, padding=1, groups=2, padding_mode="circular"), nn.GELU(),               # 4×5×5
        nn.ConvTranspose2d(4, 3, 2, stride=1), nn.Tanh(),                                           # 3×6×6
        nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 2)).to(F64)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            nn.init.normal_(module.weight)
            nn.init.normal_(module.bias)
    return model.eval()


def test_the_graph_computes_what_the_model_computes():
    model = images()
    graph = compile_model(model, input_shape=(2, 9, 9))
    x = torch.randn(32, 2, 9, 9, dtype=F64)
    assert graph.n_inputs == 162
    torch.testing.assert_close(graph.forward(x.flatten(1)), model(x), rtol=1e-12, atol=1e-12)
    # BatchNorm2d is folded into the convolution before it: pad, 3 convolutions, 2 pools, Linear
    assert sum(isinstance(op, Affine) for op in iter_ops(graph.chain)) == 7


def test_a_convolution_costs_its_own_flops_not_a_dense_product():
    conv = nn.Conv2d(3, 8, 3, stride=1)
    graph = compile_model(nn.Sequential(conv), input_shape=(3, 10, 10))
    outputs = 8 * 8 * 8
    assert graph.flops_per_sample == 2 * (3 * 3 * 3) * outputs + outputs
    assert graph.flops_per_sample < (2 * 300 + 1) * outputs / 10


def test_a_kernel_wider_than_its_circular_input_is_still_exact():
    """Circular padding wider than the input makes an entry of the matrix sum several weights:
    the index structure cannot say which, so the matrix comes from the basis each time."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(1, 2, 5, padding=2, padding_mode="circular"), nn.ReLU(), nn.Flatten(),
                          nn.Linear(6, 1)).to(F64)
    x = torch.randn(16, 1, 3, dtype=F64)
    torch.testing.assert_close(compile_model(model, input_shape=(1, 3)).forward(x.flatten(1)), model(x))


def test_missing_or_wrong_shapes_are_named():
    model = images()
    with pytest.raises(UnsupportedModule, match="'0'.*ZeroPad2d.*input_shape"):
        compile_model(model)
    with pytest.raises(InvalidModel, match="cannot take inputs of shape \\(3, 9, 9\\)"):
        compile_model(model, input_shape=(3, 9, 9))
    with pytest.raises(UnsupportedModule, match="would hold"):
        compile_model(nn.Sequential(nn.Conv2d(3, 64, 3, padding=1)), input_shape=(3, 128, 128))


def test_gaussian_mean_of_a_small_cnn_against_sampling():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(144, 1)).to(F64)
    D = Gaussian.standard(196)
    pi = explain(model, D, "gaussian", input_shape=(1, 14, 14))
    with torch.no_grad():
        y = model(torch.randn(200_000, 1, 14, 14, dtype=F64, generator=torch.Generator().manual_seed(2)))[:, 0]
    error = abs(float(pi.expectation().value[0]) - float(y.mean()))
    assert error < 4 * float(y.std()) / math.sqrt(len(y)) + 0.01 * float(y.std())


def test_live_graph_carries_the_gradient_of_the_convolution():
    model = images()
    x = torch.randn(8, 2, 9, 9, dtype=F64)
    live = compile_model(model, input_shape=(2, 9, 9), live=True)
    live.forward(x.flatten(1)).pow(2).sum().backward()
    mine = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x).pow(2).sum().backward()
    for a, p in zip(mine, model.parameters()):
        torch.testing.assert_close(a, p.grad)


def test_tracking_a_cnn(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 1))
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    D = Gaussian.standard(64)
    with Tracker(model, optimizer, D, events={"high": Above(0, 3.0)}, path=tmp_path / "run.h5", every=10,
                 input_shape=(1, 8, 8)) as tracker:
        for _ in range(30):
            x = torch.randn(256, 1, 8, 8)
            loss = ((model(x)[:, 0] - x[:, 0, 3, 3]) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    fresh = explain(model.eval(), D, input_shape=(1, 8, 8))
    torch.testing.assert_close(tracker.explanation.expectation().value, fresh.expectation().value)
    saved = open_run(tmp_path / "run.h5").last.explanation.graph
    assert saved.flops_per_sample == fresh.graph.flops_per_sample < 2 * 64 * 144    # the convolution's own


@pytest.mark.parametrize("pool, shape", [(nn.MaxPool2d(2), (3, 8, 8)), (nn.MaxPool2d(3, 2), (2, 9, 9)),
                                         (nn.MaxPool1d(3), (2, 10)), (nn.MaxPool2d((2, 3), (1, 2)), (1, 6, 7))])
def test_max_pooling_is_an_exact_relu_network(pool, shape):
    model = nn.Sequential(pool, nn.Flatten()).to(F64)
    graph = compile_model(model, input_shape=shape)
    x = torch.randn(64, *shape, dtype=F64)
    torch.testing.assert_close(graph.forward(x.flatten(1)), model(x), rtol=0, atol=1e-14)
    window = math.prod(pool.kernel_size if isinstance(pool.kernel_size, tuple) else (pool.kernel_size,) * (len(shape) - 1))
    assert sum(isinstance(op, Act) for op in graph.chain) == math.ceil(math.log2(window))


def test_max_pooling_moments_against_sampling():
    """Measured on two such nets: gaussian 0.04–0.06 sd, cumulant 0.02–0.04 sd (average pooling
    in its place: 0.002–0.02)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(64, 3)).to(F64)
    pi = explain(model, Gaussian.standard(196), "cumulant", input_shape=(1, 14, 14))
    with torch.no_grad():
        y = model(torch.randn(200_000, 1, 14, 14, dtype=F64, generator=torch.Generator().manual_seed(5)))
    assert float(((pi.expectation().value - y.mean(0)) / y.std(0)).abs().max()) < 0.05


def test_max_pooling_with_padding_is_refused():
    with pytest.raises(UnsupportedModule, match="MaxPool2d.*padding=0"):
        compile_model(nn.Sequential(nn.MaxPool2d(2, padding=1)), input_shape=(1, 4, 4))


class SharedPool(nn.Module):
    """One pooling module called twice on maps of different sizes (the CIFAR-tutorial net)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.pool = nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3), nn.MaxPool2d(2)
        self.fc = nn.Linear(2 * 2 * 2, 1)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


def test_a_module_called_twice_gets_each_call_s_shape():
    torch.manual_seed(0)
    model = SharedPool().to(F64)
    x = torch.randn(8, 1, 14, 14, dtype=F64)
    torch.testing.assert_close(compile_model(model, input_shape=(1, 14, 14)).forward(x.flatten(1)), model(x))


def test_changed_settings_and_weights_are_followed_and_hooks_see_only_the_first_compile():
    """The structure is kept per settings and shape; weights are gathered at every compile;
    FLOPs count structural non-zeros, not the weights' values."""
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 2, 3, padding=1).to(F64)
    model = nn.Sequential(conv, nn.Flatten())
    seen = []
    conv.register_forward_hook(lambda *args: seen.append(1))
    x = torch.randn(4, 1, 5, 5, dtype=F64)
    first = compile_model(model, input_shape=(1, 5, 5))
    calls = len(seen)
    with torch.no_grad():
        conv.weight.zero_()
    zeroed = compile_model(model, input_shape=(1, 5, 5))
    assert len(seen) == calls and zeroed.flops_per_sample == first.flops_per_sample
    torch.testing.assert_close(zeroed.forward(x.flatten(1)), model(x))
    conv.padding_mode = "circular"
    torch.testing.assert_close(compile_model(model, input_shape=(1, 5, 5)).forward(x.flatten(1)), model(x))
    pool = nn.Sequential(nn.AvgPool2d(3, 2, padding=1, count_include_pad=True), nn.Flatten()).to(F64)
    compile_model(pool, input_shape=(1, 6, 6))
    pool[0].count_include_pad = False
    ones = torch.ones(2, 1, 6, 6, dtype=F64)            # a border average is 1 only without the padding
    torch.testing.assert_close(compile_model(pool, input_shape=(1, 6, 6)).forward(ones.flatten(1)).double(),
                               pool(ones), rtol=1e-6, atol=1e-6)


def test_a_max_pool_too_large_to_expand_is_refused():
    with pytest.raises(UnsupportedModule, match="MaxPool2d.*ReLU network needs"):
        compile_model(nn.Sequential(nn.MaxPool2d(2), nn.Flatten()), input_shape=(8, 32, 32))


def test_predict_takes_a_batch_of_images():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 1)).to(F64)
    pi = explain(model, Gaussian.standard(36), input_shape=(1, 6, 6))
    images = torch.randn(5, 1, 6, 6, dtype=F64)
    torch.testing.assert_close(pi.predict(images), pi.predict(images.flatten(1)))
    with pytest.raises(ValueError, match="predict expects inputs of shape \\[batch, 36\\]"):
        pi.predict(torch.randn(5, 1, 5, 5))


def test_predict_refuses_images_of_another_layout():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 1)).to(F64)
    pi = explain(model, Gaussian.standard(36), input_shape=(1, 6, 6))
    for wrong in (torch.randn(5, 6, 6, 1), torch.randn(5, 1, 4, 9)):
        with pytest.raises(ValueError, match="\\[batch, 36\\] or \\[batch, 1, 6, 6\\]"):
            pi.predict(wrong)
    assert pi.predict(torch.randn(0, 1, 6, 6, dtype=F64)).shape == (0, 1)


def test_a_clamp_too_wide_to_expand_stays_an_activation():
    graph = compile_model(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU6(), nn.Flatten()), input_shape=(3, 32, 32))
    assert [op.kind for op in graph.chain if not isinstance(op, Affine)] == ["clamp:0.0,6.0,1.0,0.0"]


def test_a_rising_activation_moves_after_the_max_pool_and_the_moments_improve():
    """max_i relu(z_i) = relu(max_i z_i): the tournament compares the convolution's Gaussian
    outputs. Measured on this net, worst output mean: 0.95 sd off before the move, 0.06 after;
    GELU, which is not monotone, stays in place."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, 3)).to(F64)
    graph = compile_model(model, input_shape=(1, 14, 14))
    kinds = [(op.kind, op.path) for op in graph.chain if isinstance(op, Act)]
    assert kinds[2] == ("relu", "1") and kinds[5] == ("relu", "4")       # after each pool's two rounds
    relu_units = 4 * 12 * 12 + 4 * 4 * 4                                   # as the model runs them
    pooled = 4 * 6 * 6 + 4 * 2 * 2
    charged = sum(op.forward_flops for op in graph.chain if isinstance(op, Affine) and op.path in ("2", "5"))
    assert charged == 3 * pooled + relu_units - pooled                     # comparisons + the moved units
    pi = explain(graph, Gaussian.standard(196), "gaussian")
    with torch.no_grad():
        y = model(torch.randn(200_000, 1, 14, 14, dtype=F64, generator=torch.Generator().manual_seed(5)))
    assert float(((pi.expectation().value - y.mean(0)) / y.std(0)).abs().max()) < 0.1


def test_a_falling_then_rising_activation_moves_between_the_pool_s_extremes():
    """max_i f(z_i) = max(f(max z), f(min z)) for GELU: the graph runs f on each window's two
    extremes. The same net as above with GELU: worst output mean 0.99 sd off with GELU in
    place, 0.155 after (4·10⁵ draws, standard error 0.0016 sd)."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GELU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3), nn.GELU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, 3)).to(F64)
    graph = compile_model(model, input_shape=(1, 14, 14))
    acts = [(i, op.kind, graph.chain[i - 1].n_out) for i, op in enumerate(graph.chain) if isinstance(op, Act)]
    assert [(kind, width) for _, kind, width in acts if kind == "gelu"] == [("gelu", 2 * 144), ("gelu", 2 * 16)]
    pi = explain(graph, Gaussian.standard(196), "gaussian")
    with torch.no_grad():
        y = model(torch.randn(200_000, 1, 14, 14, dtype=F64, generator=torch.Generator().manual_seed(5)))
    assert float(((pi.expectation().value - y.mean(0)) / y.std(0)).abs().max()) < 0.25


@pytest.mark.parametrize("kernel,stride", [(2, 2), (3, 3), (3, 1), ((1, 3), (1, 2))])
def test_a_tournament_s_extremes_are_each_window_s_max_and_min(kernel, stride):
    from explanations.graph import run_chain
    pool = spatial.max_pool(nn.MaxPool2d(kernel, stride), "p", (2, 7, 7), None, F64)[0]
    x = torch.randn(50, 98, dtype=F64)
    windows = x[:, pool.windows]                                            # [50, m, k]
    both = run_chain(pool.tournament(extremes=True), x)
    torch.testing.assert_close(both, torch.cat([windows.amax(-1), windows.amin(-1)], 1), rtol=0, atol=1e-12)
    torch.testing.assert_close(run_chain(pool.tournament(), x), windows.amax(-1), rtol=0, atol=1e-12)


def test_an_activation_stays_before_a_pool_whose_extremes_would_not_fit(monkeypatch):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.GELU(), nn.MaxPool2d(2), nn.Flatten()).to(F64)
    monkeypatch.setattr(spatial, "MAX_DENSE_ENTRIES", 6 * 18 * 72)          # the max-only first round
    chain = compile_model(model, input_shape=(1, 8, 8)).chain
    assert isinstance(chain[1], Act) and chain[1].kind == "gelu"


def test_sparse_affine_maps_propagate_as_dense_ones_at_their_own_cost():
    from collections import Counter
    from explanations.propagate import GaussianState, propagate
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(30, 20, dtype=F64, generator=g) * (torch.rand(30, 20, generator=g) < 0.05)
    root = torch.randn(20, 20, dtype=F64, generator=g)
    state = GaussianState(torch.randn(20, dtype=F64, generator=g), root @ root.T, root[:3])
    sparse_flops, dense_flops = Counter(), Counter()
    sparse = propagate((Affine(weight, torch.ones(30, dtype=F64)),), state, sparse_flops)
    dense = propagate((Affine(weight + 1e-300, torch.ones(30, dtype=F64)),), state, dense_flops)
    for a, b in zip((sparse.mean, sparse.cov, sparse.cross), (dense.mean, dense.cov, dense.cross)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    nonzero = int(torch.count_nonzero(weight))
    assert sparse_flops["affine"] == 2 * nonzero * (20 + 30 + 1 + 3) + 600 + 30 + 900
    assert dense_flops["affine"] == 2 * 600 * (20 + 30 + 1 + 3) + 600 + 30 + 900



@pytest.mark.parametrize("act,pool", [(act, (2, 2)) for act in (nn.ReLU, nn.ReLU6, nn.Hardsigmoid, nn.Tanh, nn.ELU)]
                         + [(act, pool) for act in (nn.GELU, nn.SiLU, nn.Mish) for pool in ((2, 2), (2, 1), (3, 1))])
def test_a_moved_activation_keeps_the_graph_s_flops_the_model_s(act, pool):
    """Moved past the pool, overlapping windows included (GELU at stride 1 once stayed in
    place: its rewrite's units were charged as well, 0.36 sd off against 0.04 moved)."""
    conv = nn.Conv2d(1, 2, 3).to(F64)
    whole = compile_model(nn.Sequential(conv, act(), nn.MaxPool2d(*pool)), input_shape=(1, 8, 8))
    before = compile_model(nn.Sequential(conv, act()), input_shape=(1, 8, 8))
    alone = compile_model(nn.Sequential(nn.MaxPool2d(*pool)), input_shape=(2, 6, 6))
    assert whole.flops_per_sample == before.flops_per_sample + alone.flops_per_sample
    assert not isinstance(whole.chain[1], Act)                    # the activation left its place


def test_bench_cnn_quick_runs_and_stays_close(tmp_path):
    import csv
    from train.cli import main
    main(["bench", "cnn", "--quick", "--reference", "40000", "--csv", str(tmp_path / "cnn.csv")])
    rows = list(csv.DictReader(open(tmp_path / "cnn.csv")))
    assert {row["method"] for row in rows} == {"gaussian", "cumulant"}
    assert all(float(row["error_sd"]) < 0.1 and float(row["cost"]) < 10_000 for row in rows)


def test_float32_moments_through_a_max_pool():
    """A pool's units (a, -a) have ρ = -1; the clamp 1 - 1e-12 is 1.0 in float32, and the
    pair formulas gave NaN ("rho must lie in [-1, 1]"). The limit keeps 8 ulps of the dtype."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(18, 1)).to(F64)
    D = Gaussian.standard(64)
    double = explain(model, D, "gaussian", input_shape=(1, 8, 8)).expectation().value
    single = explain(model, D, "gaussian", input_shape=(1, 8, 8), dtype=torch.float32).expectation().value
    torch.testing.assert_close(single.double(), double, rtol=1e-4, atol=1e-5)


def test_flattening_other_than_each_row_is_refused_by_name():
    """Flatten(start_dim=2) then a Linear acts per channel, which the graph's flat vectors
    cannot express: refused naming the flatten, not a shape mismatch further on."""
    class PerChannel(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.head = nn.Conv2d(1, 2, 3), nn.Linear(16, 1)

        def forward(self, x):
            return self.head(torch.flatten(self.conv(x), 2))

    for model in (nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(2), nn.Linear(16, 1)), PerChannel()):
        with pytest.raises(UnsupportedModule, match="only flattening each row is supported.*start_dim=2"):
            compile_model(model, input_shape=(1, 6, 6))
    for whole_rows in (nn.Flatten(1, 3), nn.Flatten(-3, -1), nn.Flatten(1, -1)):
        model = nn.Sequential(nn.Conv2d(1, 2, 3), whole_rows, nn.Linear(32, 1))
        assert compile_model(model, input_shape=(1, 6, 6)).n_outputs == 1
