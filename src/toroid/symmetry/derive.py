"""`symmetry_spec`: derive unit groups and cells from a model's torch.fx graph.

Every tensor in the graph carries a *channel space*: a Linear/Conv output creates one, a
per-channel operation passes it on, and a residual add merges the spaces of its inputs
(union-find), so that every writer and reader of a residual stream shares one group.
For each value we also keep its chain: the operations since the space's producer (or
since the last add). Chains decide the continuous symmetries: a positive per-unit scale
passes through positively homogeneous operations (ReLU, LeakyReLU, pooling, flatten,
dropout) and is absorbed by a BatchNorm's running statistics or compensated in the
consumers' input columns; in binary units a positive scale in front of the sign
activation needs no compensation at all (sign(c x) = sign(x)); a sign flip passes through
odd activations and linear operations (average pooling, flatten, dropout), but not
max-pooling or ReLU.
Any other element-wise activation (GELU, SiLU, Softplus, ELU, Sigmoid, Mish: kind
`elementwise`) commutes with permutations only: a scale does not pass it, so the units
in front of it get no cell (their weights stay Euclidean coordinates, outside cells) and
no sign symmetry; a segment before it that ends in a BatchNorm keeps its `absorbed` cell.
Binary layers (sign of latent weights) have no scale symmetry: their latent rows form
`binary` cells that canonical form replaces by their signs.
Token tensors (batch, tokens, channels), as a Linear applied to a 3-D input makes them,
carry their channel on the last axis: Linear, element-wise operations, residual adds and
self-attention act on them per position; averaging over tokens, selecting tokens and
swapping the token and batch axes are per-channel linear operations (like pooling).
`torch.nn.MultiheadAttention` (self-attention) reads one channel space through its packed
input projection and starts a new one with its output projection; its heads form a unit
group of their own, with a per-head linear freedom that canonical form removes by a
factorization (`toroid.symmetry.attention`).
LayerNorm, RMSNorm and GroupNorm (kind `norm`) carry the channel space like a BatchNorm
and start a new segment (their affine pair is its source), but they mix the units: a
segment ending in one gets no per-unit cell; instead the units' translation (LayerNorm,
GroupNorm: through the producer's rows and bias, or its bias alone where the norm sees
several positions) becomes a `TranslationFamily`, and, only at eps = 0, the global (per
GroupNorm group) positive scale becomes one `invariant` cell spanning the block. A
residual stream read only through such norms gets one translation family per writer and,
at eps = 0, one global scale of all writers; GroupNorm restricts a group's permutations
to those within and of its groups (`UnitGroup.blocks`).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from toroid.errors import UnsupportedModelError
from toroid.models.layers import BinaryConv2d, BinaryLinear, Sign
from toroid.symmetry.types import (
    AttentionHeads,
    CellFamily,
    Slot,
    SymmetrySpec,
    TranslationFamily,
    UnitGroup,
)

OpKind = Literal[
    "producer",
    "binary",
    "bn",
    "norm",
    "relu",
    "odd",
    "sign",
    "elementwise",
    "maxpool",
    "avgpool",
    "flatten",
    "pass",
    "add",
    "attention",
    "tokens",
]
PRODUCERS: frozenset[str] = frozenset({"producer", "binary"})
HOMOGENEOUS: frozenset[str] = frozenset({"relu", "maxpool", "avgpool", "flatten", "pass"})
ODD: frozenset[str] = frozenset({"odd", "sign"})
SIGN_EQUIVARIANT: frozenset[str] = frozenset({"odd", "sign", "avgpool", "flatten", "pass"})
LINEAR: frozenset[str] = frozenset({"avgpool", "flatten", "pass"})
# Operations that carry a constant added to every unit through unchanged (f(x + c) =
# f(x) + c, per example): a translation passes them on to the normalization.
TRANSLATING: frozenset[str] = frozenset({"flatten", "pass"})
NORMS: frozenset[str] = frozenset({"bn", "norm"})  # where a chain is split into segments

_MODULE_KINDS: dict[type[nn.Module], OpKind] = {
    nn.Linear: "producer",
    nn.Conv1d: "producer",
    nn.Conv2d: "producer",
    BinaryLinear: "binary",
    BinaryConv2d: "binary",
    nn.BatchNorm1d: "bn",
    nn.BatchNorm2d: "bn",
    nn.LayerNorm: "norm",
    nn.RMSNorm: "norm",
    nn.GroupNorm: "norm",
    nn.ReLU: "relu",
    nn.LeakyReLU: "relu",
    nn.Tanh: "odd",
    nn.Hardtanh: "odd",
    Sign: "sign",
    nn.GELU: "elementwise",
    nn.SiLU: "elementwise",
    nn.Softplus: "elementwise",
    nn.ELU: "elementwise",
    nn.Sigmoid: "elementwise",
    nn.Mish: "elementwise",
    nn.MaxPool1d: "maxpool",
    nn.MaxPool2d: "maxpool",
    nn.AvgPool1d: "avgpool",
    nn.AvgPool2d: "avgpool",
    nn.AdaptiveAvgPool1d: "avgpool",
    nn.AdaptiveAvgPool2d: "avgpool",
    nn.Flatten: "flatten",
    nn.Dropout: "pass",
    nn.Dropout1d: "pass",
    nn.Dropout2d: "pass",
    nn.Identity: "pass",
    nn.MultiheadAttention: "attention",
}

_FUNCTION_KINDS: dict[Callable[..., Any], OpKind] = {
    torch.relu: "relu",
    F.relu: "relu",
    torch.relu_: "relu",
    F.leaky_relu: "relu",
    torch.tanh: "odd",
    F.tanh: "odd",
    F.hardtanh: "odd",
    torch.sign: "sign",
    F.gelu: "elementwise",
    F.silu: "elementwise",
    F.softplus: "elementwise",
    F.elu: "elementwise",
    torch.sigmoid: "elementwise",
    F.sigmoid: "elementwise",
    F.mish: "elementwise",
    F.max_pool1d: "maxpool",
    F.max_pool2d: "maxpool",
    F.avg_pool1d: "avgpool",
    F.avg_pool2d: "avgpool",
    F.adaptive_avg_pool1d: "avgpool",
    F.adaptive_avg_pool2d: "avgpool",
    torch.flatten: "flatten",
    F.dropout: "pass",
    F.dropout1d: "pass",
    F.dropout2d: "pass",
    F.alpha_dropout: "pass",
    operator.add: "add",
    torch.add: "add",
    torch.mean: "tokens",
    operator.getitem: "tokens",
    torch.transpose: "tokens",
}

# Functional normalizations read their affine parameters as graph attributes, which the
# channel-space analysis cannot assign to a module: refused with a pointer to the modules.
_FUNCTIONAL_NORMS: frozenset[Callable[..., Any]] = frozenset(
    {F.layer_norm, F.group_norm, F.rms_norm, torch.layer_norm, torch.group_norm}
)

_METHOD_KINDS: dict[str, OpKind] = {
    "relu": "relu",
    "relu_": "relu",
    "tanh": "odd",
    "sign": "sign",
    "sigmoid": "elementwise",
    "flatten": "flatten",
    "view": "flatten",
    "reshape": "flatten",
    "add": "add",
    "__add__": "add",
    "contiguous": "pass",
    "mean": "tokens",
    "transpose": "tokens",
}


def register_module_kind(module_type: type[nn.Module], kind: OpKind) -> None:
    """Teach the derivation a module type of your own: 'producer' (a Linear or Conv),
    'binary' (one whose forward uses the sign of its latent `weight`), 'sign' (a
    scale-invariant odd activation), 'odd', 'relu', 'elementwise' (any other element-wise
    activation: its units have permutation symmetry only), 'bn', pooling, 'flatten' or
    'pass'. ('norm' is reserved for torch's LayerNorm, RMSNorm and GroupNorm.)"""
    if kind == "norm":
        raise UnsupportedModelError(
            f"register_module_kind({module_type.__name__}, 'norm'): only nn.LayerNorm, "
            "nn.RMSNorm and nn.GroupNorm are normalization layers the derivation knows"
        )
    _MODULE_KINDS[module_type] = kind


@dataclass(frozen=True)
class Op:
    kind: OpKind
    node: str
    module: str | None = None


NormKind = Literal["layer", "rms", "group"]


@dataclass(frozen=True)
class NormInfo:
    """A LayerNorm/RMSNorm/GroupNorm as the derivation sees it: its kind, epsilon, number
    of groups (1 for LayerNorm and RMSNorm) and the positions each channel has at its
    input (features per channel after flattening, times the spatial size)."""

    kind: NormKind
    eps: float
    groups: int
    positions: int

    @property
    def translates(self) -> bool:
        """Whether it subtracts a mean (RMSNorm does not)."""
        return self.kind != "rms"


@dataclass(frozen=True)
class Value:
    """What the analysis knows about one tensor in the graph."""

    space: int  # channel space (union-find id); 0 is the input
    block: int  # features per channel after flattening
    origin: tuple[str, str]  # ("producer" | "add" | "input", node name)
    chain: tuple[Op, ...]  # operations since the origin
    channel_last: bool = False  # a token tensor: (batch, tokens, channels), channel last


@dataclass
class _Space:
    producers: list[tuple[str, str]] = field(default_factory=list)  # (node, module)
    reads: list[tuple[str, Value]] = field(default_factory=list)  # (consumer module, value)
    writes: list[Value] = field(default_factory=list)  # inputs of residual adds
    outputs: list[Value] = field(default_factory=list)
    values: list[tuple[str, Value]] = field(default_factory=list)  # (node, value)
    first_index: int = 0


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def add(self, x: int) -> None:
        self.parent.setdefault(x, x)

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        low, high = sorted((ra, rb))  # the input space (0) stays the root
        self.parent[high] = low
        return low


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"module {node.target!r} ({type(modules[str(node.target)]).__name__})"
    target = getattr(node.target, "__name__", str(node.target))
    return f"operation {target!r} (node {node.name!r})"


def _kind(node: fx.Node, modules: dict[str, nn.Module]) -> OpKind:
    if node.op == "call_module":
        module = modules[str(node.target)]
        kind = _MODULE_KINDS.get(type(module))
        if kind is None:
            raise UnsupportedModelError(
                f"unsupported {_describe(node, modules)}; toroid's symmetry derivation handles "
                "Linear, Conv1d/2d, their binary variants, BatchNorm1d/2d, ReLU, LeakyReLU, "
                "Tanh, Hardtanh, Sign, GELU, SiLU, Softplus, ELU, Sigmoid, Mish, "
                "pooling, flatten/view, dropout, identity, residual add and "
                "MultiheadAttention as self-attention (write a SymmetrySpec by hand, or "
                "register_module_kind, for others)"
            )
        _check_module(node, module, modules)
        return kind
    if node.op == "call_function":
        kind = _FUNCTION_KINDS.get(node.target)  # type: ignore[arg-type]
    elif node.op == "call_method":
        kind = _METHOD_KINDS.get(str(node.target))
    else:
        kind = None
    if kind is None:
        raise UnsupportedModelError(f"unsupported {_describe(node, modules)} in the model graph")
    if kind == "add" and node.kwargs.get("alpha", 1) != 1:
        raise UnsupportedModelError(f"unsupported {_describe(node, modules)}: add with alpha")
    if kind == "relu" and node.target is F.leaky_relu:
        slope = node.kwargs.get("negative_slope", node.args[1] if len(node.args) > 1 else 0.01)
        if not isinstance(slope, int | float):
            raise UnsupportedModelError(f"{_describe(node, modules)}: non-constant slope")
    if kind == "odd" and node.target is F.hardtanh:
        low = node.kwargs.get("min_val", node.args[1] if len(node.args) > 1 else -1.0)
        high = node.kwargs.get("max_val", node.args[2] if len(node.args) > 2 else 1.0)
        if not (isinstance(low, int | float) and isinstance(high, int | float) and low == -high):
            raise UnsupportedModelError(f"{_describe(node, modules)} is not odd: [{low}, {high}]")
    return kind


def _check_module(node: fx.Node, module: nn.Module, modules: dict[str, nn.Module]) -> None:
    if isinstance(module, nn.Conv1d | nn.Conv2d) and module.groups != 1:
        raise UnsupportedModelError(
            f"unsupported {_describe(node, modules)}: groups={module.groups}, only groups=1"
        )
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not module.track_running_stats:
        raise UnsupportedModelError(
            f"unsupported {_describe(node, modules)}: BatchNorm without running statistics"
        )
    if isinstance(module, nn.Hardtanh) and module.min_val != -module.max_val:
        raise UnsupportedModelError(
            f"{_describe(node, modules)} is not odd: [{module.min_val}, {module.max_val}]"
        )
    if isinstance(module, nn.Flatten) and (module.start_dim, module.end_dim) != (1, -1):
        raise UnsupportedModelError(
            f"unsupported {_describe(node, modules)}: only flattening all but the batch axis"
        )
    if isinstance(module, nn.MultiheadAttention):
        refused = {
            "kdim or vdim different from embed_dim": not module._qkv_same_embed_dim,
            "add_bias_kv=True": module.bias_k is not None,
            "add_zero_attn=True": module.add_zero_attn,
        }
        for what, present in refused.items():
            if present:
                raise UnsupportedModelError(
                    f"unsupported {_describe(node, modules)}: {what}; only self-attention "
                    "with kdim = vdim = embed_dim, without add_bias_kv and add_zero_attn"
                )


def _attention_input(node: fx.Node, modules: dict[str, nn.Module]) -> fx.Node:
    """The one tensor a MultiheadAttention call attends over: query, key and value must be
    the same node (self-attention) and no mask may be passed."""
    names = ("query", "key", "value")
    qkv = [
        node.args[i] if i < len(node.args) else node.kwargs.get(name)
        for i, name in enumerate(names)
    ]
    if not all(isinstance(a, fx.Node) for a in qkv) or len(set(qkv)) != 1:
        raise UnsupportedModelError(
            f"unsupported {_describe(node, modules)}: cross-attention (query, key and value "
            "differ); only self-attention attn(x, x, x)"
        )
    others = [
        a
        for a in (*node.args[3:], *(v for k, v in node.kwargs.items() if k not in names))
        if isinstance(a, fx.Node)
    ]
    if others:
        raise UnsupportedModelError(
            f"unsupported {_describe(node, modules)}: masks (or other tensor arguments) are "
            "not supported; only attn(x, x, x)"
        )
    source = qkv[0]
    assert isinstance(source, fx.Node)
    return source


def _axes(spec: object, ndim: int) -> tuple[int, ...] | None:
    """Constant axis arguments normalized to non-negative ints (None when not constant)."""
    items = spec if isinstance(spec, tuple | list) else (spec,)
    if not all(isinstance(a, int) and not isinstance(a, bool) for a in items):
        return None
    return tuple(int(a) % ndim for a in items)


def _token_op(node: fx.Node, modules: dict[str, nn.Module], ndim: int) -> OpKind:
    """What a mean, a selection or a transpose does to a token tensor's channels: "avgpool"
    (a per-channel average or selection over the other axes) or "pass" (a transpose that
    keeps the channel last). Anything that touches the channel axis is refused."""
    name = "mean" if node.target in (torch.mean, "mean") else str(node.target)
    channel = ndim - 1
    what = f"unsupported {_describe(node, modules)} on a (batch, tokens, channels) tensor"
    if node.target is operator.getitem:
        index = node.args[1]
        items = index if isinstance(index, tuple) else (index,)
        full = slice(None)
        simple = all(
            (isinstance(i, int) and not isinstance(i, bool))
            or (
                isinstance(i, slice)
                and all(v is None or isinstance(v, int) for v in (i.start, i.stop, i.step))
            )
            for i in items
        )
        if not simple or len(items) > ndim or (len(items) == ndim and items[-1] != full):
            raise UnsupportedModelError(
                f"{what}: index {index!r}; only integers and slices on the token and batch "
                "axes, the channel axis kept whole"
            )
        return "avgpool"
    if name == "mean":
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        axes = None if dim is None else _axes(dim, ndim)
        if axes is None or channel in axes:
            raise UnsupportedModelError(
                f"{what}: mean over dim={dim!r}; only over token axes, never the channel axis"
            )
        return "avgpool"
    # transpose
    axes = _axes(tuple(node.args[1:3]), ndim) if len(node.args) >= 3 else None
    if axes is None or channel in axes:
        raise UnsupportedModelError(
            f"{what}: transpose{tuple(node.args[1:])!r} moves the channel axis; only the "
            "token and batch axes may be swapped"
        )
    return "pass"


def _norm_info(node: fx.Node, module: nn.Module, block: int, describe: str) -> NormInfo:
    """Checks that the norm acts where the derivation's mathematics holds (LayerNorm and
    RMSNorm over the last axis of (batch, features); GroupNorm over channel axis 1 of an
    unflattened input) and returns what the spec needs from it."""
    (arg,) = _tensor_args(node)
    shape = _shape(arg)
    if isinstance(module, nn.GroupNorm):
        if len(shape) < 2 or block != 1:
            raise UnsupportedModelError(
                f"unsupported {describe}: input of shape {shape}; only (batch, channels, ...) "
                "inputs that are not flattened channels"
            )
        return NormInfo("group", float(module.eps), int(module.num_groups), math.prod(shape[2:]))
    assert isinstance(module, nn.LayerNorm | nn.RMSNorm)
    normalized = tuple(module.normalized_shape)
    if len(shape) != 2 or normalized != (shape[-1],):
        raise UnsupportedModelError(
            f"unsupported {describe}: normalizes over {normalized} of a {len(shape)}-D input "
            f"of shape {shape}; only normalization over the last axis of (batch, features) "
            "inputs is supported"
        )
    if isinstance(module, nn.LayerNorm):
        return NormInfo("layer", float(module.eps), 1, block)
    dtype = node.meta["tensor_meta"].dtype
    eps = float(torch.finfo(dtype).eps) if module.eps is None else float(module.eps)
    return NormInfo("rms", eps, 1, block)


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    return [
        a
        for a in (*node.args, *node.kwargs.values())
        if isinstance(a, fx.Node) and "tensor_meta" in a.meta
    ]


def _shape(node: fx.Node) -> tuple[int, ...]:
    return tuple(node.meta["tensor_meta"].shape)


class _Tracer(fx.Tracer):
    """Keeps every module kind the derivation knows (Sign, registered layers) as one node."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return type(m) in _MODULE_KINDS or super().is_leaf_module(m, module_qualified_name)


def symbolic_trace(model: nn.Module) -> fx.GraphModule:
    """torch.fx tracing with the derivation's leaf modules."""
    graph = _Tracer().trace(model)
    return fx.GraphModule(model, graph, type(model).__name__)


def trace(model: nn.Module, example_input: torch.Tensor) -> fx.GraphModule:
    """The model's fx graph, annotated with shapes from an eval-mode pass."""
    try:
        graph_module = symbolic_trace(model)
    except Exception as exc:  # fx raises many kinds on dynamic control flow
        raise UnsupportedModelError(
            f"cannot trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {exc}); "
            "write a SymmetrySpec by hand"
        ) from exc
    was_training = model.training
    graph_module.eval()
    try:
        with torch.no_grad():
            ShapeProp(graph_module).propagate(example_input)
    finally:
        graph_module.train(was_training)
    return graph_module


def symmetry_spec(model: nn.Module, example_input: torch.Tensor) -> SymmetrySpec:
    """Unit groups and cells of `model`, derived from its torch.fx graph; `example_input`
    is one batch (of at least two examples) of valid input."""
    graph_module = trace(model, example_input)
    modules = dict(graph_module.named_modules())
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    tensors = {**params, **buffers}
    uf = _UnionFind()
    uf.add(0)
    values: dict[str, Value] = {}
    spaces: dict[int, _Space] = {0: _Space()}
    eps: dict[str, float] = {}
    norms: dict[str, NormInfo] = {}
    called: set[str] = set()
    binary: set[str] = set()
    attention: dict[str, tuple[int, str]] = {}  # attention node -> (index, module)
    for node in graph_module.graph.nodes:
        if node.op == "call_function" and node.target in _FUNCTIONAL_NORMS:
            raise UnsupportedModelError(
                f"unsupported {_describe(node, modules)}: functional normalization; use the "
                "modules nn.LayerNorm, nn.RMSNorm or nn.GroupNorm"
            )

    def space_of(v: Value) -> _Space:
        return spaces[uf.find(v.space)]

    for index, node in enumerate(graph_module.graph.nodes):
        used = [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, fx.Node)]
        if any(a.name in attention for a in used):
            attn_name = next(attention[a.name][1] for a in used if a.name in attention)
            if not (node.target is operator.getitem and node.args[1] == 0):
                raise UnsupportedModelError(
                    f"the output of module {attn_name!r} (MultiheadAttention) is used by "
                    f"{_describe(node, modules)}; only its attention output attn(...)[0] "
                    "(not the attention weights) is supported"
                )
            # The output projection's rows start a channel space, as a Linear's do.
            new = len(uf.parent)
            uf.add(new)
            producer = f"{attn_name}.out_proj"
            spaces[new] = _Space(producers=[(node.name, producer)], first_index=index)
            values[node.name] = Value(new, 1, ("producer", node.name), (), True)
            spaces[new].values.append((node.name, values[node.name]))
            continue
        if node.op == "placeholder":
            values[node.name] = Value(0, 1, ("input", node.name), ())
            continue
        if node.op == "get_attr":
            raise UnsupportedModelError(f"unsupported direct use of parameter {node.target!r}")
        if node.op == "output":
            for arg in _tensor_args(node):
                space_of(values[arg.name]).outputs.append(values[arg.name])
            continue
        if "tensor_meta" not in node.meta:  # shape arithmetic such as x.size(0)
            continue
        kind = _kind(node, modules)
        if kind == "attention":
            attn_name = str(node.target)
            source = values[_attention_input(node, modules).name]
            in_shape = _shape(_attention_input(node, modules))
            if attn_name in called:
                raise UnsupportedModelError(
                    f"{_describe(node, modules)} is called more than once (shared weights "
                    "are not supported)"
                )
            called.add(attn_name)
            if (
                len(in_shape) != 3
                or source.block != 1
                or (uf.find(source.space) != 0 and not source.channel_last)
            ):
                raise UnsupportedModelError(
                    f"{_describe(node, modules)} reads a tensor of shape {in_shape}; only "
                    "(batch, tokens, channels) or (tokens, batch, channels) tensors"
                )
            space_of(source).reads.append((attn_name, source))
            attention[node.name] = (index, attn_name)
            continue
        inputs = [values[a.name] for a in _tensor_args(node)]
        if (
            len(inputs) == 1
            and inputs[0].channel_last
            and uf.find(inputs[0].space) != 0
            and (
                kind in ("bn", "maxpool", "avgpool", "flatten")
                or (
                    node.op == "call_module"
                    and kind in PRODUCERS
                    and not isinstance(modules[str(node.target)], nn.Linear)
                )
            )
        ):
            raise UnsupportedModelError(
                f"unsupported {_describe(node, modules)} on a (batch, tokens, channels) tensor; "
                "token tensors support Linear, element-wise activations, dropout, residual "
                "add, self-attention, mean over tokens, selecting tokens and swapping the "
                "token and batch axes"
            )
        if kind == "add":
            if len(inputs) != 2 or len({_shape(a) for a in _tensor_args(node)}) != 1:
                raise UnsupportedModelError(
                    f"unsupported {_describe(node, modules)}: "
                    "only the sum of two tensors of one shape"
                )
            for v in inputs:
                space_of(v).writes.append(v)
            a, b = (uf.find(v.space) for v in inputs)
            root = uf.union(a, b)
            if a != b:
                other = spaces.pop(b if root == a else a)
                merged = spaces[root]
                merged.producers += other.producers
                merged.reads += other.reads
                merged.writes += other.writes
                merged.outputs += other.outputs
                merged.values += other.values
                merged.first_index = min(merged.first_index, other.first_index)
            last = inputs[0].channel_last or inputs[1].channel_last
            value = Value(root, inputs[0].block, ("add", node.name), (), last)
        else:
            if len(inputs) != 1:
                raise UnsupportedModelError(
                    f"unsupported {_describe(node, modules)}: it combines {len(inputs)} tensors"
                )
            (source,) = inputs
            module_name = str(node.target) if node.op == "call_module" else None
            if module_name is not None and kind in (*PRODUCERS, *NORMS):
                if module_name in called:
                    raise UnsupportedModelError(
                        f"{_describe(node, modules)} is called more than once (shared weights "
                        "are not supported)"
                    )
                called.add(module_name)
            if kind in PRODUCERS:
                assert module_name is not None
                if kind == "binary":
                    binary.add(module_name)
                if source.block != 1 and not isinstance(modules[module_name], nn.Linear):
                    raise UnsupportedModelError(f"{_describe(node, modules)} reads flattened input")
                tokens = isinstance(modules[module_name], nn.Linear) and len(_shape(node)) != 2
                if tokens and not (source.channel_last or uf.find(source.space) == 0):
                    raise UnsupportedModelError(
                        f"{_describe(node, modules)} acts on the last axis of a "
                        f"{len(_shape(node))}-D tensor whose channels are on axis 1; only "
                        "(batch, features) inputs and token tensors (channel last) are supported"
                    )
                space_of(source).reads.append((module_name, source))
                new = len(uf.parent)
                uf.add(new)
                spaces[new] = _Space(producers=[(node.name, module_name)], first_index=index)
                value = Value(new, 1, ("producer", node.name), (), tokens)
            elif kind == "tokens":
                out_ndim = len(_shape(node))
                if uf.find(source.space) == 0:  # the raw input: no unit is touched
                    op = Op("pass", node.name)
                else:
                    if not source.channel_last:
                        raise UnsupportedModelError(
                            f"unsupported {_describe(node, modules)}: mean, indexing and "
                            "transpose are supported on (batch, tokens, channels) tensors only"
                        )
                    op = Op(_token_op(node, modules, len(_shape(_tensor_args(node)[0]))), node.name)
                    if out_ndim < 2:
                        raise UnsupportedModelError(
                            f"unsupported {_describe(node, modules)}: leaves {out_ndim} axes"
                        )
                value = Value(
                    source.space, source.block, source.origin, (*source.chain, op), out_ndim > 2
                )
            elif kind == "flatten":
                in_shape, out_shape = _shape(_tensor_args(node)[0]), _shape(node)
                if len(out_shape) != 2 or out_shape[0] != in_shape[0] or len(in_shape) < 2:
                    raise UnsupportedModelError(
                        f"unsupported {_describe(node, modules)}: reshapes {in_shape} to "
                        f"{out_shape}; only flattening to (batch, features) is supported"
                    )
                block = source.block * math.prod(in_shape[2:])
                value = Value(
                    source.space, block, source.origin, (*source.chain, Op(kind, node.name))
                )
            else:
                if kind == "bn":
                    assert module_name is not None
                    bn = modules[module_name]
                    assert isinstance(bn, nn.modules.batchnorm._BatchNorm)
                    eps[module_name] = float(bn.eps)
                if kind == "norm":
                    assert module_name is not None
                    norms[module_name] = _norm_info(
                        node, modules[module_name], source.block, _describe(node, modules)
                    )
                op = Op(kind, node.name, module_name)
                value = Value(
                    source.space,
                    source.block,
                    source.origin,
                    (*source.chain, op),
                    source.channel_last,
                )
        values[node.name] = value
        space_of(value).values.append((node.name, value))

    heads = [
        (index, _attention_heads(module, modules[module], tensors))
        for index, module in attention.values()
    ]
    return _build_spec(spaces, tensors, eps, frozenset(binary), norms, heads)


