"""The report's flatness measures side by side and claim 6 ("the results hinge on symmetry
removal"): the invariance rule, the hyperparameter axes of the granulated tau and claim 6's
decision on hand-made evidence, then the report of a tiny real study with reparametrized
copies (table, CSV, figure, the sixth verdict line)."""

from __future__ import annotations

import copy
import csv
import io
import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.test_study_measures import MEASURED
from toroid.study.config import StudyConfig, validate_config
from toroid.study.evidence import (
    BlockEvidence,
    Evidence,
    Invariance,
    MeasureSummary,
    MeasureValues,
    block_hyperparameters,
    gather,
    hyperparameter_axes,
    invariance,
    measure_summaries,
    network_hyperparameters,
    same_value,
    summarize_measure,
)
from toroid.study.report import write_report
from toroid.study.rows import NetworkRow
from toroid.study.run import run_study
from toroid.study.statistics import NAN, KendallTau
from toroid.study.verdicts import claim_symmetry, symmetry_word, verdicts

REPS = 200  # fewer bootstrap resamples than the report's 2000 keep the tests quick
SMALL = {**copy.deepcopy(MEASURED), "seeds": [0, 1]}  # 2 optimizers x 2 seeds: 4 networks


# The invariance rule ----------------------------------------------------------------------


def test_same_value_is_relative_1e4_plus_absolute_1e9() -> None:
    assert same_value(1.0, 1.0 + 0.9e-4) and not same_value(1.0, 1.0 + 1.1e-4)
    assert same_value(-250.0, -250.02) and not same_value(-250.0, -250.03)
    assert same_value(0.0, 0.9e-9) and not same_value(0.0, 1.1e-9)
    assert same_value(NAN, NAN) and not same_value(NAN, 0.0) and not same_value(1.0, NAN)
    assert same_value(math.inf, math.inf) and not same_value(math.inf, -math.inf)


def test_invariance_needs_every_network_equal() -> None:
    before = {"a": 1.0, "b": 2.0, "c": 3.0}
    assert invariance(MeasureValues("m", None, before, dict(before))) == Invariance(3, True, 0.0)
    moved = invariance(MeasureValues("m", None, before, {**before, "c": 3.003}))
    assert moved.invariant is False and moved.compared == 3
    assert moved.largest_change == pytest.approx(0.003 / 3.003)
    partial = invariance(MeasureValues("m", None, before, {"a": 1.0}))
    assert partial == Invariance(1, True, 0.0)  # only networks measured both ways count
    assert invariance(MeasureValues("m", None, before, {})).invariant is None


# Hyperparameter axes of the granulated tau --------------------------------------------------


def test_hyperparameters_fall_back_to_the_optimizer_label() -> None:
    optimizers = [SimpleNamespace(key="sgd"), SimpleNamespace(key="adam")]
    bare = SimpleNamespace(optimizers=optimizers)  # a Block without `hyperparameters`
    assert block_hyperparameters(bare) == {  # type: ignore[arg-type]
        "sgd": {"optimizer": "sgd"},
        "adam": {"optimizer": "adam"},
    }
    known = {"sgd": {"optimizer": "sgd", "batch_size": 32, "lr": 0.1}}
    partly = SimpleNamespace(optimizers=optimizers, hyperparameters=known)
    assert block_hyperparameters(partly)["sgd"] == known["sgd"]  # type: ignore[arg-type]
    assert block_hyperparameters(partly)["adam"] == {"optimizer": "adam"}  # type: ignore[arg-type]


