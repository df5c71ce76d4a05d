"""REPAIR along paths: the pre-activation statistics of the units no BatchNorm follows,
restored at every point to the interpolation of the statistics at the path's anchors.

Idea from Jordan, Sedghi, Saukh, Entezari, Neyshabur, "REPAIR: REnormalizing Permuted
Activations for Interpolation Repair", ICLR 2023: the average of two matched networks has
units whose pre-activations vary much less than in either network ("variance collapse"),
and the deeper the layer, the worse. BatchNorm undoes this by itself once its statistics
are recomputed (DESIGN.md's BatchNorm policy); REPAIR does the same for the other units.
At a point theta_t with anchor weights w_j(t) (a straight line: (1 - t, t)), every unit u
of every repaired producer gets the mean mu_t = sum_j w_j mu_j and the standard deviation
sd_t = sum_j w_j sd_j of its pre-activation, over the same fixed, seeded training inputs
BatchNorm statistics are recomputed on: the affine map y -> s (y - mu) + mu_t, with
s = sd_t / sd and (mu, sd) measured at theta_t, is folded into the producer's row
(times s) and bias (b s + mu_t - s mu). Producers are corrected from input to output,
each measured after the earlier ones were corrected and every BatchNorm re-estimated.

Which producers (Linear and Conv modules, found in the model's torch.fx graph) are
repaired: those whose output goes only into one per-unit operation (an activation, a
pooling, dropout, identity). A producer that feeds a BatchNorm is left to the BatchNorm's
recomputation, and the output layers (producers after which no producer follows) are left
alone. Refused: a producer whose output goes anywhere else (a residual addition, several
consumers, a flatten, a concatenation): the statistics that matter there are the stream's,
not one writer's; a repaired producer without a bias (the mean correction needs one), of
a subclass (binary layers compute with the signs of their weights), or called more than
once. Linear maps written as functions (`F.linear` on parameters) are not producers here
and are not repaired.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from toroid.data.tensordata import DataLike, TensorData, as_tensor_data
from toroid.errors import InvalidArgumentError, ToroidError, UnsupportedModelError
from toroid.evaluate import EvalPlan, recompute_bn, stack_states
from toroid.evaluate.single import bn_subset, inputs_like
from toroid.models.layers import Sign
from toroid.paths.path import Path
from toroid.symmetry.slots import State
from toroid.symmetry.transform import with_state

_PRODUCERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Operations that act on each unit (channel) alone: a unit's statistics in front of them
# are its own, and correcting them changes nothing else.
_PER_UNIT_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.Tanh,
    nn.Hardtanh,
    nn.GELU,
    nn.SiLU,
    nn.Softplus,
    nn.ELU,
    nn.Sigmoid,
    nn.Mish,
    Sign,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Identity,
)
_PER_UNIT_FUNCTIONS: frozenset[Callable[..., Any]] = frozenset(
    {
        torch.relu,
        F.relu,
        F.leaky_relu,
        torch.tanh,
        F.tanh,
        F.hardtanh,
        F.gelu,
        F.silu,
        F.softplus,
        F.elu,
        torch.sigmoid,
        F.sigmoid,
        F.mish,
        F.max_pool1d,
        F.max_pool2d,
        F.avg_pool1d,
        F.avg_pool2d,
        F.adaptive_avg_pool1d,
        F.adaptive_avg_pool2d,
        F.dropout,
    }
)
_PER_UNIT_METHODS: frozenset[str] = frozenset({"relu", "tanh", "sigmoid"})


@dataclass(frozen=True)
class RepairLayout:
    """The Linear/Conv producers of a model by what restores their statistics at a path
    point, each in forward order: `repaired` by REPAIR, `batchnorm` by the recomputation of
    the BatchNorm they feed, `output` by nothing (the output layers)."""

    repaired: tuple[str, ...]
    batchnorm: tuple[str, ...]
    output: tuple[str, ...]


def _describe(node: fx.Node, modules: Mapping[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"module {node.target!r} ({type(modules[str(node.target)]).__name__})"
    if node.op == "output":
        return "the model's output"
    target = getattr(node.target, "__name__", str(node.target))
    return f"operation {target!r}"


def _per_unit(consumer: fx.Node, producer: fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    """Whether `consumer` acts on each unit of `producer`'s output alone."""
    others = [a for a in (*consumer.args[1:], *consumer.kwargs.values()) if isinstance(a, fx.Node)]
    if not consumer.args or consumer.args[0] is not producer or others:
        return False
    if consumer.op == "call_module":
        return isinstance(modules[str(consumer.target)], _PER_UNIT_MODULES)
    if consumer.op == "call_function":
        return consumer.target in _PER_UNIT_FUNCTIONS
    return consumer.op == "call_method" and str(consumer.target) in _PER_UNIT_METHODS


