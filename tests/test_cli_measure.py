"""`toroid flatness` and `toroid distance` through typer's test runner."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.test_cli import TRAIN_ARGS, _plain, _streams, assert_one_line_error, invoke
from toroid import checkpoint, progress
from toroid.cli.measure_commands import parse_sigmas
from toroid.data import Split, TensorData, load
from toroid.errors import InvalidArgumentError
from toroid.flatness import local_energy
from toroid.manifold import distance
from toroid.models import mlp
from toroid.symmetry import random_symmetry

SYNTHETIC = {"name": "synthetic", "train_size": None, "test_size": None, "seed": 0, "root": None}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _no_nan(value: str) -> Any:
    raise AssertionError(f"not valid JSON: {value}")


def _read_json(path: Path) -> dict[str, Any]:
    record = json.loads(path.read_text(), parse_constant=_no_nan)
    assert isinstance(record, dict)
    return record


@pytest.fixture(autouse=True)
def _progress_off() -> Iterator[None]:
    """`toroid flatness` without --quiet turns progress on globally; turn it off again."""
    yield
    progress.enable(False)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """MLPs (BatchNorm, ReLU) trained on `synthetic` from seeds 0 and 1 (float32, and seed 0
    in float64), copies of seed 0 moved by random symmetries, and built models: a tanh MLP
    without BatchNorm, a narrower ReLU MLP, and one without data metadata."""
    root = tmp_path_factory.mktemp("measure-cli")
    paths: dict[str, Path] = {}
    for seed in (0, 1):
        paths[f"relu{seed}"] = root / f"relu{seed}"
        args = [a if a != "0" else str(seed) for a in TRAIN_ARGS]
        result = invoke([*args, "--out", paths[f"relu{seed}"]])
        assert result.exit_code == 0, result.output
    model, meta = checkpoint.load(paths["relu0"])
    carried = {"data": meta["data"], "seed": meta["seed"]}
    paths["relu0d"] = checkpoint.save(model.double(), root / "relu0d", meta=carried)
    moved, _ = random_symmetry(model.double(), seed=3)
    paths["moved"] = checkpoint.save(moved, root / "moved", meta=carried)
    scaled, _ = random_symmetry(model.double(), seed=4, permutations=False)
    paths["scaled"] = checkpoint.save(scaled, root / "scaled", meta=carried)
    torch.manual_seed(0)  # the built models below: same weights whatever ran before
    tanh = mlp(16, [12, 8], 4, batchnorm=False, activation="tanh").double()
    paths["tanh"] = checkpoint.save(tanh, root / "tanh", meta={"data": SYNTHETIC, "seed": 0})
    tanh_moved, _ = random_symmetry(tanh, seed=5)
    paths["tanh-moved"] = checkpoint.save(tanh_moved, root / "tanh-moved", meta={})
    paths["narrow"] = checkpoint.save(mlp(16, [8], 4), root / "narrow", meta={"data": SYNTHETIC})
    paths["nodata"] = checkpoint.save(mlp(16, [16], 4), root / "nodata")
    return paths


def _split_for(model: torch.nn.Module) -> Split:
    """The synthetic data of the checkpoints, in the model's dtype."""
    split = load("synthetic", seed=0)
    dtype = next(model.parameters()).dtype
    return Split(
        TensorData(split.train.x.to(dtype), split.train.y),
        TensorData(split.test.x.to(dtype), split.test.y),
        split.meta,
    )


