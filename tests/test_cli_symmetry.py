"""`toroid spec`, `toroid canon` and `toroid align` through typer's test runner."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tests.test_cli import TRAIN_ARGS, _plain, _streams, assert_one_line_error, invoke
from toroid import checkpoint
from toroid.data import load
from toroid.models import mlp
from toroid.symmetry import canonicalize, is_canonical, random_symmetry, same_function, spec_for

SAVED_BY_CHECKPOINT = {
    "format",
    "format_version",
    "model",
    "toroid_version",
    "git_commit",
    "saved_at",
    "tensor_file",
    "tensor_sha256",
}
SYNTHETIC = {"name": "synthetic", "train_size": None, "test_size": None, "seed": 0, "root": None}


def _carried(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if k not in SAVED_BY_CHECKPOINT}


def _meta(path: Path) -> dict[str, Any]:
    return dict(json.loads((path / "model.json").read_text()))


def _inputs(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    split = load("synthetic", seed=0)
    return torch.cat([split.train.x, split.test.x]).to(dtype)


def _assert_states_close(a: nn.Module, b: nn.Module, *, atol: float = 1e-8) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        if sa[key].is_floating_point():
            torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=atol, msg=key)
        else:
            assert torch.equal(sa[key], sb[key]), key


def _totals(output: str) -> tuple[float, float]:
    match = re.search(r"total\s*│\s*│\s*(-?\d+\.\d+)\s*│\s*(-?\d+\.\d+)", output)
    assert match, output
    return float(match.group(1)), float(match.group(2))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two MLPs (BatchNorm, ReLU) trained on `synthetic` from seeds 0 and 1, stored in
    float64; a tanh MLP and a narrower ReLU MLP built and saved with the data metadata."""
    root = tmp_path_factory.mktemp("symmetry-cli")
    paths: dict[str, Path] = {}
    for seed in (0, 1):
        trained = root / f"trained-{seed}"
        result = invoke([*[a if a != "0" else str(seed) for a in TRAIN_ARGS], "--out", trained])
        assert result.exit_code == 0, result.output
        model, meta = checkpoint.load(trained)
        paths[f"relu{seed}"] = checkpoint.save(
            model.double(), root / f"relu{seed}", meta=_carried(meta)
        )
    torch.manual_seed(0)  # the built models below: same weights whatever ran before
    tanh = mlp(16, [12, 8], 4, batchnorm=False, activation="tanh").double()
    paths["tanh"] = checkpoint.save(tanh, root / "tanh", meta={"data": SYNTHETIC, "seed": 0})
    narrow = mlp(16, [8], 4).double()
    paths["narrow"] = checkpoint.save(narrow, root / "narrow", meta={"data": SYNTHETIC})
    tanh_bn = mlp(16, [16], 4, batchnorm=True, activation="tanh").double()
    paths["tanh16"] = checkpoint.save(tanh_bn, root / "tanh16", meta={"data": SYNTHETIC})
    nodata = mlp(16, [12, 8], 4, batchnorm=False, activation="tanh").double()
    paths["nodata"] = checkpoint.save(nodata, root / "nodata")
    return paths


# ---------------------------------------------------------------- spec


@pytest.mark.parametrize("name", ["relu0", "tanh"])
def test_spec_prints_every_group_and_cell(checkpoints: dict[str, Path], name: str) -> None:
    result = invoke(["spec", checkpoints[name]])
    output, _ = _streams(result)
    assert result.exit_code == 0, output
    model, _ = checkpoint.load(checkpoints[name])
    symmetry = spec_for(model)
    assert symmetry.groups
    for group in symmetry.groups:
        assert f"group {group.name}: {group.size} units" in output, (group.name, output)
    assert symmetry.describe() in output
    assert "output layer" in output
    if name == "tanh":
        assert "sign-symmetric" in output


def test_spec_of_a_missing_checkpoint_is_a_one_line_error(tmp_path: Path) -> None:
    assert_one_line_error(invoke(["spec", tmp_path / "nope"]), "not found")


# ---------------------------------------------------------------- canon


