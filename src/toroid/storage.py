"""Atomic, pickle-free storage of tensors (safetensors) with JSON metadata.

A bundle in a directory is `<stem>.json` plus `<stem>-<sha256 prefix>.safetensors`. The
tensor file is written first under a content-derived name, then the JSON (which names it
and carries its hash) replaces the old one atomically: that rename is the commit point,
so an interruption at any moment leaves the previous bundle or the new one, never a mix.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from toroid.errors import CheckpointError

_TENSOR_FILE = re.compile(r"[A-Za-z0-9_.-]+-[0-9a-f]{16}\.safetensors")


def _default_file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _default_file_mode())  # mkstemp creates 0600; keep the usual umask
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_bundle(
    directory: Path, stem: str, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> None:
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    blob = save_safetensors(cpu)
    digest = hashlib.sha256(blob).hexdigest()
    tensor_file = f"{stem}-{digest[:16]}.safetensors"
    atomic_write_bytes(directory / tensor_file, blob)
    record = {**meta, "tensor_file": tensor_file, "tensor_sha256": digest}
    atomic_write_bytes(
        directory / f"{stem}.json", json.dumps(record, indent=2, sort_keys=True).encode()
    )
    for stale in directory.glob(f"{stem}-*.safetensors"):
        if stale.name != tensor_file:
            stale.unlink(missing_ok=True)


def has_bundle(directory: Path, stem: str) -> bool:
    return (directory / f"{stem}.json").is_file()


# safetensors refuses headers above 100 MB itself; a header this long is not a checkpoint.
_MAX_HEADER_BYTES = 100_000_000
# A bundle's JSON metadata (config, history, optimizer skeleton) is far smaller than this.
_MAX_META_BYTES = 100_000_000


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as a safetensors header describes it: dtype code (F32, F64, I64, ...)
    and shape."""

    dtype: str
    shape: tuple[int, ...]


def _bundle_meta(directory: Path, stem: str) -> tuple[dict[str, Any], Path, Path]:
    """The JSON metadata of a bundle, its path, and the path of the tensor file it names."""
    meta_path = directory / f"{stem}.json"
    if not meta_path.is_file():
        raise CheckpointError(f"no {meta_path.name} in {directory}: not a toroid checkpoint")
    try:
        with meta_path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > _MAX_META_BYTES:
                raise CheckpointError(
                    f"{meta_path} is {size} bytes; metadata of a bundle is at most "
                    f"{_MAX_META_BYTES} bytes"
                )
            text = handle.read(_MAX_META_BYTES + 1).decode()
        meta = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{meta_path} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or "tensor_file" not in meta:
        raise CheckpointError(f"{meta_path} does not name its tensor file (key 'tensor_file')")
    name = meta["tensor_file"]
    if not (isinstance(name, str) and _TENSOR_FILE.fullmatch(name) and name.startswith(f"{stem}-")):
        raise CheckpointError(
            f"{meta_path} names tensor file {name!r}; expected {stem}-<16 hex digits>.safetensors "
            "in the same directory"
        )
    return meta, meta_path, directory / name


