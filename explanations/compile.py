"""`compile_model`: a torch module → its formal `Graph`.

Leaves: nn.Linear, nn.ReLU, nn.LeakyReLU, nn.GELU (both approximations), nn.SiLU, nn.Mish,
nn.ELU, nn.Softplus (threshold ≥ 20), nn.Tanh, nn.Sigmoid, Step, nn.Identity, nn.Flatten,
nn.Dropout and nn.BatchNorm1d/2d in eval mode (BatchNorm folded into a neighbouring affine
map); with `input_shape`, convolutions, average pooling and padding as the affine maps they
are on flattened inputs; nn.Sequential nests. Parametrised activations compile to kinds
"leaky_relu:c", "elu:α", "softplus:β" (`activations.activation`). A subclass that
overrides forward is traced like any custom module, never taken for its base. Any other module is traced with torch.fx
and accepted when its forward is built from supported submodules, the matching
functional activations, and additions of values that share the module's input: the sum
becomes a `Residual` whose branches are the two chains after their common prefix.
Anything else raises `UnsupportedModule` naming the submodule's path and type.
"""
from __future__ import annotations

import math
import operator
import weakref
from dataclasses import dataclass

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from .activations import Step, activation
from .errors import InvalidModel, UnsupportedModule
from .graph import Act, Affine, Chain, Graph, Residual, first_width

_LEAF_ACTIVATIONS = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.SiLU: "silu",
                     nn.Mish: "mish", Step: "step"}
