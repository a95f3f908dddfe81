import json

import pytest
import torch
from torch import nn

import torch.nn.functional as F
from explanations import Graph, InvalidModel, UnsupportedModule, compile_model
from explanations.activations import activation
from explanations.compile import graph_module
from explanations.graph import Act, Residual, iter_ops


class Block(nn.Module):
    """x + f(x): a residual sum traced by torch.fx."""

    def __init__(self, n):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(n, n), nn.GELU(approximate="tanh"), nn.Linear(n, n))

    def forward(self, x):
        return x + self.f(x)


class TwoBranches(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.a, self.b = nn.Linear(n, n), nn.Linear(n, n)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return torch.tanh(self.b(x)) + h


class DoubledLinear(nn.Linear):
    """A subclass whose forward is not Linear's: must not compile as a plain affine map."""

    def forward(self, x):
        return super().forward(x) * 2


class Scaled(nn.Module):
    def forward(self, x):
        return 2 * x


def every_leaf():
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.ReLU(),
                         nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Identity(), nn.Linear(8, 8), nn.Tanh()),
                         Block(8), nn.Linear(8, 5), nn.Sigmoid(), TwoBranches(5), nn.Linear(5, 3))


def test_graph_computes_what_the_module_computes():
    model = every_leaf().double()
    graph = compile_model(model)
    x = torch.randn(64, 6, dtype=torch.float64)
    assert (graph.n_inputs, graph.n_outputs) == (6, 3)
    torch.testing.assert_close(graph.forward(x), model(x), rtol=1e-12, atol=1e-12)
    assert sum(isinstance(op, Residual) for op in graph.chain) == 2


def test_residual_after_shared_prefix():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.first, self.second = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            h = self.first(x)
            return h + self.second(h)

    model = Shared().double()
    graph = compile_model(model)
    assert len(graph.chain) == 2 and isinstance(graph.chain[1], Residual)
    x = torch.randn(10, 4, dtype=torch.float64)
    torch.testing.assert_close(graph.forward(x), model(x))


@pytest.mark.parametrize("bad, path, kind", [
    (nn.Sequential(nn.Linear(3, 3), nn.Sequential(nn.Hardswish())), "1.0", "Hardswish"),
    (nn.Sequential(nn.Linear(3, 3), nn.Softplus(threshold=5.0)), "1", "Softplus"),
    (nn.Sequential(nn.Linear(3, 3), nn.Dropout()), "1", "Dropout"),
    (nn.Sequential(nn.Linear(3, 3), DoubledLinear(3, 3)), "1", "DoubledLinear"),
    (nn.Sequential(nn.Linear(3, 3), Scaled()), "1", "Scaled"),
    (nn.Sequential(nn.Conv1d(1, 1, 3)), "0", "Conv1d"),
])
def test_unsupported_modules_are_named(bad, path, kind):
    with pytest.raises(UnsupportedModule) as raised:
        compile_model(bad)
    assert raised.value.path == path and raised.value.kind == kind
    assert f"'{path}'" in str(raised.value) and kind in str(raised.value)


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 3)

    def forward(self, x, y):
        return self.linear(x) + y


class TimesAConstant(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 3)

    def forward(self, x):
        return self.linear(x) * torch.ones(3)


@pytest.mark.parametrize("call, error, message", [
    (lambda: compile_model("model"), TypeError, "expects a torch.nn.Module, got str"),
    (lambda: compile_model(nn.Sequential(nn.Linear(4, 2)), n_inputs=5, input_shape=(2, 2)), InvalidModel,
     r"n_inputs=5 does not match input_shape=\(2, 2\)"),
    (lambda: compile_model(nn.Sequential(nn.ReLU())), InvalidModel, "no Linear layer; pass n_inputs"),
    (lambda: compile_model(nn.Sequential(nn.LazyLinear(3))), UnsupportedModule, "'0' \\(LazyLinear\\): uninitialised lazy"),
    (lambda: compile_model(TwoInputs()), UnsupportedModule, "forward takes more than one input"),
    (lambda: compile_model(TimesAConstant()), UnsupportedModule, "TimesAConstant.*_tensor_constant0"),
])
def test_what_cannot_be_compiled_is_said(call, error, message):
    """Bad arguments and modules the formal language cannot hold raise errors that say what."""
    with pytest.raises(error, match=message):
        call()


