"""Model checkpoints: a directory with `model.json` (metadata) and its safetensors weights.

The model is rebuilt from the config in the metadata; nothing is ever unpickled.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from toroid import __version__
from toroid.errors import CheckpointError, ToroidError
from toroid.models import build, model_config
from toroid.storage import read_bundle, write_bundle

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


def load(path: str | Path, *, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The model rebuilt from the checkpoint at `path` (in eval mode), and its metadata."""
    directory = Path(path)
    if not directory.exists():
        raise CheckpointError(
            f"checkpoint {directory} not found (expected a directory with model.json)"
        )
    if not directory.is_dir():
        raise CheckpointError(
            f"checkpoint {directory} is a file; a checkpoint is a directory with model.json"
        )
    tensors, meta = read_bundle(directory, _STEM)
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{directory / 'model.json'} is not a {FORMAT} (format {meta.get('format')!r})"
        )
    version = meta.get("format_version")
    if not isinstance(version, int):
        raise CheckpointError(
            f"{directory / 'model.json'}: format_version must be an integer, got {version!r}"
        )
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{directory} has format version {meta['format_version']}; this toroid reads up to "
            f"{FORMAT_VERSION}: upgrade toroid"
        )
    if not isinstance(meta.get("model"), dict):
        raise CheckpointError(
            f"{directory / 'model.json'}: 'model' must be a model config object, "
            f"got {meta.get('model')!r}"
        )
    try:
        model = build(meta["model"])
    except (KeyError, ToroidError) as exc:
        raise CheckpointError(
            f"{directory}: cannot rebuild the model from metadata: {exc}"
        ) from exc
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"missing {', '.join(missing[:5])}")
        if unexpected:
            details.append(f"unexpected {', '.join(unexpected[:5])}")
        if wrong:
            details.append(
                "wrong shape "
                + ", ".join(
                    f"{k} {tuple(tensors[k].shape)} != {tuple(expected[k].shape)}"
                    for k in wrong[:5]
                )
            )
        raise CheckpointError(
            f"{directory}: weights do not match the model in model.json: {'; '.join(details)}"
        )
    float_dtypes = {t.dtype for t in tensors.values() if t.is_floating_point()}
    if len(float_dtypes) == 1:
        model = model.to(float_dtypes.pop())
    model.load_state_dict(tensors)
    return model.to(device).eval(), meta
