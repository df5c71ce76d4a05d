"""The command-line interface through typer's test runner: commands, exit codes, and
one-line errors."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import toroid
from toroid import checkpoint
from toroid.cli import app
from toroid.cli import commands as cli_commands
from toroid.data import DATASETS
from toroid.errors import ToroidError

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
TRAIN_ARGS = [
    "train",
    "--dataset",
    "synthetic",
    "--model",
    "mlp",
    "--widths",
    "16",
    "--epochs",
    "30",
    "--batch-size",
    "64",
    "--lr",
    "0.1",
    "--seed",
    "0",
    "--quiet",
]


def invoke(args: Sequence[str | Path]) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def _plain(text: str) -> str:
    return ANSI.sub("", text)


def _streams(result: Any) -> tuple[str, str | None]:
    """(everything printed, stderr alone or None where this runner mixes the streams)."""
    try:
        stderr = result.stderr
    except (ValueError, AttributeError):  # older click: stderr not captured separately
        stderr = None
    return _plain(result.output), None if stderr is None else _plain(stderr)


def assert_one_line_error(result: Any, *needles: str) -> str:
    """Exit 2, no traceback, and an error text that is one line 'toroid: error: ...'."""
    output, stderr = _streams(result)
    assert result.exit_code == 2, output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in output
    text = (stderr if stderr else output).strip()
    lines = text.splitlines()
    assert len(lines) == 1, text
    line = lines[0]
    assert line.startswith("toroid: error:"), line
    assert len(line) > len("toroid: error:") + 5, line  # says something
    if stderr is not None:
        assert _plain(result.stdout).strip() == "", result.stdout
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def _train(out: Path, *extra: str) -> Any:
    return invoke([*TRAIN_ARGS, "--out", out, *extra])


def _state(path: Path) -> dict[str, torch.Tensor]:
    model, _ = checkpoint.load(path)
    return model.state_dict()


def _assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = _state(a), _state(b)
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    out = tmp_path_factory.mktemp("cli") / "run"
    result = _train(out)
    return out, result


@pytest.fixture
def trained_copy(trained: tuple[Path, Any], tmp_path: Path) -> Path:
    out, result = trained
    assert result.exit_code == 0, result.output
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    return copy


# ---------------------------------------------------------------- simple commands


def test_version() -> None:
    result = invoke(["--version"])
    assert result.exit_code == 0, result.output
    assert _plain(result.output).strip() == f"toroid {toroid.__version__}"


def test_datasets_lists_every_dataset() -> None:
    result = invoke(["datasets"])
    output, _ = _streams(result)
    assert result.exit_code == 0, output
    assert len(DATASETS) >= 8
    rows = {line.split("│")[1].strip() for line in output.splitlines() if line.count("│") > 2}
    for name in DATASETS:
        assert name in rows, (name, output)
    assert re.search(r"synthetic\s*│\s*yes", output), output


# ---------------------------------------------------------------- train / info / resume


def test_train_reaches_zero_error_and_writes_a_checkpoint(trained: tuple[Path, Any]) -> None:
    out, result = trained
    output, _ = _streams(result)
    assert result.exit_code == 0, output
    match = re.search(r"train error (\d+\.\d{4})", output)
    assert match, output
    assert float(match.group(1)) == 0.0
    meta = json.loads((out / "model.json").read_text())
    assert meta["metrics"]["train_error"] == 0.0
    assert meta["training"]["reached_zero_train_error"] is True
    assert meta["training"]["max_epochs"] == 30
    assert 1 <= meta["training"]["epochs"] <= 30
    assert meta["data"]["name"] == "synthetic"
    assert meta["seed"] == 0
    assert meta["optimizer"]["name"] == "sgd"
    assert meta["optimizer"]["lr"] == pytest.approx(0.1)
    assert meta["model"]["name"] == "mlp"
    assert meta["model"]["widths"] == [16]
    assert meta["model"]["in_features"] == meta["data"]["input_shape"][0]
    assert meta["model"]["num_classes"] == meta["data"]["num_classes"]
    assert "note:" not in output  # the did-not-reach-zero hint
    model, _ = checkpoint.load(out)
    assert not model.training


def test_info_recomputes_the_saved_errors(trained: tuple[Path, Any]) -> None:
    out, train_result = trained
    assert train_result.exit_code == 0, train_result.output
    result = invoke(["info", out])
    output, _ = _streams(result)
    assert result.exit_code == 0, output
    match = re.search(r"recomputed: train error (\d+\.\d{4}).*test error (\d+\.\d{4})", output)
    assert match, output
    metrics = json.loads((out / "model.json").read_text())["metrics"]
    assert match.group(1) == f"{metrics['train_error']:.4f}"
    assert match.group(2) == f"{metrics['test_error']:.4f}"
    assert "synthetic" in output


def test_info_without_recompute(trained: tuple[Path, Any]) -> None:
    out, _ = trained
    result = invoke(["info", out, "--no-recompute"])
    assert result.exit_code == 0, result.output
    assert "recomputed" not in result.output
    assert "parameters" in result.output


def test_info_on_a_broken_checkpoint_is_a_one_line_error(trained_copy: Path) -> None:
    (trained_copy / "model.json").write_text("{not json")
    assert_one_line_error(invoke(["info", trained_copy]), "model.json", "JSON")


def test_rerun_without_resume_refuses(trained_copy: Path) -> None:
    before = (trained_copy / "model.json").read_bytes()
    line = assert_one_line_error(_train(trained_copy))
    assert "resume" in line.lower()
    assert str(trained_copy) in line
    assert (trained_copy / "model.json").read_bytes() == before


def test_rerun_with_resume_gives_the_same_weights(
    trained: tuple[Path, Any], trained_copy: Path
) -> None:
    original, _ = trained
    result = _train(trained_copy, "--resume")
    assert result.exit_code == 0, result.output
    assert "train error" in result.output
    _assert_same_weights(original, trained_copy)
    a = json.loads((original / "model.json").read_text())
    b = json.loads((trained_copy / "model.json").read_text())
    assert a["tensor_sha256"] == b["tensor_sha256"]
    assert a["training"]["epochs"] == b["training"]["epochs"]


def test_resume_with_other_settings_is_refused(trained_copy: Path) -> None:
    args = [a if a != "0.1" else "0.05" for a in TRAIN_ARGS]
    assert "0.05" in args
    result = invoke([*args, "--out", trained_copy, "--resume"])
    assert_one_line_error(result, str(trained_copy), "other settings")


def test_interrupted_training_resumes_to_the_uninterrupted_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = ("--no-stop-at-zero", "--epochs", "4")

    reference = tmp_path / "reference"
    result = _train(reference, *extra)
    assert result.exit_code == 0, result.output

    class SimulatedStopError(ToroidError):
        pass

    real_fit = cli_commands.fit

    def fit_interrupted_after_two_epochs(*args: Any, **kwargs: Any) -> Any:
        def stop(record: Any) -> None:
            if record.epoch == 2:
                raise SimulatedStopError("interrupted by the test after epoch 2")

        return real_fit(*args, on_epoch_end=stop, **kwargs)

    resumed = tmp_path / "resumed"
    monkeypatch.setattr(cli_commands, "fit", fit_interrupted_after_two_epochs)
    assert_one_line_error(_train(resumed, *extra), "interrupted by the test")
    monkeypatch.undo()
    assert not (resumed / "model.json").exists()
    assert (resumed / "train-state.json").exists()
    assert json.loads((resumed / "train-state.json").read_text())["members"][0]["epoch"] == 2

    result = _train(resumed, *extra, "--resume")
    assert result.exit_code == 0, result.output
    _assert_same_weights(reference, resumed)
    meta = json.loads((resumed / "model.json").read_text())
    assert meta["training"]["epochs"] == 4
    assert [h["epoch"] for h in meta["history"]] == [1, 2, 3, 4]


# ---------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["train", "--model", "nope", "--out", "{out}"], ["--model", "'nope'", "mlp"]),
        (["train", "--dataset", "nope", "--out", "{out}"], ["--dataset", "'nope'", "synthetic"]),
        (["train", "--epochs", "abc", "--out", "{out}"], ["--epochs"]),
        (
            ["train", "--dataset", "synthetic", "--widths", "a,b", "--out", "{out}"],
            ["--widths", "'a,b'"],
        ),
        (["train", "--dataset", "synthetic"], ["--out"]),
        (["info", "{out}"], ["{out}", "not found"]),
    ],
    ids=[
        "unknown-model",
        "unknown-dataset",
        "epochs-abc",
        "widths-ab",
        "missing-out",
        "info-missing",
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    tmp_path: Path, args: list[str], needles: list[str]
) -> None:
    out = str(tmp_path / "out")
    result = invoke([a.replace("{out}", out) for a in args])
    assert_one_line_error(result, *(n.replace("{out}", out) for n in needles))
    assert not Path(out).exists()


def test_unknown_command_exits_2_with_one_line() -> None:
    assert_one_line_error(invoke(["bogus"]), "bogus")


def test_no_arguments_shows_help_without_an_error_line() -> None:
    result = invoke([])
    everything, _ = _streams(result)
    assert "Usage" in everything and "train" in everything
    assert "toroid: error" not in everything
