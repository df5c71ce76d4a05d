"""The product of layer norms: the plain, symmetry-blind baseline among flatness measures."""

from __future__ import annotations

import math

import torch
from torch import nn

from toroid.errors import InvalidArgumentError


def log_norm_product(model: nn.Module) -> float:
    """log prod_l ||W_l||_F = sum_l log ||W_l||_F over the weight matrix or kernel W_l of
    every `nn.Linear` and `nn.Conv1d/2d/3d` module of `model` (subclasses included: binary
    layers count their latent real weights), in module order. Biases, BatchNorm parameters
    and running statistics do not count. Computed in float64 as a sum of logs, so deep or
    wide networks do not overflow; -inf when some weight tensor is all zeros."""
    terms = []
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.modules.conv._ConvNd):
            weight = module.weight.detach().double()
            norm = float(torch.linalg.vector_norm(weight))
            terms.append(math.log(norm) if norm > 0 else -math.inf)
    if not terms:
        raise InvalidArgumentError(
            f"{type(model).__name__} has no Linear or Conv layer, so no product of layer norms"
        )
    return math.fsum(terms)