def _reaches_producer(start: fx.Node, producers: set[fx.Node]) -> bool:
    seen: set[fx.Node] = set()
    todo = list(start.users)
    while todo:
        node = todo.pop()
        if node in producers:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(node.users)
    return False


def repair_layout(model: nn.Module) -> RepairLayout:
    """Which producers of `model` REPAIR corrects, which a BatchNorm follows, which are
    output layers (module docstring); refuses, with the producer's name, what REPAIR
    cannot correct."""
    from toroid.symmetry.derive import symbolic_trace

    try:
        graph_module = symbolic_trace(model)
    except ToroidError:
        raise
    except Exception as exc:  # fx raises many kinds on dynamic control flow
        raise UnsupportedModelError(
            f"REPAIR cannot trace {type(model).__name__} with torch.fx "
            f"({type(exc).__name__}: {exc}); use bn='recompute'"
        ) from exc
    modules = dict(graph_module.named_modules())
    nodes = [
        n
        for n in graph_module.graph.nodes
        if n.op == "call_module" and isinstance(modules[str(n.target)], _PRODUCERS)
    ]
    producers = set(nodes)
    repaired: list[str] = []
    batchnorm: list[str] = []
    output: list[str] = []
    calls: dict[str, int] = {}
    for node in nodes:
        calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    for node in nodes:
        name = str(node.target)
        module = modules[name]
        if calls[name] > 1:
            raise UnsupportedModelError(
                f"REPAIR refuses module {name!r}: it is called {calls[name]} times, and one "
                "correction of its weights cannot serve every call"
            )
        if not _reaches_producer(node, producers):
            output.append(name)
            continue
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module":
            consumer = modules[str(users[0].target)]
            if isinstance(consumer, nn.modules.batchnorm._BatchNorm):
                batchnorm.append(name)
                continue
        if len(users) != 1 or not _per_unit(users[0], node, modules):
            consumers = ", ".join(_describe(u, modules) for u in users) or "nothing"
            raise UnsupportedModelError(
                f"REPAIR refuses producer {name!r}: its output goes into {consumers}; it "
                "repairs producers followed by one activation, pooling or dropout (or by a "
                "BatchNorm), not writers of a residual stream or of several consumers; use "
                "bn='recompute'"
            )
        if type(module) not in _PRODUCERS:
            raise UnsupportedModelError(
                f"REPAIR refuses producer {name!r} ({type(module).__name__}): it folds its "
                "correction into plain Linear/Conv weights, not into a subclass's"
            )
        if getattr(module, "bias", None) is None:
            raise UnsupportedModelError(
                f"REPAIR refuses producer {name!r}: it has no bias to carry the mean "
                "correction and no BatchNorm follows it"
            )
        repaired.append(name)
    return RepairLayout(tuple(repaired), tuple(batchnorm), tuple(output))


@dataclass(frozen=True)
class UnitStatistics:
    """Per repaired producer, the mean and the standard deviation (population: divided by
    the count) of each unit's pre-activation over the inputs and, for a Conv, the
    positions: float64 tensors of one value per unit."""

    mean: Mapping[str, torch.Tensor]
    sd: Mapping[str, torch.Tensor]