def test_grid_axes_are_levels_within_each_optimizer() -> None:
    # A grid scales each optimizer's own lr by shared factors; batch sizes are per optimizer
    # and do not vary within one, so they are a property of the optimizer, not an axis.
    by_label = {
        "sgd-lr0.5": {"optimizer": "sgd", "batch_size": 64, "lr": 0.05},
        "sgd-lr1": {"optimizer": "sgd", "batch_size": 64, "lr": 0.1},
        "adam-lr0.5": {"optimizer": "adam", "batch_size": 128, "lr": 0.0005},
        "adam-lr1": {"optimizer": "adam", "batch_size": 128, "lr": 0.001},
    }
    nets = [(f"main/{label}/s{s}", label, s) for label in by_label for s in (0, 1)]
    found = network_hyperparameters(by_label, nets)
    assert found["main/sgd-lr1/s1"] == {"optimizer": "sgd", "lr": 1, "seed": 1}
    assert found["main/adam-lr0.5/s0"] == {"optimizer": "adam", "lr": 0, "seed": 0}
    assert hyperparameter_axes(found) == ("optimizer", "lr")
    plain = network_hyperparameters(
        {"sgd": {"optimizer": "sgd", "lr": 0.1}, "adam": {"optimizer": "adam", "lr": 0.001}},
        [("main/sgd/s0", "sgd", 0), ("main/adam/s0", "adam", 0)],
    )
    assert hyperparameter_axes(plain) == ("optimizer",)


# Claim 6 on hand-made evidence --------------------------------------------------------------

NETS = [(o, s) for o in ("sgd", "adam") for s in (0, 1, 2)]
TESTS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]


def _block(measures: list[MeasureValues], count: int = 6) -> BlockEvidence:
    nets = tuple(
        NetworkRow(
            network=f"main/{o}/s{s}", block="main", optimizer=o, seed=s, epochs=1,
            reached_zero_train_error=True, train_error=0.0, train_loss=0.0,
            test_error=t, test_loss=0.0, grad_evals=1, wall_time=0.0, weights="none",
        )
        for (o, s), t in list(zip(NETS, TESTS, strict=True))[:count]
    )  # fmt: skip
    return BlockEvidence(
        block="main", optimizers=("sgd", "adam"), networks=nets, energy=(), distances=(),
        profiles=(), level=None, level_name="sigma", flatness_split="train", flatness={},
        distance_kind="geodesic", barrier_paths=(), chain_path="polychain",
        configured=frozenset(), measures=tuple(measures),
        hyperparameters=network_hyperparameters(
            {"sgd": {"optimizer": "sgd"}, "adam": {"optimizer": "adam"}},
            [(n.name, n.optimizer, n.seed) for n in nets],
        ),
        summary_levels=(0.3, 0.1),
    )  # fmt: skip


def _values(
    measure: str, level: float | None, before: list[float], after: list[float], count: int = 6
) -> MeasureValues:
    names = [f"main/{o}/s{s}" for o, s in NETS][:count]
    return MeasureValues(
        measure,
        level,
        dict(zip(names, before, strict=False)),
        dict(zip(names, after, strict=False)),
    )


def _evidence(
    log_after: list[float], *, energy_after: float = 1.0, count: int = 6, **config: Any
) -> Evidence:
    energy = [0.05, 0.01, 0.04, 0.02, 0.03, 0.06]
    measures = [
        _values("local_energy", 0.1, energy, [energy_after * e for e in energy], count),
        _values("local_energy", 0.3, energy, energy, count),
        _values("log_norm", None, TESTS, log_after, count),
    ]
    raw = copy.deepcopy(SMALL)
    raw["analyses"]["measures"].update(config)
    cfg: StudyConfig = validate_config(raw)
    return Evidence("hand", Path("."), cfg, _block(measures, count), None)


def _word(evidence: Evidence) -> str:
    verdict = claim_symmetry(evidence, reps=REPS)
    assert verdict is not None
    return verdict.word


def test_claim_6_holds_when_a_raw_measure_reverses() -> None:
    evidence = _evidence([-t for t in TESTS])  # log_norm as trained: tau 1; after: tau -1
    verdict = claim_symmetry(evidence, reps=REPS)
    assert verdict is not None and verdict.word == "holds", verdict
    assert verdict.n == 6 and verdict.value == pytest.approx(2.0)
    assert "local_energy at sigma=0.3 invariant" in verdict.statistic
    assert "log_norm tau(test error) 1.00 -> -1.00" in verdict.statistic


