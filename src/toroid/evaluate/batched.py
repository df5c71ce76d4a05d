"""`evaluate_sets`: K parameter sets of one architecture evaluated together.

The model is run with `torch.func.functional_call` under `torch.func.vmap` over the
stacked parameter sets, so that every layer becomes one batched operation over the K sets
and each data batch is read once for all of them. BatchNorm modules are swapped for a
functional BatchNorm that, in the statistics pass, normalizes with batch statistics and
returns them as extra outputs (vmap cannot record them in buffers): the running
statistics of every set are the equal-weight average over the same minibatches of the
same seeded subset that `recompute_bn` uses, so the results equal the one-at-a-time loop.
"""

from __future__ import annotations

import contextvars
import copy
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from toroid.data.tensordata import DataLike, as_tensor_data
from toroid.errors import InvalidArgumentError
from toroid.evaluate.family import AffineFamily
from toroid.evaluate.input_layer import InputLayerReuse, input_layer
from toroid.evaluate.plan import EvalPlan
from toroid.evaluate.single import Metrics, bn_subset, inputs_like
from toroid.models.finite import check_finite_data, check_finite_model, check_finite_state

_COLLECT: contextvars.ContextVar[list[tuple[torch.Tensor, torch.Tensor]] | None] = (
    contextvars.ContextVar("toroid_bn_collect", default=None)
)


class _FunctionalBatchNorm(nn.Module):
    """BatchNorm with the same parameter and buffer names, written with plain tensor ops
    (vmap-friendly). While a statistics list is active it normalizes with the batch's
    statistics and appends (mean, unbiased variance) to it; otherwise it uses the running
    statistics (eval mode)."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.eps = bn.eps
        self.weight = bn.weight
        self.bias = bn.bias
        self.register_buffer("running_mean", bn.running_mean)
        self.register_buffer("running_var", bn.running_var)
        self.register_buffer("num_batches_tracked", bn.num_batches_tracked)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1, -1] + [1] * (x.dim() - 2)
        stats = _COLLECT.get()
        if stats is not None:
            dims = [0, *range(2, x.dim())]
            # Two passes of plain reductions: under vmap they beat var_mean's strided one.
            mean = x.mean(dim=dims)
            var = (x - mean.view(shape)).square().mean(dim=dims)
            count = x.numel() // x.shape[1]
            stats.append((mean, var * count / max(count - 1, 1)))
        else:
            mean, var = self.running_mean, self.running_var  # type: ignore[assignment]
        # One fused pass over the activations: x * scale + shift.
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        shift = -mean * scale
        if self.bias is not None:
            shift = shift + self.bias
        return torch.addcmul(shift.view(shape), x, scale.view(shape))


def _functional_copy(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """An eval-mode copy whose BatchNorms are functional, and the BatchNorms' names."""
    clone = copy.deepcopy(model).eval()
    names = []
    for name, module in list(clone.named_modules()):
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            parent_name, _, child = name.rpartition(".")
            parent = clone.get_submodule(parent_name) if parent_name else clone
            setattr(parent, child, _FunctionalBatchNorm(module))
            names.append(name)
    return clone, names


@dataclass(frozen=True)
class ManyMetrics:
    """Error and loss per parameter set (tensors of length K), and examples evaluated."""

    error: torch.Tensor
    loss: torch.Tensor
    n: int

    def __len__(self) -> int:
        return int(self.error.numel())

    def __getitem__(self, k: int) -> Metrics:
        return Metrics(error=float(self.error[k]), loss=float(self.loss[k]), n=self.n)


