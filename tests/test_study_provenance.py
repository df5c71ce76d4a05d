"""Provenance of a study's results: every number comes from the config on disk, a re-run
redoes exactly what changed, and one bad task does not take the rest down.

One test per way this used to break (issue 13), then a property test: for random edits of
a config, the tasks that re-run are exactly those whose `Params` or inputs changed, and the
incremental study equals a fresh one, row for row."""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from toroid.cli import app
from toroid.study import StudyConfigError, load_config, run_study, status
from toroid.study.config import validate_config
from toroid.study.executors import numerics
from toroid.study.graph import Task, build_graph
from toroid.study.report import write_report
from toroid.study.rows import DistanceRow, NetworkRow, ProfileRow
from toroid.study.run import StudyDirectoryError
from toroid.study.store import SCHEMA_VERSION, Store, StoreError, stem_of
from toroid.study.tasks import EnergyParams, FlipChainParams, ProfileParams, TrainParams

MLP: dict[str, Any] = {"name": "mlp", "in_features": 16, "widths": [8], "num_classes": 4}
BASE: dict[str, Any] = {
    "name": "provenance",
    "data": {"name": "synthetic", "train_size": 128, "test_size": 64},
    "model": {"name": "mlp", "in_features": 16, "widths": [8], "num_classes": 4},
    "optimizers": ["sgd", {"name": "adam", "lr": 0.01}],
    "seeds": [0, 1],
    "training": {"epochs": 3},
    "analyses": {
        "local_energy": {"sigmas": [0.0, 0.2], "samples": 2, "bn_samples": 64},
        "distances": {"kinds": ["geodesic", "overlap"]},
        "paths": {"kinds": ["linear"], "points": 3, "pairs": "within", "bn_samples": 64},
        "bends": {"pairs": "first-seeds", "epochs": 1, "points": 3},
    },
    "binary": {
        "model": {
            "name": "mlp",
            "in_features": 16,
            "widths": [8],
            "num_classes": 4,
            "binary": True,
        },
        "optimizers": [{"name": "adam", "lr": 0.01}, {"name": "sgd", "lr": 0.5}],
        "seeds": [0],
        "training": {"epochs": 2},
        "flip_probs": [0.0, 0.1],
        "samples": 2,
        "flip_orders": 2,
        "flip_points": 3,
        "pairs": "all",
        "chain_pairs": "all",
        "bn_samples": 64,
    },
}
NOT_DISTANCES = ("local_energy", "paths", "bends")
runner = CliRunner()


def config_with(**changes: Any) -> dict[str, Any]:
    """BASE with `changes` applied at `__`-separated paths (`analyses__paths__pairs="all"`);
    a change inside a section that another change set to None is dropped."""
    raw = copy.deepcopy(BASE)
    for path, value in sorted(changes.items(), key=lambda item: item[0].count("__")):
        *parents, last = path.split("__")
        node: Any = raw
        for part in parents:
            node = node[part] if node is not None else None
        if node is not None:
            node[last] = value
    return raw


def hashes(raw: dict[str, Any]) -> dict[str, str]:
    return {t.key: t.hash for t in build_graph(validate_config(raw))}


