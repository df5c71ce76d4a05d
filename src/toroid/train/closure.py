"""A network's minibatch stream as the training loop walks it (`BatchCursor`), and the
closure that evaluates the network alone on the current minibatch (`BatchClosure`, see
toroid.optim.protocol)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]


class BatchCursor:
    """The current minibatch of one network's stream, and the running training statistics:
    the summed loss and number of wrong predictions, recorded once per minibatch (at its
    first gradient evaluation) without synchronizing the device."""

    def __init__(self, batches: Iterator[Batch], refill: Callable[[], Iterator[Batch]]) -> None:
        self._batches = batches
        self._refill = refill
        self._batch: Batch | None = None
        self._pending: Batch | None = None
        self._recorded = False
        self._spilled = False
        self._grad_evals = 0
        self.batches = 0  # minibatches moved to, over the cursor's life
        self.loss_sum = torch.zeros(())
        self.wrong = torch.zeros((), dtype=torch.long)
        self.seen = 0

    @property
    def grad_evals(self) -> int:
        return self._grad_evals

    @property
    def batch(self) -> Batch:
        if self._batch is None:
            raise RuntimeError("no current minibatch: call next_batch() first")
        return self._batch

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

    def record(self, loss: torch.Tensor, wrong: torch.Tensor) -> None:
        """Count one gradient evaluation on the current minibatch, whose mean loss and
        number of wrong predictions it found; the first per minibatch enters the running
        statistics."""
        self._grad_evals += 1
        if self._recorded:
            return
        self._recorded = True
        n = self.batch[1].shape[0]
        first = self.seen == 0  # start on the batch's device
        self.loss_sum = loss * n if first else self.loss_sum + loss * n
        self.wrong = wrong if first else self.wrong + wrong
        self.seen += n

    def start_epoch(self, batches: Iterator[Batch]) -> None:
        """Take the next epoch's minibatch stream and reset the running statistics."""
        self._batches = batches
        self._pending = None
        self._spilled = False
        self.loss_sum = torch.zeros(())
        self.wrong = torch.zeros((), dtype=torch.long)
        self.seen = 0


def gradient_on(
    model: nn.Module, batch: Batch, *, update_bn_stats: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward of `model` alone on `batch`, gradients in `p.grad` (replaced,
    not summed). Returns the detached mean cross-entropy and the number of wrong
    predictions. With `update_bn_stats=False` BatchNorm running statistics stay as they
    were."""
    x, y = batch
    saved = None if update_bn_stats else _bn_buffers(model)
    for p in model.parameters():
        p.grad = None
    with torch.enable_grad():
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()  # type: ignore[no-untyped-call]
    if saved is not None:
        for buffer, value in saved:
            buffer.copy_(value)
    return loss.detach(), (logits.detach().argmax(dim=1) != y).sum()


class BatchClosure(BatchCursor):
    """A cursor that is also the step closure of one network: calling it evaluates the
    gradient of `model` on the current minibatch (see `gradient_on`) and records it."""

    def __init__(
        self, model: nn.Module, batches: Iterator[Batch], refill: Callable[[], Iterator[Batch]]
    ) -> None:
        super().__init__(batches, refill)
        self.model = model

    def __call__(self, *, update_bn_stats: bool = True) -> torch.Tensor:
        if self._batch is None:
            raise RuntimeError("closure called before next_batch()")
        loss, wrong = gradient_on(self.model, self._batch, update_bn_stats=update_bn_stats)
        self.record(loss, wrong)
        return loss


def _bn_buffers(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    saved = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for buffer in (module.running_mean, module.running_var, module.num_batches_tracked):
                if buffer is not None:
                    saved.append((buffer, buffer.clone()))
    return saved
