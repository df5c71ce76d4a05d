"""`EvalPlan`: how a measurement evaluates its parameter sets (BatchNorm policy, batch sizes,
seed, device), typed once instead of a dozen loose keyword arguments per function."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from toroid.errors import InvalidArgumentError
from toroid.evaluate.single import BN_POLICIES, BNPolicy


def _positive(name: str, value: object) -> None:
    # bool is an int subclass; True as a batch size is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class EvalPlan:
    """The settings every batched evaluation reads.

    `bn`: "recompute" (DESIGN.md's policy for moved networks: every set's BatchNorm
    statistics are re-estimated on `bn_samples` inputs of the training data, drawn with
    `seed`, in minibatches of `bn_batch_size`), "keep" (the stored statistics) or
    "repair" (recompute, and REPAIR the units that no BatchNorm follows on the same inputs:
    a path profile's option, `toroid.paths.repair`; `evaluate_sets` refuses it).
    `bn_samples=None` uses every training input. `batch_size`: examples per evaluation
    minibatch (changes no result). `max_sets`: parameter sets evaluated together (memory
    grows with max_sets x batch_size x the activations of one example; changes no result).
    `device`: where the sets are evaluated; None: where their tensors already are.

    The data BatchNorm statistics are computed on is not part of the plan: it is an input
    of the measurement, and a plan without tensors is a plain, hashable setting."""

    bn: BNPolicy = "recompute"
    bn_samples: int | None = 2000
    bn_batch_size: int = 500
    batch_size: int = 500
    seed: int = 0
    max_sets: int = 16
    device: str | torch.device | None = None

    def __post_init__(self) -> None:
        if self.bn not in BN_POLICIES:
            raise InvalidArgumentError(
                f"bn must be 'keep' or 'recompute', got {self.bn!r} (or 'repair': REPAIR, "
                "an option of path profiles)"
            )
        samples = self.bn_samples
        if samples is not None and (
            isinstance(samples, bool) or not isinstance(samples, int) or samples <= 0
        ):
            raise InvalidArgumentError(
                f"bn_samples must be a positive integer or None (all inputs), got {samples!r}"
            )
        _positive("bn_batch_size", self.bn_batch_size)
        _positive("batch_size", self.batch_size)
        _positive("max_sets", self.max_sets)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise InvalidArgumentError(f"seed must be an integer, got {self.seed!r}")
        if self.device is not None:
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError) as exc:
                raise InvalidArgumentError(
                    f"device must be a torch device such as 'cpu' or 'cuda:0', got {self.device!r}"
                ) from exc


def plan_or_loose(
    plan: EvalPlan | None,
    defaults: EvalPlan,
    *,
    recomputes: str | None = None,
    **loose: Any,
) -> EvalPlan:
    """The plan a measurement uses: `plan` when given, else `defaults` with the loose
    keyword arguments (named as `EvalPlan`'s fields) in place. A plan together with loose
    arguments that differ from `defaults` is refused: which one was meant is unclear.
    (A loose argument passed at its default value cannot be told apart from one left out;
    the plan wins then.) `recomputes` says why the measurement needs `bn="recompute"`
    (it moves the weights); a plan with another policy is then refused."""
    unknown = set(loose) - {f.name for f in fields(EvalPlan)}
    if unknown:
        raise TypeError(f"not EvalPlan fields: {', '.join(sorted(unknown))}")
    given = replace(defaults, **loose)
    if plan is None:
        chosen = given
    else:
        changed = [name for name in loose if getattr(given, name) != getattr(defaults, name)]
        if changed:
            raise InvalidArgumentError(
                f"pass either plan= or the loose evaluation arguments, not both; got plan= "
                f"and {', '.join(f'{name}={getattr(given, name)!r}' for name in changed)}"
            )
        chosen = plan
    if recomputes is not None and chosen.bn != "recompute":
        raise InvalidArgumentError(f"{recomputes}; plan.bn must be 'recompute', got {chosen.bn!r}")
    return chosen


__all__ = ["EvalPlan", "plan_or_loose"]
