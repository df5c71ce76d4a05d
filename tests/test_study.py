"""The study pipeline: config validation, the task graph and its hashes, skipping finished
tasks, resuming after kill -9 (in training and in analysis) with the same numbers, and the
local worker-pool and Ray executors against the in-process one."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from toroid.errors import InvalidArgumentError
from toroid.study import PRESETS, StudyConfigError, load_config, run_study, status
from toroid.study.config import validate_config
from toroid.study.graph import build_graph, networks, pairs
from toroid.study.rows import TABLES, EnergyRow, NetworkRow, ProfileRow
from toroid.study.store import Store

TINY: dict[str, Any] = {
    "name": "tiny",
    "data": {"name": "synthetic"},
    "model": {"name": "mlp", "in_features": 16, "widths": [12, 8], "num_classes": 4},
    "optimizers": ["sgd", {"name": "adam", "lr": 0.01}],
    "seeds": [0, 1],
    "training": {"epochs": 15},
    "analyses": {
        "local_energy": {"sigmas": "0:0.4:3", "samples": 2, "bn_samples": 100},
        "paths": {"points": 5, "pairs": "within", "bn_samples": 100},
        "bends": {"pairs": "first-seeds", "epochs": 3, "points": 5},
    },
}
# Fields that measure time, not results.
CLOCKS = {"wall_time", "seconds", "finished_at"}


def _write(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def _same(got: Any, expected: Any) -> bool:
    """Equal, floats to 1e-9 relative: a task re-run in another process may differ in the
    last bits (the BLAS library's results depend on memory alignment)."""
    if isinstance(got, float) and isinstance(expected, float):
        return got == pytest.approx(expected, rel=1e-9, abs=1e-12, nan_ok=True)
    if isinstance(got, list | tuple) and isinstance(expected, list | tuple):
        return len(got) == len(expected) and all(map(_same, got, expected))
    if isinstance(got, dict) and isinstance(expected, dict):
        return got.keys() == expected.keys() and all(_same(got[k], expected[k]) for k in got)
    return bool(got == expected)


def _assert_same_results(got: Path, expected: Path) -> None:
    a, b = results(got), results(expected)
    assert a.keys() == b.keys()
    for table in a:
        assert len(a[table]) == len(b[table]), table
        for row_a, row_b in zip(a[table], b[table], strict=True):
            assert _same(row_a, row_b), (table, row_a, row_b)


def results(directory: Path) -> dict[str, list[dict[str, Any]]]:
    """Every result row of the study and every task record, clocks left out, in a
    canonical order."""
    out: dict[str, list[dict[str, Any]]] = {}
    with Store(directory) as store:
        for row_type, table in TABLES.items():
            rows = [
                {"task": s.task, "hash": s.hash, **{
                    k: v for k, v in vars(s.row).items() if k not in CLOCKS
                }}
                for s in store.rows(row_type)
            ]  # fmt: skip
            out[table] = sorted(rows, key=lambda row: (row["task"], repr(sorted(row.items()))))
        out["tasks"] = [
            {k: v for k, v in vars(r).items() if k not in CLOCKS} for r in store.tasks().values()
        ]
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny study, run once without interruption."""
    directory = tmp_path_factory.mktemp("study") / "reference"
    run_study(validate_config(TINY), directory, progress=False, report=False)
    return directory


# Config -------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_are_valid(preset: str) -> None:
    config = load_config(preset=preset)
    assert config.name == preset and len(config.optimizers) >= 2
    assert build_graph(config)


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid_and_build(path: Path) -> None:
    from toroid.models import build

    config = load_config(path)
    build(config.model, seed=0)
    if config.binary is not None:
        build(config.binary.model, seed=0)
    if config.needs_gpu:
        assert config.device.startswith("cuda")


@pytest.mark.parametrize("preset", PRESETS)
def test_configs_folder_holds_the_embedded_presets(preset: str) -> None:
    from toroid.study.config import preset_text

    assert (CONFIGS / f"{preset}.yaml").read_text() == preset_text(preset)


def test_a_gpu_config_is_refused_without_a_gpu(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    config = load_config(CONFIGS / "cifar10-vgg16.yaml")
    with pytest.raises(InvalidArgumentError, match="no CUDA GPU"):
        run_study(config, tmp_path / "gpu", report=False)
    assert not (tmp_path / "gpu").exists()


def test_default_preset_meets_its_design() -> None:
    """docs/study.md, "Design": a grid of optimizers x batch sizes x learning rates with
    several seeds per cell, 48 networks for claim 1's interval width, minimizers trained
    through the schedule's end, the measures with reparametrized copies, a binary block."""
    config = load_config(preset="default")
    assert config.grid is not None and config.grid.batch_sizes and config.grid.lr_factors
    assert len(config.grid.batch_sizes) >= 2 and len(config.grid.lr_factors) >= 2
    assert len(config.optimizers) >= 3 and len(config.seeds) >= 4
    kinds = Counter(t.kind for t in build_graph(config))
    # The counts docs/study.md's "Design" gives: 48 networks, 12 cells of 4 seeds, 72 pairs
    # within cells + 66 across, 66 chains; 6 binary networks with 6 within-optimizer chains.
    assert kinds["train"] == 48 + 6 and kinds["distance"] == 138 + 15
    assert kinds["profile"] == 3 * 138 and kinds["bend"] == 66
    assert kinds["flip_chain"] == 6 and kinds["measure"] == 2 * 48  # and the copies
    assert not config.training.stop_at_zero_train_error
    measures = config.analyses.measures
    assert measures is not None and measures.reparametrize is not None
    assert config.binary is not None


def test_paper_cpu_preset_meets_its_design() -> None:
    config = load_config(preset="paper-cpu")
    assert config.data.name == "fashion-mnist"
    assert config.data.train_size is None and config.data.test_size is None  # 60k / 10k
    assert config.grid is not None and config.grid.models is not None
    models = {m["name"]: m for m in config.grid.models.values()}
    assert models["mlp"]["widths"] == [500, 500] and "lenet5" in models
    assert not config.training.stop_at_zero_train_error
    assert config.analyses.measures is not None and config.binary is not None
    kinds = Counter(t.kind for t in build_graph(config))
    assert kinds["train"] == 32 + 6 and kinds["bend"] == 16 and kinds["flip_chain"] == 6


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"analyses": {"local_energy": {"samples": 0}}}, "analyses.local_energy.samples"),
        ({"data": {"name": "mnist2"}}, "data.name: unknown dataset 'mnist2'"),
        ({"seeds": [0, 0]}, "seeds: seeds must be distinct"),
        ({"training": {"epochs": -1}}, "training.epochs"),
        ({"optimizers": ["sgd", "nadam"]}, "unknown optimizer 'nadam'"),
        ({"optimizers": [{"name": "sam", "rho": -1}]}, "rho"),
        ({"analyses": {"paths": {"kinds": ["spline"]}}}, "analyses.paths.kinds.0"),
        ({"analyses": {"local_energy": {"sigmas": "0:1"}}}, "start:stop:count"),
        ({"colour": "blue"}, "colour: Extra inputs are not permitted"),
        ({"optimizers": ["sgd", "sgd"]}, "labels must be distinct"),
    ],
)
def test_bad_configs_name_the_field(tmp_path: Path, change: dict[str, Any], needle: str) -> None:
    config = {**TINY, **change}
    if "analyses" in change:
        config["analyses"] = {**TINY["analyses"], **change["analyses"]}
    with pytest.raises(StudyConfigError) as info:
        load_config(_write(tmp_path / "c.yaml", config))
    message = str(info.value)
    assert needle in message and "\n" not in message and str(tmp_path) in message


