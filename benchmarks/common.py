"""What the benchmarks share: the 10k Fashion-MNIST training subset they measure on."""

from __future__ import annotations

from toroid.data import Split, dataset_status, load


def fashion_mnist_10k(test_size: int = 1000) -> tuple[Split, str]:
    """10k class-balanced Fashion-MNIST training examples (and `test_size` test examples),
    or synthetic data of the same shape when the files are not installed; and a label."""
    if dataset_status("fashion-mnist").available:
        return load("fashion-mnist", train_size=10000, test_size=test_size), "Fashion-MNIST 10k"
    split = load(
        "synthetic",
        input_shape=(1, 28, 28),
        num_classes=10,
        train_samples=10000,
        test_samples=test_size,
    )
    return split, "synthetic 10k x 784 (Fashion-MNIST not installed)"