# ---------------------------------------------------------------- sigma parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0:0.5:11", [0.5 * i / 10 for i in range(11)]),
        ("0.1:2:7", [*(0.1 + (2 - 0.1) * i / 6 for i in range(6)), 2.0]),
        (" 0 : 1 : 3 ", [0.0, 0.5, 1.0]),
        ("0.2:0.2:1", [0.2]),
        ("0,0.1,0.2", [0.0, 0.1, 0.2]),
        (" 0 , 0.25 ,1 ", [0.0, 0.25, 1.0]),
        ("0.3", [0.3]),
        ("1e-3,2", [0.001, 2.0]),
    ],
)
def test_parse_sigmas_accepts_ranges_and_lists(text: str, expected: list[float]) -> None:
    values = parse_sigmas(text)
    assert isinstance(values, tuple)
    assert all(type(v) is float for v in values)
    assert list(values) == expected  # exactly toroid.grid.parse_grid, endpoints included


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "start:stop:count"),
        ("0:1", "start:stop:count"),
        ("0:1:2:3", "start:stop:count"),
        ("0:1:x", "start:stop:count"),
        ("0:1:2.5", "start:stop:count"),
        ("a,b", "comma list"),
        ("0,,1", "comma list"),
        ("0,0.1,", "comma list"),
        ("0:1:0", "count"),
        ("-0.1,0.2", ">= 0"),
        ("-1:1:3", ">= 0"),
        ("0,nan", "finite"),
        ("0:inf:3", "finite"),
        ("0.2,0.1", "increasing"),
        ("1:0:3", "increasing"),
        ("0,0", "increasing"),
        ("0.1:0.1:3", "increasing"),
    ],
)
def test_parse_sigmas_rejects_bad_forms_naming_the_value(text: str, needle: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        parse_sigmas(text)
    message = str(info.value)
    assert "--sigmas" in message
    assert repr(text) in message
    assert needle in message
    assert "\n" not in message


# ---------------------------------------------------------------- flatness


@pytest.mark.parametrize(
    ("name", "noise", "split"),
    [
        ("relu0", "multiplicative", "both"),
        ("relu0d", "spherical", "train"),
        ("tanh", "multiplicative", "test"),
    ],
)
def test_flatness_json_matches_local_energy(
    checkpoints: dict[str, Path], tmp_path: Path, name: str, noise: str, split: str
) -> None:
    out = tmp_path / "sub" / "flat.json"
    args: list[str | Path] = ["flatness", checkpoints[name], "--sigmas", "0:1.5:4"]
    args += ["--samples", "3"]
    args += ["--split", split, "--noise", noise, "--seed", "3", "--bn-samples", "300"]
    result = invoke([*args, "--json", out, "--quiet"])
    output, _ = _streams(result)
    assert result.exit_code == 0, output
    record = _read_json(out)
    assert not list(out.parent.glob(".*.tmp"))  # written atomically, nothing left over

    parts = ["train", "test"] if split == "both" else [split]
    assert record["checkpoint"] == str(checkpoints[name])
    assert record["sigmas"] == [0.0, 0.5, 1.0, 1.5]
    assert (record["noise"], record["samples"], record["seed"]) == (noise, 3, 3)
    assert record["split"] == split and record["bn_samples"] == 300
    assert record["data"] == SYNTHETIC | record["data"]  # the checkpoint's data entry
    for key in ("base", "mean", "stderr", "raw"):
        assert sorted(record[key]) == sorted(parts), key
    for part in parts:
        assert record["mean"][part][0] == 0.0
        assert record["raw"][part][0] == [0.0, 0.0, 0.0]

    model, _ = checkpoint.load(checkpoints[name])
    direct = local_energy(
        model,
        _split_for(model),
        sigmas=[0.0, 0.5, 1.0, 1.5],
        samples=3,
        noise=noise,  # type: ignore[arg-type]
        split=split,  # type: ignore[arg-type]
        seed=3,
        bn_samples=300,
        progress=False,
    )
    assert record["base"] == dict(direct.base)
    assert record["mean"] == {k: list(v) for k, v in direct.mean.items()}
    assert record["stderr"] == {k: list(v) for k, v in direct.stderr.items()}
    assert record["raw"] == {k: [list(r) for r in v] for k, v in direct.raw.items()}
    if name == "relu0":  # a trained net: perturbations of size 1.5 do cost something
        assert record["mean"]["train"][-1] > 0

    assert f"{noise} noise" in " ".join(output.split())  # the table title may wrap
    for part in parts:
        assert f"{part} dE" in output and f"{part} stderr" in output
        assert f"{part} {direct.base[part]:.4f}" in output
    assert "base error" in output
    assert str(out) in output


def test_flatness_defaults_and_progress(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "flat.json"
    result = invoke(["flatness", checkpoints["relu0"], "--json", out])  # progress on
    output, _ = _streams(result)
    assert result.exit_code == 0, output
    record = _read_json(out)
    assert record["sigmas"] == [0.5 * i / 10 for i in range(11)]  # 0.3, not 0.30000000000000004
    assert (record["samples"], record["split"], record["noise"]) == (8, "both", "multiplicative")
    assert (record["seed"], record["bn_samples"]) == (0, 2000)
    assert [len(r) for r in record["raw"]["test"]] == [8] * 11


@pytest.mark.parametrize(("suffix", "magic"), [("png", PNG_MAGIC), ("pdf", b"%PDF")])
def test_flatness_plot(
    checkpoints: dict[str, Path], tmp_path: Path, suffix: str, magic: bytes
) -> None:
    plot, out = tmp_path / "plots" / f"flat.{suffix}", tmp_path / "flat.json"
    args: list[str | Path] = ["flatness", checkpoints["relu0"], "--sigmas", "0,0.5,1"]
    args += ["--samples", "1"]
    result = invoke([*args, "--plot", plot, "--json", out, "--quiet"])
    output, _ = _streams(result)
    assert result.exit_code == 0, output
    data = plot.read_bytes()
    assert data.startswith(magic)
    assert len(data) > 1000
    assert str(plot) in output
    record = _read_json(out)  # one sample: no standard error, and still valid JSON
    assert record["stderr"] == {"train": [None] * 3, "test": [None] * 3}
    assert record["sigmas"] == [0.0, 0.5, 1.0]


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--sigmas", "0:1"], ["--sigmas", "'0:1'", "start:stop:count", "comma list"]),
        (["--sigmas", "0,x"], ["--sigmas", "'0,x'", "start:stop:count", "comma list"]),
        (["--sigmas", "0.5,0.1"], ["--sigmas", "'0.5,0.1'", "increasing"]),
        (["--sigmas", "-1,0"], ["--sigmas", "'-1,0'", ">= 0"]),
        (["--samples", "0"], ["--samples"]),
        (["--samples", "x"], ["--samples", "integer"]),
        (["--split", "bogus"], ["--split", "'bogus'", "both"]),
        (["--noise", "bogus"], ["--noise", "'bogus'", "spherical"]),
        (["--bn-samples", "0"], ["--bn-samples"]),
        (["--plot", "{out}/flat.txt"], ["--plot", ".png"]),
        (["--json", "{dir}"], ["--json", "{dir}", "directory"]),
    ],
    ids=[
        "sigmas-two-parts",
        "sigmas-not-a-number",
        "sigmas-decreasing",
        "sigmas-negative",
        "samples-0",
        "samples-x",
        "bad-split",
        "bad-noise",
        "bn-samples-0",
        "plot-suffix",
        "json-directory",
    ],
)
def test_flatness_bad_arguments_exit_2_with_one_line(
    checkpoints: dict[str, Path], tmp_path: Path, args: list[str], needles: list[str]
) -> None:
    places = {"{out}": str(tmp_path / "out"), "{dir}": str(tmp_path)}

    def fill(text: str) -> str:
        for key, value in places.items():
            text = text.replace(key, value)
        return text

    result = invoke(["flatness", checkpoints["relu0"], *map(fill, args), "--quiet"])
    line = assert_one_line_error(result, *map(fill, needles))
    assert "Traceback" not in _plain(line)
    assert not (tmp_path / "out").exists()


