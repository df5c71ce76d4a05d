"""Hostile checkpoints through every CLI command that reads one: truncated or garbage
tensor files, wrong hashes, broken JSON, wrong dtypes, NaN/inf, enormous shapes in
model.json, symlinks and other non-regular files, missing and extra tensors, bad data
entries. Each ends in exit status 2 and exactly one stderr line naming the checkpoint.

Deterministic (a fixed table plus derandomized hypothesis without an example database)
and fast (one tiny MLP, commands run in-process through typer's CliRunner)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from typer.testing import CliRunner

from toroid import checkpoint
from toroid.cli import app
from toroid.models import build

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=30,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
CONFIG = {"name": "mlp", "in_features": 16, "widths": [6], "num_classes": 4}
DATA = {"name": "synthetic", "train_size": 64, "test_size": 32, "seed": 0, "root": None}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("fuzz-checkpoints")
    for name, seed in (("good", 0), ("other", 1)):
        checkpoint.save(build(CONFIG, seed=seed), root / name, meta={"data": DATA, "seed": seed})
    yield root


def run(args: list[Any]) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line(result: Any, *needles: str) -> str:
    """Exit 2, no traceback, nothing on stdout, one stderr line 'toroid: error: ...'."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert result.stdout.strip() == "", result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("toroid: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def assert_ok_or_one_line(result: Any) -> None:
    """Either the command worked, or it refused in one line; never a traceback."""
    if result.exit_code == 0:
        assert result.exception is None, repr(result.exception)
        return
    assert_one_line(result)


# ---------------------------------------------------------------- the commands


def _commands(x: Path, good: Path, out: Path) -> dict[str, list[Any]]:
    """Every command that reads a checkpoint, with the hostile one `x` in each place."""
    flat = ["--sigmas", "0,0.1", "--samples", "1", "--bn-samples", "16", "--quiet"]
    return {
        "info": ["info", x],
        "spec": ["spec", x],
        "canon": ["canon", x, "-o", out / "canon"],
        "align": ["align", x, "--to", good, "-o", out / "align"],
        "align-activation": ["align", x, "--to", x, "-o", out / "align", "--method", "activation"],
        "align-reference": ["align", good, "--to", x, "-o", out / "align"],
        "flatness": ["flatness", x, *flat],
        "distance-a": ["distance", x, good],
        "distance-b": ["distance", good, x],
        "path": ["path", x, x, "--points", "2", "--bn-samples", "16", "--quiet"],
        "path-bend": ["path", good, good, "--kind", "polychain", "--bend", x, "--points", "2"],
        "bend": ["bend", x, x, "-o", out / "bend", "--epochs", "1", "--quiet"],
    }


COMMANDS = tuple(_commands(Path("x"), Path("g"), Path("o")))
# The commands that read the data a checkpoint names (path-bend reads A's, not the bend's).
DATA_COMMANDS = ("info", "align-activation", "flatness", "path", "bend")


# ---------------------------------------------------------------- how to break a checkpoint


def _meta(d: Path) -> dict[str, Any]:
    return json.loads((d / "model.json").read_text())


def _write_meta(d: Path, meta: Any) -> None:
    (d / "model.json").write_text(json.dumps(meta))


def _tensor_path(d: Path) -> Path:
    return d / _meta(d)["tensor_file"]


def _set_blob(d: Path, blob: bytes, *, rehash: bool = True) -> None:
    meta = _meta(d)
    (d / meta["tensor_file"]).write_bytes(blob)
    if rehash:
        meta["tensor_sha256"] = hashlib.sha256(blob).hexdigest()
        _write_meta(d, meta)


