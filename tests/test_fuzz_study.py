"""Hostile configs and study directories end in one line, never a traceback (issue 14):
random edits of a valid config through validation and the task graph, broken study
directories through `toroid study run|status|report`, and archived read-only studies that
can still be inspected and reported elsewhere."""

from __future__ import annotations

import copy
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from toroid.cli import app
from toroid.errors import ToroidError
from toroid.study import StudyConfigError, run_study, status
from toroid.study.config import validate_config
from toroid.study.graph import build_graph
from toroid.study.store import Store

MLP: dict[str, Any] = {"name": "mlp", "in_features": 16, "widths": [8], "num_classes": 4}
BASE: dict[str, Any] = {
    "name": "fuzz",
    "data": {"name": "synthetic", "train_size": 128, "test_size": 64, "seed": 0},
    "model": MLP,
    "optimizers": ["sgd", {"name": "adam", "lr": 0.01, "label": "ad"}],
    "seeds": [0, 1],
    "training": {"epochs": 2, "schedule": "cosine", "batch_size": 32},
    "analyses": {
        "local_energy": {"sigmas": "0:0.2:2", "samples": 2, "bn_samples": 64},
        "distances": {"kinds": ["geodesic"]},
        "paths": {"kinds": ["linear"], "points": 3, "pairs": "within", "bn_samples": 64},
        "bends": {"pairs": "first-seeds", "epochs": 1, "points": 3},
    },
    "report": {"summary_sigmas": [0.1]},
    "binary": {
        "model": {**MLP, "binary": True},
        "optimizers": [{"name": "adam", "lr": 0.01}],
        "seeds": [0, 1],
        "training": {"epochs": 1},
        "flip_probs": [0.0, 0.1],
        "samples": 2,
        "flip_orders": 2,
        "flip_points": 3,
        "bn_samples": 64,
    },
}
runner = CliRunner()