def test_flatness_needs_data_metadata(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "flat.json"
    result = invoke(["flatness", checkpoints["nodata"], "--json", out, "--quiet"])
    assert_one_line_error(result, str(checkpoints["nodata"]), "'data'")
    assert not out.exists()
    assert_one_line_error(invoke(["flatness", tmp_path / "missing"]), "not found")


# ---------------------------------------------------------------- distance


def _distance_json(args: list[str | Path], tmp_path: Path) -> tuple[dict[str, Any], str]:
    out = tmp_path / "distance.json"
    result = invoke(["distance", *args, "--json", out])
    output, _ = _streams(result)
    assert result.exit_code == 0, output
    return _read_json(out), output


@pytest.mark.parametrize(("a", "b"), [("relu0", "moved"), ("tanh", "tanh-moved")])
def test_distance_to_a_symmetric_copy_is_zero(
    checkpoints: dict[str, Path], tmp_path: Path, a: str, b: str
) -> None:
    record, output = _distance_json([checkpoints[a], checkpoints[b]], tmp_path)
    assert record["kind"] == "geodesic" and record["aligned"] is True
    assert record["value"] == pytest.approx(0.0, abs=1e-6)
    assert record["cells"] > 0
    assert record["per_layer"] is None
    assert (record["a"], record["b"]) == (str(checkpoints[a]), str(checkpoints[b]))
    assert "geodesic distance" in output and "aligned" in output

    unaligned, output = _distance_json([checkpoints[a], checkpoints[b], "--no-align"], tmp_path)
    assert unaligned["aligned"] is False and "not aligned" in output
    assert unaligned["value"] > 0.1  # the planted permutation is not undone


def test_distance_without_alignment_ignores_scales(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    args: list[str | Path] = [checkpoints["relu0"], checkpoints["scaled"], "--no-align"]
    record, _ = _distance_json(args, tmp_path)
    assert record["value"] == pytest.approx(0.0, abs=1e-6)


def test_distance_between_independent_minimizers_is_positive(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    record, _ = _distance_json([checkpoints["relu0"], checkpoints["relu1"]], tmp_path)
    assert record["value"] > 0.1


@pytest.mark.parametrize("kind", ["geodesic", "mean_angle", "overlap"])
def test_distance_kinds_and_per_layer(
    checkpoints: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    a, b = checkpoints["relu0"], checkpoints["relu1"]
    record, output = _distance_json([a, b, "--kind", kind, "--per-layer"], tmp_path)
    expected = distance(checkpoint.load(a)[0], checkpoint.load(b)[0], kind=kind, per_layer=True)  # type: ignore[arg-type]
    assert record["kind"] == kind
    assert record["value"] == pytest.approx(expected.value, rel=1e-12, abs=1e-15)
    assert record["cells"] == expected.cells
    assert expected.per_layer is not None
    assert record["per_layer"] == pytest.approx(dict(expected.per_layer), rel=1e-12)
    head = str(expected).splitlines()[0]
    assert head in output  # the kind named, with its formula
    assert f"{kind} distance" in output
    for family in expected.per_layer:
        assert family in output
    if kind == "geodesic":
        squares = sum(v**2 for v in record["per_layer"].values())
        assert math.sqrt(squares) == pytest.approx(record["value"], rel=1e-9)
    else:
        assert 0 < record["value"] < (math.pi if kind == "mean_angle" else 1)


def test_distance_without_per_layer_prints_no_table(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    result = invoke(["distance", checkpoints["relu0"], checkpoints["relu1"], "--kind", "overlap"])
    output, _ = _streams(result)
    assert result.exit_code == 0, output
    assert "overlap distance" in output
    assert "per cell family" not in output


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["{relu0}", "{relu1}", "--kind", "bogus"], ["--kind", "'bogus'", "mean_angle"]),
        (["{relu0}"], ["Missing argument 'b'"]),
        (["{relu0}", "{narrow}"], ["different architectures"]),
        (["{relu0}", "{tanh}"], ["different architectures"]),
        (["{relu0}", "{missing}"], ["{missing}", "not found"]),
        (["{relu0}", "{relu1}", "--json", "{dir}"], ["--json", "directory"]),
        (["{relu0}", "{relu1}", "--seed", "x"], ["--seed", "integer"]),
    ],
    ids=[
        "bad-kind",
        "missing-b",
        "other-widths",
        "other-model",
        "missing-b-dir",
        "json-dir",
        "seed-x",
    ],
)
def test_distance_bad_arguments_exit_2_with_one_line(
    checkpoints: dict[str, Path], tmp_path: Path, args: list[str], needles: list[str]
) -> None:
    places = {f"{{{k}}}": str(v) for k, v in checkpoints.items()}
    places["{missing}"] = str(tmp_path / "missing")
    places["{dir}"] = str(tmp_path)

    def fill(text: str) -> str:
        for key, value in places.items():
            text = text.replace(key, value)
        return text

    line = assert_one_line_error(invoke(["distance", *map(fill, args)]), *map(fill, needles))
    assert "Traceback" not in _plain(line)