def test_claim_6_does_not_hold_when_rankings_survive_or_local_energy_moves() -> None:
    # log_norm doubles (not invariant) but keeps its order: tau unchanged.
    assert _word(_evidence([2 * t for t in TESTS])) == "does not hold"
    # The canonical measure itself moves (summary sigma 0.3 is measured; make 0.3 move).
    moved = _evidence([-t for t in TESTS])
    block = moved.main
    energy = block.measures[1]
    shifted = MeasureValues(
        "local_energy", 0.3, energy.before, {k: v * 1.001 for k, v in energy.after.items()}
    )
    broken = replace(block, measures=(block.measures[0], shifted, block.measures[2]))
    assert _word(Evidence("hand", Path("."), moved.config, broken, None)) == "does not hold"


def test_claim_6_inconclusive_cases() -> None:
    assert _word(_evidence([-t for t in TESTS], count=3)) == "inconclusive"  # 3 < 4 networks
    assert _word(_evidence([1.0] * 6)) == "inconclusive"  # tau after undefined (constant)
    assert _word(_evidence([-t for t in TESTS], reparametrize=None)) == "inconclusive"
    assert _word(_evidence([-t for t in TESTS], kinds=["local_energy", "hessian_trace"])) == (
        "inconclusive"
    )
    off = copy.deepcopy(SMALL)
    off["analyses"]["measures"] = None
    evidence = _evidence([-t for t in TESTS])
    plain = Evidence("hand", Path("."), validate_config(off), evidence.main, None)
    assert claim_symmetry(plain) is None and len(verdicts(plain, reps=REPS)) == 5


def _summary(tau: float, low: float, high: float, after: float, invariant: bool) -> MeasureSummary:
    def k(t: float, lo: float = NAN, hi: float = NAN) -> KendallTau:
        return KendallTau(t, lo, hi, 8, 0.95, REPS, 0)

    return MeasureSummary(
        "log_norm", None, k(tau, low, high), k(tau, low, high), None, None,
        Invariance(8, invariant, 0.0 if invariant else 0.5), k(after, -1.0, 1.0), ("optimizer",),
    )  # fmt: skip


def test_symmetry_word_at_the_half_width() -> None:
    canonical = _summary(0.1, -0.5, 0.5, 0.1, True)
    # tau 0.2 with interval [-0.2, 0.6]: half-width 0.4; a move of exactly 0.4 is not more.
    assert symmetry_word(canonical, [_summary(0.2, -0.2, 0.6, 0.6, False)]) == "does not hold"
    assert symmetry_word(canonical, [_summary(0.2, -0.2, 0.6, 0.65, False)]) == "holds"
    assert symmetry_word(canonical, [_summary(0.2, -0.2, 0.6, -0.9, True)]) == "does not hold"
    assert symmetry_word(canonical, [_summary(0.2, NAN, NAN, -0.9, False)]) == "inconclusive"
    moved = [_summary(0.2, -0.2, 0.6, -0.9, False)]
    assert symmetry_word(_summary(0.1, -0.5, 0.5, 0.1, False), moved) == "does not hold"
    assert symmetry_word(None, moved) == "inconclusive" and symmetry_word(canonical, []) == (
        "inconclusive"
    )


def test_granulated_tau_holds_the_seed_fixed() -> None:
    # Per seed, adam's network has the higher measure and (for seeds 0, 1) the higher test
    # error: two cells with tau +1, one (seed 2) with tau -1.
    block = _block([])
    measure = [1.0, 1.0, 9.0, 2.0, 2.0, 0.5]  # sgd s0-s2, adam s0-s2; tests 0.1 ... 0.6
    values = _values("log_norm", None, measure, [])
    summary = summarize_measure(block, values, reps=REPS, seed=0, level=0.95)
    assert summary.axes == ("optimizer",) and summary.granulated_test is not None
    assert summary.granulated_test.axis("optimizer").taus == (1.0, 1.0, -1.0)
    assert summary.granulated_test.psi == pytest.approx(1 / 3)
    assert summary.after is None and summary.invariance.invariant is None


# The report of a tiny real study --------------------------------------------------------------


