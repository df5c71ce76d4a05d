"""Hostile and careless input through the CLI: checkpoints of other precisions or with
broken data entries, devices this machine lacks, read-only output places, divergence and
hand-edited training state; every refusal is one line and exit status 2."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.test_checkpoint import _rewrite_tensors
from tests.test_cli import assert_one_line_error, invoke

TINY = [
    "train",
    "--dataset",
    "synthetic",
    "--model",
    "mlp",
    "--widths",
    "6",
    "--epochs",
    "2",
    "--batch-size",
    "128",
    "--lr",
    "0.1",
    "--quiet",
]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("inputs")
    for name, seed in (("a", "0"), ("b", "1")):
        result = invoke([*TINY, "--seed", seed, "--out", root / name])
        assert result.exit_code == 0, result.output
    return root / "a", root / "b"


def _copy(source: Path, tmp_path: Path, name: str = "copy") -> Path:
    target = tmp_path / name
    shutil.copytree(source, target)
    return target


def _edit_meta(directory: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = directory / "model.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def _to_dtype(dtype: torch.dtype) -> Callable[[dict[str, torch.Tensor]], None]:
    def change(tensors: dict[str, torch.Tensor]) -> None:
        for key, tensor in tensors.items():
            if tensor.is_floating_point():
                tensors[key] = tensor.to(dtype)

    return change


# ---------------------------------------------------------------- precisions


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_checkpoints_of_other_precisions_combine_with_float32_ones(
    pair: tuple[Path, Path], tmp_path: Path, dtype: torch.dtype
) -> None:
    a, b = pair
    other = _copy(b, tmp_path, "other")
    _rewrite_tensors(other, _to_dtype(dtype))
    runs = [
        ["info", other],
        ["canon", other, "-o", tmp_path / "canon"],
        ["flatness", other, "--sigmas", "0,0.1", "--samples", "2", "--quiet"],
        ["distance", a, other],
        ["distance", other, a],
        ["align", other, "--to", a, "-o", tmp_path / "aligned", "--method", "activation"],
        ["path", a, other, "--points", "3", "--quiet"],
        ["path", other, a, "--points", "3", "--kind", "raw-linear", "--quiet"],
        ["bend", a, other, "-o", tmp_path / "bend", "--epochs", "1", "--quiet"],
        ["path", other, a, "--kind", "polychain", "--bend", tmp_path / "bend", "--points", "3"],
    ]
    for args in runs:
        result = invoke([*args])
        assert result.exit_code == 0, (args, result.output)


def test_mixed_dtypes_in_one_checkpoint_are_one_line(
    pair: tuple[Path, Path], tmp_path: Path
) -> None:
    broken = _copy(pair[0], tmp_path)

    def change(tensors: dict[str, torch.Tensor]) -> None:
        tensors["1.weight"] = tensors["1.weight"].double()

    _rewrite_tensors(broken, change)
    assert_one_line_error(invoke(["distance", pair[1], broken]), str(broken), "mix float dtypes")


# ---------------------------------------------------------------- non-finite weights


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("command", ["canon", "distance", "flatness", "info", "path"])
def test_non_finite_weights_are_refused_by_every_command(
    pair: tuple[Path, Path], tmp_path: Path, value: float, command: str
) -> None:
    broken = _copy(pair[0], tmp_path)

    def change(tensors: dict[str, torch.Tensor]) -> None:
        tensors["4.weight"] = tensors["4.weight"].clone()
        tensors["4.weight"][0, 0] = value

    _rewrite_tensors(broken, change)
    out = tmp_path / "out"
    args: dict[str, list[Any]] = {
        "canon": ["canon", broken, "-o", out],
        "distance": ["distance", pair[1], broken],
        "flatness": ["flatness", broken, "--quiet"],
        "info": ["info", broken],
        "path": ["path", broken, pair[1], "--quiet"],
    }
    assert_one_line_error(invoke(args[command]), str(broken), "4.weight")
    assert not out.exists()


# ---------------------------------------------------------------- data entries


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seed", "abc"),
        ("seed", True),
        ("seed", 10**30),
        ("seed", 1.5),
        ("root", 5),
        ("root", ["x"]),
        ("train_size", -3),
        ("train_size", "10"),
        ("test_size", 0),
    ],
)
@pytest.mark.parametrize("command", ["info", "flatness"])
def test_a_bad_data_entry_is_one_line_naming_the_field(
    pair: tuple[Path, Path], tmp_path: Path, field: str, value: object, command: str
) -> None:
    broken = _copy(pair[0], tmp_path)
    _edit_meta(broken, lambda meta: meta["data"].update({field: value}))
    args = [command, broken] + (["--quiet"] if command == "flatness" else [])
    result = invoke(args)
    output = result.output
    line = assert_one_line_error(result, f"data.{field}")
    assert "model.json" in line
    assert "recomputed" not in output


# ---------------------------------------------------------------- devices


def _absent_devices() -> list[str]:
    devices = ["foo", "cpu:1", "cuda:99", ""]
    if not torch.cuda.is_available():
        devices += ["cuda", "cuda:0"]
    return devices


@pytest.mark.parametrize("device", _absent_devices())
def test_a_device_this_machine_lacks_is_one_line(tmp_path: Path, device: str) -> None:
    out = tmp_path / "out"
    line = assert_one_line_error(invoke([*TINY, "--out", out, "--device", device]), "--device")
    assert "valid here: cpu" in line
    assert not out.exists()


# ---------------------------------------------------------------- read-only places


@pytest.fixture
def read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory nobody may write: by its mode, and for root (whom modes do not stop)
    by what `os.access` and the first write report."""
    place = tmp_path / "archive"
    place.mkdir()
    place.chmod(0o555)
    if os.geteuid() == 0:
        real_access = os.access

        def access(path: Any, mode: int, **kwargs: Any) -> bool:
            if Path(path).resolve() == place.resolve() and mode & os.W_OK:
                return False
            return real_access(path, mode, **kwargs)

        monkeypatch.setattr(os, "access", access)
    yield place
    place.chmod(0o755)


