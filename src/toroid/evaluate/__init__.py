"""Error and loss of one or many parameter sets, and BatchNorm statistics recomputation:
the one hot loop every measurement uses."""

from toroid.evaluate.batched import (
    ManyMetrics,
    evaluate_many,
    evaluate_many_parts,
    stack_states,
)
from toroid.evaluate.single import BNPolicy, Metrics, evaluate, recompute_bn

__all__ = [
    "BNPolicy",
    "ManyMetrics",
    "Metrics",
    "evaluate",
    "evaluate_many",
    "evaluate_many_parts",
    "recompute_bn",
    "stack_states",
]