@pytest.fixture(scope="module")
def measured_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("report-measures") / "study"
    result = run_study(validate_config(SMALL), directory, progress=False, report=False)
    assert result.complete, result.failures
    write_report(directory, reps=REPS)
    return directory


def _csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_report_table_and_csv(measured_study: Path) -> None:
    rows = _csv(measured_study / "csv" / "measures.csv")
    keys = [(r["measure"], r["level"]) for r in rows]
    assert keys == [
        ("local_energy", "0.1"), ("local_energy", "0.3"), ("raw_energy", "0.1"),
        ("raw_energy", "0.3"), ("hessian_trace", ""), ("hessian_top", ""),
        ("raw_hessian_trace", ""), ("sam_sharpness", "0.05"), ("pac_bayes", "0.1"),
        ("log_norm", ""),
    ]  # fmt: skip
    by = {(r["measure"], r["level"]): r for r in rows}
    assert all(r["n"] == "4" and r["n_after"] == "4" and r["compared"] == "4" for r in rows)
    for key in (("local_energy", "0.1"), ("local_energy", "0.3"), ("hessian_trace", "")):
        assert by[key]["invariant"] == "true", key
    for key in (("log_norm", ""), ("raw_hessian_trace", ""), ("raw_energy", "0.1")):
        assert by[key]["invariant"] == "false", key
    for r in rows:
        assert -1.0 <= float(r["tau_test"]) <= 1.0 and r["axes"] == "optimizer"
        assert r["granulated_tau_test"] != "" and r["tau_after"] != ""
    # The same function on the copy: invariant measures keep their tau exactly.
    assert by[("local_energy", "0.1")]["tau_after"] == by[("local_energy", "0.1")]["tau_test"]
    summary = (measured_study / "summary.md").read_text()
    assert "## Flatness measures" in summary
    assert "| measure | level | n | tau vs test error [95%] | granulated tau (test error) |" in (
        summary
    )


def test_report_figure_and_sixth_verdict_line(measured_study: Path) -> None:
    html = (measured_study / "report.html").read_text()
    section = html[html.index(">Flatness measures</h2>") :]
    section = section[: section.index("<h2")]
    assert section.count('<img src="data:image/png;base64,') == 1
    lines = (measured_study / "summary.md").read_text().splitlines()
    for number, line in enumerate(lines[:6], start=1):
        assert line.startswith(f"{number}. "), line
    sixth = lines[5]
    assert sixth.startswith("6. the results hinge on symmetry removal: ")
    assert any(f": {w} — " in sixth for w in ("HOLDS", "DOES NOT HOLD", "INCONCLUSIVE"))
    assert "local_energy at sigma=0.3 invariant" in sixth and sixth.endswith("n = 4 networks")
    claims = _csv(measured_study / "csv" / "verdicts.csv")
    assert [r["claim"] for r in claims] == ["1", "2", "3", "4", "5", "6"]
    assert "half the width" in claims[5]["rule"] and claims[5]["n"] == "4"


def test_a_grid_gives_the_granulated_tau_its_learning_rate_axis(tmp_path: Path) -> None:
    raw = copy.deepcopy(SMALL)
    raw["grid"] = {"lr_factors": [0.5, 1.0]}
    raw["analyses"]["measures"].update(kinds=["log_norm"], reparametrize=None)
    config = validate_config(raw)
    assert run_study(config, tmp_path, progress=False, report=False).complete
    evidence = gather(tmp_path, config)
    assert evidence.main.hyperparameters["main/adam-lr1/s1"] == {
        "optimizer": "adam",
        "lr": 1,
        "seed": 1,
    }
    (summary,) = measure_summaries(evidence.main, reps=REPS, seed=0)
    assert summary.n == 8 and summary.axes == ("optimizer", "lr")
    assert summary.granulated_test is not None
    # Every (optimizer, seed) cell varies lr; every (lr, seed) cell varies the optimizer.
    assert summary.granulated_test.axis("lr").cells == 4
    assert (
        summary.granulated_test.axis("optimizer").cells
        + (summary.granulated_test.axis("optimizer").undefined)
        == 4
    )
    assert summary.after is None and claim_symmetry(evidence, reps=REPS) is not None