@pytest.mark.parametrize("command", ["train", "canon", "align", "bend", "flatness", "path"])
def test_output_into_a_read_only_directory_is_one_line(
    pair: tuple[Path, Path], read_only: Path, command: str
) -> None:
    a, b = pair
    target = read_only / "out"
    args: dict[str, list[Any]] = {
        "train": [*TINY, "--out", target],
        "canon": ["canon", a, "-o", target],
        "align": ["align", a, "--to", b, "-o", target],
        "bend": ["bend", a, b, "-o", target, "--quiet"],
        "flatness": ["flatness", a, "--json", read_only / "e.json", "--quiet"],
        "path": ["path", a, b, "--plot", read_only / "p.png", "--quiet"],
    }
    line = assert_one_line_error(invoke(args[command]), str(read_only))
    assert "not writable" in line
    assert list(read_only.iterdir()) == []


@pytest.mark.parametrize("command", ["train", "canon", "flatness"])
def test_a_write_that_fails_anyway_is_one_line(
    pair: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """A place that passed the check but refuses the write (a read-only file system)."""

    def refuse(*args: Any, dir: Any = None, **kwargs: Any) -> Any:
        raise OSError(30, "Read-only file system", str(dir))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    target = tmp_path / "out"
    args: dict[str, list[Any]] = {
        "train": [*TINY, "--out", target],
        "canon": ["canon", pair[0], "-o", target],
        "flatness": ["flatness", pair[0], "--json", tmp_path / "e.json", "--quiet"],
    }
    result = invoke(args[command])
    # The measurement is printed before its JSON is written; the error is still one line.
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("toroid: error:") and "Read-only file system" in lines[0]
    assert str(tmp_path) in lines[0]


# ---------------------------------------------------------------- training


def test_divergence_names_only_a_directory_that_exists(tmp_path: Path) -> None:
    out = tmp_path / "run"
    line = assert_one_line_error(
        invoke([*TINY, "--out", out, "--lr", "1e6", "--epochs", "3"]), "lower the learning rate"
    )
    for named in re.findall(r"last good state in (\S+?)\)", line):
        assert Path(named).is_dir(), line
    if not out.exists():
        assert str(out) not in line


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epoch", "x"),
        ("finished", "yes"),
        ("elapsed", -1),
        ("history", "x"),
        ("optimizer", {"__items__": 5}),
        ("step", None),
    ],
)
def test_resume_from_hand_edited_training_state_is_one_line(
    pair: tuple[Path, Path], tmp_path: Path, field: str, value: object
) -> None:
    run = _copy(pair[0], tmp_path)
    state = run / "train-state.json"
    meta = json.loads(state.read_text())
    meta["members"][0][field] = value
    state.write_text(json.dumps(meta))
    args = [*TINY, "--seed", "0", "--out", run, "--resume"]
    assert_one_line_error(invoke(args), str(state), f"members[0].{field}")


def test_model_config_for_builds_a_vit_and_refuses_unknown_names() -> None:
    from toroid.cli.commands import model_config_for
    from toroid.errors import InvalidArgumentError
    from toroid.models import build

    sizes: dict[str, Any] = {"widths": [4], "depth": None, "width": 1.0, "batchnorm": True}
    config = model_config_for("vit", (1, 28, 28), 10, activation=None, **sizes)
    assert config == {"name": "vit", "in_channels": 1, "image_size": 28, "num_classes": 10}
    assert type(build(config)).__name__ == "VisionTransformer"
    with pytest.raises(InvalidArgumentError, match="square images"):
        model_config_for("vit", (1, 28, 14), 10, activation=None, **sizes)
    with pytest.raises(InvalidArgumentError, match="'nope'"):
        model_config_for("nope", (1, 28, 28), 10, activation=None, **sizes)
