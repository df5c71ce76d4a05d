"""Error and loss of one or many parameter sets, and BatchNorm statistics recomputation:
the one hot loop every measurement uses."""

from toroid.evaluate.batched import (
    ManyMetrics,
    SetChunk,
    evaluate_sets,
    in_chunks,
    stack_states,
)
from toroid.evaluate.family import AffineFamily, multiplicative_family
from toroid.evaluate.plan import EvalPlan, plan_or_loose
from toroid.evaluate.single import BN_POLICIES, BNPolicy, Metrics, evaluate, recompute_bn

__all__ = [
    "BN_POLICIES",
    "AffineFamily",
    "BNPolicy",
    "EvalPlan",
    "ManyMetrics",
    "Metrics",
    "SetChunk",
    "evaluate",
    "evaluate_sets",
    "in_chunks",
    "multiplicative_family",
    "plan_or_loose",
    "recompute_bn",
    "stack_states",
]