def test_functional_gelu_with_the_tanh_approximation_compiles():
    class Approximate(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3, 3)

        def forward(self, x):
            return F.gelu(self.linear(x), approximate="tanh")
    model = Approximate().double()
    graph = compile_model(model)
    assert [getattr(op, "kind", None) for op in graph.chain] == [None, "gelu_tanh"]
    x = torch.randn(8, 3, dtype=torch.float64)
    torch.testing.assert_close(graph.forward(x), model(x))


class Functional(nn.Module):
    """The parametrised activations in functional form, positional and keyword."""

    def __init__(self, n):
        super().__init__()
        self.a, self.b = nn.Linear(n, n), nn.Linear(n, n)

    def forward(self, x):
        h = F.leaky_relu(self.a(x), 0.3) + F.elu(self.b(x), alpha=0.5)
        return F.softplus(F.silu(h), beta=2.0) + F.mish(x)


def test_more_activations_compute_what_the_module_computes():
    model = nn.Sequential(nn.Linear(5, 8), nn.LeakyReLU(0.2), nn.Linear(8, 8), nn.SiLU(), nn.Linear(8, 8),
                          nn.ELU(0.7), nn.Linear(8, 8), nn.Softplus(beta=3.0), nn.Linear(8, 8), nn.Mish(),
                          nn.Linear(8, 5), Functional(5), nn.Linear(5, 2)).double()
    graph = compile_model(model)
    kinds = [op.kind for op in iter_ops(graph.chain) if isinstance(op, Act)]
    assert kinds[:5] == ["leaky_relu:0.2", "silu", "elu:0.7", "softplus:3.0", "mish"]
    assert set(kinds[5:]) == {"leaky_relu:0.3", "elu:0.5", "compose:silu|softplus:2.0", "mish"}   # f(g(h)) fused
    x = 3 * torch.randn(256, 5, dtype=torch.float64)
    torch.testing.assert_close(graph.forward(x), model(x), rtol=1e-12, atol=1e-12)
    meta, arrays = graph.to_plain()
    rebuilt = Graph.from_plain(json.loads(json.dumps(meta)), arrays)
    assert repr(rebuilt) == repr(graph) and torch.equal(rebuilt.forward(x), graph.forward(x))
    chain = compile_model(model[:11])
    torch.testing.assert_close(graph_module(chain).double()(x), chain.forward(x), rtol=1e-12, atol=1e-12)


def test_unknown_activation_kinds_are_refused():
    assert activation("leaky_relu").name == "leaky_relu:0.01" and activation("softplus").name == "softplus:1.0"
    for kind in ("swish", "leaky_relu:abc", "elu:nan", "softplus:-1.0", "silu:2"):
        with pytest.raises(ValueError, match="activation|softplus"):
            activation(kind)
    meta, arrays = compile_model(nn.Sequential(nn.Linear(2, 2), nn.SiLU())).to_plain()
    meta["chain"][1]["kind"] = "leaky_relu:x"
    with pytest.raises(ValueError, match="unknown graph operation"):
        Graph.from_plain(meta, arrays)


def test_nan_weights_are_rejected_with_their_path():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    with torch.no_grad():
        model[2].weight[0, 1] = float("nan")
    with pytest.raises(InvalidModel, match="weight of '2'"):
        compile_model(model)


def test_shape_clash_is_reported():
    with pytest.raises(InvalidModel, match="expects 5 inputs but receives 4"):
        compile_model(nn.Sequential(nn.Linear(3, 4), nn.Linear(5, 1)))


def test_round_trip_through_plain_data():
    model = every_leaf()
    graph = compile_model(model)
    meta, arrays = graph.to_plain()
    rebuilt = Graph.from_plain(json.loads(json.dumps(meta)), {k: v.copy() for k, v in arrays.items()})
    x = torch.randn(32, 6)
    assert torch.equal(rebuilt.forward(x), graph.forward(x))
    assert repr(rebuilt) == repr(graph)


def test_foreign_plain_data_is_refused():
    with pytest.raises(ValueError, match="not a π-tracker graph"):
        Graph.from_plain({"format": "something else"}, {})
    meta, arrays = compile_model(nn.Linear(2, 2)).to_plain()
    del arrays["affine0.bias"]
    with pytest.raises(ValueError, match="lack"):
        Graph.from_plain(meta, arrays)


