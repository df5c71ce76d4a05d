"""`evaluate_many`: K parameter sets of one architecture evaluated together.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from toroid.data.tensordata import DataLike, as_tensor_data
from toroid.errors import InvalidArgumentError
from toroid.evaluate.single import BNPolicy, Metrics

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
            var, mean = torch.var_mean(x, dim=dims, unbiased=False)
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
    first axis, the `params` layout `evaluate_many` takes."""
    if not states:
        raise InvalidArgumentError("need at least one state to stack")
    return {
        k: torch.stack([s[k] for s in states])
        for k, v in states[0].items()
        if v.is_floating_point()
    }


@torch.no_grad()
def evaluate_many(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    data: DataLike,
    *,
    bn: BNPolicy = "recompute",
    bn_data: DataLike | None = None,
    bn_samples: int | None = 2000,
    bn_batch_size: int = 500,
    batch_size: int = 500,
    seed: int = 0,
    max_sets: int = 64,
) -> ManyMetrics:
    """Eval-mode error and loss of K parameter sets of `model`'s architecture on `data`.

    `params` maps state-dict names to tensors stacked along a first axis of length K
    (see `stack_states`); entries that are missing are taken from `model` and shared.
    `bn="recompute"` re-estimates every set's BatchNorm statistics on `bn_samples` inputs
    of `bn_data` (defaults to `data`) drawn with `seed`, in minibatches of `bn_batch_size`,
    exactly as `recompute_bn` does, and ignores running statistics given in `params`.
    Sets are processed `max_sets` at a time to bound memory. Results equal evaluating the
    sets one at a time."""
    if bn not in ("keep", "recompute"):
        raise InvalidArgumentError(f"bn must be 'keep' or 'recompute', got {bn!r}")
    if min(batch_size, bn_batch_size, max_sets) <= 0:
        raise InvalidArgumentError(
            f"batch_size, bn_batch_size and max_sets must be positive, got {batch_size}, "
            f"{bn_batch_size} and {max_sets}"
        )
    if not params:
        raise InvalidArgumentError("params is empty: pass at least one stacked tensor")
    state = model.state_dict()
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
    data = as_tensor_data(data)
    if len(data) == 0:
        raise InvalidArgumentError("cannot evaluate on an empty dataset")
    (count,) = sizes
    functional, bn_names = _functional_copy(model)
    errors, losses = [], []
    for start in range(0, count, max_sets):
        chunk = {k: v[start : start + max_sets] for k, v in params.items()}
        if bn == "recompute" and bn_names:
            bn_source = as_tensor_data(data if bn_data is None else bn_data)
            chunk.update(
                _recomputed_statistics(
                    functional, bn_names, state, chunk, bn_source, bn_samples, bn_batch_size, seed
                )
            )
        error, loss = _evaluate_chunk(functional, state, chunk, data, batch_size)
        errors.append(error)
        losses.append(loss)
    return ManyMetrics(error=torch.cat(errors), loss=torch.cat(losses), n=len(data))


def _inputs(x: torch.Tensor, chunk: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Inputs on the parameters' device and, when floating, in their dtype."""
    reference = next(iter(chunk.values()))
    if x.is_floating_point():
        return x.to(device=reference.device, dtype=reference.dtype)
    return x.to(reference.device)


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
) -> dict[str, torch.Tensor]:
    data = as_tensor_data(bn_data)
    n = len(data)
    if samples is not None and samples <= 0:
        raise InvalidArgumentError(f"bn_samples must be positive or None, got {samples}")
    if samples is None or samples >= n:
        index = torch.arange(n)
    else:
        index = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:samples]
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
        outputs = batched(tuple(chunk.values()), _inputs(data.x[chosen], chunk))
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
        x = _inputs(data.x[start : start + batch_size], chunk)
        y = data.y[start : start + batch_size].to(device)
        logits = batched(tuple(chunk.values()), x)  # (K, B, C)
        flat = logits.reshape(-1, logits.shape[-1])
        per_example = F.cross_entropy(flat, y.repeat(k), reduction="none").view(k, -1)
        loss_sum += per_example.double().sum(dim=1)
        wrong += (logits.argmax(dim=2) != y).sum(dim=1)
    n = len(data)
    return wrong.double().cpu() / n, loss_sum.cpu() / n
