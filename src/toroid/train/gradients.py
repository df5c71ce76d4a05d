"""Gradient evaluation for a population: every network that needs a gradient in a round
gets it, either one network after another (`LoopGradients`, the plain forward and
backward) or all at once with `torch.func.vmap` over stacked weights (`StackedGradients`).

Stacking: the networks' parameters and buffers live in one tensor per name with the
networks along the first dimension; each network is an ordinary module whose parameters
and buffers are views into that storage (`stack_networks_`), so its optimizer, evaluation
and checkpointing see a plain network, and a vectorized pass reads and writes the same
memory without copies."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from toroid.errors import InvalidArgumentError
from toroid.models.layers import is_binary
from toroid.train.closure import Batch, gradient_on

Engine = Literal["vmap", "loop"]
ENGINES: tuple[str, ...] = ("vmap", "loop")


@dataclass(frozen=True)
class GradientRequest:
    """Network `member` needs the gradient of its mean cross-entropy on `batch`."""

    member: int
    batch: Batch
    update_bn_stats: bool


class Gradients(Protocol):
    """Answers a round of requests (at most one per network): fills each network's
    `p.grad` and returns, per request, the detached loss and the number of wrong
    predictions."""

    def __call__(
        self, requests: Sequence[GradientRequest]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]: ...


class LoopGradients:
    """One network after another, each with its own forward and backward: exactly what a
    network trained alone computes. With `use_generators`, a model that draws random
    numbers in its forward (dropout) draws them from its network's own generator, which
    stands in for torch's global CPU generator while it runs."""

    def __init__(self, networks: Sequence[nn.Module]) -> None:
        self.networks = list(networks)
        self.generators: list[torch.Generator] | None = None

    def use_generators(self, generators: Sequence[torch.Generator]) -> None:
        self.generators = list(generators)

    def __call__(
        self, requests: Sequence[GradientRequest]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [self._one(r) for r in requests]

    def _one(self, request: GradientRequest) -> tuple[torch.Tensor, torch.Tensor]:
        network = self.networks[request.member]
        if self.generators is None:
            return gradient_on(network, request.batch, update_bn_stats=request.update_bn_stats)
        own, default = self.generators[request.member], torch.default_generator
        saved = default.get_state()
        default.set_state(own.get_state())
        try:
            return gradient_on(network, request.batch, update_bn_stats=request.update_bn_stats)
        finally:
            own.set_state(default.get_state())
            default.set_state(saved)


def architecture_of(model: nn.Module) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """Names, shapes and dtypes of a model's parameters and buffers: what networks must
    share to be stacked."""
    tensors = (*model.named_parameters(), *model.named_buffers())
    return [(name, tuple(t.shape), t.dtype) for name, t in tensors]


def check_one_architecture(models: Sequence[nn.Module]) -> None:
    reference = architecture_of(models[0])
    for index, model in enumerate(models[1:], start=1):
        if type(model) is not type(models[0]) or architecture_of(model) != reference:
            raise InvalidArgumentError(
                f"population member {index} has another architecture than member 0 "
                "(parameter names, shapes or dtypes differ); a population trains networks "
                "of one architecture: train the others in a population of their own"
            )


@dataclass(frozen=True)
class Stack:
    """Stacked storage: one tensor per parameter and buffer name, networks along dim 0."""

    parameters: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]


def stack_networks_(models: Sequence[nn.Module]) -> Stack:
    """Move the parameters and buffers of `models` (in place: they become the population's
    networks) into one stacked storage per name, member k at row k, each model keeping
    views of its row."""
    check_one_architecture(models)
    with torch.no_grad():
        params = {
            n: torch.stack([dict(m.named_parameters())[n].detach() for m in models])
            for n, _ in models[0].named_parameters()
        }
        buffers = {
            n: torch.stack([dict(m.named_buffers())[n].detach() for m in models])
            for n, _ in models[0].named_buffers()
        }
    for k, model in enumerate(models):
        for name, value in params.items():
            owner, _, leaf = name.rpartition(".")
            module = model.get_submodule(owner)
            requires_grad = module._parameters[leaf].requires_grad  # type: ignore[union-attr]
            module._parameters[leaf] = nn.Parameter(value[k], requires_grad=requires_grad)
        for name, value in buffers.items():
            owner, _, leaf = name.rpartition(".")
            model.get_submodule(owner)._buffers[leaf] = value[k]
    return Stack(params, buffers)