def test_a_config_file_is_merged_over_the_preset(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", {"seeds": [5], "analyses": {"bends": None}})
    config = load_config(path, preset="quick")
    quick = load_config(preset="quick")
    assert config.seeds == [5] and config.analyses.bends is None
    assert config.model == quick.model and config.analyses.paths == quick.analyses.paths
    with pytest.raises(InvalidArgumentError, match="preset"):
        load_config(preset="huge")
    (tmp_path / "broken.yaml").write_text("data: [unclosed\n")
    with pytest.raises(StudyConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")


# Graph --------------------------------------------------------------------------------


def test_pair_scopes() -> None:
    config = validate_config({**TINY, "optimizers": ["sgd", "adam", "sam"], "seeds": [0, 1, 2]})
    nets = networks(config)
    assert len(pairs(nets, "all")) == 36
    within = pairs(nets, "within")
    assert len(within) == 9 and all(a.optimizer == b.optimizer for a, b in within)
    first = pairs(nets, "first-seeds")
    assert len(first) == 3 and all(a.seed == b.seed == 0 for a, b in first)
    assert len(pairs(nets, "within+first-seeds")) == 12 and pairs(nets, "none") == []


def test_distance_pairs_follow_their_scope() -> None:
    base = {**TINY, "optimizers": ["sgd", "adam", "sam"], "seeds": [0, 1, 2]}

    def distance_keys(scope: str | None) -> set[str]:
        distances = {} if scope is None else {"pairs": scope}
        config = validate_config({**base, "analyses": {**TINY["analyses"], "distances": distances}})
        return {t.key for t in build_graph(config) if t.key.startswith("distance/")}

    assert len(distance_keys(None)) == 36  # every pair, as before the setting existed
    nets = networks(validate_config(base))
    expected = {f"distance/{a.name}/{b.name}" for a, b in pairs(nets, "within+first-seeds")}
    assert distance_keys("within+first-seeds") == expected and len(expected) == 12
    assert distance_keys("none") == set()


def test_every_aligning_task_names_the_alignment_algorithm() -> None:
    """A change to weight matching (WEIGHT_MATCHING_VERSION) re-runs exactly the tasks that
    align, so one study never mixes results of two alignment algorithms."""
    import dataclasses

    from toroid.study.graph import task_hash
    from toroid.symmetry.align import WEIGHT_MATCHING_VERSION

    aligning = {"align", "distance", "profile", "bend", "flip_path", "flip_chain"}
    binary = {
        "model": {**TINY["model"], "widths": [8], "binary": True},
        "optimizers": ["sgd"],
        "seeds": [0, 1],
    }
    graph = build_graph(validate_config({**TINY, "binary": binary}))
    seen = set()
    for task in graph:
        has = any(f.name == "alignment" for f in dataclasses.fields(task.params))
        assert has == (task.kind in aligning), task.key
        if has:
            seen.add(task.kind)
            assert task.params.alignment == WEIGHT_MATCHING_VERSION
            other = dataclasses.replace(task.params, alignment="another")
            assert task_hash(task.kind, other, ()) != task_hash(task.kind, task.params, ())
    assert seen == aligning


def test_hashes_change_only_where_the_config_does() -> None:
    base = {t.key: t.hash for t in build_graph(validate_config(TINY))}
    analyses = {**TINY["analyses"], "local_energy": {**TINY["analyses"]["local_energy"]}}
    analyses["local_energy"]["samples"] = 3
    changed = {t.key: t.hash for t in build_graph(validate_config({**TINY, "analyses": analyses}))}
    differ = {k for k in base if base[k] != changed[k]}
    assert differ and all(k.startswith("energy/") for k in differ)
    retrained = {
        t.key: t.hash for t in build_graph(validate_config({**TINY, "training": {"epochs": 16}}))
    }
    assert all(base[k] != retrained[k] for k in base)  # everything depends on training
    keys = [t.key for t in build_graph(validate_config(TINY))]
    for task in build_graph(validate_config(TINY)):
        assert all(keys.index(d) < keys.index(task.key) for d in task.deps)


# Running ------------------------------------------------------------------------------


def test_a_finished_study_reruns_nothing_and_a_change_reruns_only_its_tasks(
    reference: Path, tmp_path: Path
) -> None:
    result = status(reference)
    assert result.complete and result.done["train"] == 4 and result.done["profile"] == 6
    directory = tmp_path / "copy"
    run_study(validate_config(TINY), directory, progress=False, report=False)
    before = Store(directory).finished()
    again = run_study(validate_config(TINY), directory, progress=False, report=False)
    assert again.ran == ()
    analyses = {**TINY["analyses"], "paths": {**TINY["analyses"]["paths"], "points": 4}}
    changed = validate_config({**TINY, "analyses": analyses})
    ran = run_study(changed, directory, progress=False, report=False, force=True).ran
    assert set(ran) == {k for k in before if k.startswith("profile/")}
    store = Store(directory)
    assert all(len(s.row.ts) == 4 for s in store.rows(ProfileRow) if s.row.path != "polychain")


def _start(config_path: Path, directory: Path) -> subprocess.Popen[bytes]:
    script = textwrap.dedent(
        f"""
        from toroid.study import load_config, run_study
        run_study(load_config({str(config_path)!r}), {str(directory)!r}, progress=False,
                  report=False)
        """
    )
    # The same thread count as this process: float reductions depend on it.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    return subprocess.Popen([sys.executable, "-c", script], env=env)


def _finished_kinds(directory: Path) -> list[str]:
    if not (directory / "study.db").exists():
        return []
    try:
        with sqlite3.connect(directory / "study.db", timeout=1) as db:
            return [k for (k,) in db.execute("SELECT kind FROM tasks")]
    except sqlite3.OperationalError:
        return []


def _kill_when(process: subprocess.Popen[bytes], ready: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, "the study finished before the moment to kill it"
        assert time.monotonic() < deadline, "the moment to kill never came"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_kill_9_in_training_then_rerun_gives_the_same_numbers(
    reference: Path, tmp_path: Path
) -> None:
    # Training without early stopping, long enough to be caught between epochs.
    slow = {**TINY, "training": {"epochs": 15, "stop_at_zero_train_error": False}}
    config = _write(tmp_path / "slow.yaml", slow)
    uninterrupted = tmp_path / "uninterrupted"
    run_study(load_config(config), uninterrupted, progress=False, report=False)
    directory = tmp_path / "killed"
    process = _start(config, directory)
    states = directory / "train-state"

    def mid_training() -> bool:
        # A training state on disk for a network whose training has not finished.
        done = _finished_kinds(directory).count("train")
        started = len(list(states.glob("*/train-state.json"))) if states.exists() else 0
        return started > done

    _kill_when(process, mid_training)
    assert _finished_kinds(directory).count("train") < 4
    run_study(load_config(config), directory, progress=False, report=False)
    _assert_same_results(directory, uninterrupted)


def test_kill_9_in_analysis_then_rerun_gives_the_same_numbers(
    reference: Path, tmp_path: Path
) -> None:
    config = _write(tmp_path / "tiny.yaml", TINY)
    directory = tmp_path / "killed"
    process = _start(config, directory)

    def mid_analysis() -> bool:
        kinds = _finished_kinds(directory)
        return kinds.count("train") == 4 and 0 < kinds.count("profile") < 6

    _kill_when(process, mid_analysis)
    kept = Store(directory).finished()
    assert 0 < sum(k.startswith("profile/") for k in kept) < 6
    run_study(load_config(config), directory, progress=False, report=False)
    _assert_same_results(directory, reference)
    # Nothing that was finished before the kill ran again.
    with sqlite3.connect(directory / "study.db") as db:
        assert set(kept) <= {k for (k,) in db.execute("SELECT task FROM tasks")}


def _numbers(directory: Path) -> dict[str, list[float]]:
    store = Store(directory)
    return {
        "test_error": [s.row.test_error or 0.0 for s in store.rows(NetworkRow)],
        "energy": [s.row.mean for s in store.rows(EnergyRow)],
        "barrier": [s.row.barrier_train for s in store.rows(ProfileRow)],
    }


def test_worker_processes_match_the_in_process_run(reference: Path, tmp_path: Path) -> None:
    directory = tmp_path / "pool"
    run_study(validate_config(TINY), directory, workers=2, progress=False, report=False)
    got, expected = _numbers(directory), _numbers(reference)
    assert sorted(got["test_error"]) == pytest.approx(sorted(expected["test_error"]), abs=1e-6)
    assert sorted(got["energy"]) == pytest.approx(sorted(expected["energy"]), abs=1e-6)


def test_ray_executor_on_a_local_instance(
    reference: Path, tmp_path: Path, ray_instance: None
) -> None:
    directory = tmp_path / "ray"
    run_study(validate_config(TINY), directory, executor="ray", progress=False, report=False)
    got, expected = _numbers(directory), _numbers(reference)
    assert sorted(got["test_error"]) == pytest.approx(sorted(expected["test_error"]), abs=1e-6)
    assert status(directory).complete


def test_bad_executor_settings() -> None:
    with pytest.raises(InvalidArgumentError, match="executor"):
        run_study(validate_config(TINY), Path("/nonexistent/x"), executor="slurm", report=False)


def test_status_refuses_a_directory_without_a_study(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="not a study directory"):
        status(tmp_path)