def stack_states(states: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack the floating tensors of several state dicts (or parameter dicts) along a new
    first axis, the layout `evaluate_sets` takes."""
    if not states:
        raise InvalidArgumentError("need at least one state to stack")
    for i, state in enumerate(states[1:], start=1):
        if state.keys() != states[0].keys() or any(
            state[k].shape != v.shape for k, v in states[0].items()
        ):
            raise InvalidArgumentError(
                f"state {i} differs from state 0 in its names or shapes; all sets must share "
                "one architecture"
            )
    return {
        k: torch.stack([s[k] for s in states])
        for k, v in states[0].items()
        if v.is_floating_point()
    }


SetChunk = Mapping[str, torch.Tensor] | AffineFamily
"""Parameter sets of one architecture: state-dict names to tensors stacked along a first
axis of length K (see `stack_states`), or an `AffineFamily`."""

T = TypeVar("T")


def in_chunks(count: int, size: int, build: Callable[[int, int], T]) -> Iterator[T]:
    """`build(start, stop)` for consecutive ranges of at most `size` of range(count), built
    only when iterated: the lazy chunks `evaluate_sets` takes."""
    if size <= 0:
        raise InvalidArgumentError(f"chunk size must be positive, got {size}")
    for start in range(0, count, size):
        yield build(start, min(start + size, count))


@torch.no_grad()
def evaluate_sets(
    model: nn.Module,
    sets: SetChunk | Iterable[SetChunk],
    parts: Mapping[str, DataLike],
    *,
    bn_data: DataLike | None = None,
    plan: EvalPlan = EvalPlan(),
    on_chunk: Callable[[int], None] | None = None,
) -> dict[str, ManyMetrics]:
    """Eval-mode error and loss of K parameter sets of `model`'s architecture on every
    dataset of `parts` (e.g. {"train": ..., "test": ...}), in set order.

    `sets` is one chunk of sets or an iterable of chunks (e.g. `in_chunks`), built lazily
    so that memory holds one chunk's parameters at a time; `on_chunk(n)` is called after
    each chunk of n sets (for progress). A chunk is stacked tensors (see `stack_states`;
    names that are missing are taken from `model` and shared) or an `AffineFamily` (sets
    base + sum_d c[k, d] v_d, e.g. local energy's perturbations): then the input layer,
    when it is a plain Linear or Conv after parameter-free operations, is computed once
    per direction instead of once per set.

    `plan` says how (see `EvalPlan`): with `plan.bn="recompute"` every set's BatchNorm
    statistics are re-estimated, once for all parts, on `plan.bn_samples` inputs of
    `bn_data` (the training inputs; required then) exactly as `recompute_bn` does, and
    running statistics given in the sets are ignored. Each chunk is evaluated
    `plan.max_sets` sets at a time. Results equal evaluating the sets one at a time. Runs
    on `plan.device`, or by default on the device of the sets' tensors."""
    datasets = {name: as_tensor_data(part) for name, part in parts.items()}
    if not datasets:
        raise InvalidArgumentError("parts is empty: name at least one dataset to evaluate on")
    for name, part in datasets.items():
        if len(part) == 0:
            raise InvalidArgumentError(f"cannot evaluate on an empty dataset ({name})")
        check_finite_data(part, what=f"the {name} data")
    check_finite_model(model)
    # Sets given directly are checked here; sets built lazily chunk by chunk are the
    # caller's (every measurement checks the weights it builds them from, once).
    if isinstance(sets, AffineFamily):
        check_finite_state(sets.base, what="the base of the parameter sets")
        check_finite_state(sets.directions, what="the directions of the parameter sets")
        check_finite_state({"coefficients": sets.coefficients}, what="the parameter sets")
    elif isinstance(sets, Mapping):
        check_finite_state(sets, what="the parameter sets")
    if plan.bn == "repair":
        raise InvalidArgumentError(
            "bn='repair' needs the ends of a path (their unit statistics); toroid.paths."
            "profile applies it, evaluate_sets takes 'recompute' or 'keep'"
        )
    bn_source = None
    if plan.bn == "recompute":
        if bn_data is None:
            raise InvalidArgumentError(
                "bn='recompute' needs bn_data (the training inputs); or use bn='keep'"
            )
        bn_source = as_tensor_data(bn_data)
        check_finite_data(bn_source, what="the BatchNorm data")
        bn_subset(
            len(bn_source), samples=plan.bn_samples, batch_size=plan.bn_batch_size, seed=plan.seed
        )
    model_state = model.state_dict()
    if plan.device is not None:
        model_state = {k: v.to(plan.device) for k, v in model_state.items()}
    functional, bn_names = _functional_copy(model)
    own = set(functional.state_dict())
    layer: str | None = None
    layer_known = False
    # Built on first use, on a copy of its own: it swaps the input layer for a stand-in.
    reuser: InputLayerReuse | None = None
    errors: dict[str, list[torch.Tensor]] = {name: [] for name in datasets}
    losses: dict[str, list[torch.Tensor]] = {name: [] for name in datasets}
    chunks = [sets] if isinstance(sets, Mapping | AffineFamily) else sets
    for params in chunks:
        if plan.device is not None:
            params = _moved(params, plan.device)
        state = dict(model_state)
        family = params if isinstance(params, AffineFamily) else None
        reuse = None
        if family is not None:
            _check_family(family, state)
            state.update(family.base)
            count = len(family)
            if not layer_known:
                layer, layer_known = input_layer(model), True
            if layer is not None and InputLayerReuse.applies(family, layer):
                if reuser is None:
                    reuser = InputLayerReuse(_functional_copy(model)[0], layer)
                reuse = reuser
        else:
            assert not isinstance(params, AffineFamily)
            if not params:
                raise InvalidArgumentError("a chunk of sets is empty: pass at least one tensor")
            count = _check_stacked(params, state)
        module = functional if reuse is None else reuse.functional
        shared_state = {k: v for k, v in state.items() if k in own}
        for start in range(0, count, plan.max_sets):
            if family is None:
                assert not isinstance(params, AffineFamily)
                chunk = {k: v[start : start + plan.max_sets] for k, v in params.items()}
            else:
                rows = family.rows(start, start + plan.max_sets)
                if reuse is None:
                    chunk = rows.stacked()
                else:
                    chunk = rows.stacked(exclude=reuse.replaced)
                    chunk[reuse.outputs_name] = reuse.use(rows, state)
            if bn_source is not None and bn_names:
                chunk.update(
                    _recomputed_statistics(
                        module,
                        bn_names,
                        shared_state,
                        chunk,
                        bn_source,
                        plan.bn_samples,
                        plan.bn_batch_size,
                        plan.seed,
                        reuse,
                    )
                )
            for name, part in datasets.items():
                error, loss = _evaluate_chunk(
                    module, shared_state, chunk, part, plan.batch_size, reuse
                )
                errors[name].append(error)
                losses[name].append(loss)
        if on_chunk is not None:
            on_chunk(count)
    if not errors[next(iter(datasets))]:
        raise InvalidArgumentError("sets holds no chunks: pass at least one parameter set")
    return {
        name: ManyMetrics(
            error=torch.cat(errors[name]), loss=torch.cat(losses[name]), n=len(datasets[name])
        )
        for name in datasets
    }


def _moved(params: SetChunk, device: str | torch.device) -> SetChunk:
    if isinstance(params, AffineFamily):
        return params.to(device)
    return {k: v.to(device) for k, v in params.items()}


def _check_stacked(params: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> int:
    sizes = {v.shape[0] for v in params.values()}
    if len(sizes) != 1:
        raise InvalidArgumentError(
            f"stacked params disagree on K: first-axis sizes {sorted(sizes)}"
        )
    for name, value in params.items():
        if name not in state:
            raise InvalidArgumentError(f"params has {name!r}, which the model does not")
        if tuple(value.shape[1:]) != tuple(state[name].shape):
            raise InvalidArgumentError(
                f"params[{name!r}] has shape {tuple(value.shape)}; expected (K, "
                f"{', '.join(map(str, state[name].shape))})"
            )
    (count,) = sizes
    return int(count)


def _check_family(family: AffineFamily, state: Mapping[str, torch.Tensor]) -> None:
    if len(family) == 0:
        raise InvalidArgumentError("the family has no parameter sets (coefficients has 0 rows)")
    for name, value in family.base.items():
        if name not in state:
            raise InvalidArgumentError(f"family has {name!r}, which the model does not")
        if tuple(value.shape) != tuple(state[name].shape):
            raise InvalidArgumentError(
                f"family base {name!r} has shape {tuple(value.shape)}; expected "
                f"{tuple(state[name].shape)}"
            )


def _values(
    reuse: InputLayerReuse | None, chunk: Mapping[str, torch.Tensor], x: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """The per-set tensors for one minibatch (with the reused input layer's outputs)."""
    values = tuple(chunk.values())
    return values if reuse is None else reuse.values(list(chunk), values, x)


def _call(
    functional: nn.Module,
    shared: Mapping[str, torch.Tensor],
    names: Sequence[str],
    values: tuple[torch.Tensor, ...],
    x: torch.Tensor,
) -> torch.Tensor:
    merged = dict(shared)
    merged.update(zip(names, values, strict=True))
    out: torch.Tensor = functional_call(functional, merged, (x,))
    return out


def _recomputed_statistics(
    functional: nn.Module,
    bn_names: list[str],
    state: Mapping[str, torch.Tensor],
    chunk: Mapping[str, torch.Tensor],
    bn_data: DataLike,
    samples: int | None,
    batch_size: int,
    seed: int,
    reuse: InputLayerReuse | None,
) -> dict[str, torch.Tensor]:
    data = as_tensor_data(bn_data)
    index = bn_subset(len(data), samples=samples, batch_size=batch_size, seed=seed)
    names = list(chunk)
    shared = {k: v for k, v in state.items() if k not in chunk}

    def statistics(values: tuple[torch.Tensor, ...], x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        collected: list[tuple[torch.Tensor, torch.Tensor]] = []
        token = _COLLECT.set(collected)
        try:
            _call(functional, shared, names, values, x)
        finally:
            _COLLECT.reset(token)
        return tuple(t for pair in collected for t in pair)

    batched = vmap(statistics, in_dims=(0, None))
    sums: list[torch.Tensor] | None = None
    batches = 0
    for start in range(0, index.numel(), batch_size):
        chosen = index[start : start + batch_size].to(data.x.device)
        x = inputs_like(data.x[chosen], next(iter(chunk.values())))
        outputs = batched(_values(reuse, chunk, x), x)
        sums = (
            list(outputs) if sums is None else [s + o for s, o in zip(sums, outputs, strict=True)]
        )
        batches += 1
    assert sums is not None
    stats: dict[str, torch.Tensor] = {}
    for i, name in enumerate(bn_names):
        stats[f"{name}.running_mean"] = sums[2 * i] / batches
        stats[f"{name}.running_var"] = sums[2 * i + 1] / batches
    return stats


def _evaluate_chunk(
    functional: nn.Module,
    state: Mapping[str, torch.Tensor],
    chunk: Mapping[str, torch.Tensor],
    data: DataLike,
    batch_size: int,
    reuse: InputLayerReuse | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    data = as_tensor_data(data)
    names = list(chunk)
    shared = {k: v for k, v in state.items() if k not in chunk}
    batched = vmap(lambda values, x: _call(functional, shared, names, values, x), in_dims=(0, None))
    device = next(iter(chunk.values())).device
    k = next(iter(chunk.values())).shape[0]
    loss_sum = torch.zeros(k, dtype=torch.float64, device=device)
    wrong = torch.zeros(k, dtype=torch.long, device=device)
    for start in range(0, len(data), batch_size):
        x = inputs_like(data.x[start : start + batch_size], next(iter(chunk.values())))
        y = data.y[start : start + batch_size].to(device)
        logits = batched(_values(reuse, chunk, x), x)  # (K, B, C)
        flat = logits.reshape(-1, logits.shape[-1])
        per_example = F.cross_entropy(flat, y.repeat(k), reduction="none").view(k, -1)
        loss_sum += per_example.double().sum(dim=1)
        wrong += (logits.argmax(dim=2) != y).sum(dim=1)
    n = len(data)
    return wrong.double().cpu() / n, loss_sum.cpu() / n