class StackedGradients:
    """All networks that asked, in one `vmap`-ed forward and backward per minibatch shape.
    A network's numbers equal its own forward and backward up to rounding; which others
    share the pass can change their last bits (BatchNorm's reductions), never more."""

    def __init__(self, networks: Sequence[nn.Module]) -> None:
        """Takes `networks` over: their weights move into the stacked storage."""
        # The template holds no memory: every pass hands it the weights.
        self.template = copy.deepcopy(networks[0]).to("meta").train()
        self.networks = list(networks)
        self.stack = stack_networks_(self.networks)
        self.binary = is_binary(networks[0])
        self.own = [dict(n.named_parameters()) for n in networks]

    def __call__(
        self, requests: Sequence[GradientRequest]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        answers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        groups: dict[tuple[object, ...], list[GradientRequest]] = {}
        for request in requests:
            x, y = request.batch
            groups.setdefault((tuple(x.shape), x.dtype, tuple(y.shape)), []).append(request)
        for group in groups.values():
            group = sorted(group, key=lambda r: r.member)
            losses, wrong = self._pass(group)
            for j, request in enumerate(group):
                answers[request.member] = (losses[j], wrong[j])
        return [answers[r.member] for r in requests]

    def _rows(self, members: list[int]) -> slice | torch.Tensor:
        """The storage rows of `members`: a slice (a view, no copy) when they are
        consecutive, else an index (a copy)."""
        first = members[0]
        if members == list(range(first, first + len(members))):
            return slice(first, first + len(members))
        return torch.tensor(members, device=next(iter(self.stack.parameters.values())).device)

    def _pass(self, group: list[GradientRequest]) -> tuple[torch.Tensor, torch.Tensor]:
        members = [r.member for r in group]
        rows = self._rows(members)
        view = isinstance(rows, slice)
        params = {
            n: s[rows].detach().requires_grad_(self.own[members[0]][n].requires_grad)
            for n, s in self.stack.parameters.items()
        }
        # Buffers are small: always a copy, written back only for the networks whose
        # request updates their statistics.
        buffers = {n: s[rows].clone() for n, s in self.stack.buffers.items()}
        x = torch.stack([r.batch[0] for r in group])
        y = torch.stack([r.batch[1] for r in group])

        def loss_and_logits(
            p: dict[str, torch.Tensor],
            b: dict[str, torch.Tensor],
            xs: torch.Tensor,
            ys: torch.Tensor,
        ) -> tuple[torch.Tensor, torch.Tensor]:
            logits = functional_call(self.template, (p, b), (xs,))
            return F.cross_entropy(logits, ys), logits

        try:
            with torch.enable_grad(), warnings.catch_warnings():
                # Binary layers clip their latent weights in place, which vmap runs per
                # network (correct, and warned about as slow).
                warnings.filterwarnings("ignore", message=".*batching rule.*")
                losses, logits = vmap(loss_and_logits, randomness="error")(params, buffers, x, y)
                losses.sum().backward()  # type: ignore[no-untyped-call]
        except torch.OutOfMemoryError:
            raise  # a lack of memory, which another run may not meet: not the model's fault
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InvalidArgumentError(
                f"this model cannot be trained as a vectorized population ({first}); "
                "train it with engine='loop'"
            ) from exc
        with torch.no_grad():
            if self.binary and not view:
                for n, s in self.stack.parameters.items():
                    s[rows] = params[n].detach()
            updating = [j for j, r in enumerate(group) if r.update_bn_stats]
            for n, s in self.stack.buffers.items():
                for j in updating:
                    s[members[j]] = buffers[n][j]
        for j, member in enumerate(members):
            for n, p in self.own[member].items():
                grad = params[n].grad
                p.grad = None if grad is None else grad[j]
        wrong = (logits.detach().argmax(dim=-1) != y).sum(dim=-1)
        return losses.detach(), wrong


def gradients_for(engine: Engine, models: Sequence[nn.Module]) -> tuple[list[nn.Module], Gradients]:
    """The networks to train (`models` themselves, whose weights move into one stacked
    storage for vmap) and how their gradients are evaluated."""
    if engine not in ENGINES:
        raise InvalidArgumentError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "loop":
        networks = list(models)
        return networks, LoopGradients(networks)
    stacked = StackedGradients(models)
    return stacked.networks, stacked
