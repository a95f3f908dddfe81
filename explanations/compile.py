"""`compile_model`: a torch module → its formal `Graph`.

Leaves: nn.Linear, nn.ReLU, nn.LeakyReLU, nn.GELU (both approximations), nn.SiLU, nn.Mish,
nn.ELU, nn.Softplus (threshold ≥ 20), nn.Tanh, nn.Sigmoid, Step, nn.ReLU6, nn.Hardtanh and
nn.Hardsigmoid (clamps, as exact ReLU networks: `spatial.Clamp`), nn.Identity, nn.Flatten,
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
from dataclasses import dataclass, field

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from . import spatial
from .activations import ScaledClamp, Step, activation
from .errors import DivergedModel, InvalidModel, UnsupportedModule
from .graph import Act, Affine, Chain, Graph, Residual, first_width, iter_ops

_LEAF_ACTIVATIONS = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.SiLU: "silu",
                     nn.Mish: "mish", Step: "step"}
_FUNCTION_ACTIVATIONS = {torch.relu: "relu", F.relu: "relu", torch.tanh: "tanh", F.tanh: "tanh",
                         torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", F.silu: "silu", F.mish: "mish"}
_METHOD_ACTIVATIONS = {"relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}
_FUNCTION_CLAMPS = {F.relu6, F.hardtanh, F.hardsigmoid, torch.clamp, torch.clip}
# families with a parameter: function → (family, parameter name, its position, default)
_FUNCTION_FAMILIES = {F.leaky_relu: ("leaky_relu", "negative_slope", 1, 0.01),
                      F.elu: ("elu", "alpha", 1, 1.0), F.softplus: ("softplus", "beta", 1, 1.0)}
SOFTPLUS_THRESHOLD = 20.0   # torch's default: below it Softplus is piecewise (linear past βz > threshold)
_ADDS = {operator.add, torch.add}
# sizes read off tensors in a traced forward: the batch (x.size(0), x.shape[0]), the shape, any other
_BATCH, _SHAPE, _SIZE = object(), object(), object()
_SIZES = (_BATCH, _SHAPE, _SIZE)
_IDENTITIES = {torch.flatten}


def compile_model(module: nn.Module, n_inputs: int | None = None, *, input_shape: tuple[int, ...] | None = None,
                  inference: bool = False, live: bool = False) -> Graph:
    """The formal graph of `module`, which maps [batch, n_inputs] to [batch, n_outputs].

    n_inputs defaults to the input width of the first affine layer. A model with
    convolutions, pooling or BatchNorm2d needs `input_shape`, the shape of one input without
    the batch ((C, H, W) for images): the graph then maps flattened inputs (x.flatten(1)),
    and each such layer becomes the affine map it is (`spatial`). Dropout and BatchNorm in
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
        n_inputs, shapes = math.prod(input_shape), spatial.input_shapes(module, input_shape)
    options = _Options(inference, live, shapes, *spatial.placement(module))
    fuse = spatial.fuse_elementwise
    chain = fuse(spatial.fold_normalisations(spatial.expand_pools(fuse(_compile(module, "", options)))))
    width = n_inputs if n_inputs is not None else first_width(chain)
    if width is None:
        raise InvalidModel("the model has no Linear layer; pass n_inputs to compile_model")
    first = first_width(chain)
    if input_shape is not None and len(input_shape) > 1 and first == input_shape[-1] != width:
        raise InvalidModel(f"the first map takes {first} inputs, the last axis of input_shape {input_shape}: a Linear "
                           f"applied along one axis of a multi-axis input (per position or time step) is not "
                           f"supported; the graph reads each input flattened to {width} values (nn.Flatten first)")
    graph = Graph(spatial.expand_clamps(chain, width, options.dtype, options.device)[0], width, input_shape)
    input_shape = input_shape or (width,)
    device, dtype = spatial.placement(module)
    x = torch.randn(CHECK_ROWS, *input_shape, generator=torch.Generator().manual_seed(0), dtype=dtype).to(device)
    with torch.no_grad():
        found = graph.forward(x.flatten(1))
    _check_finite(graph, found)
    _check_reproduces(module, x, found)
    return graph


