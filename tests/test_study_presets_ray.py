"""The shipped presets run under the Ray executor (issue 16): each preset is shrunk to a
few examples, epochs and networks while its structure is kept (its grid axes, every
analysis it configures, the flatness measures and their reparametrized copies, the
binary block), so every task kind the preset makes runs as a Ray task."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from toroid.study import PRESETS, run_study, status
from toroid.study.config import preset_text, validate_config
from toroid.study.evidence import gather
from toroid.study.verdicts import verdicts


def _first(values: list[Any]) -> list[Any]:
    return values[:1]


def shrunk(preset: str) -> dict[str, Any]:
    """The preset with tiny data, models, budgets and grids, and its analyses intact."""
    config: dict[str, Any] = copy.deepcopy(yaml.safe_load(preset_text(preset)))
    config["data"] = {**config["data"], "train_size": 120, "test_size": 60}
    for key in ("eval_train_size", "eval_test_size"):
        if key in config["data"]:
            config["data"][key] = 40
    config["seeds"] = config["seeds"][:1]
    config["training"] = {**config.get("training", {}), "epochs": 1}
    config["optimizers"] = config["optimizers"][:2]
    if "widths" in config["model"]:
        config["model"] = {**config["model"], "widths": [8]}
    grid = config.get("grid")
    if grid:
        for axis in ("batch_sizes", "lr_factors"):
            if grid.get(axis):
                grid[axis] = _first(grid[axis])
        for label, model in (grid.get("models") or {}).items():
            if "widths" in model:
                grid["models"][label] = {**model, "widths": [8]}
    analyses = config["analyses"]
    for name in ("local_energy", "measures"):
        if analyses.get(name):
            analyses[name] = {**analyses[name], "samples": 2, "bn_samples": 40}
    if analyses.get("measures"):
        analyses["measures"].update(train_samples=40, probes=2, iters=2, sam_steps=1)
    if analyses.get("paths"):
        analyses["paths"] = {**analyses["paths"], "points": 3, "bn_samples": 40}
    if analyses.get("bends"):
        analyses["bends"] = {**analyses["bends"], "epochs": 1, "points": 3}
    if config.get("binary"):
        binary = config["binary"]
        binary["model"] = {**binary["model"], "widths": [8]}
        binary.update(
            seeds=binary["seeds"][:2],
            training={**binary.get("training", {}), "epochs": 1},
            samples=2,
            flip_orders=1,
            flip_points=3,
            bn_samples=40,
        )
    return config


# quick's tasks are a subset of default's (no grid, no measures).
@pytest.mark.parametrize("preset", [p for p in PRESETS if p != "quick"])
def test_every_preset_runs_under_ray(preset: str, tmp_path: Path, ray_instance: None) -> None:
    config = validate_config(shrunk(preset), source=f"shrunk {preset}")
    directory = tmp_path / preset
    run_study(config, directory, executor="ray", progress=False)
    done = status(directory)
    assert done.complete
    stages = {stage for stage, count in done.done.items() if count}
    assert {"train", "energy", "distance", "profile", "flip_chain"} <= stages
    if config.analyses.measures is not None:
        assert "measure" in stages
    lines = (directory / "summary.md").read_text().splitlines()
    claims = {v.claim for v in verdicts(gather(directory, config))}
    expected = {"1", "2", "3", "4", "5"} | ({"6"} if config.analyses.measures else set())
    assert claims == expected
    # The verdict lines come first in summary.md, one per claim.
    assert [line[:2] for line in lines[: len(expected)]] == [f"{c}." for c in sorted(expected)]
