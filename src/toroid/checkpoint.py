"""Model checkpoints: a directory with `model.json` (metadata) and its safetensors weights.

The model is rebuilt from the config in the metadata; nothing is ever unpickled.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from toroid import __version__
from toroid.errors import CheckpointError, ToroidError
from toroid.models import build, model_config
from toroid.storage import TensorInfo, read_bundle, read_header, write_bundle

FORMAT = "toroid-checkpoint"
FORMAT_VERSION = 1
_STEM = "model"


def git_commit() -> str | None:
    """The commit of the source tree toroid runs from, read from .git without a process."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        git = parent / ".git"
        if git.is_dir():
            try:
                head = (git / "HEAD").read_text().strip()
                if not head.startswith("ref: "):
                    return head
                ref = head[5:]
                if (git / ref).is_file():
                    return (git / ref).read_text().strip()
                packed = git / "packed-refs"
                if packed.is_file():
                    for line in packed.read_text().splitlines():
                        if line.endswith(" " + ref):
                            return line.split()[0]
            except OSError:
                return None
            return None
    return None


def save(model: nn.Module, path: str | Path, *, meta: Mapping[str, Any] | None = None) -> Path:
    """Write `model` (parameters and buffers) and `meta` to the checkpoint directory `path`,
    atomically. `meta` should carry data, optimizer, seed and metrics; the model config,
    toroid version, git commit and time are added."""
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"checkpoint path {directory} exists and is not a directory")
    record: dict[str, Any] = dict(meta or {})
    record.update(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": model_config(model),
            "toroid_version": __version__,
            "git_commit": git_commit(),
            "saved_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
    )
    write_bundle(directory, _STEM, model.state_dict(), record)
    return directory


# Float dtypes a checkpoint may hold (safetensors codes) and the dtype each is loaded as:
# float32 and float64 stay as they are; half precision is widened to float32 (exact), since
# canonicalization and the measurements are not meant for 16-bit arithmetic.
_FLOAT_CODES: dict[str, torch.dtype] = {
    "F16": torch.float32,
    "BF16": torch.float32,
    "F32": torch.float32,
    "F64": torch.float64,
}
_INT_CODES = frozenset({"I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64"})


def _model_json(directory: Path) -> Path:
    return directory / f"{_STEM}.json"


def _check_meta(directory: Path, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The model config of checked checkpoint metadata."""
    source = _model_json(directory)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{source} is not a {FORMAT} (format {meta.get('format')!r})")
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{source}: format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{directory} has format version {version}; this toroid reads up to "
            f"{FORMAT_VERSION}: upgrade toroid"
        )
    config = meta.get("model")
    if not isinstance(config, dict):
        raise CheckpointError(f"{source}: 'model' must be a model config object, got {config!r}")
    return config


def _skeleton(directory: Path, config: dict[str, Any]) -> nn.Module:
    """The model of `config` on the meta device: its tensor shapes, with no memory."""
    try:
        with torch.device("meta"):
            return build(config)
    except (KeyError, TypeError, ValueError, OverflowError, RuntimeError, ToroidError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{directory}: cannot rebuild the model from metadata: {first}"
        ) from exc


def _check_header(
    directory: Path, expected: Mapping[str, torch.Tensor], header: Mapping[str, TensorInfo]
) -> torch.dtype:
    """Refuse a tensor file whose header does not fit the model in model.json (names,
    shapes, dtypes), before any tensor is read or built; returns the dtype to load as."""
    missing = sorted(set(expected) - set(header))
    unexpected = sorted(set(header) - set(expected))
    wrong = sorted(
        k for k in set(expected) & set(header) if tuple(expected[k].shape) != header[k].shape
    )
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"missing {', '.join(missing[:5])}")
        if unexpected:
            details.append(f"unexpected {', '.join(unexpected[:5])}")
        if wrong:
            details.append(
                "wrong shape (tensor file != model.json) "
                + ", ".join(
                    f"{k} {header[k].shape} != {tuple(expected[k].shape)}" for k in wrong[:5]
                )
            )
        raise CheckpointError(
            f"{directory}: weights do not match the model in model.json: {'; '.join(details)}"
        )
    floats: dict[str, str] = {}
    for key, tensor in expected.items():
        code = header[key].dtype
        if tensor.is_floating_point():
            if code not in _FLOAT_CODES:
                raise CheckpointError(
                    f"{directory}: tensor {key} has dtype {code}; a weight must be one of "
                    f"{', '.join(_FLOAT_CODES)}"
                )
            floats.setdefault(code, key)
        elif code not in _INT_CODES:
            raise CheckpointError(
                f"{directory}: tensor {key} has dtype {code}; this buffer must be an integer "
                f"type ({', '.join(sorted(_INT_CODES))})"
            )
    if len(floats) > 1:
        mixed = ", ".join(f"{code} ({key})" for code, key in floats.items())
        raise CheckpointError(
            f"{directory}: its weights mix float dtypes {mixed}; a checkpoint holds one"
        )
    return _FLOAT_CODES[next(iter(floats))] if floats else torch.float32


def _check_finite(directory: Path, tensors: Mapping[str, torch.Tensor], order: Any) -> None:
    for key in order:
        tensor = tensors[key]
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            kind = "NaN" if bool(torch.isnan(tensor).any()) else "infinite"
            raise CheckpointError(
                f"checkpoint {directory}: tensor {key} holds {kind} values; toroid measures "
                "and transforms only finite weights"
            )


def load(path: str | Path, *, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The model rebuilt from the checkpoint at `path` (in eval mode), and its metadata.

    The tensor file's header is checked against the model in model.json (names, shapes,
    dtypes) before anything is built or read in full. Weights stored as float32 or float64
    load as such; float16 and bfloat16 are widened to float32. A checkpoint whose weights
    mix float dtypes, or hold NaN or infinite values, is refused."""
    directory = Path(path)
    if not directory.exists():
        raise CheckpointError(
            f"checkpoint {directory} not found (expected a directory with model.json)"
        )
    if not directory.is_dir():
        raise CheckpointError(
            f"checkpoint {directory} is a file; a checkpoint is a directory with model.json"
        )
    header, meta = read_header(directory, _STEM)
    config = _check_meta(directory, meta)
    expected = _skeleton(directory, config).state_dict()
    dtype = _check_header(directory, expected, header)
    tensors, meta = read_bundle(directory, _STEM)
    if _check_meta(directory, meta) != config:
        raise CheckpointError(f"{_model_json(directory)} changed while it was read")
    _check_finite(directory, tensors, expected)
    try:
        model = build(config)
    except (KeyError, ToroidError) as exc:
        raise CheckpointError(
            f"{directory}: cannot rebuild the model from metadata: {exc}"
        ) from exc
    model = model.to(dtype)
    try:
        model.load_state_dict(tensors)
    except (RuntimeError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{directory}: weights do not match the model in model.json: {first}"
        ) from exc
    return model.to(device).eval(), meta