def _parse_header(raw: bytes, tensor_path: Path) -> tuple[dict[str, TensorInfo], int]:
    """The tensors a safetensors header describes and the length of the data after it."""

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{tensor_path} is not a valid safetensors file: {why}")

    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise bad(f"its header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    infos: dict[str, TensorInfo] = {}
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        shape = entry.get("shape") if isinstance(entry, dict) else None
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        if not (
            isinstance(dtype, str)
            and isinstance(shape, list)
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
            and isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
            and offsets[0] <= offsets[1]
        ):
            raise bad(f"its header entry for tensor {key!r} is malformed")
        infos[key] = TensorInfo(dtype, tuple(shape))
        end = max(end, offsets[1])
    return infos, end


def _read_exactly(handle: Any, count: int) -> bytes:
    chunks = []
    while count > 0:
        chunk = handle.read(min(count, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def _read_tensor_file(
    meta_path: Path, tensor_path: Path, *, header_only: bool
) -> tuple[dict[str, TensorInfo], bytes]:
    """The header of a bundle's tensor file and, unless `header_only`, all of its bytes.
    Only a regular file is read, and never more than the size its header implies."""
    try:
        # O_NONBLOCK: opening a FIFO put in the file's place must not wait for a writer.
        fd = os.open(tensor_path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError as exc:
        raise CheckpointError(f"{meta_path} names {tensor_path.name}, which is missing") from exc
    except OSError as exc:
        raise CheckpointError(f"cannot read {tensor_path}: {exc.strerror or exc}") from exc
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise CheckpointError(
            f"{tensor_path} is not a regular file (a device, FIFO, socket or directory, "
            "perhaps through a symlink); a tensor file must be a plain file"
        )
    size = info.st_size
    with os.fdopen(fd, "rb") as handle:
        try:
            prefix = _read_exactly(handle, 8)
            if len(prefix) < 8:
                raise CheckpointError(
                    f"{tensor_path} is not a valid safetensors file: {size} bytes, shorter than "
                    "the 8-byte header length"
                )
            length = int.from_bytes(prefix, "little")
            if length > min(_MAX_HEADER_BYTES, size - 8):
                raise CheckpointError(
                    f"{tensor_path} is not a valid safetensors file: its header length {length} "
                    f"does not fit in the file ({size} bytes)"
                )
            raw = _read_exactly(handle, length)
            tensors, data_length = _parse_header(raw, tensor_path)
            expected = 8 + length + data_length
            if size != expected:
                what = "truncated" if size < expected else "larger than its header says"
                raise CheckpointError(
                    f"{tensor_path} is {what}: its header implies {expected} bytes, the file "
                    f"has {size}"
                )
            if header_only:
                return tensors, b""
            data = _read_exactly(handle, data_length)
        except OSError as exc:
            raise CheckpointError(f"cannot read {tensor_path}: {exc.strerror or exc}") from exc
    if len(data) != data_length:
        raise CheckpointError(f"{tensor_path} changed while it was read (truncated)")
    return tensors, prefix + raw + data


def read_header(directory: Path, stem: str) -> tuple[dict[str, TensorInfo], dict[str, Any]]:
    """The tensors (dtype and shape) a bundle's tensor file holds, from its header alone,
    and the bundle's metadata: enough to check a bundle before allocating anything."""
    meta, meta_path, tensor_path = _bundle_meta(directory, stem)
    tensors, _ = _read_tensor_file(meta_path, tensor_path, header_only=True)
    return tensors, meta


def read_bundle(directory: Path, stem: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and metadata of a bundle, checked against the hash in the metadata. The
    tensor file must be a regular file whose size is what its header implies."""
    meta, meta_path, tensor_path = _bundle_meta(directory, stem)
    _, blob = _read_tensor_file(meta_path, tensor_path, header_only=False)
    digest = hashlib.sha256(blob).hexdigest()
    if digest != meta.get("tensor_sha256"):
        raise CheckpointError(
            f"{tensor_path} is corrupt: its sha256 is {digest[:16]}..., "
            f"{meta_path.name} expects {str(meta.get('tensor_sha256'))[:16]}..."
        )
    try:
        tensors = load_safetensors(blob)
    except (SafetensorError, ValueError) as exc:
        raise CheckpointError(f"{tensor_path} is not a valid safetensors file: {exc}") from exc
    return tensors, meta


def flatten_state(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON-able skeleton of nested dicts/lists/tuples whose tensors are moved into
    `tensors` under `prefix`-derived keys (for optimizer state dicts, which have int keys)."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj
        return {"__tensor__": prefix}
    if isinstance(obj, Mapping):
        return {
            "__items__": [[k, flatten_state(v, f"{prefix}/{k}", tensors)] for k, v in obj.items()]
        }
    if isinstance(obj, tuple):
        return {
            "__tuple__": [flatten_state(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
        }
    if isinstance(obj, list):
        return [flatten_state(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise CheckpointError(f"cannot store a {type(obj).__name__} at {prefix} without pickle")


def unflatten_state(skeleton: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__items__" in skeleton:
            return {k: unflatten_state(v, tensors) for k, v in skeleton["__items__"]}
        if "__tuple__" in skeleton:
            return tuple(unflatten_state(v, tensors) for v in skeleton["__tuple__"])
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton
