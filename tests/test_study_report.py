"""The study report: statistics against scipy and hand computations, verdict rules on
planted rows, the report of a tiny real study, partial studies, and the HTML rendered in
headless Chromium (every figure loads, no console errors)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from toroid.study import run_study
from toroid.study.config import StudyConfig, validate_config
from toroid.study.evidence import gather
from toroid.study.graph import BINARY, MAIN, Task, build_graph, networks
from toroid.study.report import write_report
from toroid.study.rows import BendRow, DistanceRow, EnergyRow, NetworkRow, ProfileRow, Row
from toroid.study.run import save_config
from toroid.study.statistics import (
    bootstrap_spearman,
    interpolate,
    mean_stderr,
    spearman,
    summary_level,
)
from toroid.study.store import Store
from toroid.study.tasks import (
    BendParams,
    DistanceParams,
    EnergyParams,
    FlipChainParams,
    FlipEnergyParams,
    FlipPathParams,
    ProfileParams,
    TrainParams,
)
from toroid.study.verdicts import Verdict, verdicts

REPS = 400  # fewer bootstrap resamples than the report's 2000 keep the tests quick


# Statistics -------------------------------------------------------------------------------


def test_spearman_matches_scipy_with_ties() -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 5, 30).astype(float)
    y = x + rng.normal(0, 2, 30)
    assert spearman(list(x), list(y)) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


def test_spearman_undefined_for_constant_or_short_input() -> None:
    assert math.isnan(spearman([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]))
    assert math.isnan(spearman([1.0, 2.0], [2.0, 1.0]))
    with pytest.raises(ValueError, match="differ in length"):
        spearman([1.0, 2.0, 3.0], [1.0, 2.0])


def test_bootstrap_matches_a_plain_loop_over_resamples() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=9)
    y = x + rng.normal(0, 1.0, 9)
    reps, seed = 300, 7
    result = bootstrap_spearman(list(x), list(y), reps=reps, seed=seed)
    # The same draws, one scipy call per resample; constant resamples are dropped.
    index = np.random.default_rng(seed).integers(0, 9, size=(reps, 9))
    rhos = []
    for row in index:
        a, b = x[row], y[row]
        if np.ptp(a) > 0 and np.ptp(b) > 0:
            rhos.append(stats.spearmanr(a, b).statistic)
    low, high = np.quantile(rhos, [0.025, 0.975])
    assert result.rho == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert (result.low, result.high) == pytest.approx((low, high), abs=1e-12)
    assert result.n == 9 and result.reps == reps and result.seed == seed


def test_bootstrap_is_seeded_and_exact_for_a_monotone_relation() -> None:
    x = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    y = [v**2 for v in x]
    first = bootstrap_spearman(x, y, reps=200, seed=3)
    assert first == bootstrap_spearman(x, y, reps=200, seed=3)
    # Every resample with two distinct points is perfectly monotone.
    assert (first.rho, first.low, first.high) == (1.0, 1.0, 1.0)
    assert first.defined


def test_bootstrap_undefined_interval_for_constant_values() -> None:
    result = bootstrap_spearman([0.0] * 5, [1.0, 2.0, 3.0, 4.0, 5.0], reps=50)
    assert not result.defined and math.isnan(result.low)


def test_mean_stderr_by_hand() -> None:
    result = mean_stderr([1.0, 2.0, 3.0, 4.0])
    assert result.mean == 2.5
    assert result.stderr == pytest.approx(math.sqrt(5 / 3) / 2)
    assert result.n == 4
    single = mean_stderr([3.0])
    assert single.mean == 3.0 and math.isnan(single.stderr)
    assert math.isnan(mean_stderr([]).mean)


def test_interpolate_and_summary_level() -> None:
    assert interpolate([0.0, 0.2, 0.4], [0.0, 0.1, 0.5], 0.3) == pytest.approx(0.3)
    assert interpolate([0.0, 0.2], [1.0, 3.0], 0.2) == 3.0
    assert math.isnan(interpolate([0.0, 0.2], [1.0, 3.0], 0.5))
    assert summary_level([0.1, 0.3], [0.0, 0.2, 0.4]) == 0.1
    assert summary_level([0.9, 0.3], [0.0, 0.2, 0.4]) == 0.3
    # None inside: the lower median of the positive levels.
    assert summary_level([0.9], [0.0, 0.02, 0.05, 0.1]) == 0.05
    assert summary_level([0.9], [0.0, 0.01, 0.02, 0.05, 0.1]) == 0.02
    assert summary_level([0.1], [0.0]) is None
    assert summary_level([0.1], []) is None


# Planted studies: rows written by hand through the store -----------------------------------

Flat = dict[str, float]


def planted_config(**over: Any) -> StudyConfig:
    raw: dict[str, Any] = {
        "name": "planted",
        "data": {"name": "synthetic"},
        "model": {"name": "mlp", "in_features": 16, "widths": [8], "num_classes": 4},
        "optimizers": ["sgd", "adam", "sam", "esgd"],
        "seeds": [0, 1],
        "analyses": {
            "local_energy": {"sigmas": [0.0, 0.1, 0.2]},
            "distances": {"kinds": ["geodesic"]},
            "paths": {"kinds": ["linear", "geodesic", "raw-linear"], "pairs": "all"},
            "bends": {"pairs": "first-seeds"},
        },
        "report": {"summary_sigmas": [0.1]},
    }
    raw.update(over)
    return validate_config(raw, source="test")


BINARY_BLOCK: dict[str, Any] = {
    "model": {"name": "mlp", "in_features": 16, "widths": [8], "num_classes": 4, "binary": True},
    "optimizers": ["sgd", "adam", "sam", "esgd"],
    "seeds": [0, 1],
    "flip_probs": [0.0, 0.02, 0.05, 0.1],
    "pairs": "all",
    "chain_pairs": "within",
}


def planted_flatness(config: StudyConfig) -> Flat:
    """A distinct flatness per network: 0.01, 0.02, ... in graph order, per block."""
    blocks = [MAIN] + ([BINARY] if config.binary is not None else [])
    return {
        net.name: 0.01 * (i + 1)
        for block in blocks
        for i, net in enumerate(networks(config, block))
    }


def _energy_rows(task: Task, flat: float, levels: list[float], noise: str) -> list[Row]:
    positive = [v for v in levels if v > 0]
    unit = 0.1 if task.block == MAIN else sorted(positive)[(len(positive) - 1) // 2]
    p = task.params
    assert isinstance(p, EnergyParams | FlipEnergyParams)
    return [
        EnergyRow(p.network, p.block, split, noise, level, flat * level / unit, 0.001, 0.0,
                  (flat * level / unit,) * 2)
        for split in ("train", "test")
        for level in levels
    ]  # fmt: skip


def _profile(a: str, b: str, block: str, path: str, peak: float) -> ProfileRow:
    return ProfileRow(
        a=a,
        b=b,
        block=block,
        path=path,
        ts=(0.0, 0.5, 1.0),
        train_error=(0.0, peak, 0.0),
        train_loss=(0.1, 0.2, 0.1),
        test_error=(0.1, 0.1 + peak, 0.1),
        test_loss=(0.2, 0.3, 0.2),
        barrier_train=peak,
        barrier_test=peak,
        max_train_error=peak,
    )


@dataclass(frozen=True)
class Plant:
    """How planted results depend on the planted flatness f of the networks."""

    test_error: Callable[[float], float] = lambda f: 0.1 + f
    distance: Callable[[float, float], float] = lambda fa, fb: fa + fb
    barrier: Callable[[float, float], float] = lambda fa, fb: fa + fb
    chain_max: Callable[[str, str], float] = lambda a, b: 0.0
    minimizer: Callable[[str], bool] = lambda name: True


def fill(
    directory: Path,
    config: StudyConfig,
    plant: Plant | None = None,
    *,
    skip: Callable[[Task], bool] = lambda task: False,
) -> Flat:
    """Record planted results for every task of `config`'s graph (but those `skip`
    names), with the graph's keys and hashes; returns the planted flatness."""
    flat = planted_flatness(config)
    save_config(config, directory)
    with Store(directory) as store:
        for task in build_graph(config):
            if not skip(task):
                rows = _rows(task, flat, config, plant or Plant())
                store.record(task.key, task.kind, task.hash, rows, 0.0)
    return flat