_FUNCTION_ACTIVATIONS = {torch.relu: "relu", F.relu: "relu", torch.tanh: "tanh", F.tanh: "tanh",
                         torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", F.silu: "silu", F.mish: "mish"}
_METHOD_ACTIVATIONS = {"relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}
# families with a parameter: function → (family, parameter name, its position, default)
_FUNCTION_FAMILIES = {F.leaky_relu: ("leaky_relu", "negative_slope", 1, 0.01),
                      F.elu: ("elu", "alpha", 1, 1.0), F.softplus: ("softplus", "beta", 1, 1.0)}
SOFTPLUS_THRESHOLD = 20.0   # torch's default: below it Softplus is piecewise (linear past βz > threshold)
_ADDS = {operator.add, torch.add}
_IDENTITIES = {torch.flatten}


def compile_model(module: nn.Module, n_inputs: int | None = None, *, input_shape: tuple[int, ...] | None = None,
                  inference: bool = False, live: bool = False) -> Graph:
    """The formal graph of `module`, which maps [batch, n_inputs] to [batch, n_outputs].

    n_inputs defaults to the input width of the first affine layer. A model with
    convolutions, pooling or BatchNorm2d needs `input_shape`, the shape of one input without
    the batch ((C, H, W) for images): the graph then maps flattened inputs (x.flatten(1)),
    and each such layer becomes the affine map it is (`_linear_module`). Dropout and BatchNorm in
    training mode are random or depend on the batch, so they raise UnsupportedModule, unless
    `inference`: then the graph is the network as `module.eval()` computes it, whatever
    mode it is in (the Tracker explains a network in training so). With `live`, the graph
    holds the module's parameters themselves (and BatchNorm's folding of them) instead of
    detached copies, so that what is computed from it stays differentiable in them
    (`train.catastrophe`); it then follows the module's later updates as well.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"compile_model expects a torch.nn.Module, got {type(module).__name__}")
    shapes = None
    if input_shape is not None:
        input_shape = tuple(int(n) for n in input_shape)
        if n_inputs is not None and n_inputs != math.prod(input_shape):
            raise InvalidModel(f"n_inputs={n_inputs} does not match input_shape={input_shape}")
        n_inputs, shapes = math.prod(input_shape), _input_shapes(module, input_shape)
    chain = _fold_normalisations(_compile(module, "", _Options(inference, live, shapes)))
    width = n_inputs if n_inputs is not None else first_width(chain)
    if width is None:
        raise InvalidModel("the model has no Linear layer; pass n_inputs to compile_model")
    return Graph(chain, width)


def _gelu_kind(approximate: str, path: str) -> str:
    if approximate == "none":
        return "gelu"
    if approximate == "tanh":
        return "gelu_tanh"
    raise UnsupportedModule(path, "GELU", f"approximate={approximate!r}")


def _softplus_kind(beta: float, threshold: float, path: str) -> str:
    if not beta > 0 or threshold < SOFTPLUS_THRESHOLD:
        raise UnsupportedModule(path, "Softplus", f"beta={beta!r}, threshold={threshold!r}: needs beta > 0 and "
                                f"threshold ≥ {SOFTPLUS_THRESHOLD:g} (below, it is piecewise)")
    return activation(f"softplus:{float(beta)!r}").name


def _family_kind(node: torch.fx.Node, path: str) -> str:
    """The kind of a call to F.leaky_relu, F.elu or F.softplus, with its parameter."""
    family, name, position, default = _FUNCTION_FAMILIES[node.target]
    value = node.kwargs.get(name, node.args[position] if len(node.args) > position else default)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise UnsupportedModule(path, family, f"{name}={value!r} is not a number")
    if family == "softplus":
        threshold = node.kwargs.get("threshold", node.args[2] if len(node.args) > 2 else SOFTPLUS_THRESHOLD)
        return _softplus_kind(value, threshold, path)
    return activation(f"{family}:{float(value)!r}").name


def _plain(module: nn.Module, base: type) -> bool:
    """An instance of `base` whose forward is base's own (a subclass may override it)."""
    return isinstance(module, base) and type(module).forward is base.forward


def _compile(module: nn.Module, path: str, options: _Options) -> Chain:
    if _plain(module, nn.Sequential):
        return tuple(op for name, child in module.named_children()
                     for op in _compile(child, f"{path}.{name}" if path else name, options))
    if _plain(module, nn.Linear):
        if isinstance(module.weight, nn.parameter.UninitializedParameter):
            raise UnsupportedModule(path, type(module).__name__, "uninitialised lazy parameters")
        weight = options.take(module.weight)
        bias = options.take(module.bias) if module.bias is not None else weight.new_zeros(weight.shape[0]).detach()
        return (Affine(weight, bias, path),)
    if type(module) in _LEAF_ACTIVATIONS:
        return (Act(_LEAF_ACTIVATIONS[type(module)], path),)
    if _plain(module, nn.LeakyReLU):
        return (Act(activation(f"leaky_relu:{float(module.negative_slope)!r}").name, path),)
    if _plain(module, nn.ELU):
        return (Act(activation(f"elu:{float(module.alpha)!r}").name, path),)
    if _plain(module, nn.Softplus):
        return (Act(_softplus_kind(module.beta, module.threshold, path), path),)
    if _plain(module, nn.GELU):
        return (Act(_gelu_kind(module.approximate, path), path),)
    if _plain(module, nn.Identity) or _plain(module, nn.Flatten):
        return ()
    if _plain(module, nn.Dropout):
        if module.training and not options.inference:
            raise UnsupportedModule(path, "Dropout", f"in training mode it is random; {_EVAL_HINT}")
        return ()
    if _plain(module, nn.BatchNorm1d) or _plain(module, nn.BatchNorm2d):
        return (_batch_norm(module, path, options),)
    if any(_plain(module, kind) for kind in _LINEAR_MODULES):
        return (_linear_module(module, path, options),)
    if _plain(module, nn.MaxPool1d) or _plain(module, nn.MaxPool2d):
        return _max_pool(module, path, options)
    return _compile_traced(module, path, options)


class _ChildrenAreLeaves(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return True


def _compile_traced(module: nn.Module, path: str, options: _Options) -> Chain:
    kind = type(module).__name__
    try:
        graph = _ChildrenAreLeaves().trace(module)
    except Exception as error:  # fx raises many types for untraceable code
        raise UnsupportedModule(path, kind, f"its forward cannot be traced ({error})") from None
    chains: dict[torch.fx.Node, Chain] = {}
    for node in graph.nodes:
        if node.op == "placeholder":
            if chains:
                raise UnsupportedModule(path, kind, "forward takes more than one input")
            chains[node] = ()
        elif node.op == "output":
            result = node.args[0]
            if not isinstance(result, torch.fx.Node):
                raise UnsupportedModule(path, kind, "forward must return a single tensor")
            return chains[result]
        else:
            chains[node] = _trace_step(node, chains, module, path, kind, options)
    raise UnsupportedModule(path, kind, "forward returns nothing")


def _trace_step(node: torch.fx.Node, chains: dict, module: nn.Module, path: str, kind: str,
                options: _Options) -> Chain:
    """The chain (from the module's input) that computes the value of fx node `node`."""
    def operand(arg: object) -> Chain:
        if not isinstance(arg, torch.fx.Node):
            raise UnsupportedModule(path, kind, f"operation {node.target} on a constant ({arg!r})")
        return chains[arg]

    args = node.args
    if node.op == "call_module":
        child = module.get_submodule(node.target)
        return operand(args[0]) + _compile(child, f"{path}.{node.target}" if path else node.target, options)
    if node.op == "call_function" and node.target in _ADDS and len(args) == 2 and not node.kwargs:
        return _residual(operand(args[0]), operand(args[1]), f"{path}.{node.name}" if path else node.name)
    if node.op == "call_method" and node.target in ("add", "__add__") and len(args) == 2 and not node.kwargs:
        return _residual(operand(args[0]), operand(args[1]), f"{path}.{node.name}" if path else node.name)
    if node.op == "call_function" and node.target in _FUNCTION_ACTIVATIONS:
        return operand(args[0]) + (Act(_FUNCTION_ACTIVATIONS[node.target], f"{path}.{node.name}"),)
    if node.op == "call_function" and node.target in _FUNCTION_FAMILIES:
        return operand(args[0]) + (Act(_family_kind(node, path), f"{path}.{node.name}"),)
    if node.op == "call_function" and node.target is F.gelu:
        approximate = node.kwargs.get("approximate", args[1] if len(args) > 1 else "none")
        return operand(args[0]) + (Act(_gelu_kind(approximate, path), f"{path}.{node.name}"),)
    if node.op == "call_method" and node.target in _METHOD_ACTIVATIONS and len(args) == 1:
        return operand(args[0]) + (Act(_METHOD_ACTIVATIONS[node.target], f"{path}.{node.name}"),)
    if (node.op == "call_function" and node.target in _IDENTITIES) or (
            node.op == "call_method" and node.target == "flatten"):
        return operand(args[0])
    raise UnsupportedModule(path, kind, f"operation {node.op} {getattr(node.target, '__name__', node.target)}")


@dataclass(frozen=True)
class _Options:
    inference: bool     # Dropout and BatchNorm as eval() computes them, whatever the mode
    live: bool          # keep the parameters (differentiable) instead of detached copies
    shapes: dict | None = None     # id(submodule) → the shape of its input without the batch

    def take(self, parameter: Tensor) -> Tensor:
        return parameter if self.live else parameter.detach().clone()

    def shape_of(self, module: nn.Module) -> tuple[int, ...] | None:
        return self.shapes.get(id(module)) if self.shapes is not None else None


def _input_shapes(module: nn.Module, input_shape: tuple[int, ...]) -> dict[int, tuple[int, ...]]:
    """The input shape each submodule sees, from one forward pass of zeros in eval mode
    without gradients (no statistics move; every module's mode is restored after)."""
    shapes: dict[int, tuple[int, ...]] = {}
    def record(m: nn.Module, args: tuple) -> None:      # a pre-hook's return value would replace args
        if args:
            shapes.setdefault(id(m), tuple(args[0].shape[1:]))

    hooks = [m.register_forward_pre_hook(record) for m in module.modules()]
    modes = [(m, m.training) for m in module.modules()]
    reference = next(module.parameters(), None)
    try:
        module.eval()
        with torch.no_grad():
            module(torch.zeros(1, *input_shape, dtype=reference.dtype if reference is not None else None,
                               device=reference.device if reference is not None else None))
    except Exception as error:       # the module's own forward refuses the shape
        raise InvalidModel(f"the model cannot take inputs of shape {tuple(input_shape)}: {error}") from None
    finally:
        for hook in hooks:
            hook.remove()
        for m, training in modes:
            m.training = training
    return shapes


MAX_DENSE_ENTRIES = 50_000_000     # a convolution's matrix: 200 MB in float32
_SHAPE_HINT = "it needs the shape of the model's input: compile_model(model, input_shape=(C, H, W))"
_LINEAR_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.AvgPool1d,
                   nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.ZeroPad1d, nn.ZeroPad2d,
                   nn.ConstantPad1d, nn.ConstantPad2d)


_EVAL_HINT = "call model.eval(), or compile_model(model, inference=True) for the network as eval() computes it"


@dataclass(eq=False)
class _Scale:
    """An elementwise affine map x ↦ scale·x + shift (BatchNorm in eval mode), until
    `_fold_normalisations` merges it into a neighbouring affine map."""
    scale: Tensor
    shift: Tensor
    path: str


def _batch_norm(module: nn.Module, path: str, options: _Options) -> _Scale:
    """BatchNorm1d/2d in eval mode: y = γ (x - μ_run)/√(σ²_run + ε) + β = s x + (β - s μ_run),
    s = γ/√(σ²_run + ε), per channel, repeated over the positions of [C, L] or [C, H, W]
    inputs (flattened channel by channel, as nn.Flatten does)."""
    kind = type(module).__name__
    if module.training and not options.inference:
        raise UnsupportedModule(path, kind, f"in training mode it normalises by the batch; {_EVAL_HINT}")
    if module.running_mean is None or module.running_var is None:
        raise UnsupportedModule(path, kind, "track_running_stats=False: it always normalises by the batch")
    scale = torch.rsqrt(module.running_var.detach() + module.eps)
    shift = -module.running_mean.detach() * scale
    if module.affine:
        weight, bias = options.take(module.weight), options.take(module.bias)
        scale, shift = weight * scale, weight * shift + bias
    shape = options.shape_of(module)
    if isinstance(module, nn.BatchNorm2d) and shape is None:
        raise UnsupportedModule(path, kind, _SHAPE_HINT)
    positions = math.prod(shape[1:]) if shape is not None else 1
    return _Scale(scale.repeat_interleave(positions), shift.repeat_interleave(positions), path)


def _linear_module(module: nn.Module, path: str, options: _Options) -> Affine:
    """A convolution, pooling or padding layer as the affine map it is on flattened inputs
    (shape from `input_shape`): b = module(0), and W from `_structure`, so that W follows the
    module's weight (and, `live`, differentiably) at the cost of a gather per compile. Its
    FLOPs are those of a forward pass of the module itself, 2·nnz(W) + out (the dense
    product's would overstate a convolution's by the ratio of its input to its kernel)."""
    kind = type(module).__name__
    shape = options.shape_of(module)
    if shape is None:
        raise UnsupportedModule(path, kind, _SHAPE_HINT)
    weight = getattr(module, "weight", None)
    dtype = weight.dtype if weight is not None else torch.get_default_dtype()
    device = weight.device if weight is not None else None
    zero = torch.zeros(1, *shape, dtype=torch.float64, device=device)
    bias = _call(module, zero, keep=options.live).reshape(-1)
    if bias.numel() * math.prod(shape) > MAX_DENSE_ENTRIES:
        raise UnsupportedModule(path, kind, f"its matrix would hold {bias.numel() * math.prod(shape):,} entries, "
                                f"more than {MAX_DENSE_ENTRIES:,}")
    index, constant = _structure(module, shape)
    if constant is not None:
        matrix = constant
    elif index is not None:
        flat = (weight if options.live else weight.detach()).reshape(-1)
        matrix = torch.where(index >= 0, flat[index.clamp_min(0)], flat.new_zeros(()))
    else:                                                  # entries that sum several weights
        basis = torch.eye(zero.numel(), dtype=torch.float64, device=device).reshape(-1, *shape)
        matrix = (_call(module, basis, keep=options.live).reshape(zero.numel(), -1) - bias).T
    flops = 2 * int((matrix != 0).sum()) + matrix.shape[0]
    return Affine(matrix.to(dtype), bias.to(dtype) if options.live else bias.detach().to(dtype), path, flops)


def _call(module: nn.Module, x: Tensor, keep: bool = False, parameters: dict | None = None) -> Tensor:
    """module(x) in float64, with `parameters` in place of its own (its own, widened, if None;
    differentiable in them with `keep`)."""
    if parameters is None:
        parameters = {name: (p if keep else p.detach()).double() for name, p in module.named_parameters()}
    with torch.set_grad_enabled(keep and torch.is_grad_enabled()):
        return torch.func.functional_call(module, {**parameters, **dict(module.named_buffers())}, (x,))


_STRUCTURES: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _structure(module: nn.Module, shape: tuple[int, ...]) -> tuple[Tensor | None, Tensor | None]:
    """How the layer's matrix is made, computed once per module and input shape from forward
    passes on the basis e_1 … e_n of its input space, in float64: for a layer without a weight
    (pooling, padding) the matrix itself, module(e_j) - module(0); for a convolution the index
    of the weight entry in each matrix entry (-1 where none), read off a pass with the weight's
    entries set to 1, 2, 3, … and no bias. A second pass with their squares checks that no
    entry sums two weights; if one does, (None, None): the caller rebuilds the matrix from
    the basis every time."""
    cache = _STRUCTURES.setdefault(module, {})
    weight = getattr(module, "weight", None)
    key = (shape, tuple(weight.shape) if weight is not None else None)
    if key not in cache:
        n_in = math.prod(shape)
        device = weight.device if weight is not None else None
        basis = torch.eye(n_in, dtype=torch.float64, device=device).reshape(n_in, *shape)
        zero = torch.zeros(1, *shape, dtype=torch.float64, device=device)
        if weight is None:
            cache[key] = (None, (_call(module, basis) - _call(module, zero)).reshape(n_in, -1).T.contiguous())
        else:
            ids = torch.arange(1, weight.numel() + 1, dtype=torch.float64, device=device)
            probe = lambda values: _call(module, basis, parameters={
                name: (values.reshape(weight.shape) if name == "weight" else torch.zeros_like(p, dtype=torch.float64))
                for name, p in module.named_parameters()}).reshape(n_in, -1).T
            found = probe(ids)
            index = found.round().long() - 1
            unique = bool(((index >= -1) & (index < weight.numel())).all()) and bool(torch.equal(
                probe(ids * ids), torch.where(index >= 0, ids[index.clamp(0, weight.numel() - 1)] ** 2, 0.0)))
            cache[key] = (index, None) if unique else (None, None)
    return cache[key]


def _max_pool(module: nn.Module, path: str, options: _Options) -> Chain:
    """Max pooling as the ReLU network it is: max(a, b) = relu(a) - relu(-a) + relu(b - a),
    so a tournament over each window's entries (pairs, a leftover carried as
    relu(c) - relu(-c) = c) is Affine → ReLU → … → Affine, exact, ⌈log2 k⌉ ReLU layers for a
    window of k entries. Its maps are sparse: FLOPs 2·nnz + out each."""
    kind = type(module).__name__
    two = isinstance(module, nn.MaxPool2d)
    pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v) if two else (v,)
    kernel, stride = pair(module.kernel_size), pair(module.stride if module.stride is not None else module.kernel_size)
    if any(pair(module.padding)) or any(d != 1 for d in pair(module.dilation)) or module.ceil_mode or module.return_indices:
        raise UnsupportedModule(path, kind, "only padding=0, dilation=1, ceil_mode=False, return_indices=False")
    shape = options.shape_of(module)
    if shape is None:
        raise UnsupportedModule(path, kind, _SHAPE_HINT)
    cache = _STRUCTURES.setdefault(module, {})
    key = ("max", shape, kernel, stride)
    if key not in cache:
        index = torch.arange(math.prod(shape)).reshape(shape)
        for axis in range(len(kernel)):
            index = index.unfold(len(shape) - len(kernel) + axis, kernel[axis], stride[axis])
        cache[key] = _tournament(index.reshape(-1, math.prod(kernel)), math.prod(shape))
    dtype = torch.get_default_dtype()
    chain: list = []
    *layers, last = cache[key]
    for matrix in layers:
        chain += [_sparse_affine(matrix.to(dtype), path), Act("relu", path)]
    return tuple(chain) + (_sparse_affine(last.to(dtype), path),)


def _sparse_affine(matrix: Tensor, path: str) -> Affine:
    return Affine(matrix, matrix.new_zeros(matrix.shape[0]), path, 2 * int((matrix != 0).sum()) + matrix.shape[0])


def _tournament(windows: Tensor, n_in: int) -> list[Tensor]:
    """The maps W_1, …, W_L of max over each row of `windows` (input indices), such that
    max = W_L relu(W_{L-1} … relu(W_1 x)). Each window's current candidates are sparse rows
    over the current layer; a round turns the pair (a, b) into the units (a, -a, b - a) and
    a leftover c into (c, -c), whose ReLUs combine back into max(a, b) and c."""
    values = [[{int(i): 1.0} for i in window] for window in windows.tolist()]
    matrices, width = [], n_in
    while any(len(candidates) > 1 for candidates in values):
        units: list[dict] = []
        combined = []
        for candidates in values:
            merged = []
            for j in range(0, len(candidates) - 1, 2):
                a, b = candidates[j], candidates[j + 1]
                minus = {k: -v for k, v in a.items()}
                difference = dict(minus)
                for k, v in b.items():
                    difference[k] = difference.get(k, 0.0) + v
                merged.append({len(units): 1.0, len(units) + 1: -1.0, len(units) + 2: 1.0})
                units += [a, minus, difference]
            if len(candidates) % 2:
                c = candidates[-1]
                merged.append({len(units): 1.0, len(units) + 1: -1.0})
                units += [c, {k: -v for k, v in c.items()}]
            combined.append(merged)
        matrices.append(_dense(units, width))
        values, width = combined, len(units)
    return matrices + [_dense([candidates[0] for candidates in values], width)]


def _dense(rows: list[dict], width: int) -> Tensor:
    matrix = torch.zeros(len(rows), width, dtype=torch.float64)
    for r, row in enumerate(rows):
        for k, v in row.items():
            matrix[r, k] += v
    return matrix


def _fold_normalisations(chain: Chain) -> Chain:
    """Merge each BatchNorm's elementwise map D x + t into the affine map before it,
    D(W x + b) + t, or else the one after it, W(D x + t) + b, so that it costs no extra
    layer (and keeps the map's sparsity, so its FLOPs); one with no affine map beside it (at
    the input, or between activations) becomes a diagonal Affine."""
    out: list = []
    for op in chain:
        if isinstance(op, Residual):
            op = Residual(tuple(_fold_normalisations(branch) for branch in op.branches), op.path)
        previous = out[-1] if out else None
        if isinstance(op, _Scale) and isinstance(previous, Affine):
            out[-1] = Affine(op.scale[:, None] * previous.weight, op.scale * previous.bias + op.shift,
                             previous.path, previous.flops)
        elif isinstance(op, _Scale) and isinstance(previous, _Scale):
            out[-1] = _Scale(op.scale * previous.scale, op.scale * previous.shift + op.shift, previous.path)
        elif isinstance(op, Affine) and isinstance(previous, _Scale):
            out[-1] = Affine(op.weight * previous.scale[None, :], op.weight @ previous.shift + op.bias,
                             op.path, op.flops)
        else:
            out.append(op)
    return tuple(Affine(torch.diag(op.scale), op.shift, op.path, 2 * op.scale.numel())
                 if isinstance(op, _Scale) else op for op in out)


def _residual(left: Chain, right: Chain, path: str) -> Chain:
    """left + right as common prefix followed by Residual(rest of left, rest of right)."""
    shared = 0
    while shared < min(len(left), len(right)) and left[shared] is right[shared]:
        shared += 1
    return left[:shared] + (Residual((left[shared:], right[shared:]), path),)


def graph_module(graph: Graph) -> nn.Sequential:
    """A torch module computing `graph` (affine maps and activations only): compile_model's
    inverse, so that compile_model(graph_module(g)) reproduces g."""
    layers: list[nn.Module] = []
    for op in graph.chain:
        if isinstance(op, Affine):
            linear = nn.Linear(op.n_in, op.n_out, dtype=op.weight.dtype, device=op.weight.device)
            with torch.no_grad():
                linear.weight.copy_(op.weight)
                linear.bias.copy_(op.bias)
            layers.append(linear)
        elif isinstance(op, Act):
            layers.append(activation(op.kind).module())
        else:
            raise ValueError(f"cannot rebuild a module from the residual sum '{op.path}'")
    return nn.Sequential(*layers)