def _tensors(d: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    tensors = dict(load_safetensors(_tensor_path(d).read_bytes()))
    change(tensors)
    _set_blob(d, save_safetensors(tensors))


def _model(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        meta = _meta(d)
        change(meta["model"])
        _write_meta(d, meta)

    return edit


def _data(field: str, value: Any) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        meta = _meta(d)
        meta["data"][field] = value
        _write_meta(d, meta)

    return edit


def _set(key: str, value: Any) -> Callable[[dict[str, torch.Tensor]], None]:
    def change(tensors: dict[str, torch.Tensor]) -> None:
        tensors[key] = value(tensors[key]) if callable(value) else value

    return change


def _poke(value: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def change(t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        t.view(-1)[-1] = value
        return t

    return change


def _replace_file(make: Callable[[Path], None]) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        path = _tensor_path(d)
        path.unlink()
        make(path)

    return edit


HOSTILE: dict[str, tuple[Callable[[Path], None], str]] = {
    # tensor files
    "truncated": (lambda d: _set_blob(d, _tensor_path(d).read_bytes()[:-9]), "truncated"),
    "truncated-rehashed": (
        lambda d: _set_blob(d, _tensor_path(d).read_bytes()[:40]),
        "safetensors",
    ),
    "garbage": (lambda d: _set_blob(d, bytes(range(256)) * 3), "safetensors"),
    "empty": (lambda d: _set_blob(d, b""), "safetensors"),
    "trailing-bytes": (
        lambda d: _set_blob(d, _tensor_path(d).read_bytes() + b"\0" * 64),
        "larger than its header says",
    ),
    "wrong-hash": (
        lambda d: _write_meta(d, {**_meta(d), "tensor_sha256": "0" * 64}),
        "corrupt",
    ),
    "missing-hash": (
        lambda d: _write_meta(d, {k: v for k, v in _meta(d).items() if k != "tensor_sha256"}),
        "corrupt",
    ),
    "missing-tensor-file": (lambda d: _tensor_path(d).unlink(), "missing"),
    "dev-zero": (_replace_file(lambda p: os.symlink("/dev/zero", p)), "not a regular file"),
    "fifo": (_replace_file(os.mkfifo), "not a regular file"),
    "directory": (_replace_file(lambda p: p.mkdir()), "not a regular file"),
    "dangling-symlink": (_replace_file(lambda p: os.symlink(p.parent / "nowhere", p)), "missing"),
    # model.json
    "json-truncated": (
        lambda d: (d / "model.json").write_text((d / "model.json").read_text()[:50]),
        "JSON",
    ),
    "json-not-utf8": (lambda d: (d / "model.json").write_bytes(b"\xff\xfe{}"), "JSON"),
    "json-list": (lambda d: (d / "model.json").write_text("[1, 2]"), "tensor_file"),
    "json-deep": (lambda d: (d / "model.json").write_text("[" * 100000), "JSON"),
    "no-model-json": (lambda d: (d / "model.json").unlink(), "model.json"),
    "tensor-file-escapes": (
        lambda d: _write_meta(d, {**_meta(d), "tensor_file": "../good/model.safetensors"}),
        "tensor file",
    ),
    "format": (lambda d: _write_meta(d, {**_meta(d), "format": "pickle"}), "format"),
    "format-version": (
        lambda d: _write_meta(d, {**_meta(d), "format_version": "1"}),
        "format_version",
    ),
    "future-version": (lambda d: _write_meta(d, {**_meta(d), "format_version": 99}), "upgrade"),
    "model-not-object": (lambda d: _write_meta(d, {**_meta(d), "model": "mlp"}), "'model'"),
    "huge-width": (_model(lambda m: m.update(widths=[10**9])), "wrong shape"),
    "huge-width-3e5": (_model(lambda m: m.update(widths=[300_000])), "wrong shape"),
    "huge-input": (_model(lambda m: m.update(in_features=10**12)), "wrong shape"),
    "width-zero": (_model(lambda m: m.update(widths=[0])), "model"),
    "width-negative": (_model(lambda m: m.update(widths=[-5])), "model"),
    "width-string": (_model(lambda m: m.update(widths="abc")), "model"),
    "unknown-model": (_model(lambda m: m.update(name="transformer")), "cannot rebuild"),
    "model-name-list": (_model(lambda m: m.update(name=["mlp"])), "cannot rebuild"),
    "more-layers": (_model(lambda m: m.update(widths=[6, 6])), "missing"),
    # tensors
    "missing-tensor": (lambda d: _tensors(d, lambda t: t.pop("1.weight")), "missing 1.weight"),
    "extra-tensor": (
        lambda d: _tensors(d, _set("extra.weight", torch.zeros(3))),
        "unexpected extra.weight",
    ),
    "wrong-shape": (lambda d: _tensors(d, _set("1.weight", torch.zeros(6, 15))), "wrong shape"),
    "float64-and-float32": (
        lambda d: _tensors(d, _set("1.weight", lambda t: t.double())),
        "mix float dtypes",
    ),
    "int-weight": (lambda d: _tensors(d, _set("1.weight", lambda t: t.int())), "dtype"),
    "bool-weight": (lambda d: _tensors(d, _set("1.weight", lambda t: t > 0)), "dtype"),
    "float-counter": (
        lambda d: _tensors(d, _set("2.num_batches_tracked", lambda t: t.float())),
        "dtype",
    ),
    "nan": (lambda d: _tensors(d, _set("1.weight", _poke(float("nan")))), "NaN"),
    "inf": (lambda d: _tensors(d, _set("4.bias", _poke(float("inf")))), "infinite"),
    "nan-running-var": (
        lambda d: _tensors(d, _set("2.running_var", _poke(float("nan")))),
        "2.running_var",
    ),
}
DATA_HOSTILE: dict[str, tuple[Callable[[Path], None], str]] = {
    "data-seed-abc": (_data("seed", "abc"), "data.seed"),
    "data-seed-float": (_data("seed", 0.5), "data.seed"),
    "data-seed-huge": (_data("seed", 10**30), "data.seed"),
    "data-root-int": (_data("root", 5), "data.root"),
    "data-train-size": (_data("train_size", -1), "data.train_size"),
    "data-test-size": (_data("test_size", "all"), "data.test_size"),
    "data-name": (_data("name", "imagenet"), "imagenet"),
    "data-name-int": (_data("name", 7), "data"),
    "data-not-object": (lambda d: _write_meta(d, {**_meta(d), "data": "synthetic"}), "data"),
    "data-wrong-shape": (
        _data("name", "digits"),
        "digits",
    ),
}


def _broken(base: Path, tmp_path: Path, edit: Callable[[Path], None]) -> Path:
    x = tmp_path / "hostile"
    shutil.copytree(base / "good", x)
    edit(x)
    return x


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("variant", sorted(HOSTILE))
def test_hostile_checkpoint_is_one_line(
    base: Path, tmp_path: Path, variant: str, command: str
) -> None:
    edit, needle = HOSTILE[variant]
    x = _broken(base, tmp_path, edit)
    out = tmp_path / "out"
    assert_one_line(run(_commands(x, base / "good", out)[command]), str(x), needle)
    assert not out.exists()


@pytest.mark.parametrize("command", DATA_COMMANDS)
@pytest.mark.parametrize("variant", sorted(DATA_HOSTILE))
def test_hostile_data_entry_is_one_line(
    base: Path, tmp_path: Path, variant: str, command: str
) -> None:
    edit, needle = DATA_HOSTILE[variant]
    x = _broken(base, tmp_path, edit)
    out = tmp_path / "out"
    assert_one_line(run(_commands(x, base / "good", out)[command]), needle)
    assert not out.exists()


# ---------------------------------------------------------------- generated files

CHEAP = ("info-norecompute", "spec", "distance-b", "canon")


def _cheap(x: Path, good: Path, out: Path, command: str) -> list[Any]:
    if command == "info-norecompute":
        return ["info", x, "--no-recompute"]
    return _commands(x, good, out)[command]


class _Scratch:
    """A fresh directory per hypothesis example (function-scoped fixtures are shared)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __enter__(self) -> Path:
        self.path = Path(tempfile.mkdtemp(dir=self.root))
        return self.path

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


@FUZZ
@given(
    cut=st.integers(min_value=0, max_value=4000),
    junk=st.binary(max_size=64),
    rehash=st.booleans(),
    command=st.sampled_from(CHEAP),
)
def test_generated_tensor_files_are_one_line(
    base: Path, tmp_path: Path, cut: int, junk: bytes, rehash: bool, command: str
) -> None:
    with _Scratch(tmp_path) as scratch:
        x = _broken(base, scratch, lambda d: None)
        blob = _tensor_path(x).read_bytes()
        blob = blob[:cut] + junk if cut < len(blob) else blob + (junk or b"x")
        _set_blob(x, blob, rehash=rehash)
        assert_one_line(run(_cheap(x, base / "good", scratch / "out", command)), str(x))


@FUZZ
@given(
    position=st.integers(min_value=0, max_value=10**6),
    value=st.integers(min_value=0, max_value=255),
    command=st.sampled_from(CHEAP),
)
def test_flipped_bytes_with_a_matching_hash_never_give_a_traceback(
    base: Path, tmp_path: Path, position: int, value: int, command: str
) -> None:
    with _Scratch(tmp_path) as scratch:
        x = _broken(base, scratch, lambda d: None)
        blob = bytearray(_tensor_path(x).read_bytes())
        blob[position % len(blob)] = value
        _set_blob(x, bytes(blob))
        assert_ok_or_one_line(run(_cheap(x, base / "good", scratch / "out", command)))


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)
MODEL_KEYS = ("name", "in_features", "widths", "num_classes", "batchnorm", "activation", "binary")
META_KEYS = ("format", "format_version", "model", "tensor_file", "tensor_sha256", "data")


@FUZZ
@given(
    where=st.sampled_from([f"model.{k}" for k in MODEL_KEYS] + list(META_KEYS)),
    value=JSON_VALUES,
    command=st.sampled_from(CHEAP),
)
def test_generated_metadata_never_gives_a_traceback(
    base: Path, tmp_path: Path, where: str, value: Any, command: str
) -> None:
    with _Scratch(tmp_path) as scratch:

        def edit(d: Path) -> None:
            meta = _meta(d)
            if where.startswith("model."):
                meta["model"][where[len("model.") :]] = value
            else:
                meta[where] = value
            _write_meta(d, meta)

        x = _broken(base, scratch, edit)
        assert_ok_or_one_line(run(_cheap(x, base / "good", scratch / "out", command)))


@FUZZ
@given(
    field=st.sampled_from(("name", "root", "train_size", "test_size", "seed")),
    value=JSON_VALUES,
    command=st.sampled_from(("info", "flatness")),
)
def test_generated_data_entries_never_give_a_traceback(
    base: Path, tmp_path: Path, field: str, value: Any, command: str
) -> None:
    with _Scratch(tmp_path) as scratch:
        x = _broken(base, scratch, _data(field, value))
        assert_ok_or_one_line(run(_commands(x, base / "good", scratch / "out")[command]))


@FUZZ
@given(
    key=st.sampled_from(list(build(CONFIG).state_dict())),
    dtype=st.sampled_from(
        [torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.int64, torch.uint8]
    ),
    poison=st.sampled_from([None, float("nan"), float("inf"), float("-inf")]),
    command=st.sampled_from(CHEAP),
)
def test_generated_tensor_edits_never_give_a_traceback(
    base: Path, tmp_path: Path, key: str, dtype: torch.dtype, poison: float | None, command: str
) -> None:
    def change(tensors: dict[str, torch.Tensor]) -> None:
        t = tensors[key].to(dtype)
        if poison is not None and t.is_floating_point():
            t = _poke(poison)(t)
        tensors[key] = t

    with _Scratch(tmp_path) as scratch:
        x = _broken(base, scratch, lambda d: _tensors(d, change))
        result = run(_cheap(x, base / "good", scratch / "out", command))
        assert_ok_or_one_line(result)
        if poison is not None and dtype.is_floating_point:
            assert_one_line(result, key)


# ---------------------------------------------------------------- training state (--resume)

TRAIN = [
    "train",
    "--dataset",
    "synthetic",
    "--train-size",
    "64",
    "--test-size",
    "32",
    "--model",
    "mlp",
    "--widths",
    "6",
    "--epochs",
    "2",
    "--batch-size",
    "32",
    "--no-stop-at-zero",
    "--seed",
    "0",
    "--quiet",
]


@pytest.fixture(scope="module")
def trained_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fuzz-resume") / "run"
    result = run([*TRAIN, "--out", out])
    assert result.exit_code == 0, result.output
    return out


# A network's fields (under "members"[0]) and the bundle's own.
MEMBER_FIELDS = (
    "epoch",
    "step",
    "grad_evals",
    "elapsed",
    "finished",
    "stopped_by",
    "diverged",
    "history",
    "optimizer",
)
STATE_FIELDS = (
    *MEMBER_FIELDS,
    "members",
    "format",
    "fingerprint",
    "tensor_file",
    "tensor_sha256",
)


@FUZZ
@given(field=st.sampled_from(STATE_FIELDS), value=JSON_VALUES)
def test_resume_from_generated_training_state_is_one_line(
    trained_state: Path, tmp_path: Path, field: str, value: Any
) -> None:
    with _Scratch(tmp_path) as scratch:
        run_dir = scratch / "run"
        shutil.copytree(trained_state, run_dir)
        state = run_dir / "train-state.json"
        meta = json.loads(state.read_text())
        edited = meta["members"][0] if field in MEMBER_FIELDS else meta
        if edited.get(field) == value:
            return  # not an edit
        edited[field] = value
        state.write_text(json.dumps(meta))
        result = run([*TRAIN, "--out", run_dir, "--resume"])
        # A value of the right kind (another elapsed time, finished: true) may well resume.
        assert_ok_or_one_line(result)
        if result.exit_code == 2:
            assert_one_line(result, str(run_dir))


@pytest.mark.parametrize("command", DATA_COMMANDS)
def test_a_recorded_root_that_has_moved_falls_back_to_the_usual_places(
    base: Path, tmp_path: Path, command: str
) -> None:
    # A run copied to another machine: its data root is gone, the dataset is found anyway.
    x = _broken(base, tmp_path, _data("root", "/nonexistent/toroid-data"))
    result = run(_commands(x, base / "good", tmp_path / "out")[command])
    assert result.exit_code == 0, result.stderr