def _rows(task: Task, flat: Flat, config: StudyConfig, plant: Plant) -> list[Row]:
    p = task.params
    if isinstance(p, TrainParams):
        zero = plant.minimizer(p.network)
        return [
            NetworkRow(
                network=p.network, block=p.block, optimizer=p.optimizer_label, seed=p.seed,
                epochs=10, reached_zero_train_error=zero, train_error=0.0 if zero else 0.05,
                train_loss=0.01, test_error=plant.test_error(flat[p.network]), test_loss=0.3,
                grad_evals=100, wall_time=1.5, weights="none",
            )
        ]  # fmt: skip
    if isinstance(p, EnergyParams):
        return _energy_rows(task, flat[p.network], list(p.levels), "multiplicative")
    if isinstance(p, FlipEnergyParams):
        return _energy_rows(task, flat[p.network], list(p.levels), "flip")
    if isinstance(p, DistanceParams):
        value = plant.distance(flat[p.a], flat[p.b])
        return [DistanceRow(p.a, p.b, p.block, k, value, True) for k in p.kinds]
    if isinstance(p, ProfileParams | FlipPathParams):
        path = p.path if isinstance(p, ProfileParams) else "flip"
        peak = plant.barrier(flat[p.a], flat[p.b]) * (3.0 if path == "raw-linear" else 1.0)
        return [_profile(p.a, p.b, p.block, path, peak)]
    if isinstance(p, BendParams | FlipChainParams):
        path = "polychain" if isinstance(p, BendParams) else "flip-chain"
        bend = BendRow(p.a, p.b, p.block, "retrain", path, 3, 30, 0.5, "none")
        return [bend, _profile(p.a, p.b, p.block, path, plant.chain_max(p.a, p.b))]
    return []


def _verdicts(directory: Path, config: StudyConfig) -> dict[str, Verdict]:
    found = verdicts(gather(directory, config), reps=REPS)
    return {d.claim: d for v in found for d in (v, *v.details)}


def test_planted_trends_hold(tmp_path: Path) -> None:
    config = planted_config()
    fill(tmp_path, config)
    found = _verdicts(tmp_path, config)
    assert [found[c].word for c in "1234"] == ["holds"] * 4
    assert found["1"].value == pytest.approx(1.0) and found["1"].n == 8
    assert found["2"].n == 4  # one point per optimizer
    assert found["3"].n == math.comb(8, 2)
    assert found["4"].value == 1.0 and found["4"].n == math.comb(4, 2)  # first-seed pairs
    assert found["5"].word == "not configured"
    assert "dE at sigma=0.1" in found["1"].statistic
    assert found["1"].statistic.startswith("Kendall tau(dE at sigma=0.1, test error) = 1.00")
    # Within each seed the optimizers order test error as flatness does.
    assert "; granulated tau 1.00 (axes optimizer)" in found["1"].statistic
    assert "n = 4 optimizer labels" in found["2"].statistic
    assert found["1"].statistic_name == "kendall_tau"
    # 6 of 6: interval [0.54, 1], low end above 50%.
    assert found["4"].statistic_name == "fraction"
    assert found["4"].low == pytest.approx(0.025 ** (1 / 6))


def test_reversed_trends_do_not_hold(tmp_path: Path) -> None:
    config = planted_config()
    reverse = Plant(
        test_error=lambda f: 0.5 - f,
        distance=lambda fa, fb: 1.0 - fa - fb,
        barrier=lambda fa, fb: 1.0 - fa - fb,
        chain_max=lambda a, b: 0.02,
    )
    fill(tmp_path, config, reverse)
    found = _verdicts(tmp_path, config)
    assert [found[c].word for c in "1234"] == ["does not hold"] * 4
    assert found["4"].value == 0.0


def test_constant_values_and_too_few_points_are_inconclusive(tmp_path: Path) -> None:
    config = planted_config(optimizers=["sgd"], seeds=[0, 1, 2])
    fill(tmp_path, config, Plant(test_error=lambda f: 0.2))
    found = _verdicts(tmp_path, config)
    assert found["1"].word == "inconclusive"
    assert "all equal" in found["1"].statistic
    assert found["2"].word == "inconclusive"  # one optimizer
    assert found["3"].word == "inconclusive" and "n = 3 pairs" in found["3"].statistic
    assert found["4"].word == "inconclusive"  # first-seeds with one optimizer: no chains
    assert "no chains" in found["4"].statistic


def test_chains_between_non_minimizers_are_skipped(tmp_path: Path) -> None:
    config = planted_config()
    fill(tmp_path, config, Plant(minimizer=lambda name: name != "main/sgd/s0"))
    chain = _verdicts(tmp_path, config)["4"]
    # sgd/s0 is an end of three of the six first-seed chains; 3 of 3 has the interval
    # [0.29, 1], whose low end is not above 50%.
    assert chain.n == 3 and "3 chains skipped" in chain.statistic
    assert chain.value == 1.0 and chain.word == "inconclusive"


def test_chain_fraction_rule(tmp_path: Path) -> None:
    config = planted_config()
    failing = {("main/sgd/s0", "main/adam/s0")}
    fill(tmp_path, config, Plant(chain_max=lambda a, b: 0.1 if (a, b) in failing else 0.0))
    chain = _verdicts(tmp_path, config)["4"]
    assert chain.value == pytest.approx(5 / 6)  # below 90%, but the interval reaches 0.996
    assert chain.word == "inconclusive"
    assert (chain.low, chain.high) == pytest.approx(stats.beta.ppf([0.025, 0.975], [5, 6], [2, 1]))
    assert (
        "5 of 6 polychain chains between minimizers stay at zero training error (0.83, 95% "
        "Clopper-Pearson interval [0.36, 1.00])" in chain.statistic
    )


def test_binary_block_agrees_or_not(tmp_path: Path) -> None:
    # All 28 pairs chained: 4 within-optimizer chains could not decide claim 5d either way
    # (4 of 4 has the interval [0.40, 1]).
    config = planted_config(binary=dict(BINARY_BLOCK, chain_pairs="all"))
    fill(tmp_path / "agree", config)
    found = _verdicts(tmp_path / "agree", config)
    assert [found[c].word for c in ("5a", "5b", "5c", "5d")] == ["holds"] * 4
    assert found["5"].word == "holds"
    assert "dE at p=0.05" in found["5a"].statistic
    assert "overlap" in found["5b"].statistic
    binary_fails = Plant(chain_max=lambda a, b: 0.1 if a.startswith("binary/") else 0.0)
    fill(tmp_path / "disagree", config, binary_fails)
    found = _verdicts(tmp_path / "disagree", config)
    assert found["4"].word == "holds" and found["5d"].word == "does not hold"
    assert found["5"].word == "does not hold"


def test_rows_of_other_configs_are_ignored(tmp_path: Path) -> None:
    config = planted_config()
    fill(tmp_path, config)
    with Store(tmp_path) as store:
        row = store.rows(NetworkRow, task="train/main/sgd/s0")[0].row
        store.record("train/main/sgd/s0", "train", "stale-hash", [row], 0.0)
        stale = replace(row, network="main/sgd/s9")
        store.record("train/main/sgd/s9", "train", "whatever", [stale], 0.0)
    evidence = gather(tmp_path, config)
    assert "main/sgd/s0" not in evidence.main.names()
    assert "main/sgd/s9" not in evidence.main.names()
    assert evidence.main.progress["train"].done == 7
    assert not evidence.complete


def test_partial_study_report_says_what_is_missing(tmp_path: Path) -> None:
    config = planted_config(binary=BINARY_BLOCK)
    fill(tmp_path, config, skip=lambda t: t.kind in ("energy", "bend", "flip_path"))
    report = write_report(tmp_path, reps=REPS)
    assert not report.complete
    found = {v.claim: v for v in report.verdicts}
    assert found["1"].word == "inconclusive"
    assert "0 of 8 local energy tasks finished" in found["1"].statistic
    assert "no chains" in found["4"].statistic
    html = report.html.read_text()
    assert "This study is not finished" in html
    assert "No local energy yet: 0 of 8 local energy tasks finished" in html
    assert "No path profiles yet" in html  # binary flip paths
    summary = report.summary.read_text()
    assert summary.splitlines()[0].startswith("1. flatness tracks test error: INCONCLUSIVE")


def test_report_of_a_fresh_study_directory(tmp_path: Path) -> None:
    config = planted_config(analyses={"local_energy": None, "paths": None})
    save_config(config, tmp_path)
    report = write_report(tmp_path, reps=REPS)
    html = report.html.read_text()
    assert "No network has finished training yet" in html
    assert "not configured (analyses.local_energy is null)" in html
    assert "Not configured: analyses.local_energy, analyses.paths" in html
    assert all(v.word in ("inconclusive", "not configured") for v in report.verdicts)
    for path in report.csvs:
        assert len(list(csv.reader(io.StringIO(path.read_text())))) >= 1  # header at least