def _check_finite(graph: Graph, found: Tensor) -> None:
    """DivergedModel where the graph's outputs `found` on CHECK_ROWS standard normal inputs
    are not finite (finite weights near 1e29 overflow): at every compile, through the graph,
    so that no module hook sees it."""
    if not bool(torch.isfinite(found).all()):
        largest = max((float(op.weight.abs().max()) for op in iter_ops(graph.chain) if isinstance(op, Affine)),
                      default=0.0)
        raise DivergedModel(f"the model's outputs are not finite on standard normal inputs (its largest "
                            f"weight is {largest:.3g}): it has diverged, and there is nothing finite to explain")


_CHECKED: "weakref.WeakKeyDictionary[nn.Module, set]" = weakref.WeakKeyDictionary()
REPRODUCTION_TOLERANCE = 1e-3      # relative to 1 + max |y|; at least 16 ulps of the model's dtype
CHECK_ROWS = 5                     # odd: a reshape that fixes the batch at a round number shows


def _check_reproduces(module: nn.Module, x: Tensor, found: Tensor) -> None:
    """The graph must compute what the module computes (as eval() does): compared on
    CHECK_ROWS standard normal inputs x (one input each, the graph's outputs on them
    `found`), max |graph - module| ≤ tol·(1 + max |module|) with
    tol = max(REPRODUCTION_TOLERANCE, 16·eps of the model's dtype), and the same number of
    rows out as in, else InvalidModel. Once per input shape and module tree, the tree told by
    each submodule's type, parameter shapes, hooks and any forward set on the instance. A
    guard against a forward read wrong; the module's hooks see this pass."""
    tree = tuple((id(m), type(m), len(m._forward_hooks), len(m._forward_pre_hooks), "forward" in vars(m),
                  tuple(tuple(p.shape) for p in m.parameters(recurse=False))) for m in module.modules())
    input_shape = tuple(x.shape[1:])
    checked = _CHECKED.setdefault(module, set())
    if (input_shape, tree) in checked:
        return
    with spatial.evaluating(module, input_shape):
        expected = module(x.clone())             # the clone: an in-place first layer would change x
    if expected.shape[0] != CHECK_ROWS:
        raise InvalidModel(f"the model returns {expected.shape[0]} rows for {CHECK_ROWS} inputs: a reshape "
                           f"mixes the rows of the batch")
    expected = expected.reshape(CHECK_ROWS, -1)
    found = found.to(expected.dtype)
    tolerance = max(REPRODUCTION_TOLERANCE, 16 * torch.finfo(expected.dtype).eps)
    gap = float((found - expected).abs().max()) if found.shape == expected.shape else math.inf
    if not gap <= tolerance * (1 + float(expected.abs().max())):
        raise InvalidModel(f"the compiled graph does not reproduce the model (max |difference| {gap:.3g} on "
                           f"random inputs of shape {tuple(input_shape)}): a forward read wrong, a hook or a "
                           f"forward set on the instance that changes outputs, or rounding at this scale")
    checked.add((input_shape, tree))


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


def _linear_from_passes(module: nn.Linear, options: "_Options", chunk: int = 128) -> tuple[Tensor, Tensor]:
    """W and b of a Linear whose weight a forward pre-hook computes (the hook-style
    nn.utils.weight_norm and spectral_norm, which refresh the attribute `weight` only at the
    next forward: after load_state_dict or a step, it is stale, and a compile had silently
    used it): b = module(0), W = [module(e_j) - b]_j over `chunk` basis vectors a pass (memory
    chunk × in, not in²), in eval mode (spectral_norm's power iteration moves only in
    training) and differentiable where `live`."""
    parameter = next(module.parameters())
    n = module.in_features
    training = module.training
    module.eval()
    try:
        with torch.set_grad_enabled(options.live and torch.is_grad_enabled()):
            bias = module(parameter.new_zeros(1, n))[0]
            columns = []
            for start in range(0, n, chunk):
                rows = torch.arange(min(chunk, n - start), device=parameter.device)
                basis = parameter.new_zeros(len(rows), n)
                basis[rows, start + rows] = 1.0
                columns.append(module(basis) - bias)
    finally:
        module.train(training)
    weight = torch.cat(columns).T
    return (weight, bias) if options.live else (weight.detach().clone(), bias.detach().clone())