def test_flops_per_sample_counts_matmuls_biases_and_activations():
    graph = compile_model(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.Tanh()))
    assert graph.flops_per_sample == (2 * 3 * 4 + 4) + 4 * 1 + (2 * 4 * 2 + 2) + 2 * 4


def test_dropout_in_eval_mode_is_the_identity():
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 1)).eval()
    x = torch.randn(8, 3)
    torch.testing.assert_close(compile_model(model).forward(x), model(x))


class NormalisedBlock(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.norm, self.f = nn.BatchNorm1d(n), nn.Linear(n, n)

    def forward(self, x):
        return x + self.f(torch.relu(self.norm(x)))


def normalised(seed=0):
    """BatchNorm at the input, after a Linear, after an activation before a Linear, between two
    activations (nothing to fold into) and inside a residual block; statistics made non-trivial."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3),
                          nn.BatchNorm1d(8), nn.Linear(8, 8), nn.Tanh(), nn.BatchNorm1d(8, affine=False), nn.ReLU(),
                          NormalisedBlock(8), nn.Linear(8, 2)).double()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.2, 3.0)
            if module.affine:
                nn.init.normal_(module.weight)
                nn.init.normal_(module.bias)
    return model


def test_batch_norm_in_eval_mode_folds_into_the_linear_layers():
    model = normalised().eval()
    graph = compile_model(model)
    x = 2 * torch.randn(128, 4, dtype=torch.float64)
    torch.testing.assert_close(graph.forward(x), model(x), rtol=1e-12, atol=1e-12)
    affine = [op for op in iter_ops(graph.chain) if not isinstance(op, (Act, Residual))]
    # 4 Linear layers, and the BatchNorms between tanh and ReLU and before the block's ReLU
    assert len(affine) == 6
    assert [op.path for op in affine[:2]] == ["1", "6"]


def test_training_mode_needs_eval_or_inference():
    model = normalised().train()
    with pytest.raises(UnsupportedModule, match="'0'.*BatchNorm1d.*inference=True"):
        compile_model(model)
    with pytest.raises(UnsupportedModule, match="'3'.*Dropout.*inference=True"):
        compile_model(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2), nn.Dropout()))
    graph = compile_model(model, inference=True)
    assert model.training
    x = torch.randn(64, 4, dtype=torch.float64)
    torch.testing.assert_close(graph.forward(x), model.eval()(x), rtol=1e-12, atol=1e-12)
    with pytest.raises(UnsupportedModule, match="track_running_stats=False"):
        compile_model(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2, track_running_stats=False)).eval())


def test_a_module_repeated_in_a_sequential_is_applied_each_time():
    """nn.Sequential(l1, relu, l2, relu, l3) with one ReLU instance: named_children() lists it
    once, but the network applies it twice."""
    relu = nn.ReLU()
    model = nn.Sequential(nn.Linear(3, 4), relu, nn.Linear(4, 4), relu, nn.Linear(4, 1)).double()
    graph = compile_model(model)
    assert sum(isinstance(op, Act) for op in graph.chain) == 2
    x = torch.randn(16, 3, dtype=torch.float64)
    torch.testing.assert_close(graph.forward(x), model(x))


def test_a_graph_that_does_not_reproduce_its_model_is_refused(monkeypatch):
    """The compile-time check on random inputs: a translation slip (tanh read as sigmoid,
    forced here) raises instead of explaining another network."""
    import explanations.compile as compiler
    monkeypatch.setitem(compiler._LEAF_ACTIVATIONS, nn.Tanh, "sigmoid")
    with pytest.raises(InvalidModel, match="does not reproduce the model"):
        compile_model(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)))


class TutorialNet(nn.Module):
    """The classic PyTorch CIFAR tutorial network: one pooling module for two maps, x.view."""

    def __init__(self):
        super().__init__()
        self.conv1, self.pool, self.conv2 = nn.Conv2d(3, 6, 5), nn.MaxPool2d(2, 2), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2, self.fc3 = nn.Linear(16 * 5 * 5, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(x.size(0), -1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def test_the_tutorial_network_compiles_exactly():
    model = TutorialNet().double()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(compile_model(model, input_shape=(3, 32, 32)).forward(x.flatten(1)), model(x))


class Reshaped(nn.Module):
    def __init__(self, reshape):
        super().__init__()
        self.fc, self.reshape = nn.Linear(2, 6), reshape

    def forward(self, x):
        return self.reshape(self.fc(x))


@pytest.mark.parametrize("reshape, error, message", [
    (lambda h: h.view(-1, 3), InvalidModel, "returns 10 rows for 5 inputs"),
    (lambda h: h.reshape(4, -1), UnsupportedModule, "operation"),
    (lambda h: h.view(h.size(1), -1), UnsupportedModule, "operation"),
    (lambda h: h.size(0), UnsupportedModule, "single tensor")])
def test_reshapes_that_mix_rows_are_refused(reshape, error, message):
    with pytest.raises(error, match=message):
        compile_model(Reshaped(reshape))


def test_row_flattening_reshapes_and_in_place_first_layers_compile():
    model = Reshaped(lambda h: torch.reshape(h, shape=(h.shape[0], -1))).double()
    x = torch.randn(3, 2, dtype=torch.float64)
    torch.testing.assert_close(compile_model(model).forward(x), model(x))
    leaky = nn.Sequential(nn.Flatten(), nn.LeakyReLU(0.2, inplace=True), nn.Linear(6, 2))
    compile_model(leaky, input_shape=(2, 3))


def test_bfloat16_models_pass_the_check():
    for seed in range(10):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                              nn.Linear(4 * 3 * 3, 3), nn.Hardtanh()).to(torch.bfloat16).eval()
        model[1].running_var.uniform_(0.3, 3.0)
        compile_model(model, input_shape=(1, 8, 8))


def test_a_hook_added_after_the_first_compile_is_checked_again():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    compile_model(model)
    model[2].register_forward_hook(lambda module, args, out: out + 1.0)
    with pytest.raises(InvalidModel, match="does not reproduce"):
        compile_model(model)


def test_activations_in_a_row_are_one_activation():
    """ReLU → Dropout → ReLU is ReLU: π took the second ReLU's input as Gaussian and had the
    mean 0.11–0.25 sd off, the variance 26–33% low. Fused (`spatial.fuse_elementwise`), π is
    the single ReLU's exactly; a max pool's moved ReLU and the model's next one likewise."""
    from explanations import Gaussian, explain
    torch.manual_seed(0)
    first, last = nn.Linear(8, 16), nn.Linear(16, 3)
    single = nn.Sequential(first, nn.ReLU(), last)
    double = nn.Sequential(first, nn.ReLU(), nn.Dropout(0.1), nn.ReLU(), last).eval()
    assert [op.kind for op in compile_model(double).chain if isinstance(op, Act)] == ["compose:relu|relu"]
    assert activation("compose:relu|relu").leak == 0.0
    for method in ("gaussian", "cumulant"):
        one, two = explain(single, Gaussian.standard(8), method), explain(double, Gaussian.standard(8), method)
        torch.testing.assert_close(two.expectation().value, one.expectation().value, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(two.cov, one.cov, rtol=1e-12, atol=1e-12)
    conv, head = nn.Conv2d(1, 4, 3), nn.Linear(4 * 3 * 3, 2)
    pooled = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), head)
    again = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(), head)
    one, two = (explain(m, Gaussian.standard(64), "gaussian", input_shape=(1, 8, 8)) for m in (pooled, again))
    torch.testing.assert_close(two.expectation().value, one.expectation().value, rtol=1e-10, atol=1e-12)