def _leaves(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into the config: mappings by key, lists by index (and the containers)."""
    out = [path] if path else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _leaves(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _leaves(value, (*path, i))
    return out


PATHS = _leaves(BASE)
HOSTILE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["0:1", "0:0.5:-3", "a:b:c", "1e400", "../x", "x/y", "", "é", "nan"]),
    st.lists(st.integers(min_value=-3, max_value=3), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


def _set(raw: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    edited = copy.deepcopy(raw)
    node: Any = edited
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return edited


def _one_line(error: BaseException) -> None:
    assert isinstance(error, ToroidError), f"{type(error).__name__}: {error}"
    assert "\n" not in str(error) and str(error), repr(error)


@given(st.lists(st.tuples(st.sampled_from(PATHS), HOSTILE), min_size=1, max_size=3))
@settings(max_examples=300, deadline=None, derandomize=True)
def test_any_edit_of_a_config_is_valid_or_one_line(edits: list[tuple[Any, Any]]) -> None:
    raw = BASE
    for path, value in edits:
        try:
            raw = _set(raw, path, value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit replaced a container on this path
    try:
        config = validate_config(raw, source="fuzz")
        build_graph(config)
    except Exception as exc:  # every failure must be a one-line ToroidError
        _one_line(exc)


@pytest.mark.parametrize(
    ("model", "needle"),
    [
        ({**MLP, "widths": [10**9]}, "parameters, more than"),
        ({**MLP, "widths": ["wide"]}, "bad arguments"),
        ({**MLP, "widths": [-4]}, "positive"),
        ({"name": "transformer"}, "unknown model"),
        ({**MLP, "depth": 3}, "bad arguments"),
    ],
)
def test_a_bad_model_block_is_refused_when_the_config_is_read(
    model: dict[str, Any], needle: str
) -> None:
    with pytest.raises(StudyConfigError, match=needle) as info:
        validate_config({**BASE, "model": model}, source="fuzz")
    assert str(info.value).startswith("fuzz: model:")
    with pytest.raises(StudyConfigError, match=r"binary\.model"):
        validate_config({**BASE, "binary": {**BASE["binary"], "model": {**model, "binary": True}}})


# Study directories ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = {**BASE, "binary": None, "analyses": {**BASE["analyses"], "bends": None}}
    directory = tmp_path_factory.mktemp("fuzz-study") / "study"
    run_study(validate_config(raw), directory, progress=False, report=False)
    return directory


def _db_garbage(d: Path) -> None:
    (d / "study.db").write_bytes(b"SQLite format 2\x00" + b"\x17" * 4000)


def _db_directory(d: Path) -> None:
    for name in ("study.db", "study.db-wal", "study.db-shm"):
        (d / name).unlink(missing_ok=True)
    (d / "study.db").mkdir()


def _db_old_schema(d: Path) -> None:
    (d / "study.db").unlink()
    db = sqlite3.connect(d / "study.db")
    db.execute("CREATE TABLE tasks (task TEXT PRIMARY KEY, kind TEXT, config_hash TEXT)")
    db.commit()
    db.close()


def _db_empty_file(d: Path) -> None:
    (d / "study.db").write_bytes(b"")


BREAKAGES: dict[str, Any] = {
    "config not YAML": lambda d: (d / "config.yaml").write_text("name: [unclosed\n"),
    "config not UTF-8": lambda d: (d / "config.yaml").write_bytes(b"name: \xff\xfe\n"),
    "config a list": lambda d: (d / "config.yaml").write_text("- 1\n- 2\n"),
    "config a YAML tag": lambda d: (d / "config.yaml").write_text("!!python/object:os.system x"),
    "config bad value": lambda d: (d / "config.yaml").write_text(
        yaml.safe_dump({**BASE, "seeds": [10**29]})
    ),
    "config missing": lambda d: (d / "config.yaml").unlink(),
    "config a directory": lambda d: ((d / "config.yaml").unlink(), (d / "config.yaml").mkdir()),
    "db garbage": _db_garbage,
    "db a directory": _db_directory,
    "db old schema": _db_old_schema,
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
@pytest.mark.parametrize("command", ["status", "report"])
def test_a_broken_study_directory_is_one_line(
    study: Path, tmp_path: Path, breakage: str, command: str
) -> None:
    directory = tmp_path / "study"
    shutil.copytree(study, directory)
    BREAKAGES[breakage](directory)
    result = runner.invoke(app, ["study", command, str(directory)])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, (result.exit_code, result.stderr)
    assert lines[0].startswith("toroid: error: ")


@pytest.mark.parametrize("breakage", ["db garbage", "db a directory", "db old schema"])
def test_running_into_a_broken_store_is_one_line(
    study: Path, tmp_path: Path, breakage: str
) -> None:
    directory = tmp_path / "study"
    shutil.copytree(study, directory)
    BREAKAGES[breakage](directory)
    config = tmp_path / "c.yaml"
    config.write_text((study / "config.yaml").read_text())
    result = runner.invoke(app, ["study", "run", str(config), "--out", str(directory), "--quiet"])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_an_empty_store_file_reads_as_a_study_that_has_not_started(
    study: Path, tmp_path: Path
) -> None:
    directory = tmp_path / "study"
    shutil.copytree(study, directory)
    for name in ("study.db-wal", "study.db-shm"):
        (directory / name).unlink(missing_ok=True)
    _db_empty_file(directory)
    assert not status(directory).done.get("train")


# Archived, read-only studies ------------------------------------------------------------------


def test_a_read_only_store_changes_nothing(study: Path, tmp_path: Path) -> None:
    directory = tmp_path / "study"
    shutil.copytree(study, directory)
    before = {p.name: p.stat().st_mtime_ns for p in directory.rglob("*")}
    with Store(directory, readonly=True) as store:
        assert store.tasks() and store.finished()
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            store.set_meta("x", 1)
    status(directory)
    after = {p.name: p.stat().st_mtime_ns for p in directory.rglob("*")}
    assert {k: v for k, v in after.items() if not k.startswith("study.db-")} == {
        k: v for k, v in before.items() if not k.startswith("study.db-")
    }


def test_a_store_on_a_read_only_filesystem_is_opened_immutable(
    study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "study"
    shutil.copytree(study, directory)
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if mode == os.W_OK else real(p, mode))
    assert status(directory).done["train"] == 4


def test_the_report_of_an_archived_study_goes_elsewhere(
    study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from toroid.study import report

    directory = tmp_path / "study"
    shutil.copytree(study, directory)
    elsewhere = tmp_path / "report"
    result = runner.invoke(app, ["study", "report", str(directory), "--to", str(elsewhere)])
    assert result.exit_code == 0, result.stderr
    assert (elsewhere / "report.html").is_file() and (elsewhere / "summary.md").is_file()
    assert not (directory / "report.html").exists()

    def denied(path: Path, data: bytes) -> None:
        raise PermissionError(13, "Read-only file system", str(path))

    monkeypatch.setattr(report, "atomic_write_bytes", denied)
    refused = runner.invoke(app, ["study", "report", str(directory)])
    lines = refused.stderr.strip().splitlines()
    assert refused.exit_code == 2 and len(lines) == 1
    assert "Read-only file system" in lines[0] and "--to" in lines[0]