def _clamp_call(node: torch.fx.Node, path: str) -> spatial.Clamp:
    """A call to F.relu6, F.hardtanh(x, min_val, max_val), F.hardsigmoid or torch.clamp(x, min,
    max) (also torch.clip, x.clamp, x.clip; both bounds numbers) as the Clamp it is."""
    args, kwargs, name = node.args, node.kwargs, getattr(node.target, "__name__", str(node.target))
    if node.target is F.relu6:
        return spatial.Clamp(0.0, 6.0, 1.0, 0.0, path, name)
    if node.target is F.hardsigmoid:
        return spatial.Clamp(0.0, 6.0, 1.0 / 6.0, 3.0, path, name)
    names = ("min_val", "max_val") if node.target is F.hardtanh else ("min", "max")
    defaults = (-1.0, 1.0) if node.target is F.hardtanh else (None, None)
    low, high = (kwargs.get(key, args[i + 1] if len(args) > i + 1 else default)
                 for i, (key, default) in enumerate(zip(names, defaults)))
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in (low, high)) or not low < high:
        raise UnsupportedModule(path, name, f"needs two numbers as bounds, low < high (got {low!r}, {high!r})")
    return spatial.Clamp(float(low), float(high), 1.0, 0.0, path, name)


def _flatten(start: object, end: object, path: str) -> Chain:
    """Flattening each row, which the graph's vectors already are. UnsupportedModule where
    the flattening starts at the batch axis (start_dim 0: it mixes the rows) or after the
    first axis of a row (start_dim ≥ 2: a later Linear would act on the kept axes one by
    one). A negative start_dim or an end_dim short of the last axis cannot be told from
    here without the tensor's rank; the compile's reproduction check refuses what does
    not flatten whole rows."""
    if isinstance(start, int) and start >= 0 and start != 1:
        raise UnsupportedModule(path, "flatten", f"only flattening each row is supported (start_dim=1), "
                                f"got start_dim={start}, end_dim={end}")
    return ()


def _plain(module: nn.Module, base: type) -> bool:
    """An instance of `base` whose forward is base's own (a subclass may override it)."""
    return isinstance(module, base) and type(module).forward is base.forward


def _compile(module: nn.Module, path: str, options: _Options) -> Chain:
    if _plain(module, nn.Sequential):       # its _modules, not named_children(), which skips a repeated child
        return tuple(op for name, child in module._modules.items() if child is not None
                     for op in _compile(child, f"{path}.{name}" if path else name, options))
    if _plain(module, nn.Linear):
        if isinstance(module.weight, nn.parameter.UninitializedParameter):
            raise UnsupportedModule(path, type(module).__name__, "uninitialised lazy parameters")
        if "weight" not in module._parameters and not parametrize.is_parametrized(module, "weight"):
            return (Affine(*_linear_from_passes(module, options), path),)
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
    if _plain(module, nn.ReLU6):
        return (spatial.Clamp(0.0, 6.0, 1.0, 0.0, path, "ReLU6"),)
    if _plain(module, nn.Hardtanh):
        return (spatial.Clamp(float(module.min_val), float(module.max_val), 1.0, 0.0, path, "Hardtanh"),)
    if _plain(module, nn.Hardsigmoid):
        return (spatial.Clamp(0.0, 6.0, 1.0 / 6.0, 3.0, path, "Hardsigmoid"),)
    if _plain(module, ScaledClamp):
        return (spatial.Clamp(module.low, module.high, module.scale, module.offset, path, "ScaledClamp"),)
    if _plain(module, nn.GELU):
        return (Act(_gelu_kind(module.approximate, path), path),)
    if _plain(module, nn.Flatten):
        return _flatten(module.start_dim, module.end_dim, path)
    if _plain(module, nn.Identity):
        return ()
    if _plain(module, nn.Dropout):
        if module.training and not options.inference:
            raise UnsupportedModule(path, "Dropout", f"in training mode it is random; {_EVAL_HINT}")
        return ()
    if _plain(module, nn.BatchNorm1d) or _plain(module, nn.BatchNorm2d):
        if module.training and not options.inference:
            raise UnsupportedModule(path, type(module).__name__,
                                    f"in training mode it normalises by the batch; {_EVAL_HINT}")
        return (spatial.batch_norm(module, path, options.shape_of(module), options.take),)
    if any(_plain(module, kind) for kind in spatial.LINEAR_MODULES):
        return (spatial.linear_module(module, path, options.shape_of(module), options.live, options.device,
                                      options.dtype),)
    if any(_plain(module, kind) for kind in spatial.MAX_POOLS):
        return spatial.max_pool(module, path, options.shape_of(module), options.device, options.dtype)
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
            if not isinstance(result, torch.fx.Node) or any(chains[result] is size for size in _SIZES):
                raise UnsupportedModule(path, kind, "forward must return a single tensor")
            return chains[result]
        else:
            chains[node] = _trace_step(node, chains, module, path, kind, options)
    raise UnsupportedModule(path, kind, "forward returns nothing")