def test_an_activation_then_a_clamp_has_its_moments_from_the_composition():
    """ReLU → Hardtanh(-½, ½) had its variance 1.9× off; as one activation (quadrature) π
    matches 2·10⁵ draws. The graph rebuilds as a module that compiles back to itself."""
    from explanations import Gaussian, explain
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Hardtanh(-0.5, 0.5), nn.Linear(16, 3)).double()
    graph = compile_model(model)
    assert [op.kind for op in graph.chain if isinstance(op, Act)] == ["compose:relu|clamp:-0.5,0.5,1.0,0.0"]
    x = torch.randn(200_000, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        y = model(x)
    pi = explain(model, Gaussian.standard(8), "gaussian")
    se = y.std(0) / 200_000 ** 0.5
    assert ((pi.expectation().value - y.mean(0)).abs() < 5 * se).all()
    assert torch.allclose(pi.cov.diagonal(), y.var(0), rtol=0.03)
    rebuilt = compile_model(graph_module(graph))
    assert [op.kind for op in rebuilt.chain if isinstance(op, Act)] == ["compose:relu|clamp:-0.5,0.5,1.0,0.0"]
    torch.testing.assert_close(rebuilt.forward(x[:100]), model(x[:100]), rtol=1e-12, atol=1e-12)


class FunctionalClamps(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        h = F.relu6(self.a(x)) + F.hardtanh(self.a(x), -0.5, max_val=0.5)
        return self.d(torch.clamp(self.c(F.hardsigmoid(self.b(h))), 0.0, 6.0).clip(-1.0, max=5.0))


def test_functional_clamps_compile_as_their_modules_do():
    """F.relu6, F.hardtanh, F.hardsigmoid and torch.clamp with two bounds had been refused."""
    model = FunctionalClamps().double()
    x = 4 * torch.randn(256, 4, dtype=torch.float64)
    torch.testing.assert_close(compile_model(model).forward(x), model(x), rtol=1e-12, atol=1e-12)

    class OneSided(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 2)

        def forward(self, x):
            return torch.clamp(self.a(x), min=0.0)

    with pytest.raises(UnsupportedModule, match="needs two numbers as bounds"):
        compile_model(OneSided())


@pytest.mark.parametrize("wrap", [nn.utils.weight_norm, nn.utils.spectral_norm])
def test_hook_computed_weights_are_read_fresh(wrap):
    """The hook-style weight_norm and spectral_norm refresh `weight` only at the next forward:
    after load_state_dict a compile had used the stale one (graph 1.3–6.4 off the model).
    Compiling leaves spectral_norm's power-iteration state as it was, in training mode too."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        models = [nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1)) for _ in range(2)]
        for model in models:
            wrap(model[0])
    model, other = models
    compile_model(model.eval())
    model.load_state_dict(other.state_dict())
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    graph = compile_model(model, inference=True)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    x = torch.randn(64, 4)
    with torch.no_grad():
        torch.testing.assert_close(graph.forward(x), model.eval()(x), rtol=1e-5, atol=1e-6)


def test_a_clamp_too_wide_to_write_out_stays_one_activation(monkeypatch):
    """ReLU6 after a convolution on 1 × 28 × 28 needed a 7.9·10⁷-entry matrix and was refused;
    it now stays an activation `clamp:l,h,s,o` whose quadrature moments match sampling."""
    from explanations import Gaussian, explain, spatial
    mnist = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU6(), nn.Flatten(), nn.Linear(8 * 28 * 28, 2))
    graph = compile_model(mnist, input_shape=(1, 28, 28))
    assert [op.kind for op in graph.chain if isinstance(op, Act)] == ["clamp:0.0,6.0,1.0,0.0"]
    images = 4 * torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(graph.forward(images.flatten(1)), mnist(images), rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(spatial, "MAX_DENSE_ENTRIES", 100)
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU6(), nn.Linear(16, 3)).double()
    with torch.no_grad():
        model[0].weight.mul_(4)                                      # both ends of the clamp in play
    pi = explain(model, Gaussian.standard(8), "gaussian")
    assert [op.kind for op in pi.graph.chain if isinstance(op, Act)] == ["clamp:0.0,6.0,1.0,0.0"]
    x = torch.randn(200_000, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        y = model(x)
    assert ((pi.expectation().value - y.mean(0)).abs() < 5 * y.std(0) / 200_000 ** 0.5).all()
    assert torch.allclose(pi.cov.diagonal(), y.var(0), rtol=0.03)


def test_a_linear_along_one_axis_of_a_multi_axis_input_is_named():
    """A per-time-step Linear on (T, F) inputs had failed with "'0' expects 3 inputs but receives 15"."""
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Flatten(), nn.Linear(20, 1))
    with pytest.raises(InvalidModel, match="last axis of input_shape \\(5, 3\\).*flattened to 15 values"):
        compile_model(model, input_shape=(5, 3))
