"""The command line on binary networks: `toroid train --binary`, and `spec`, `canon`,
`align`, `distance` on binary checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.test_cli import TRAIN_ARGS, _streams, assert_one_line_error, invoke
from toroid import checkpoint
from toroid.evaluate import evaluate
from toroid.manifold import distance
from toroid.models import BinaryLinear, is_binary
from toroid.symmetry import canonicalize, is_canonical, spec_for


@pytest.fixture(scope="module")
def binary_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("binary-cli")
    runs = []
    for seed in ("0", "1"):
        out = root / f"run{seed}"
        args = [a if a != "0" else seed for a in TRAIN_ARGS]
        result = invoke([*args, "--binary", "--out", out])
        assert result.exit_code == 0, result.output
        runs.append(out)
    return runs[0], runs[1]


def binary_weights(path: Path, *, canonical: bool = False) -> dict[str, torch.Tensor]:
    model, _ = checkpoint.load(path)
    state = (canonicalize(model) if canonical else model).state_dict()
    return {name: state[name] for name in spec_for(model).binary_tensors()}


def test_train_binary_writes_a_binary_minimizer(binary_runs: tuple[Path, Path]) -> None:
    meta = json.loads((binary_runs[0] / "model.json").read_text())
    assert meta["model"]["binary"] is True
    assert meta["model"]["activation"] == "sign"
    assert meta["metrics"]["train_error"] == 0.0
    model, _ = checkpoint.load(binary_runs[0])
    assert is_binary(model)
    assert sum(isinstance(m, BinaryLinear) for m in model.modules()) == 2


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--binary", "--model", "vgg"], ["--binary", "'vgg'"]),
        (["--binary", "--activation", "relu"], ["sign activations"]),
        (["--binary", "--no-batchnorm"], ["batchnorm"]),
        (["--activation", "gelu"], ["--activation", "sign"]),
    ],
)
def test_train_refuses_bad_binary_options(
    extra: list[str], needles: list[str], tmp_path: Path
) -> None:
    result = invoke([*TRAIN_ARGS, "--out", tmp_path / "run", *extra])
    assert_one_line_error(result, *needles)


def test_spec_and_canon_on_a_binary_checkpoint(
    binary_runs: tuple[Path, Path], tmp_path: Path
) -> None:
    result = invoke(["spec", binary_runs[0]])
    output, _ = _streams(result)
    assert result.exit_code == 0, output
    assert "cell binary" in output and "(binary weights)" in output
    out = tmp_path / "canon"
    assert invoke(["canon", binary_runs[0], "-o", out]).exit_code == 0
    canonical, _ = checkpoint.load(out)
    assert is_canonical(canonical)
    assert all(bool((w.abs() == 1).all()) for w in binary_weights(out).values())
    original, _ = checkpoint.load(binary_runs[0])
    data = torch.randn(64, canonical[1].in_features)
    assert torch.equal(canonical(data).argmax(1), original(data).argmax(1))


def test_align_and_distance_on_binary_checkpoints(
    binary_runs: tuple[Path, Path], tmp_path: Path
) -> None:
    a, b = binary_runs
    out = tmp_path / "aligned"
    result = invoke(["align", b, "--to", a, "-o", out])
    assert result.exit_code == 0, result.output
    record_path = tmp_path / "d.json"
    result = invoke(["distance", a, b, "--kind", "overlap", "--json", record_path])
    output, _ = _streams(result)
    assert result.exit_code == 0, output
    assert "binary cells" in output
    record: dict[str, Any] = json.loads(record_path.read_text())
    assert record["over"] == "binary"
    expected = distance(checkpoint.load(a)[0], checkpoint.load(b)[0], kind="overlap")
    assert record["value"] == pytest.approx(expected.value, rel=1e-12)
    # The aligned checkpoint's sign weights differ from a's in exactly that many places.
    ours, reference = binary_weights(out), binary_weights(a, canonical=True)
    differing = sum(int((ours[k] != reference[k]).sum()) for k in ours)
    total = sum(w.numel() for w in ours.values())
    assert differing / total == pytest.approx(record["value"], rel=1e-12)
    aligned, _ = checkpoint.load(out)
    original, _ = checkpoint.load(b)
    data = torch.randn(64, aligned[1].in_features)
    assert evaluate(aligned, (data, original(data).argmax(1))).error == 0.0
    result = invoke(["distance", a, b, "--over", "all"])
    assert result.exit_code == 0 and "binary cells" not in _streams(result)[0]
    assert_one_line_error(invoke(["distance", a, b, "--over", "weights"]), "--over")
