"""Throughput of `toroid.train.fit` against a minimal hand-written PyTorch loop.

Same MLP (784-500-500-10 with BatchNorm), same data (10k Fashion-MNIST, or synthetic data
of the same shape when it is not installed), same optimizer and batch size. The two are
timed alternately in one run and the best of several repetitions of each is compared.
Prints the ratio fit / hand loop (target: at least 0.9).

    .venv/bin/python benchmarks/train.py [--epochs 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from common import fashion_mnist_10k
from toroid.models import build
from toroid.train import fit

CONFIG = {"name": "mlp", "in_features": 784, "widths": [500, 500], "num_classes": 10}


def hand_loop(x: torch.Tensor, y: torch.Tensor, *, epochs: int, batch_size: int) -> float:
    model = build(CONFIG, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    model.train()
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), batch_size):
            idx = order[i : i + batch_size]
            opt.zero_grad()
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()

    split, source = fashion_mnist_10k(test_size=1000)
    n = len(split.train) * args.epochs
    hand, loop, call = [], [], []
    for _ in range(args.repeats):
        hand.append(
            hand_loop(split.train.x, split.train.y, epochs=args.epochs, batch_size=args.batch_size)
        )
        start = time.perf_counter()
        result = fit(
            build(CONFIG, seed=0),
            split,
            optimizer={"name": "sgd", "lr": 0.05},
            epochs=args.epochs,
            batch_size=args.batch_size,
            stop_at_zero_train_error=False,
            progress=False,
        )
        call.append(time.perf_counter() - start)
        loop.append(result.wall_time)
    print(
        f"data: {source}; {args.epochs} epochs x {args.repeats} repeats, "
        f"batch {args.batch_size}, {torch.get_num_threads()} threads"
    )
    print(f"hand-written loop   {n / min(hand):9.0f} samples/s")
    print(f"fit, training loop  {n / min(loop):9.0f} samples/s")
    print(f"fit, whole call     {n / min(call):9.0f} samples/s  (includes final train/test eval)")
    ratio = min(hand) / min(loop)
    print(
        f"ratio fit / hand loop (training loop): {ratio:.3f}  "
        f"[{'PASS' if ratio >= 0.9 else 'FAIL'}: target >= 0.9]"
    )
    print(f"ratio fit / hand loop (whole call):    {min(hand) / min(call):.3f}")


if __name__ == "__main__":
    main()
