"""Alignment benchmark.

1. Weight-matching alignment of two independently initialized ResNet-20 x4 (64/128/256
   channels): wall time (best and median of --repeats) and iterations. Target: under 2 s.
2. Two SGD-trained MLPs (784-500-500-10, BatchNorm) on 10k Fashion-MNIST (synthetic data of
   the same shape when it is not installed), trained to zero training error: per-group
   similarity before/after alignment, and the error at the linear midpoint (BatchNorm
   statistics recomputed) of the raw weights, of the canonical forms, and of the canonical
   forms after alignment (weight and activation matching).

    .venv/bin/python benchmarks/align.py [--repeats 3] [--epochs 60] [--skip-mlp]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from common import fashion_mnist_10k
from toroid.data import Split
from toroid.evaluate import evaluate, recompute_bn
from toroid.models import build
from toroid.symmetry import align, canonicalize, spec_for
from toroid.train import fit


def resnet_timing(repeats: int) -> None:
    config = {"name": "resnet", "depth": 20, "width": 4}
    a, b = build(config, seed=0), build(config, seed=1)
    spec = spec_for(a)
    times, iterations = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        result = align(b, a, spec=spec)
        times.append(time.perf_counter() - start)
        iterations = result.iterations
    print(
        f"ResNet-20 x4 weight matching ({torch.get_num_threads()} threads): "
        f"best {min(times):.2f} s, median {statistics.median(times):.2f} s, "
        f"{iterations} iterations, similarity {result.total_before:.4f} -> "
        f"{result.total_after:.4f}  [{'PASS' if min(times) < 2 else 'FAIL'}: target < 2 s]"
    )


def midpoint(a: nn.Module, b: nn.Module, split: Split) -> tuple[float, float]:
    """Train and test error halfway along the straight line between two state dicts,
    parameters interpolated and BatchNorm statistics recomputed on training inputs."""
    state_a, state_b = a.state_dict(), b.state_dict()
    params = {name for name, _ in a.named_parameters()}
    mixed = {k: (state_a[k] + state_b[k]) / 2 if k in params else state_a[k] for k in state_a}
    middle = build(a.toroid_config)  # type: ignore[arg-type]
    middle.load_state_dict(mixed)
    middle = recompute_bn(middle, split.train, samples=2000, seed=0)
    return evaluate(middle, split.train).error, evaluate(middle, split.test).error


def mlp_experiment(epochs: int) -> None:
    split, source = fashion_mnist_10k(test_size=10000)
    config = {"name": "mlp", "in_features": 784, "widths": [500, 500], "num_classes": 10}
    nets = []
    for seed in (0, 1):
        result = fit(
            build(config, seed=seed),
            split,
            optimizer={"name": "sgd", "lr": 0.05},
            epochs=epochs,
            schedule="cosine",
            seed=seed,
            progress=False,
        )
        print(
            f"{source} MLP seed {seed}: train error {result.train.error:.4f}, "
            f"test error {result.test_error:.4f}, {result.epochs} epochs"
        )
        nets.append(result.model)
    a, b = nets
    weight = align(b, a, method="weight")
    activation = align(b, a, method="activation", data=split.train.subset(torch.arange(2000)))
    print("per-group similarity (cosine over every tensor the group touches):")
    for name in weight.similarity_before:
        print(
            f"  {name:>12}: before {weight.similarity_before[name]:.4f}  "
            f"weight {weight.similarity_after[name]:.4f}  "
            f"activation {activation.similarity_after[name]:.4f}"
        )
    print(
        f"  {'all':>12}: before {weight.total_before:.4f}  weight {weight.total_after:.4f}  "
        f"activation {activation.total_after:.4f}  ({weight.iterations} iterations)"
    )
    rows = [
        ("raw weights", a, b),
        ("canonical, unaligned", canonicalize(a), canonicalize(b)),
        ("canonical, weight-aligned", weight.reference, weight.model),
        ("canonical, activation-aligned", activation.reference, activation.model),
    ]
    print("linear midpoint (BatchNorm recomputed):  train error  test error")
    for label, x, y in rows:
        train_error, test_error = midpoint(x, y, split)
        print(f"  {label:<30} {train_error:10.4f}  {test_error:10.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--skip-mlp", action="store_true")
    args = parser.parse_args()
    resnet_timing(args.repeats)
    if not args.skip_mlp:
        mlp_experiment(args.epochs)


if __name__ == "__main__":
    main()