def _trace_step(node: torch.fx.Node, chains: dict, module: nn.Module, path: str, kind: str,
                options: _Options) -> Chain:
    """The chain (from the module's input) that computes the value of fx node `node`."""
    def operand(arg: object) -> Chain:
        if not isinstance(arg, torch.fx.Node) or any(chains[arg] is size for size in _SIZES):
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
    if (node.op == "call_function" and node.target in _FUNCTION_CLAMPS
            or node.op == "call_method" and node.target in ("clamp", "clip")):
        return operand(args[0]) + (_clamp_call(node, f"{path}.{node.name}"),)
    if node.op == "call_function" and node.target is F.gelu:
        approximate = node.kwargs.get("approximate", args[1] if len(args) > 1 else "none")
        return operand(args[0]) + (Act(_gelu_kind(approximate, path), f"{path}.{node.name}"),)
    if node.op == "call_method" and node.target in _METHOD_ACTIVATIONS and len(args) == 1:
        return operand(args[0]) + (Act(_METHOD_ACTIVATIONS[node.target], f"{path}.{node.name}"),)
    if (node.op == "call_function" and node.target in _IDENTITIES) or (
            node.op == "call_method" and node.target == "flatten"):
        start = node.kwargs.get("start_dim", args[1] if len(args) > 1 else 0)
        end = node.kwargs.get("end_dim", args[2] if len(args) > 2 else -1)
        return operand(args[0]) + _flatten(start, end, f"{path}.{node.name}")
    if node.op == "call_method" and node.target == "size":
        dim = node.kwargs.get("dim", args[1] if len(args) > 1 else None)
        return _SHAPE if dim is None else _BATCH if dim == 0 else _SIZE
    if node.op == "call_function" and node.target is getattr and args[1:] == ("shape",):
        return _SHAPE
    if node.op == "call_function" and node.target is operator.getitem and chains.get(args[0]) is _SHAPE:
        return _BATCH if args[1] == 0 else _SIZE
    if node.op in ("call_method", "call_function") and node.target in ("view", "reshape", torch.reshape):
        shape = node.kwargs.get("shape", args[1:] if len(args) > 2 or len(args) < 2 or not isinstance(
            args[1], (tuple, list)) else tuple(args[1]))
        if len(shape) == 2 and _flattens_rows(*shape, chains):
            return operand(args[0])        # [batch, n]: each row flattened, which the graph's vectors are
    raise UnsupportedModule(path, kind, f"operation {node.op} {getattr(node.target, '__name__', node.target)}")


@dataclass
class _Options:
    inference: bool     # Dropout and BatchNorm as eval() computes them, whatever the mode
    live: bool          # keep the parameters (differentiable) instead of detached copies
    shapes: dict | None   # id(submodule) → its calls' input shapes (`spatial.input_shapes`)
    device: torch.device | None
    dtype: torch.dtype
    calls: dict = field(default_factory=dict)     # id(submodule) → calls compiled so far

    def take(self, parameter: Tensor) -> Tensor:
        return parameter if self.live else parameter.detach().clone()

    def shape_of(self, module: nn.Module) -> tuple[int, ...] | None:
        """The input shape of this call of `module` (a module called twice sees its calls'
        shapes in order)."""
        if self.shapes is None or id(module) not in self.shapes:
            return None
        seen = self.calls.get(id(module), 0)
        self.calls[id(module)] = seen + 1
        shapes = self.shapes[id(module)]
        return shapes[min(seen, len(shapes) - 1)]


_EVAL_HINT = ("call model.eval(), or pass inference=True (compile_model or explain) for the network as eval() "
              "computes it")


def _flattens_rows(rows: object, width: object, chains: dict) -> bool:
    """Is reshape(rows, width) each row flattened: rows the batch (-1 or x.size(0)) and width a
    number or -1 (not both -1)? Whether the width is right, the width checks and
    `_check_reproduces` see."""
    batch = rows == -1 if isinstance(rows, int) else chains.get(rows) is _BATCH
    return batch and isinstance(width, int) and not rows == width == -1


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
