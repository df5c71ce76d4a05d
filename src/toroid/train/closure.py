"""The closure the training loop hands to `optimizer.step` (see toroid.optim.protocol)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]


class BatchClosure:
    """Forward and backward of `model` on the current minibatch. Records, on the first call
    per minibatch, the summed loss and number of wrong predictions (the running training
    statistics) without synchronizing the device."""

    def __init__(
        self, model: nn.Module, batches: Iterator[Batch], refill: Callable[[], Iterator[Batch]]
    ) -> None:
        self.model = model
        self._batches = batches
        self._refill = refill
        self._batch: Batch | None = None
        self._pending: Batch | None = None
        self._recorded = False
        self._spilled = False
        self._grad_evals = 0
        self.batches = 0  # minibatches moved to, over the closure's life
        self.loss_sum = torch.zeros(())
        self.wrong = torch.zeros((), dtype=torch.long)
        self.seen = 0

    @property
    def grad_evals(self) -> int:
        return self._grad_evals

    def has_next(self) -> bool:
        """Whether the epoch's stream holds another minibatch (peeks one ahead). False once
        a step has run past the end of the epoch's pass."""
        return not self._spilled and self._peek()

    def _peek(self) -> bool:
        if self._pending is None:
            self._pending = next(self._batches, None)
        return self._pending is not None

    def next_batch(self) -> None:
        """Move to the next minibatch; past the end of the epoch, a new pass begins."""
        if not self._peek():
            # A step that consumes several minibatches (Entropy-SGD, replicated SGD) ran past
            # the end of the pass: it finishes on a fresh pass, and the epoch ends with it,
            # so that an epoch stays one pass over the data for every optimizer.
            self._batches = self._refill()
            self._pending = next(self._batches)
            self._spilled = True
        self._batch, self._pending = self._pending, None
        self._recorded = False
        self.batches += 1

    def __call__(self, *, update_bn_stats: bool = True) -> torch.Tensor:
        if self._batch is None:
            raise RuntimeError("closure called before next_batch()")
        x, y = self._batch
        saved = None if update_bn_stats else _bn_buffers(self.model)
        for p in self.model.parameters():
            p.grad = None
        with torch.enable_grad():
            logits = self.model(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()  # type: ignore[no-untyped-call]
        if saved is not None:
            for buffer, value in saved:
                buffer.copy_(value)
        self._grad_evals += 1
        detached = loss.detach()
        if not self._recorded:
            self._recorded = True
            n = y.shape[0]
            wrong = (logits.detach().argmax(dim=1) != y).sum()
            first = self.seen == 0  # start on the batch's device
            self.loss_sum = detached * n if first else self.loss_sum + detached * n
            self.wrong = wrong if first else self.wrong + wrong
            self.seen += n
        return detached

    def start_epoch(self, batches: Iterator[Batch]) -> None:
        """Take the next epoch's minibatch stream and reset the running statistics."""
        self._batches = batches
        self._pending = None
        self._spilled = False
        self.loss_sum = torch.zeros(())
        self.wrong = torch.zeros((), dtype=torch.long)
        self.seen = 0


def _bn_buffers(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    saved = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for buffer in (module.running_mean, module.running_var, module.num_batches_tracked):
                if buffer is not None:
                    saved.append((buffer, buffer.clone()))
    return saved