def rehashed(before: dict[str, Any], after: dict[str, Any]) -> set[str]:
    """Keys in both graphs whose hash differs."""
    old, new = hashes(before), hashes(after)
    return {k for k, h in new.items() if k in old and old[k] != h}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BASE, run once to the end."""
    directory = tmp_path_factory.mktemp("provenance") / "base"
    run_study(validate_config(BASE), directory, progress=False, report=False)
    return directory


def copy_of(study: Path, where: Path) -> Path:
    shutil.copytree(study, where)
    return where


# Names: one network, one set of weights -------------------------------------------------


@pytest.mark.parametrize("label", ["x/y", "sam rho 0.1", "", "-lead", "a" * 41, "é"])
def test_unsafe_labels_are_refused_up_front(label: str) -> None:
    raw = config_with(optimizers=["sgd", {"name": "adam", "label": label}])
    with pytest.raises(StudyConfigError, match="label") as info:
        validate_config(raw, source="test")
    assert "\n" not in str(info.value)


def test_labels_that_differ_only_in_separators_get_their_own_weights(tmp_path: Path) -> None:
    raw = config_with(
        optimizers=[{"name": "sgd", "label": "x_y"}, {"name": "adam", "label": "x-y"}],
        seeds=[0],
        analyses={
            "distances": {"kinds": ["geodesic"]},
            "local_energy": None,
            "paths": None,
            "bends": None,
        },
        binary=None,
    )
    run_study(validate_config(raw), tmp_path, progress=False, report=False)
    with Store(tmp_path) as store:
        nets = [s.row for s in store.rows(NetworkRow)]
        (distance,) = [s.row for s in store.rows(DistanceRow)]
    assert len({n.weights for n in nets}) == 2
    assert nets[0].train_error != nets[1].train_error
    assert distance.value > 0


@given(st.lists(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,6}(/[a-z0-9][a-z0-9_]{0,2}){0,2}",
                              fullmatch=True), min_size=2, max_size=6, unique=True))  # fmt: skip
@settings(max_examples=200, deadline=None)
def test_distinct_keys_have_distinct_stems(keys: list[str]) -> None:
    assert len({stem_of(k) for k in keys}) == len(keys)


def test_a_task_key_that_is_not_a_safe_file_name_is_refused() -> None:
    for key in ("train/../x", "train/a b", "/abs", "train//x"):
        with pytest.raises(StoreError, match="not safe"):
            stem_of(key)


def test_duplicate_labels_in_the_binary_block_are_refused() -> None:
    raw = config_with(binary__optimizers=["sgd", "sgd"])
    with pytest.raises(StudyConfigError, match=r"binary\.optimizers: labels must be distinct"):
        validate_config(raw, source="test")


def test_every_task_key_is_distinct_and_safe() -> None:
    tasks = build_graph(validate_config(BASE))
    keys = [t.key for t in tasks]
    assert len(set(keys)) == len(keys)
    assert len({stem_of(k) for k in keys}) == len(keys)


# Hashes: exactly what a task reads --------------------------------------------------------


def test_the_flip_chain_hash_covers_its_optimizer() -> None:
    raw = config_with(binary__optimizers=[{"name": "adam", "lr": 0.02}, {"name": "sgd", "lr": 0.5}])
    changed = rehashed(BASE, raw)
    chains = {t.key for t in build_graph(validate_config(raw)) if t.kind == "flip_chain"}
    assert chains and chains <= changed
    chain = next(t for t in build_graph(validate_config(raw)) if t.kind == "flip_chain")
    assert isinstance(chain.params, FlipChainParams) and chain.params.optimizer["lr"] == 0.02


@pytest.mark.parametrize(
    ("change", "reruns"),
    [
        ({"report": {"summary_sigmas": [0.2]}}, set()),
        ({"analyses__paths__pairs": "all"}, set()),
        ({"binary__flip_probs": [0.0, 0.05, 0.1]}, {"flip_energy"}),
        ({"binary__flip_orders": 3}, {"flip_path", "flip_chain"}),
        ({"analyses__local_energy__samples": 3}, {"energy"}),
        ({"analyses__bends__lr": 0.1}, {"bend"}),
        ({"analyses__distances__kinds": ["geodesic"]}, {"distance"}),
        ({"analyses__bends__kind": "bezier"}, set()),
    ],
)
def test_a_change_re_hashes_only_the_tasks_that_read_it(
    change: dict[str, Any], reruns: set[str]
) -> None:
    raw = config_with(**change)
    kinds = {t.key: t.kind for t in build_graph(validate_config(raw))}
    changed = rehashed(BASE, raw)
    assert {kinds[k] for k in changed} == reruns
    if "analyses__distances__kinds" in change:  # binary distances read only "overlap"
        assert all(k.startswith("distance/main/") for k in changed)


def test_summary_sigmas_is_a_report_setting() -> None:
    raw = config_with(analyses__local_energy={"sigmas": [0.0, 0.2], "summary_sigmas": [0.1]})
    with pytest.raises(StudyConfigError, match=r"report\.summary_sigmas"):
        validate_config(raw, source="test")
    config = validate_config(config_with(report={"summary_sigmas": [0.2]}))
    energy = next(t for t in build_graph(config) if t.kind == "energy")
    assert isinstance(energy.params, EnergyParams)
    assert "summary" not in str(dataclasses.asdict(energy.params))


def test_widening_pairs_runs_only_the_new_profiles(finished: Path, tmp_path: Path) -> None:
    directory = copy_of(finished, tmp_path / "study")
    raw = config_with(analyses__paths__pairs="all")
    result = run_study(validate_config(raw), directory, progress=False, report=False)
    before = {t.key for t in build_graph(validate_config(BASE))}
    new = {t.key for t in build_graph(validate_config(raw))} - before
    assert set(result.ran) == new and all(k.startswith("profile/") for k in new)


# A finished study is never dropped silently -------------------------------------------------


def test_another_config_in_a_finished_study_directory_is_refused(
    finished: Path, tmp_path: Path
) -> None:
    directory = copy_of(finished, tmp_path / "study")
    config_text = (directory / "config.yaml").read_text()
    before = Store(directory).finished()
    other = validate_config(config_with(seeds=[5], name="other"))
    with pytest.raises(StudyDirectoryError, match="--force") as info:
        run_study(other, directory, progress=False, report=False)
    message = str(info.value)
    assert "\n" not in message and "study 'provenance'" in message and "would drop" in message
    assert (directory / "config.yaml").read_text() == config_text
    assert Store(directory).finished() == before
    result = run_study(other, directory, progress=False, report=False, force=True)
    assert set(result.dropped) == {k for k in before if "/main/" in k}
    main = [key for key in Store(directory).finished() if "/main/" in key]
    assert result.complete and main and all(key.endswith("/s5") for key in main)


def test_the_cli_refuses_it_in_one_line(finished: Path, tmp_path: Path) -> None:
    directory = copy_of(finished, tmp_path / "study")
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(config_with(seeds=[5])))
    result = runner.invoke(app, ["study", "run", str(other), "--out", str(directory), "--quiet"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--force" in lines[0] and "would drop" in lines[0]


def test_resuming_with_other_numerics_is_refused(finished: Path, tmp_path: Path) -> None:
    directory = copy_of(finished, tmp_path / "study")
    with Store(directory) as store:
        assert store.meta("numerics") == numerics("local", workers=1)
        store.set_meta("numerics", numerics("ray"))
    with pytest.raises(StudyDirectoryError, match="ray executor"):
        run_study(validate_config(BASE), directory, progress=False, report=False)
    result = run_study(validate_config(BASE), directory, progress=False, report=False, force=True)
    assert len(result.ran) == len(build_graph(validate_config(BASE)))


def test_numerics_name_the_executor_and_threads() -> None:
    assert "local executor" in numerics("local", workers=1)
    assert "1 torch thread per task" in numerics("ray")
    assert numerics("local", workers=1, device="cpu") != numerics("local", workers=1, device="x")


# One diverging network does not stop the study ---------------------------------------------

DIVERGING = config_with(
    optimizers=["sgd", {"name": "sgd", "lr": 1e30, "label": "sgd-huge"}],
    seeds=[0, 1],
    analyses__paths__pairs="all",
    binary=None,
)


@pytest.fixture(scope="module")
def diverged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("diverged") / "study"
    run_study(validate_config(DIVERGING), directory, progress=False, report=False)
    return directory


def test_a_diverging_network_fails_alone(diverged: Path) -> None:
    result = status(diverged)
    assert not result.complete
    failed = {f.task: f for f in result.failures}
    assert set(failed) == {"train/main/sgd-huge/s0", "train/main/sgd-huge/s1"}
    assert all(f.error == "TrainingDivergedError" and f.deterministic for f in failed.values())
    assert result.done["train"] == 2 and result.done["energy"] == 2
    assert result.done["profile"] == 1  # the healthy pair
    assert all("sgd-huge" in key for key in result.blocked_tasks)
    assert result.pending_tasks == ()


def test_a_rerun_does_not_retry_a_deterministic_failure(diverged: Path, tmp_path: Path) -> None:
    directory = copy_of(diverged, tmp_path / "study")
    assert run_study(validate_config(DIVERGING), directory, progress=False, report=False).ran == ()
    again = run_study(
        validate_config(DIVERGING), directory, progress=False, report=False, retry_failed=True
    )
    assert set(again.ran) == {"train/main/sgd-huge/s0", "train/main/sgd-huge/s1"}


def test_the_report_says_what_failed_and_why(diverged: Path, tmp_path: Path) -> None:
    directory = copy_of(diverged, tmp_path / "study")
    report = write_report(directory, reps=50)
    summary = report.summary.read_text()
    assert "2 tasks failed" in summary and "TrainingDivergedError" in summary
    assert "train/main/sgd-huge/s0" in report.html.read_text()
    assert not report.complete


def test_the_cli_exits_3_and_names_the_failures(diverged: Path, tmp_path: Path) -> None:
    directory = copy_of(diverged, tmp_path / "study")
    config = tmp_path / "diverging.yaml"
    config.write_text(yaml.safe_dump(DIVERGING))
    result = runner.invoke(app, ["study", "run", str(config), "--out", str(directory), "--quiet"])
    assert result.exit_code == 3, result.output
    assert "failed: train/main/sgd-huge/s0: TrainingDivergedError" in result.stdout
    assert "incomplete" in result.stdout
    shown = runner.invoke(app, ["study", "status", str(directory)])
    assert shown.exit_code == 0 and "2 failed" in shown.stdout


def test_an_unexpected_error_is_recorded_and_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from toroid.study import tasks

    def broken(params: Any, inputs: Any) -> Any:
        raise RuntimeError("out of memory, say")

    raw = config_with(binary=None)
    kinds = dict(tasks.KINDS)
    kinds["distance"] = dataclasses.replace(kinds["distance"], run=broken)
    monkeypatch.setattr(tasks, "KINDS", kinds)
    first = run_study(validate_config(raw), tmp_path, progress=False, report=False)
    assert {f.error for f in first.failures} == {"RuntimeError"}
    assert not any(f.deterministic for f in first.failures)
    assert first.done["profile"] == 2  # the rest ran
    monkeypatch.undo()
    second = run_study(validate_config(raw), tmp_path, progress=False, report=False)
    assert {k.split("/")[0] for k in second.ran} == {"distance"} and second.complete


# Workers die with their coordinator ----------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_workers_exit_when_the_coordinator_is_killed(tmp_path: Path) -> None:
    config = tmp_path / "slow.yaml"
    config.write_text(
        yaml.safe_dump(config_with(training__epochs=400, training__stop_at_zero_train_error=False))
    )
    script = textwrap.dedent(
        f"""
        from toroid.study import load_config, run_study
        run_study(load_config({str(config)!r}), {str(tmp_path / "study")!r}, workers=2,
                  progress=False, report=False)
        """
    )
    coordinator = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ))
    deadline = time.monotonic() + 60
    workers: list[int] = []
    while time.monotonic() < deadline:
        workers = [p for p in _children(coordinator.pid) if _alive(p)]
        if len(workers) >= 2 and (tmp_path / "study" / "train-state").exists():
            break
        time.sleep(0.1)
    assert len(workers) >= 2, "the workers never started"
    coordinator.send_signal(signal.SIGKILL)
    coordinator.wait()
    deadline = time.monotonic() + 15
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers), "workers outlived their coordinator"


# The store: versioned, typed -----------------------------------------------------------------


def test_a_store_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "study.db")
    db.execute("CREATE TABLE tasks (task TEXT PRIMARY KEY, kind TEXT, config_hash TEXT)")
    db.commit()
    db.close()
    with pytest.raises(
        StoreError, match=f"schema version 0; this toroid reads version {SCHEMA_VERSION}"
    ):
        Store(tmp_path)
    with pytest.raises(StoreError, match="new --out"):
        run_study(validate_config(BASE), tmp_path, progress=False, report=False)


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    (tmp_path / "study.db").write_bytes(b"not a database, just text" * 100)
    with pytest.raises(StoreError, match="not a study database"):
        Store(tmp_path)


def test_columns_are_decoded_by_their_type_not_by_their_text(tmp_path: Path) -> None:
    row = NetworkRow("main/a/s0", "main", "a", 0, 1, True, 0.0, 0.1, None, None, 3, 0.5, "[1, 2]")
    curve = ProfileRow("a", "b", "main", "linear", (0.0, 1.0), (0.0, float("nan")), None,
                       None, None, float("nan"), None, 0.25)  # fmt: skip
    with Store(tmp_path) as store:
        store.record("t", "train", "h", [row, curve], 1.0)
        (got,) = store.rows(NetworkRow)
        (profile,) = store.rows(ProfileRow)
    assert got.row == row and isinstance(got.row.weights, str)
    assert got.task == "t" and got.hash == "h"
    assert profile.row.ts == (0.0, 1.0) and profile.row.train_loss is None
    assert str(profile.row.barrier_train) == "nan" and profile.row.max_train_error == 0.25
    assert str(profile.row.train_error[1]) == "nan"


def test_a_failed_task_keeps_no_rows(tmp_path: Path) -> None:
    row = NetworkRow("main/a/s0", "main", "a", 0, 1, True, 0.0, 0.1, None, None, 3, 0.5, "w")
    with Store(tmp_path) as store:
        store.record("t", "train", "h", [row], 1.0)
        store.record_failure("t", "train", "h", error="E", reason="why", deterministic=True,
                             seconds=0.5)  # fmt: skip
        assert store.rows(NetworkRow) == [] and store.finished() == {}
        (record,) = store.tasks().values()
    assert record.failed and record.reason == "why" and record.deterministic


# The property: a re-run redoes exactly what changed ------------------------------------------

EDITS: dict[str, dict[str, Any]] = {
    "more epochs": {"training__epochs": 4},
    "adam lr": {"optimizers": ["sgd", {"name": "adam", "lr": 0.02}]},
    "relabel adam": {"optimizers": ["sgd", {"name": "adam", "lr": 0.01, "label": "ad"}]},
    "another seed": {"seeds": [0, 1, 2]},
    "one seed fewer": {"seeds": [1]},
    "energy samples": {"analyses__local_energy__samples": 3},
    "summary sigmas": {"report": {"summary_sigmas": [0.2]}},
    "all pairs": {"analyses__paths__pairs": "all"},
    "path points": {"analyses__paths__points": 4},
    "geodesic paths too": {"analyses__paths__kinds": ["linear", "geodesic"]},
    "one distance kind": {"analyses__distances__kinds": ["overlap"]},
    "no bends": {"analyses__bends": None},
    "bend epochs": {"analyses__bends__epochs": 2},
    "flip probs": {"binary__flip_probs": [0.0, 0.05]},
    "chain optimizer": {
        "binary__optimizers": [{"name": "adam", "lr": 0.02}, {"name": "sgd", "lr": 0.5}]
    },
    "binary epochs": {"binary__training__epochs": 3},
    "no binary": {"binary": None},
}


def expected_reruns(before: list[Task], after: list[Task]) -> set[str]:
    """Tasks whose Params differ from the same key's before, or that read a task that
    re-runs: computed from Params equality, independently of the hash function."""
    old = {t.key: t.params for t in before}
    out: set[str] = set()
    for task in after:  # dependencies first
        if old.get(task.key) != task.params or any(d in out for d in task.deps):
            out.add(task.key)
    return out


_fresh: dict[str, Path] = {}


def _fresh_run(raw: dict[str, Any], root: Path) -> Path:
    text = yaml.safe_dump(raw, sort_keys=True)
    if text not in _fresh:
        directory = root / f"fresh-{len(_fresh)}"
        run_study(validate_config(raw), directory, progress=False, report=False)
        _fresh[text] = directory
    return _fresh[text]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("edits")


@given(st.lists(st.sampled_from(sorted(EDITS)), min_size=1, max_size=2, unique=True))
@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_a_rerun_redoes_exactly_the_changed_tasks_and_equals_a_fresh_run(
    finished: Path, scratch: Path, edits: list[str]
) -> None:
    from tests.test_study import results

    raw = config_with(**{k: v for edit in edits for k, v in EDITS[edit].items()})
    directory = scratch / f"incremental-{'+'.join(edits).replace(' ', '-')}"
    shutil.rmtree(directory, ignore_errors=True)
    copy_of(finished, directory)
    result = run_study(validate_config(raw), directory, progress=False, report=False, force=True)
    before, after = build_graph(validate_config(BASE)), build_graph(validate_config(raw))
    assert set(result.ran) == expected_reruns(before, after)
    fresh = results(_fresh_run(raw, scratch))
    incremental = results(directory)
    for table in fresh:
        if table == "tasks":
            assert {r["task"]: r["hash"] for r in incremental[table]} == {
                r["task"]: r["hash"] for r in fresh[table]
            }
            continue
        assert len(incremental[table]) == len(fresh[table]), table
        for got, want in zip(incremental[table], fresh[table], strict=True):
            assert got.keys() == want.keys()
            for key in got:
                if isinstance(want[key], float | tuple):
                    assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12, nan_ok=True)
                else:
                    assert got[key] == want[key], (table, key)


def test_a_profile_task_reads_only_its_path_settings() -> None:
    config = validate_config(BASE)
    profile = next(t for t in build_graph(config) if t.kind == "profile")
    assert isinstance(profile.params, ProfileParams)
    assert {f.name for f in dataclasses.fields(profile.params)} == {
        "a", "b", "block", "path", "data", "points", "refine", "plan", "alignment"
    }  # fmt: skip


def test_the_config_on_disk_is_the_one_that_ran(finished: Path) -> None:
    assert load_config(finished / "config.yaml") == validate_config(BASE)


def test_the_study_and_the_cli_parse_a_grid_alike() -> None:
    from toroid.cli.measure_commands import parse_sigmas

    config = validate_config(config_with(analyses__local_energy={"sigmas": "0:0.5:11"}))
    assert config.analyses.local_energy is not None
    sigmas = config.analyses.local_energy.sigmas
    assert sigmas == list(parse_sigmas("0:0.5:11")) and sigmas[6] == 0.3 and sigmas[-1] == 0.5


# Review findings: nothing is dropped before a run can start, no stale state is resumed -----


def test_a_run_whose_executor_cannot_start_drops_nothing(
    finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from toroid.errors import InvalidArgumentError
    from toroid.study import run as run_module

    def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise InvalidArgumentError("the ray executor needs Ray")

    directory = copy_of(finished, tmp_path / "study")
    before, config_text = Store(directory).finished(), (directory / "config.yaml").read_text()
    monkeypatch.setattr(run_module, "make_executor", unavailable)
    other = validate_config(config_with(seeds=[5]))
    with pytest.raises(InvalidArgumentError, match="needs Ray"):
        run_study(other, directory, progress=False, report=False, force=True)
    assert Store(directory).finished() == before
    assert (directory / "config.yaml").read_text() == config_text


def test_other_numerics_never_resume_a_training_state(finished: Path, tmp_path: Path) -> None:
    directory = copy_of(finished, tmp_path / "study")
    states = directory / "train-state"
    marker = next(states.iterdir()) / "marker"
    marker.write_text("computed with other numerics")
    with Store(directory) as store:
        store.set_meta("numerics", numerics("ray"))
    run_study(validate_config(BASE), directory, progress=False, report=False, force=True)
    # The loop engine (a CPU's default): one training state per network.
    trains = [t for t in build_graph(validate_config(BASE)) if isinstance(t.params, TrainParams)]
    assert {t.params.engine for t in trains} == {"loop"} and len(trains) == 6
    assert not marker.exists() and len(list(states.iterdir())) == len(trains)


def test_a_foreign_config_file_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("my: precious\n")
    with pytest.raises(StudyDirectoryError, match="not a toroid study"):
        run_study(validate_config(BASE), tmp_path, progress=False, report=False)
    assert (tmp_path / "config.yaml").read_text() == "my: precious\n"
    assert not (tmp_path / "study.db").exists()


def test_an_old_study_is_named_for_its_store_not_its_config(tmp_path: Path) -> None:
    old = config_with(analyses__local_energy={"sigmas": [0.0, 0.2], "summary_sigmas": [0.1]})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    db = sqlite3.connect(tmp_path / "study.db")
    db.execute("CREATE TABLE tasks (task TEXT PRIMARY KEY, kind TEXT, config_hash TEXT)")
    db.commit()
    db.close()
    for command in ("status", "report"):
        result = runner.invoke(app, ["study", command, str(tmp_path)])
        assert result.exit_code == 2 and "schema version 0" in result.stderr, result.stderr


def test_status_of_a_study_that_never_ran_creates_nothing(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(BASE))
    result = status(tmp_path)
    assert not result.complete and len(result.pending_tasks) == len(
        build_graph(validate_config(BASE))
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_missing_data_is_a_failure_the_next_run_retries(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()  # the data is not unpacked there yet
    raw = config_with(data={"name": "cifar10", "root": str(tmp_path / "empty")}, binary=None)
    result = run_study(validate_config(raw), tmp_path / "study", progress=False, report=False)
    assert {f.error for f in result.failures} == {"DatasetNotAvailableError"}
    assert not any(f.deterministic for f in result.failures)


@pytest.mark.parametrize("where", ["a-file/sub", "a-file"])
def test_an_out_path_that_cannot_be_a_directory_is_one_line(tmp_path: Path, where: str) -> None:
    (tmp_path / "a-file").write_text("x")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(BASE))
    result = runner.invoke(
        app, ["study", "run", str(config), "--out", str(tmp_path / where), "--quiet"]
    )
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
