"""Error and loss of one or many parameter sets, and BatchNorm statistics recomputation:
the one hot loop every measurement uses."""

from toroid.evaluate.batched import (
    ManyMetrics,
    evaluate_in_chunks,
    evaluate_many,
    evaluate_many_parts,
    stack_states,
)
from toroid.evaluate.family import AffineFamily, multiplicative_family
from toroid.evaluate.single import BNPolicy, Metrics, evaluate, recompute_bn

__all__ = [
    "AffineFamily",
    "BNPolicy",
    "ManyMetrics",
    "Metrics",
    "evaluate",
    "evaluate_in_chunks",
    "evaluate_many",
    "evaluate_many_parts",
    "multiplicative_family",
    "recompute_bn",
    "stack_states",
]