def interpolated(anchors: Sequence[UnitStatistics], weights: Sequence[float]) -> UnitStatistics:
    """sum_j weights[j] anchors[j], for means and standard deviations alike; anchors
    with weight 0 are skipped, so that at an end the statistics are that end's exactly."""
    if len(anchors) != len(weights) or not anchors:
        raise InvalidArgumentError(
            f"need one weight per anchor, got {len(weights)} weights for {len(anchors)} anchors"
        )
    used = [(w, a) for w, a in zip(weights, anchors, strict=True) if w != 0.0]

    def mix(pick: Callable[[UnitStatistics], Mapping[str, torch.Tensor]]) -> dict[str, Any]:
        out = {}
        for name, value in pick(anchors[0]).items():
            total = torch.zeros_like(value)
            for w, anchor in used:
                total = total + w * pick(anchor)[name]
            out[name] = total
        return out

    return UnitStatistics(mean=mix(lambda s: s.mean), sd=mix(lambda s: s.sd))


class _Enough(Exception):  # noqa: N818 - control flow: the rest of the forward is not needed
    pass


class _Moments:
    """Count, mean and summed squared deviations per unit, merged batch by batch (Chan et
    al.'s pairwise update: no cancellation of large sums of squares)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None

    def add(self, rows: torch.Tensor) -> None:
        """`rows`: (units, observations)."""
        n = rows.shape[1]
        mean = rows.mean(dim=1)
        squares = (rows - mean[:, None]).square().sum(dim=1)
        if self.mean is None or self.squares is None:
            self.count, self.mean, self.squares = n, mean, squares
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.squares = self.squares + squares + delta.square() * (self.count * n / total)
        self.count = total

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.mean is not None and self.squares is not None
        return self.mean, (self.squares / self.count).sqrt()


def unit_rows(module: nn.Module, output: torch.Tensor) -> torch.Tensor:
    """A producer's output as (units, observations), float64: a Linear's units on the
    last axis, a Conv's on axis 1 (observations: inputs times positions)."""
    values = output.detach().double()
    if isinstance(module, nn.Linear):
        return values.reshape(-1, values.shape[-1]).T
    return values.transpose(0, 1).reshape(values.shape[1], -1)


