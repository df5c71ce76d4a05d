"""`toroid path` and `toroid bend` through typer's test runner."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_cli import TRAIN_ARGS, assert_one_line_error, invoke
from tests.test_cli_measure import PNG_MAGIC
from toroid import checkpoint, progress
from toroid.cli.data import checkpoint_data
from toroid.paths import make_path, profile


@pytest.fixture(autouse=True)
def _progress_off() -> Iterator[None]:
    yield
    progress.enable(False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("path-cli")
    paths: dict[str, Path] = {}
    for seed in (0, 1):
        paths[f"m{seed}"] = root / f"m{seed}"
        args = [a if a != "0" else str(seed) for a in TRAIN_ARGS]
        result = invoke([*args, "--out", paths[f"m{seed}"]])
        assert result.exit_code == 0, result.output
    paths["bend"] = root / "bend"
    result = invoke(
        ["bend", paths["m0"], paths["m1"], "-o", paths["bend"], "--epochs", "2", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    return paths


def test_path_json_matches_the_library(trained: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "geo.json"
    result = invoke(
        ["path", trained["m0"], trained["m1"], "--points", "5", "--json", out, "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert "train_error barrier" in result.output
    record = json.loads(out.read_text())
    a, meta = checkpoint.load(trained["m0"])
    b, _ = checkpoint.load(trained["m1"])
    data = checkpoint_data(meta, a, trained["m0"], need="test")
    expected = profile(make_path("geodesic", a, b), data, points=5, progress=False)
    assert record["kind"] == "geodesic" and record["ts"] == list(expected.ts)
    assert record["train_error"] == list(expected.train_error)
    assert record["test_loss"] == pytest.approx(list(expected.test_loss or ()))
    assert record["barriers"]["train_error"]["max"] == expected.barrier("max")


def test_bend_checkpoint_drives_a_polychain_profile(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    _, meta = checkpoint.load(trained["bend"])
    assert meta["bend"]["kind"] == "polychain" and len(meta["bend"]["losses"]) == 2
    plot = tmp_path / "chain.png"
    out = tmp_path / "chain.json"
    args = ["path", trained["m0"], trained["m1"], "--kind", "polychain", "--bend", trained["bend"]]
    result = invoke([*args, "--points", "5", "--refine", "1", "--plot", plot, "--json", out])
    assert result.exit_code == 0, result.output
    assert plot.read_bytes().startswith(PNG_MAGIC)
    record = json.loads(out.read_text())
    assert record["bend"] == str(trained["bend"]) and len(record["ts"]) >= 6


def test_retrain_bend(trained: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "retrained"
    args = ["bend", trained["m0"], trained["m1"], "-o", out, "--method", "retrain", "--quiet"]
    result = invoke([*args, "--epochs", "3"])
    assert result.exit_code == 0, result.output
    _, meta = checkpoint.load(out)
    assert meta["bend"]["method"] == "retrain"


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--kind", "spline"], ("--kind", "spline")),
        (["--points", "1"], ("--points",)),
        (["--kind", "polychain"], ("--bend",)),
        (["--refine", "-1"], ("--refine",)),
        (["--plot", "p.gif"], ("--plot", ".png")),
    ],
)
def test_path_bad_arguments_exit_2_with_one_line(
    trained: dict[str, Path], extra: list[str], needles: tuple[str, ...]
) -> None:
    result = invoke(["path", trained["m0"], trained["m1"], *extra])
    assert_one_line_error(result, *needles)


def test_path_refuses_a_bend_for_another_kind(trained: dict[str, Path]) -> None:
    args = ["path", trained["m0"], trained["m1"], "--kind", "bezier", "--bend", trained["bend"]]
    assert_one_line_error(invoke(args), "polychain")
    plain = ["path", trained["m0"], trained["m1"], "--bend", trained["bend"]]
    assert_one_line_error(invoke(plain), "--bend")


def test_bend_bad_arguments_exit_2_with_one_line(trained: dict[str, Path], tmp_path: Path) -> None:
    base = ["bend", trained["m0"], trained["m1"], "-o", tmp_path / "x"]
    assert_one_line_error(invoke([*base, "--method", "magic"]), "--method")
    assert_one_line_error(invoke([*base, "--method", "retrain", "--kind", "bezier"]), "retrain")
    assert_one_line_error(invoke([*base, "--epochs", "0"]), "--epochs")


@pytest.fixture(scope="module")
def plain_pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two MLPs without BatchNorm, where REPAIR has units to correct."""
    root = tmp_path_factory.mktemp("path-cli-plain")
    paths: dict[str, Path] = {}
    for seed in (0, 1):
        paths[f"m{seed}"] = root / f"m{seed}"
        args = [a if a != "0" else str(seed) for a in TRAIN_ARGS]
        args = [a if a != "30" else "5" for a in args]
        result = invoke([*args, "--no-batchnorm", "--out", paths[f"m{seed}"]])
        assert result.exit_code == 0, result.output
    return paths


def test_path_repair_matches_the_library(plain_pair: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "repaired.json"
    args = ["path", plain_pair["m0"], plain_pair["m1"], "--kind", "linear", "--points", "5"]
    result = invoke([*args, "--repair", "--json", out, "--quiet"])
    assert result.exit_code == 0, result.output
    assert "REPAIR" in result.output
    record = json.loads(out.read_text())
    a, meta = checkpoint.load(plain_pair["m0"])
    b, _ = checkpoint.load(plain_pair["m1"])
    data = checkpoint_data(meta, a, plain_pair["m0"], need="test")
    route = make_path("linear", a, b)
    expected = profile(route, data, points=5, bn="repair", progress=False)
    plain = profile(route, data, points=5, progress=False)
    assert record["bn"] == "repair" and record["ts"] == list(expected.ts)
    assert record["train_error"] == list(expected.train_error)
    assert record["train_loss"] == pytest.approx(list(expected.train_loss))
    assert record["train_loss"][0] == pytest.approx(plain.train_loss[0], abs=1e-6)
    assert record["train_loss"][2] != pytest.approx(plain.train_loss[2], abs=1e-6)


def test_path_repair_leaves_batchnorm_networks_as_recomputed(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    """Every hidden layer of the default MLP feeds a BatchNorm: REPAIR has nothing to add."""
    records = []
    for flag in ([], ["--repair"]):
        out = tmp_path / f"geo{len(flag)}.json"
        args = ["path", trained["m0"], trained["m1"], "--points", "3", "--json", out, "--quiet"]
        result = invoke([*args, *flag])
        assert result.exit_code == 0, result.output
        records.append(json.loads(out.read_text()))
    assert [r["bn"] for r in records] == ["recompute", "repair"]
    assert records[0]["train_loss"] == records[1]["train_loss"]
    assert records[0]["test_error"] == records[1]["test_error"]