@pytest.mark.parametrize("output", ["normalize", "keep"])
def test_canon_writes_a_canonical_model_with_the_same_predictions(
    checkpoints: dict[str, Path], tmp_path: Path, output: str
) -> None:
    source = checkpoints["relu0"]
    out = tmp_path / "canon"
    args = ["canon", source, "-o", out] + ([] if output == "normalize" else ["--output", output])
    result = invoke(args)
    text, _ = _streams(result)
    assert result.exit_code == 0, text
    assert "is_canonical: True" in text
    assert str(out) in text

    original, source_meta = checkpoint.load(source)
    canonical, meta = checkpoint.load(out)
    assert is_canonical(canonical)
    assert not is_canonical(original)  # trained weights are not unit-norm by chance
    x = _inputs()
    with torch.no_grad():
        assert torch.equal(original(x).argmax(1), canonical(x).argmax(1))
    assert same_function(
        original, canonical, x, rtol=1e-9, atol=1e-12, up_to_scale=output == "normalize"
    )
    _assert_states_close(canonical, canonicalize(original, output=output))  # type: ignore[arg-type]

    for key in ("data", "optimizer", "seed", "metrics", "training"):
        assert meta[key] == source_meta[key], key
    assert meta["canonical"] == {"output": output, "source": str(source)}
    assert meta["model"] == source_meta["model"]