@torch.no_grad()
def _measure(
    model: nn.Module, names: Sequence[str], data: TensorData, index: torch.Tensor, batch_size: int
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(mean, sd) per unit of the outputs of the modules `names` (in forward order) of
    `model` (eval mode) on data.x[index], in minibatches of `batch_size`; each forward pass
    stops once the last of them has run."""
    moments = {name: _Moments() for name in names}
    last = names[-1]

    def hook(name: str) -> Callable[[nn.Module, Any, torch.Tensor], None]:
        def record(module: nn.Module, _: Any, output: torch.Tensor) -> None:
            moments[name].add(unit_rows(module, output))
            if name == last:
                raise _Enough

        return record

    handles = [model.get_submodule(name).register_forward_hook(hook(name)) for name in names]
    reference = next(model.parameters())
    try:
        for start in range(0, index.numel(), batch_size):
            chosen = index[start : start + batch_size].to(data.x.device)
            with contextlib.suppress(_Enough):
                model(inputs_like(data.x[chosen], reference))
    finally:
        for handle in handles:
            handle.remove()
    return {name: m.result() for name, m in moments.items()}


def _subset(data: TensorData, plan: EvalPlan) -> torch.Tensor:
    return bn_subset(
        len(data), samples=plan.bn_samples, batch_size=plan.bn_batch_size, seed=plan.seed
    )


def _settled(template: nn.Module, state: State, data: TensorData, plan: EvalPlan) -> nn.Module:
    """The network with `state`, BatchNorm statistics recomputed, in eval mode."""
    return recompute_bn(
        with_state(template, state),
        data,
        samples=plan.bn_samples,
        batch_size=plan.bn_batch_size,
        seed=plan.seed,
    )


def unit_statistics(
    template: nn.Module,
    state: State,
    data: DataLike,
    *,
    layout: RepairLayout,
    plan: EvalPlan,
) -> UnitStatistics:
    """The statistics of `layout.repaired`'s units of the network `state` (of `template`'s
    architecture), BatchNorm statistics recomputed first, on the `plan.bn_samples` training
    inputs of `data` drawn with `plan.seed` (the BatchNorm subset)."""
    data = as_tensor_data(data)
    index = _subset(data, plan)
    if not layout.repaired:
        return UnitStatistics(mean={}, sd={})
    model = _settled(template, state, data, plan)
    measured = _measure(model, layout.repaired, data, index, plan.bn_batch_size)
    return UnitStatistics(
        mean={name: m for name, (m, _) in measured.items()},
        sd={name: s for name, (_, s) in measured.items()},
    )


def _fold(
    state: State,
    name: str,
    measured: tuple[torch.Tensor, torch.Tensor],
    mean: torch.Tensor,
    sd: torch.Tensor,
) -> State:
    """`state` with producer `name`'s rows scaled by s = sd / measured sd (1 for a unit
    that does not vary: nothing to scale) and its bias b s + mean - s measured mean."""
    weight, bias = state[f"{name}.weight"], state[f"{name}.bias"]
    now_mean, now_sd = measured
    scale = torch.where(now_sd > 0, sd / torch.where(now_sd > 0, now_sd, 1.0), 1.0)
    shift = mean - scale * now_mean  # exactly 0 where the targets are what was measured
    out = dict(state)
    rows = scale.view(-1, *([1] * (weight.dim() - 1))).to(weight.device)
    out[f"{name}.weight"] = (weight.double() * rows).to(weight.dtype)
    out[f"{name}.bias"] = (bias.double() * scale.to(bias.device) + shift.to(bias.device)).to(
        bias.dtype
    )
    return out


def repair_state(
    template: nn.Module,
    state: State,
    targets: UnitStatistics,
    data: DataLike,
    *,
    layout: RepairLayout,
    plan: EvalPlan,
) -> State:
    """The state of the network `state` with every unit of `layout.repaired` moved, by an
    affine correction folded into its producer, to the mean and standard deviation of
    `targets` on the BatchNorm subset of `data` (`plan`); producers in forward order, each
    measured after the earlier ones were corrected and every BatchNorm re-estimated. Its
    BatchNorm statistics are the recomputed ones of the repaired network."""
    data = as_tensor_data(data)
    index = _subset(data, plan)
    current = dict(state)
    for name in layout.repaired:
        model = _settled(template, current, data, plan)
        measured = _measure(model, [name], data, index, plan.bn_batch_size)[name]
        current = _fold(current, name, measured, targets.mean[name], targets.sd[name])
    final = _settled(template, current, data, plan).state_dict()
    return {k: v.to(state[k].device) for k, v in final.items()}


class PathRepair:
    """REPAIR along `path` (see the module docstring): the anchors' unit statistics are
    measured once, on the BatchNorm subset of `data` that `plan` names; `state_at(t)` is
    the repaired point at t, `sets(ts)` many of them stacked for `evaluate_sets`."""

    def __init__(self, path: Path, data: DataLike, *, plan: EvalPlan) -> None:
        try:
            path.anchor_weights(0.0)
        except NotImplementedError as exc:
            raise InvalidArgumentError(
                f"bn='repair' needs a path whose anchors weigh in each point; {exc}"
            ) from exc
        self.path = path
        self.plan = plan
        self.data = as_tensor_data(data)
        self.layout = repair_layout(path.template)
        self.anchors = tuple(
            unit_statistics(path.template, anchor, self.data, layout=self.layout, plan=plan)
            for anchor in path.anchors
        )

    def targets(self, t: float) -> UnitStatistics:
        """The statistics REPAIR gives the point at t."""
        return interpolated(self.anchors, self.path.anchor_weights(t))

    def state_at(self, t: float) -> State:
        return repair_state(
            self.path.template,
            self.path.state_at(t),
            self.targets(t),
            self.data,
            layout=self.layout,
            plan=self.plan,
        )

    def sets(self, ts: Sequence[float]) -> dict[str, torch.Tensor]:
        return stack_states([self.state_at(t) for t in ts])


__all__ = [
    "PathRepair",
    "RepairLayout",
    "UnitStatistics",
    "interpolated",
    "repair_layout",
    "repair_state",
    "unit_rows",
    "unit_statistics",
]
