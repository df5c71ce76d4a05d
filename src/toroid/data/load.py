"""`load`: one named dataset as in-memory tensors, subset, normalized, on a device."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from toroid.data.sources import FILE_SOURCES, PACKAGE_SOURCES, READERS
from toroid.data.subsets import balanced_indices, channel_statistics, normalize
from toroid.data.tensordata import Split, TensorData
from toroid.errors import DataError, InvalidArgumentError

DATASETS: tuple[str, ...] = tuple(READERS)
# Full (train, test) sizes, before subsetting; synthetic's are its defaults.
DATASET_SIZES: dict[str, tuple[int, int]] = {
    "fashion-mnist": (60000, 10000),
    "mnist": (60000, 10000),
    "mnist-5k": (4000, 1000),
    "mnist1d": (4000, 1000),
    "digits": (1442, 355),
    "cifar10": (50000, 10000),
    "cifar100": (50000, 10000),
    "synthetic": (512, 512),
}


def _check_name(name: str) -> None:
    if name not in READERS:
        raise InvalidArgumentError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")


def _check_root(root: object) -> Path | None:
    """`root` as a Path; a root that is not an existing directory is refused, since it is
    recorded with the data and silently falling back to other locations would misreport it."""
    if root is None:
        return None
    if not isinstance(root, str | Path) or str(root) == "":
        raise InvalidArgumentError(
            f"data root must be a directory path (str or Path) or None, got {root!r}"
        )
    path = Path(root)
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise DataError(f"data root {str(path)!r} {what}; pass an existing directory or no root")
    return path


def _subset(
    x: torch.Tensor, y: torch.Tensor, size: int | None, num_classes: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    if size is None:
        return x, y
    idx = balanced_indices(y, size, num_classes=num_classes, generator=gen)
    return x[idx], y[idx]


def load(
    name: str,
    *,
    root: str | Path | None = None,
    train_size: int | None = None,
    test_size: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    normalize_inputs: bool = True,
    **options: Any,
) -> Split:
    """Load dataset `name` (see `DATASETS`) into memory.

    `train_size` / `test_size` pick class-balanced subsets, deterministic in `seed`; None
    keeps every example. Inputs become float32 (images scaled to [0, 1] first), then, with
    `normalize_inputs`, are standardized per channel with the statistics of the training
    inputs returned. File-based datasets are looked up in `root` (and `root/<name>`), then
    `$TOROID_DATA/<name>`, then the standard system location. `options` go to the source
    (`synthetic`: kind, input_shape, num_classes, train_samples, test_samples, separation,
    data_seed; `mnist1d`: num_samples, dataset_seed).
    """
    _check_name(name)
    for label, value in (("train_size", train_size), ("test_size", test_size)):
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise InvalidArgumentError(f"{label} must be a positive integer or None, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidArgumentError(f"seed must be an integer, got {seed!r}")
    if name == "synthetic":
        options.setdefault("data_seed", seed)
    raw = READERS[name](_check_root(root), options)
    gen = torch.Generator().manual_seed(int(seed))
    x_train, y_train = _subset(raw.x_train, raw.y_train, train_size, raw.num_classes, gen)
    x_test, y_test = _subset(raw.x_test, raw.y_test, test_size, raw.num_classes, gen)
    x_train = x_train.float() / raw.scale
    x_test = x_test.float() / raw.scale
    mean, std = channel_statistics(x_train)
    if normalize_inputs:
        x_train, x_test = normalize(x_train, mean, std), normalize(x_test, mean, std)
    meta: dict[str, Any] = {
        "name": name,
        "input_shape": list(x_train.shape[1:]),
        "num_classes": raw.num_classes,
        "train_size": int(y_train.numel()),
        "test_size": int(y_test.numel()),
        "seed": int(seed),
        "normalization": (
            {"mean": mean.tolist(), "std": std.tolist(), "scale": raw.scale}
            if normalize_inputs
            else None
        ),
        "source": raw.source,
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()},
    }
    return Split(
        TensorData(x_train.contiguous(), y_train.contiguous()),
        TensorData(x_test.contiguous(), y_test.contiguous()),
        meta,
    ).to(device)


@dataclass(frozen=True)
class DatasetStatus:
    name: str
    available: bool
    where: str  # directory, package, or why not


def dataset_status(name: str, *, root: str | Path | None = None) -> DatasetStatus:
    """Whether `name` can be loaded here, without reading it."""
    _check_name(name)
    if name in FILE_SOURCES:
        found = FILE_SOURCES[name].locate(Path(root) if root is not None else None)
        if found is None:
            return DatasetStatus(name, False, "files not found (see `toroid datasets --help`)")
        return DatasetStatus(name, True, str(found))
    if name in PACKAGE_SOURCES:
        package = PACKAGE_SOURCES[name]
        if importlib.util.find_spec(package) is None:
            return DatasetStatus(name, False, f"needs Python package {package}")
        return DatasetStatus(name, True, f"package {package}")
    return DatasetStatus(name, True, "generated")