def _attention_heads(
    module_name: str, module: nn.Module, tensors: dict[str, torch.Tensor]
) -> AttentionHeads:
    assert isinstance(module, nn.MultiheadAttention)
    bias = f"{module_name}.in_proj_bias" in tensors
    return AttentionHeads(
        module=module_name,
        group=f"heads:{module_name}",
        heads=module.num_heads,
        head_dim=module.head_dim,
        in_proj=f"{module_name}.in_proj_weight",
        out_proj=f"{module_name}.out_proj.weight",
        in_bias=f"{module_name}.in_proj_bias" if bias else None,
        out_bias=f"{module_name}.out_proj.bias" if bias else None,
    )


def _head_group(att: AttentionHeads) -> UnitGroup:
    """The heads as units: head h owns rows h d .. (h + 1) d - 1 of the query, key and value
    blocks of the packed input projection (and of its bias), and the same columns of the
    output projection."""
    e, d = att.embed_dim, att.head_dim
    packed = [att.in_proj] + ([att.in_bias] if att.in_bias is not None else [])
    slots = [Slot(t, 0, d, start=k * e, stop=(k + 1) * e) for t in packed for k in range(3)]
    return UnitGroup(att.group, att.heads, (*slots, Slot(att.out_proj, 1, d)))


def _reader_weight(module: str, tensors: dict[str, torch.Tensor]) -> str:
    """The weight whose input columns a consumer module owns (an attention layer's packed
    input projection, else its `weight`)."""
    packed = f"{module}.in_proj_weight"
    return packed if packed in tensors and f"{module}.weight" not in tensors else f"{module}.weight"


