"""Reader for the IDX format of (Fashion-)MNIST, plain or gzipped, validating every field."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from toroid.errors import DataError

# The third byte of the magic number names the element type.
_IDX_DTYPES: dict[int, np.dtype[np.generic]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally .gz) into an array of its declared shape."""
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(
            f"{path} is not an IDX file: magic bytes {raw[:4].hex() or '(empty)'}, "
            "expected 0000 followed by a type code (08 for uint8) and the number of dimensions"
        )
    dtype = _IDX_DTYPES[raw[2]]
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(
            f"{path} is truncated: its header needs {header} bytes, file has {len(raw)}"
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    # Python integers: a product of declared dimensions cannot overflow and wrap around to
    # a size that happens to match; the file's length bounds it before anything is built.
    expected = header + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(
            f"{path} has {len(raw)} bytes but its header declares shape {shape} "
            f"({expected} bytes); the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def find_idx(directory: Path, stem: str) -> Path | None:
    """The IDX file `stem` in `directory`, plain or gzipped (plain wins), or None."""
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx_pair(
    directory: Path, images_stem: str, labels_stem: str, *, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W) uint8 and labels (N,) of one MNIST-style part, cross-checked."""
    paths = []
    for stem in (images_stem, labels_stem):
        path = find_idx(directory, stem)
        if path is None:
            raise DataError(f"missing IDX file {directory / stem} (or {stem}.gz) in {directory}")
        paths.append(path)
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(
            f"{paths[0]} holds {images.dtype} of shape {images.shape}; "
            "expected uint8 images (N, H, W)"
        )
    if images.shape[0] == 0 or 0 in images.shape[1:]:
        raise DataError(
            f"{paths[0]} holds {images.shape[0]} images of size "
            f"{images.shape[1]}x{images.shape[2]}; expected at least one image of positive size"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DataError(
            f"{paths[1]} holds {labels.dtype} of shape {labels.shape}; expected uint8 labels (N,)"
        )
    if labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{paths[1]} has {labels.shape[0]} labels but {paths[0]} has {images.shape[0]} images"
        )
    if labels.size and int(labels.max()) >= num_classes:
        raise DataError(
            f"{paths[1]} has label {int(labels.max())}; expected labels in 0..{num_classes - 1}"
        )
    return images, labels
