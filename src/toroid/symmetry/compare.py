"""Whether two networks compute the same function on given inputs."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def same_function(
    a: nn.Module,
    b: nn.Module,
    inputs: torch.Tensor,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-6,
    up_to_scale: bool = False,
) -> bool:
    """Eval-mode predictions identical and logits equal within `rtol`/`atol` on `inputs`;
    with `up_to_scale`, logits equal up to one positive factor (a normalized output layer).
    The models' train/eval flags are restored."""
    modes = [(m, m.training) for net in (a, b) for m in net.modules()]
    a.eval()
    b.eval()
    try:
        logits_a, logits_b = a(inputs), b(inputs)
    finally:
        for module, mode in modes:
            module.train(mode)
    if not torch.equal(logits_a.argmax(dim=1), logits_b.argmax(dim=1)):
        return False
    if up_to_scale:
        factor = (logits_a * logits_b).sum() / logits_a.pow(2).sum().clamp_min(1e-300)
        if factor <= 0:
            return False
        logits_a = logits_a * factor
    return bool(torch.allclose(logits_a, logits_b, rtol=rtol, atol=atol))