# A tiny real study -------------------------------------------------------------------------

TINY = """
name: tiny-report
data: {name: synthetic}
model: {name: mlp, in_features: 16, widths: [12, 8], num_classes: 4}
optimizers: [sgd, adam]
seeds: [0, 1]
training: {epochs: 6}
analyses:
  local_energy: {sigmas: "0:0.4:3", samples: 2, bn_samples: 100}
  paths: {points: 3, pairs: within+first-seeds, bn_samples: 100}
  bends: {pairs: first-seeds, epochs: 2, points: 3}
"""
SECTIONS = (
    "Verdicts",
    "Study",
    "Training",
    "Local energy",
    "Test error against flatness",
    "Distances",
    "Barriers",
    "Single-bend chains",
    "Raw coordinates: what symmetry removal changes",
    "Binary networks",
)


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from toroid.study import load_config

    root = tmp_path_factory.mktemp("tiny-study")
    (root / "tiny.yaml").write_text(TINY)
    run_study(load_config(root / "tiny.yaml"), root / "study", progress=False)
    return root / "study"


def _csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_tiny_study_report_has_every_section(tiny_study: Path) -> None:
    html = (tiny_study / "report.html").read_text()
    for title in SECTIONS:
        assert f">{title}</h2>" in html, title
    # Figures: energy, flatness scatter, distance heatmap and per-optimizer scatter,
    # geodesic and linear barrier heatmaps, example profiles, chains, raw against aligned.
    assert html.count('<img src="data:image/png;base64,') == 9
    assert "http://" not in html and "https://" not in html and "<script" not in html


def test_tiny_study_summary_starts_with_the_verdict_lines(tiny_study: Path) -> None:
    lines = (tiny_study / "summary.md").read_text().splitlines()
    words = ("HOLDS", "DOES NOT HOLD", "INCONCLUSIVE", "NOT CONFIGURED")
    for number, line in enumerate(lines[:5], start=1):
        assert line.startswith(f"{number}. "), line
        assert any(f": {w} — " in line for w in words), line
    assert lines[4] == "5. binary networks agree: NOT CONFIGURED — no binary block in the config"