def _vector_slots(
    module_name: str,
    tensors: dict[str, torch.Tensor],
    block: int,
    names: tuple[str, ...] = ("weight", "bias", "running_mean", "running_var"),
) -> list[Slot]:
    """Axis-0 slots of a module's named vectors that exist: a producer's weight rows and
    bias, a BatchNorm's vectors (running statistics permuted, never matched on)."""
    return [
        Slot(f"{module_name}.{t}", 0, block, match=not t.startswith("running_"))
        for t in names
        if f"{module_name}.{t}" in tensors
    ]


def _affine_slots(module_name: str, tensors: dict[str, torch.Tensor], block: int) -> list[Slot]:
    """The scalable vectors at a chain's source: weight and bias (rows, or BN's gamma/beta)."""
    return _vector_slots(module_name, tensors, block, ("weight", "bias"))


def _segments(chain: tuple[Op, ...]) -> list[tuple[Op | None, list[Op]]]:
    """Split a chain at its BatchNorms and normalization layers: [(source BN/norm or None for
    the origin, ops after it)]."""
    segments: list[tuple[Op | None, list[Op]]] = [(None, [])]
    for op in chain:
        if op.kind in NORMS:
            segments.append((op, []))
        else:
            segments[-1][1].append(op)
    return segments


def _build_spec(
    spaces: dict[int, _Space],
    tensors: dict[str, torch.Tensor],
    eps: dict[str, float],
    binary: frozenset[str],
    norms: dict[str, NormInfo],
    heads: list[tuple[int, AttentionHeads]] | None = None,
) -> SymmetrySpec:
    heads = heads or []
    groups: list[tuple[int, UnitGroup]] = []
    cells: list[CellFamily] = []
    translations: list[TranslationFamily] = []
    folds: list[tuple[str, str]] = []
    output: CellFamily | None = None
    for root, space in sorted(spaces.items(), key=lambda item: item[1].first_index):
        if root == 0 or not space.producers:
            continue
        if space.outputs:
            output = output or _output_cell(space, tensors, binary)
            continue
        if not space.reads and not space.writes:
            continue
        name = f"g{len(groups)}:{space.producers[0][1]}"
        size = int(tensors[f"{space.producers[0][1]}.weight"].shape[0])
        builder = _GroupBuilder(name, size, space, tensors, binary, norms)
        group, group_cells, group_folds = builder.build()
        groups.append((space.first_index, group))
        cells += group_cells
        folds += group_folds
        translations += builder.translations
    # An attention layer's output rows are factorized from its circuits, which its input
    # columns enter: a cell over the output rows comes after the cells scaling the inputs.
    coupled = {att.out_proj: att.in_proj for _, att in heads}
    ordered = _order_cells(cells, coupled)
    used_eps = {m: e for m, e in eps.items() if any(m in c.batchnorm for c in ordered)}
    groups += [(index, _head_group(att)) for index, att in heads]
    groups.sort(key=lambda item: item[0])  # stable: spaces were visited in graph order
    return SymmetrySpec(
        groups=tuple(g for _, g in groups),
        cells=tuple(ordered),
        output=output,
        bias_folds=tuple(folds),
        bn_eps=used_eps,
        attention=tuple(att for _, att in heads),
        translations=tuple(translations),
    )


