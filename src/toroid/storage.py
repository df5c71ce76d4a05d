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
import tempfile
from collections.abc import Mapping
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


def read_bundle(directory: Path, stem: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    meta_path = directory / f"{stem}.json"
    if not meta_path.is_file():
        raise CheckpointError(f"no {meta_path.name} in {directory}: not a toroid checkpoint")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{meta_path} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or "tensor_file" not in meta:
        raise CheckpointError(f"{meta_path} does not name its tensor file (key 'tensor_file')")
    name = meta["tensor_file"]
    if not (isinstance(name, str) and _TENSOR_FILE.fullmatch(name) and name.startswith(f"{stem}-")):
        raise CheckpointError(
            f"{meta_path} names tensor file {name!r}; expected {stem}-<16 hex digits>.safetensors "
            "in the same directory"
        )
    tensor_path = directory / name
    try:
        blob = tensor_path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{meta_path} names {tensor_path.name}, which is missing") from exc
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