def test_tiny_study_csvs(tiny_study: Path) -> None:
    folder = tiny_study / "csv"
    nets = _csv(folder / "networks.csv")
    assert [r["network"] for r in nets] == [
        "main/sgd/s0",
        "main/sgd/s1",
        "main/adam/s0",
        "main/adam/s1",
    ]
    assert all(float(r["flatness"]) >= 0 for r in nets)
    energy = _csv(folder / "local_energy.csv")
    assert len(energy) == 4 * 2 * 3  # networks x splits x sigmas
    distances = _csv(folder / "distances.csv")
    assert {r["kind"] for r in distances} == {"geodesic", "mean_angle", "overlap"}
    assert len(distances) == 6 * 3
    profiles = _csv(folder / "profiles.csv")
    paths = {r["path"] for r in profiles}
    assert paths == {"linear", "geodesic", "raw-linear", "polychain"}
    # within (2 pairs) + first-seeds (1 pair) for each path kind, and one chain.
    assert len(profiles) == 3 * 3 + 1
    assert all(float(r["barrier_train"]) >= -1e-12 for r in profiles)
    rows = _csv(folder / "verdicts.csv")
    assert [r["claim"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert [r["statistic_name"] for r in rows] == ["kendall_tau"] * 3 + ["fraction", ""]
    assert "Clopper-Pearson" in rows[3]["rule"] and "Kendall's tau-b" in rows[0]["rule"]
    assert {r["verdict"] for r in rows} <= {
        "holds",
        "does not hold",
        "inconclusive",
        "not configured",
    }
    training = _csv(folder / "training.csv")
    assert [r["optimizer"] for r in training] == ["sgd", "adam"]


def test_report_is_deterministic(tiny_study: Path) -> None:
    before = (tiny_study / "summary.md").read_text()
    write_report(tiny_study)
    assert (tiny_study / "summary.md").read_text() == before


# Headless Chromium -------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TIMEOUT = 60.0


class DevTools:
    """A minimal DevTools-protocol client over one websocket: commands with ids, events
    kept in order of arrival."""

    def __init__(self, url: str) -> None:
        import websocket

        self._ws = websocket.create_connection(url, timeout=TIMEOUT, suppress_origin=True)
        self._next = 0
        self.events: list[dict[str, Any]] = []

    def close(self) -> None:
        self._ws.close()

    def _receive(self, deadline: float) -> dict[str, Any]:
        self._ws.settimeout(max(0.1, deadline - time.monotonic()))
        message: dict[str, Any] = json.loads(self._ws.recv())
        return message

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        self._ws.send(json.dumps(message))
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            reply = self._receive(deadline)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise AssertionError(f"{method} failed: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result
            self.events.append(reply)
        raise TimeoutError(f"no reply to {method} within {TIMEOUT} s")

    def wait_for(self, method: str, session: str) -> dict[str, Any]:
        """The first event `method` of `session`, received already or awaited."""

        def match(event: dict[str, Any]) -> bool:
            return event.get("method") == method and event.get("sessionId") == session

        seen = [e for e in self.events if match(e)]
        deadline = time.monotonic() + TIMEOUT
        while not seen and time.monotonic() < deadline:
            event = self._receive(deadline)
            self.events.append(event)
            if match(event):
                return event
        if seen:
            return seen[0]
        raise TimeoutError(f"no {method} within {TIMEOUT} s")


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[DevTools]:
    if CHROMIUM is None:
        pytest.skip("headless Chromium not installed (Debian package `chromium`)")
    pytest.importorskip("websocket", reason="websocket-client (the `test` extra) is needed")
    profile = tmp_path / "chromium-profile"
    process = subprocess.Popen(
        [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    client: DevTools | None = None
    try:
        # Chromium writes the port it picked (and the browser's websocket path) here.
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + TIMEOUT
        while not port_file.is_file() or len(port_file.read_text().splitlines()) < 2:
            if process.poll() is not None:
                pytest.fail(f"chromium exited with status {process.returncode}")
            if time.monotonic() > deadline:
                pytest.fail("chromium did not open its DevTools port in time")
            time.sleep(0.1)
        port, path = port_file.read_text().splitlines()[:2]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version", timeout=10):
            pass  # the endpoint answers: the browser is up
        client = DevTools(f"ws://127.0.0.1:{port}{path}")
        yield client
    finally:
        if client is not None:
            client.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait(timeout=10)


PAGE_CHECK = """JSON.stringify({
  title: document.title,
  headings: document.querySelectorAll("h2").length,
  images: Array.from(document.images).map(i => ({
    ok: i.complete && i.naturalWidth > 0, width: i.naturalWidth, alt: i.alt})),
  height: document.body.scrollHeight,
})"""


def _errors(events: list[dict[str, Any]], session: str) -> list[str]:
    errors = []
    for event in events:
        if event.get("sessionId") != session:
            continue
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            errors.append(json.dumps(params.get("exceptionDetails", {}))[:300])
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append(json.dumps(params.get("args", []))[:300])
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            errors.append(params["entry"].get("text", "")[:300])
    return errors


def open_report(browser: DevTools, html: Path) -> dict[str, Any]:
    """Load `html` in a new tab; the page's check and the console errors it caused."""
    target = browser.send("Target.createTarget", url="about:blank")["targetId"]
    session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    for domain in ("Page", "Runtime", "Log"):
        browser.send(f"{domain}.enable", session)
    browser.send("Page.navigate", session, url=html.resolve().as_uri())
    browser.wait_for("Page.loadEventFired", session)
    reply = browser.send("Runtime.evaluate", session, expression=PAGE_CHECK, returnByValue=True)
    assert "exceptionDetails" not in reply, reply["exceptionDetails"]
    check: dict[str, Any] = json.loads(reply["result"]["value"])
    check["errors"] = _errors(browser.events, session)
    browser.send("Target.closeTarget", targetId=target)
    return check


def test_reports_render_in_headless_chromium(
    chromium: DevTools, tiny_study: Path, tmp_path: Path
) -> None:
    planted = tmp_path / "planted"
    fill(planted, planted_config(binary=BINARY_BLOCK))
    write_report(planted, reps=REPS)
    for html, images in ((tiny_study / "report.html", 9), (planted / "report.html", 16)):
        check = open_report(chromium, html)
        assert check["errors"] == [], check["errors"]
        assert check["title"].startswith("Study ")
        assert check["headings"] >= len(SECTIONS)
        assert len(check["images"]) == images
        assert all(image["ok"] for image in check["images"]), check["images"]
        assert check["height"] > 2000