def _output_cell(
    space: _Space, tensors: dict[str, torch.Tensor], binary: frozenset[str]
) -> CellFamily | None:
    """The output layer's global cell: its weight and bias, when the logits come straight
    (through dropout or identity at most) from a single Linear; or, for a binary output
    layer (whatever follows it), its latent weights as one `binary` cell."""
    if len(space.producers) != 1 or space.writes:
        return None
    module = space.producers[0][1]
    weight = tensors[f"{module}.weight"]
    if module in binary:
        rows = int(weight.shape[0])
        return CellFamily(f"output:{module}", None, "binary", (Slot(f"{module}.weight", 0, rows),))
    if any(op.kind != "pass" for v in space.outputs for op in v.chain):
        return None
    members = [Slot(f"{module}.weight", 0, int(weight.shape[0]))]
    if f"{module}.bias" in tensors:
        members.append(Slot(f"{module}.bias", 0, int(weight.shape[0])))
    return CellFamily(f"output:{module}", None, "output", tuple(members))


TailKind = Literal["homogeneous", "invariant"]


def _tail_kind(ops: list[Op]) -> TailKind | None:
    """How a per-unit positive scale at a segment's source fares along its ops: it passes
    positively homogeneous ops (`homogeneous`: compensated in the consumers), and a sign
    activation after them absorbs it (`invariant`: nothing to compensate)."""
    for op in ops:
        if op.kind == "sign":
            return "invariant"
        if op.kind not in HOMOGENEOUS:
            return None
    return "homogeneous"


class _GroupBuilder:
    def __init__(
        self,
        name: str,
        size: int,
        space: _Space,
        tensors: dict[str, torch.Tensor],
        binary: frozenset[str] = frozenset(),
        norms: dict[str, NormInfo] | None = None,
    ) -> None:
        self.name, self.size, self.space = name, size, space
        self.norms = norms or {}
        self.translations: list[TranslationFamily] = []
        self.tensors = tensors
        self.blocks = {node: value.block for node, value in space.values}
        self.binary = binary
        self.binary_producers = {m for _, m in space.producers if m in binary}
        self.bn_modules = {op.module for _, v in space.values for op in v.chain if op.kind == "bn"}

    def _unsupported(self, why: str) -> UnsupportedModelError:
        producers = ", ".join(m for _, m in self.space.producers)
        return UnsupportedModelError(f"unit group of {producers}: {why}")

    def _reader_slots(self, reads: list[tuple[str, Value]]) -> list[Slot]:
        return [
            Slot(_reader_weight(module, self.tensors), 1, value.block) for module, value in reads
        ]

    def _matched(self, slots: list[Slot]) -> list[Slot]:
        """Units of binary layers are matched on their sign weights alone (the overlap),
        not on their BatchNorm thresholds, which are still permuted and flipped."""
        if not self.binary_producers:
            return slots
        return [
            replace(s, match=False) if s.tensor.rpartition(".")[0] in self.bn_modules else s
            for s in slots
        ]

    def build(self) -> tuple[UnitGroup, list[CellFamily], list[tuple[str, str]]]:
        space = self.space
        slots: list[Slot] = []
        for _, module in space.producers:
            slots += _vector_slots(module, self.tensors, 1)
        seen_bn: set[str] = set()
        for _, value in space.values:
            for op in value.chain:
                if op.kind in NORMS and op.module not in seen_bn:
                    assert op.module is not None
                    seen_bn.add(op.module)
                    slots += _vector_slots(op.module, self.tensors, self._block_at_op(op))
        slots += self._reader_slots(space.reads)
        cells, folds = self._cells()
        flip, rule = ([], []) if space.writes else self._sign()
        if flip and any(m.endswith(".out_proj") for _, m in space.producers):
            # The factorization of the heads decides the output rows' directions, which a
            # per-unit sign rule would have to read: not supported.
            raise self._unsupported("an odd activation after an attention layer")
        nodes = sorted({v.chain[-1].node if v.chain else v.origin[1] for _, v in space.reads})
        last = sorted(
            {v.chain[-1].node if v.chain else v.origin[1] for _, v in space.reads if v.channel_last}
        )
        group = UnitGroup(
            name=self.name,
            size=self.size,
            slots=tuple(dict.fromkeys(self._matched(slots))),
            flip=tuple(self._matched(flip)),
            sign_rule=tuple(self._matched(rule)),
            stream=bool(space.writes),
            activation_nodes=tuple(nodes),
            channel_last=tuple(last),
            blocks=self._blocks(seen_bn),
        )
        return group, cells, folds

    def _blocks(self, norm_modules: set[str]) -> int:
        """The GroupNorm groups the units fall into (1: any permutation is a symmetry)."""
        counts = {self.norms[m].groups for m in norm_modules if m in self.norms}
        counts.discard(1)
        if len(counts) > 1:
            raise self._unsupported(
                f"GroupNorms with different numbers of groups {sorted(counts)} read its units"
            )
        return counts.pop() if counts else 1

    def _norm_families(
        self, src: str, source: Op | None, ops: list[Op], norm: Op, binary: bool
    ) -> list[CellFamily]:
        """What a segment ending in a LayerNorm/RMSNorm/GroupNorm keeps: a translation of
        the units (LayerNorm, GroupNorm), when only operations that carry constants lie in
        between: the source's rows and bias if the norm sees one position per channel, else
        its bias alone (a conv's row change varies over positions, and GroupNorm removes one
        mean per group, not per position); a BatchNorm or norm pair as source translates
        its beta only. And, at eps = 0 only, the positive scale of each norm group's units
        as one `invariant` cell (the norm absorbs it, nothing is compensated)."""
        assert norm.module is not None
        info = self.norms[norm.module]
        span = self.size // info.groups
        if source is None and binary:
            return []
        block = 1 if source is None else self._block_at_op(source)
        affine = _affine_slots(src, self.tensors, block)
        if info.translates and all(op.kind in TRANSLATING for op in ops):
            rows_too = source is None and info.positions == 1
            members = [s for s in affine if rows_too or s.tensor == f"{src}.bias"]
            if members:
                self.translations.append(
                    TranslationFamily(
                        f"{self.name}:{src}>{norm.module}:translation",
                        self.name,
                        tuple(members),
                        span,
                    )
                )
        if affine and info.eps == 0 and all(op.kind in HOMOGENEOUS for op in ops):
            return [
                CellFamily(
                    f"{self.name}:{src}>{norm.module}",
                    self.name,
                    "invariant",
                    tuple(affine),
                    span=span,
                )
            ]
        return []

    def _chain_cells(
        self, producer: str, chain: tuple[Op, ...]
    ) -> tuple[list[CellFamily], list[tuple[str, str]], list[Slot] | None]:
        """Cells of the segments of one chain that end in a BatchNorm, the bias folds, and the
        slots of the last segment's source when a scale there is compensable or absorbed by
        a sign (else None). A binary producer's output has no scale: it starts no such cell."""
        cells: list[CellFamily] = []
        folds: list[tuple[str, str]] = []
        segments = _segments(chain)
        binary = producer in self.binary_producers
        for k, (source, ops) in enumerate(segments[:-1]):
            absorbing = segments[k + 1][0]
            assert absorbing is not None and absorbing.module is not None
            src = producer if source is None else source.module
            assert src is not None
            if absorbing.kind == "norm":
                cells += self._norm_families(src, source, ops, absorbing, binary)
                continue
            members = _affine_slots(
                src, self.tensors, 1 if source is None else self._block_at_op(source)
            )
            if (
                source is None
                and all(op.kind == "pass" for op in ops)
                and f"{producer}.bias" in self.tensors
            ):
                folds.append((f"{producer}.bias", absorbing.module))
            if source is None and binary:
                continue
            if members and all(op.kind in HOMOGENEOUS for op in ops):
                cells.append(
                    CellFamily(
                        f"{self.name}:{src}>{absorbing.module}",
                        self.name,
                        "absorbed",
                        tuple(members),
                        batchnorm=(absorbing.module,),
                    )
                )
        last_source, last_ops = segments[-1]
        src = producer if last_source is None else last_source.module
        assert src is not None
        scalable = _tail_kind(last_ops) is not None and not (last_source is None and binary)
        block = 1 if last_source is None else self._block_at_op(last_source)
        return cells, folds, (_affine_slots(src, self.tensors, block) if scalable else None)

    def _block_at_op(self, op: Op) -> int:
        return self.blocks.get(op.node, 1)

    def _cells(self) -> tuple[list[CellFamily], list[tuple[str, str]]]:
        space = self.space
        if space.writes and any(
            op.kind == "norm"
            for v in (*space.writes, *(v for _, v in space.reads))
            for op in v.chain
        ):
            return self._stream_norm_cells(), []
        by_producer: dict[str, list[tuple[str, Value]]] = {}
        node_to_module = dict(space.producers)
        for module, value in space.reads:
            if value.origin[0] == "producer":
                by_producer.setdefault(node_to_module[value.origin[1]], []).append((module, value))
        for value in space.writes:
            if value.origin[0] == "producer":
                by_producer.setdefault(node_to_module[value.origin[1]], []).append(("", value))
        cells: list[CellFamily] = []
        folds: list[tuple[str, str]] = []
        last_members: list[Slot] = []
        tails: set[TailKind | None] = set()
        scalable = True
        for producer, uses in by_producer.items():
            bn_sequences = {tuple(op.module for op in v.chain if op.kind in NORMS) for _, v in uses}
            if len(bn_sequences) != 1:
                raise self._unsupported(
                    "its units are read through different BatchNorms or normalization layers"
                )
            if producer in self.binary_producers:
                cells.append(
                    CellFamily(
                        f"{self.name}:{producer}:binary",
                        self.name,
                        "binary",
                        (Slot(f"{producer}.weight", 0),),
                    )
                )
            longest = max((v for _, v in uses), key=lambda v: len(v.chain))
            chain_cells, chain_folds, tail = self._chain_cells(producer, longest.chain)
            cells += chain_cells
            folds += chain_folds
            tails |= {_tail_kind(_segments(v.chain)[-1][1]) for _, v in uses}
            if tail is None:
                scalable = False
            else:
                last_members += tail
        for value in (*space.writes, *(v for _, v in space.reads)):
            if value.origin[0] == "add":
                if any(op.kind == "bn" for op in value.chain):
                    raise self._unsupported(
                        "a BatchNorm reads the residual stream (pre-activation blocks are not "
                        "supported yet)"
                    )
                if any(op.kind not in HOMOGENEOUS for op in value.chain):
                    scalable = False
            elif value.origin[0] == "input":
                raise self._unsupported("the network input is added into it")
        readers = self._reader_slots(space.reads)
        if not scalable or not last_members or len(tails) != 1 or None in tails:
            return cells, folds
        if tails == {"invariant"}:
            # Only binary units get the cell: float networks with sign activations keep the
            # spec they always had.
            if not space.writes and self.binary_producers:
                cells.append(
                    CellFamily(
                        f"{self.name}:invariant",
                        self.name,
                        "invariant",
                        tuple(dict.fromkeys(last_members)),
                    )
                )
            return cells, folds
        # A binary consumer uses only the signs of its columns: it cannot compensate a scale.
        if any(module in self.binary for module, _ in space.reads):
            return cells, folds
        kind: Literal["homogeneous", "stream"] = "stream" if space.writes else "homogeneous"
        cells.append(
            CellFamily(
                f"{self.name}:{kind}",
                self.name,
                kind,
                tuple(dict.fromkeys(last_members)),
                compensate=tuple(readers),
            )
        )
        return cells, folds

    def _sign(self) -> tuple[list[Slot], list[Slot]]:
        """Flip and sign-rule slots when every use of the units goes through an odd
        activation followed only by linear operations; otherwise no sign symmetry."""
        space = self.space
        if not space.reads or len(space.producers) != 1:
            return [], []
        producer = space.producers[0][1]
        binary = producer in self.binary_producers
        chains = [v.chain for _, v in space.reads]
        for chain in chains:
            _, last_ops = _segments(chain)[-1]
            if not any(op.kind in ODD for op in last_ops):
                return [], []
            if any(op.kind not in SIGN_EQUIVARIANT for op in last_ops):
                return [], []
        segments = _segments(chains[0])
        readers = self._reader_slots(space.reads)
        producer_slots = _affine_slots(producer, self.tensors, 1)
        if len(segments) == 1:
            return producer_slots + readers, producer_slots
        bn = segments[-1][0]
        assert bn is not None and bn.module is not None
        block = self._block_at_op(bn)
        between = LINEAR if binary else frozenset({"pass"})
        # A LayerNorm/GroupNorm mixes the units: flipping one unit in front of it is no
        # symmetry, so only the norm's pair can flip.
        if (
            bn.kind == "bn"
            and len(segments) == 2
            and all(op.kind in between for op in segments[0][1])
        ):
            # Negate the unit's input, the BatchNorm's running mean and beta: the BN output
            # changes sign and gamma stays (as binary networks need).
            bn_slots = [Slot(f"{bn.module}.running_mean", 0, block, match=False)]
            if f"{bn.module}.bias" in self.tensors:
                bn_slots.append(Slot(f"{bn.module}.bias", 0, block))
            # The +-1 rows of a binary unit often sum to 0; the BatchNorm threshold (running
            # mean, beta), odd under the flip and invariant under permutations of the
            # inputs, then decides its sign.
            rule = producer_slots + bn_slots if binary else producer_slots
            return producer_slots + bn_slots + readers, rule
        gamma_beta = _affine_slots(bn.module, self.tensors, block)
        if not gamma_beta:
            return [], []
        return gamma_beta + readers, gamma_beta

    def _stream_norm_cells(self) -> list[CellFamily]:
        """Cells and translations of a residual stream read through LayerNorm, RMSNorm or
        GroupNorm. Each norm's affine pair is a per-unit `homogeneous` cell when only
        positively homogeneous operations follow it into its readers. When every read goes
        through a norm: every writer's translation (rows and bias; bias only when a norm
        sees several positions per channel) is a translation family, since the stream then
        changes by a per-example constant that every norm removes; and, when every norm has
        eps = 0, the global (per GroupNorm group) scale of all writers together is one
        `invariant` cell."""
        space = self.space
        for value in space.writes:
            if any(op.kind != "pass" for op in value.chain):
                raise self._unsupported(
                    "a residual stream read through normalization layers must be written "
                    "directly (through dropout or identity at most) by Linear/Conv layers "
                    "(post-norm blocks are not supported)"
                )
        if self.binary_producers:
            raise self._unsupported("binary layers write a stream read through norms")
        by_norm: dict[str, tuple[Op, list[tuple[str, Value, list[Op]]]]] = {}
        through_norms = True
        for module, value in space.reads:
            ops = list(value.chain)
            first = next((i for i, op in enumerate(ops) if op.kind != "pass"), len(ops))
            if first < len(ops) and ops[first].kind == "norm":
                rest = ops[first + 1 :]
                if any(op.kind in NORMS for op in rest):
                    raise self._unsupported(
                        "a normalization layer after the one that reads the residual stream"
                    )
                norm = ops[first]
                assert norm.module is not None
                by_norm.setdefault(norm.module, (norm, []))[1].append((module, value, rest))
            else:
                through_norms = False
                if any(op.kind in NORMS for op in ops):
                    raise self._unsupported(
                        "a BatchNorm or a normalization layer reads the residual stream after "
                        "other operations (pre-activation blocks are not supported yet)"
                    )
        cells: list[CellFamily] = []
        for module, (norm, uses) in by_norm.items():
            pair = _affine_slots(module, self.tensors, self._block_at_op(norm))
            tails = {_tail_kind(rest) for _, _, rest in uses}
            if pair and tails == {"homogeneous"} and all(m not in self.binary for m, _, _ in uses):
                readers = self._reader_slots([(m, v) for m, v, _ in uses])
                cells.append(
                    CellFamily(
                        f"{self.name}:{module}:homogeneous",
                        self.name,
                        "homogeneous",
                        tuple(pair),
                        compensate=tuple(readers),
                    )
                )
        if not through_norms or not by_norm:
            return cells
        infos = [self.norms[m] for m in by_norm]
        spans = {self.size // info.groups for info in infos}
        # A constant per block of the largest span is constant on every smaller block
        # (consecutive blocks nest when the spans divide each other); else only a constant
        # over all units is removed by every norm.
        span = max(spans)
        if any(span % other for other in spans):
            span = self.size
        writers = [m for _, m in space.producers]
        if all(info.translates for info in infos):
            rows_too = all(info.positions == 1 for info in infos)
            for writer in writers:
                members = [
                    s
                    for s in _affine_slots(writer, self.tensors, 1)
                    if rows_too or s.tensor == f"{writer}.bias"
                ]
                if members:
                    self.translations.append(
                        TranslationFamily(
                            f"{self.name}:{writer}:translation", self.name, tuple(members), span
                        )
                    )
        if all(info.eps == 0 for info in infos):
            members = [s for w in writers for s in _affine_slots(w, self.tensors, 1)]
            cells.append(
                CellFamily(
                    f"{self.name}:invariant", self.name, "invariant", tuple(members), span=span
                )
            )
        return cells


def _order_cells(
    cells: list[CellFamily], coupled: dict[str, str] | None = None
) -> list[CellFamily]:
    """Every cell after the cells whose compensation writes into its members (or into the
    tensors `coupled` to a member: an attention layer's input projection for its output
    projection)."""
    coupled = coupled or {}
    members = [{s.tensor for s in c.members} for c in cells]
    members = [m | {coupled[t] for t in m if t in coupled} for m in members]
    writes = [{s.tensor for s in c.compensate} for c in cells]
    remaining = list(range(len(cells)))
    ordered: list[CellFamily] = []
    while remaining:
        ready = [i for i in remaining if not any(writes[j] & members[i] for j in remaining)]
        if not ready:
            # Typically a residual branch without a BatchNorm between reading and writing
            # the stream: each cell's norm then depends on the other's scale.
            raise UnsupportedModelError(
                "cells whose scales depend on each other (a residual branch without "
                "BatchNorm, or a layer that reads and writes one stream): "
                + ", ".join(cells[i].name for i in remaining)
                + "; canonical form for such networks is not supported yet"
            )
        ordered.append(cells[ready[0]])
        remaining.remove(ready[0])
    return ordered


def default_example_input(model: nn.Module) -> torch.Tensor:
    """A batch of two random inputs of the shape a built-in model's config implies."""
    from toroid.models.config import model_config

    config = model_config(model)
    first = next(model.parameters())
    name = config["name"]
    if name == "mlp":
        shape: tuple[int, ...] = (config["in_features"],)
    elif name == "lenet5":
        shape = (config["in_channels"], config["input_size"], config["input_size"])
    elif name in ("vgg", "resnet"):
        shape = (config["in_channels"], 32, 32)
    else:
        raise UnsupportedModelError(
            f"no default input shape for model {name!r}; pass spec=symmetry_spec(model, x)"
        )
    gen = torch.Generator().manual_seed(0)
    return torch.randn(2, *shape, generator=gen, dtype=first.dtype).to(first.device)


def spec_for(model: nn.Module) -> SymmetrySpec:
    """The spec of a model that carries a toroid config (built-in models)."""
    try:
        example = default_example_input(model)
    except Exception as exc:
        if isinstance(exc, UnsupportedModelError):
            raise
        raise UnsupportedModelError(
            f"{type(model).__name__} carries no toroid config, so its input shape is unknown; "
            "pass spec=symmetry_spec(model, example_input)"
        ) from exc
    return symmetry_spec(model, example)