def test_canon_refuses_an_existing_checkpoint_without_force(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "canon"
    assert invoke(["canon", checkpoints["relu0"], "-o", out]).exit_code == 0
    before = (out / "model.json").read_bytes()
    line = assert_one_line_error(invoke(["canon", checkpoints["tanh"], "-o", out]), str(out))
    assert "--force" in line
    assert (out / "model.json").read_bytes() == before

    result = invoke(["canon", checkpoints["tanh"], "-o", out, "--force"])
    assert result.exit_code == 0, result.output
    assert _meta(out)["canonical"]["source"] == str(checkpoints["tanh"])


def test_canon_bad_output_mode_is_a_one_line_error(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "canon"
    result = invoke(["canon", checkpoints["relu0"], "-o", out, "--output", "bogus"])
    assert_one_line_error(result, "--output", "'bogus'", "normalize")
    assert not out.exists()


# ---------------------------------------------------------------- align


@pytest.mark.parametrize("method", ["weight", "activation"])
@pytest.mark.parametrize("name", ["relu0", "tanh"])
@pytest.mark.parametrize("seed", [0, 1])
def test_align_recovers_a_planted_symmetry(
    checkpoints: dict[str, Path], tmp_path: Path, name: str, method: str, seed: int
) -> None:
    reference_path = checkpoints[name]
    reference, meta = checkpoint.load(reference_path)
    moved, _ = random_symmetry(reference, seed=seed)
    moved_path = checkpoint.save(moved, tmp_path / "moved", meta=_carried(meta))
    out = tmp_path / "aligned"
    args = ["align", moved_path, "--to", reference_path, "-o", out, "--method", method]
    result = invoke([*args, "--samples", "300"])
    output, _ = _streams(result)
    assert result.exit_code == 0, output

    before, after = _totals(output)
    assert after == pytest.approx(1.0, abs=1e-4)
    assert before < 0.999
    for group in spec_for(reference).groups:
        assert group.name in output
    assert re.search(r"iterations \d+", output), output

    aligned, aligned_meta = checkpoint.load(out)
    _assert_states_close(aligned, canonicalize(reference))
    entry = aligned_meta["alignment"]
    assert entry["reference"] == str(reference_path)
    assert entry["method"] == method
    assert entry["iterations"] >= 1
    assert entry["total_after"] == pytest.approx(1.0, abs=1e-9)
    assert entry["total_before"] == pytest.approx(before, abs=1e-4)
    assert aligned_meta["data"] == meta["data"]


@pytest.mark.parametrize("method", ["weight", "activation"])
def test_align_two_trained_networks_keeps_the_function(
    checkpoints: dict[str, Path], tmp_path: Path, method: str
) -> None:
    out = tmp_path / "aligned"
    source, reference = checkpoints["relu0"], checkpoints["relu1"]
    result = invoke(["align", source, "--to", reference, "-o", out, "--method", method])
    output, _ = _streams(result)
    assert result.exit_code == 0, output
    before, after = _totals(output)
    if method == "weight":
        assert after >= before
    original, source_meta = checkpoint.load(source)
    aligned, meta = checkpoint.load(out)
    assert is_canonical(aligned)
    assert same_function(original, aligned, _inputs(), rtol=1e-9, atol=1e-12, up_to_scale=True)
    for key in ("data", "optimizer", "seed", "metrics"):
        assert meta[key] == source_meta[key], key
    assert meta["alignment"]["method"] == method
    assert meta["alignment"]["total_after"] == pytest.approx(after, abs=1e-4)


def test_align_starts_are_recorded_and_never_less_similar(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    from toroid.symmetry.align import WEIGHT_MATCHING_VERSION

    source, reference = checkpoints["relu0"], checkpoints["relu1"]
    totals = {}
    for starts in (1, 4):
        out = tmp_path / f"aligned-{starts}"
        result = invoke(["align", source, "--to", reference, "-o", out, "--starts", str(starts)])
        output, _ = _streams(result)
        assert result.exit_code == 0, output
        entry = checkpoint.load(out)[1]["alignment"]
        assert entry["starts"] == starts and entry["weight_matching"] == WEIGHT_MATCHING_VERSION
        assert 0 <= entry["start"] < starts
        totals[starts] = entry["total_after"]
    assert totals[4] >= totals[1]
    args = ["align", source, "--to", reference, "-o", tmp_path / "x", "--starts", "0"]
    assert "--starts must be at least 1, got 0" in assert_one_line_error(invoke(args), "0")


def test_align_refuses_an_existing_checkpoint_without_force(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "aligned"
    args = ["align", checkpoints["relu0"], "--to", checkpoints["relu1"], "-o", out]
    assert invoke(args).exit_code == 0
    before = (out / "model.json").read_bytes()
    assert "--force" in assert_one_line_error(invoke(args), str(out))
    assert (out / "model.json").read_bytes() == before
    assert invoke([*args, "--force"]).exit_code == 0


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (
            ["align", "{relu0}", "--to", "{relu1}", "-o", "{out}", "--method", "bogus"],
            ["--method", "'bogus'", "activation"],
        ),
        (["align", "{relu0}", "-o", "{out}"], ["--to"]),
        (["align", "{relu0}", "--to", "{relu1}"], ["--out"]),
        (["align", "{relu0}", "--to", "{narrow}", "-o", "{out}"], ["different architectures"]),
        (["align", "{tanh16}", "--to", "{relu0}", "-o", "{out}"], ["different architectures"]),
        (
            ["align", "{relu0}", "--to", "{relu1}", "-o", "{out}", "--max-iter", "0"],
            ["--max-iter"],
        ),
        (
            ["align", "{relu0}", "--to", "{relu1}", "-o", "{out}", "--samples", "0"],
            ["--samples"],
        ),
        (
            ["align", "{nodata}", "--to", "{tanh}", "-o", "{out}", "--method", "activation"],
            ["{nodata}", "data"],
        ),
        (["align", "{relu0}", "--to", "{missing}", "-o", "{out}"], ["{missing}", "not found"]),
        (["canon", "{relu0}"], ["--out"]),
    ],
    ids=[
        "bad-method",
        "missing-to",
        "missing-out",
        "other-widths",
        "other-activation",
        "max-iter-0",
        "samples-0",
        "activation-without-data",
        "missing-reference",
        "canon-missing-out",
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    checkpoints: dict[str, Path], tmp_path: Path, args: list[str], needles: list[str]
) -> None:
    places = {f"{{{k}}}": str(v) for k, v in checkpoints.items()}
    places["{out}"] = str(tmp_path / "out")
    places["{missing}"] = str(tmp_path / "missing")

    def fill(text: str) -> str:
        for key, value in places.items():
            text = text.replace(key, value)
        return text

    line = assert_one_line_error(invoke([fill(a) for a in args]), *map(fill, needles))
    assert "Traceback" not in _plain(line)
    assert not (tmp_path / "out").exists()
