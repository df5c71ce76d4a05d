"""The verdict statistics on hand-made evidence: the correlation claims read Kendall's
tau-b (not Spearman's rho), claim 1 adds Jiang's granulated tau, claim 2 counts optimizer
labels (grid cells with a grid), claim 4's rule on the Clopper-Pearson interval at its
boundaries, the interval against exact binomial tails, and the verdicts.csv columns."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable

import pytest

from toroid.errors import InvalidArgumentError
from toroid.study.evidence import BlockEvidence, network_hyperparameters
from toroid.study.exports import verdicts_csv
from toroid.study.rows import DistanceRow, NetworkRow, ProfileRow
from toroid.study.statistics import (
    KendallTau,
    bootstrap_kendall,
    clopper_pearson,
    granulated_tau,
    kendall_tau,
    spearman,
    stratified_kendall,
)
from toroid.study.verdicts import (
    RULES,
    Verdict,
    chain_word,
    claim_barriers,
    claim_binary,
    claim_chains,
    claim_closer,
    claim_flatness_test,
    correlation_word,
    flatness_vs_barrier,
    flatness_vs_closeness,
    model_names,
)

REPS = 200  # fewer bootstrap resamples than the report's 2000 keep the tests quick


# Clopper-Pearson against exact binomial tails -----------------------------------------------


def _tail_at_least(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed term by term."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


def _solve(f: Callable[[float], float], target: float) -> float:
    """The p in [0, 1] with f(p) = target for an increasing f, by bisection."""
    low, high = 0.0, 1.0
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if f(mid) < target else (low, mid)
    return (low + high) / 2


@pytest.mark.parametrize(
    ("successes", "trials"), [(0, 1), (1, 1), (0, 5), (3, 7), (12, 15), (15, 15), (5, 10)]
)
@pytest.mark.parametrize("level", [0.95, 0.8])
def test_clopper_pearson_inverts_the_binomial_tails(
    successes: int, trials: int, level: float
) -> None:
    tail = (1 - level) / 2
    low, high = clopper_pearson(successes, trials, level=level)
    # The low end: P(X >= s) = tail; the high end: P(X <= s) = tail, i.e. P(X >= s + 1)
    # = 1 - tail; the edges where that tail is empty are 0 and 1.
    expected_low = (
        0.0 if successes == 0 else _solve(lambda p: _tail_at_least(successes, trials, p), tail)
    )
    expected_high = (
        1.0
        if successes == trials
        else _solve(lambda p: _tail_at_least(successes + 1, trials, p), 1 - tail)
    )
    assert low == pytest.approx(expected_low, abs=1e-9)
    assert high == pytest.approx(expected_high, abs=1e-9)
    assert low <= successes / trials <= high


def test_clopper_pearson_edges_in_closed_form() -> None:
    # All successes: (tail)^(1/n) below 1; none: 1 - (tail)^(1/n) above 0.
    assert clopper_pearson(6, 6) == pytest.approx((0.025 ** (1 / 6), 1.0))
    assert clopper_pearson(0, 6) == pytest.approx((0.0, 1 - 0.025 ** (1 / 6)))
    assert all(math.isnan(v) for v in clopper_pearson(0, 0))
    with pytest.raises(InvalidArgumentError):
        clopper_pearson(4, 3)
    with pytest.raises(InvalidArgumentError):
        clopper_pearson(-1, 3)
    with pytest.raises(InvalidArgumentError):
        clopper_pearson(1, 3, level=1.0)


@pytest.mark.parametrize(
    ("successes", "trials", "message"),
    [
        (True, 3, "successes must be an integer, got True"),
        (1, False, "trials must be an integer, got False"),
        (1.0, 3, "successes must be an integer, got 1.0"),
        (1, 3.5, "trials must be an integer, got 3.5"),
        (0, -2, "trials must be at least 0, got -2"),
        (4, 3, r"successes must lie in \[0, trials\], got 4 of 3"),
    ],
)
def test_clopper_pearson_refuses_bad_counts_in_one_line(
    successes: object, trials: object, message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=f"^{message}$"):
        clopper_pearson(successes, trials)  # type: ignore[arg-type]


# Claim 4's rule ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zero", "eligible", "word"),
    [
        (15, 15, "holds"),  # interval [0.78, 1]
        (9, 10, "holds"),  # exactly 90%, interval [0.56, 1.00]
        (6, 6, "holds"),  # interval [0.54, 1]: the fewest all-zero chains that can hold
        (5, 5, "inconclusive"),  # interval [0.48, 1]: low end not above 50%
        (13, 15, "inconclusive"),  # 0.87 below 90%, interval [0.60, 0.98]
        (12, 15, "inconclusive"),  # 0.80, interval [0.52, 0.96] still contains 90%
        (5, 10, "does not hold"),  # interval [0.19, 0.81]
        (0, 3, "does not hold"),  # interval [0, 0.71]
        (2, 2, "inconclusive"),  # fewer than 3 chains
        (0, 2, "inconclusive"),
        (0, 0, "inconclusive"),
    ],
)
def test_chain_word_at_its_boundaries(zero: int, eligible: int, word: str) -> None:
    assert chain_word(zero, eligible) == word


def test_chain_rule_text_is_the_one_fixed() -> None:
    assert RULES["chains"] == (
        "holds if at least 90% of the chains between minimizers stay at zero training error "
        "and the 95% Clopper-Pearson interval's lower end is above 50%; does not hold if the "
        "interval's upper end is below 90%; inconclusive otherwise, or with fewer than 3 "
        "such chains"
    )


# Hand-made blocks ----------------------------------------------------------------------------


def _network(name: str, test_error: float, *, zero: bool = True) -> NetworkRow:
    _, label, seed = name.split("/")
    return NetworkRow(
        network=name, block="main", optimizer=label, seed=int(seed[1:]), epochs=1,
        reached_zero_train_error=zero, train_error=0.0 if zero else 0.1, train_loss=0.0,
        test_error=test_error, test_loss=0.0, grad_evals=1, wall_time=0.0, weights="none",
    )  # fmt: skip


def _chain(a: str, b: str, peak: float) -> ProfileRow:
    return ProfileRow(
        a=a, b=b, block="main", path="polychain", ts=(0.0, 0.5, 1.0),
        train_error=(0.0, peak, 0.0), train_loss=(0.0,) * 3, test_error=(0.1,) * 3,
        test_loss=(0.0,) * 3, barrier_train=peak, barrier_test=peak, max_train_error=peak,
    )  # fmt: skip


def _block(
    labels: dict[str, dict[str, object]],
    seeds: int,
    flat: list[float],
    tests: list[float],
    *,
    distances: tuple[DistanceRow, ...] = (),
    profiles: tuple[ProfileRow, ...] = (),
) -> BlockEvidence:
    names = [f"main/{label}/s{s}" for label in labels for s in range(seeds)]
    nets = tuple(_network(n, t) for n, t in zip(names, tests, strict=True))
    return BlockEvidence(
        block="main", optimizers=tuple(labels), networks=nets, energy=(), distances=distances,
        profiles=profiles, level=0.1, level_name="sigma", flatness_split="train",
        flatness=dict(zip(names, flat, strict=True)), distance_kind="geodesic",
        barrier_paths=("geodesic",), chain_path="polychain",
        configured=frozenset({"local_energy", "distances", "paths", "bends"}),
        hyperparameters=network_hyperparameters(
            labels, [(n.name, n.optimizer, n.seed) for n in nets]
        ),
    )  # fmt: skip


# Flatness 1..8 against a test error whose ranks disagree in a few far-apart places:
# Spearman weighs the large rank displacements more, so rho and tau-b differ.
FLAT = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
TESTS = [0.30, 0.10, 0.20, 0.80, 0.40, 0.50, 0.60, 0.70]
PLAIN = {"sgd": {"optimizer": "sgd"}, "adam": {"optimizer": "adam"}}


def test_claim_1_reads_kendall_tau_and_its_bootstrap_interval() -> None:
    block = _block(PLAIN, 4, FLAT, TESTS)
    tau, rho = kendall_tau(FLAT, TESTS), spearman(FLAT, TESTS)
    assert abs(tau - rho) > 0.1  # the two statistics really differ here
    verdict = claim_flatness_test(block, reps=REPS)
    expected = bootstrap_kendall(FLAT, TESTS, reps=REPS, seed=0)
    assert verdict.value == pytest.approx(tau, abs=1e-12)
    assert (verdict.low, verdict.high) == (expected.low, expected.high)
    assert verdict.n == 8 and verdict.statistic_name == "kendall_tau"
    assert verdict.word == correlation_word(expected)
    assert verdict.statistic.startswith(
        f"Kendall tau(dE at sigma=0.1, test error) = {tau:.2f}, 95% bootstrap interval "
        f"[{expected.low:.2f}, {expected.high:.2f}]; n = 8 networks"
    )
    # Jiang's granulated tau along the optimizer axis (cells: one per seed), for information.
    rows = [block.hyperparameters[n.name] for n in block.networks]
    psi = granulated_tau(rows, FLAT, TESTS, axes=["optimizer"]).psi
    assert verdict.statistic.endswith(f"; granulated tau {psi:.2f} (axes optimizer)")


def test_correlation_word_reads_the_interval() -> None:
    def tau(value: float, low: float, high: float, n: int = 10) -> KendallTau:
        return KendallTau(value, low, high, n, 0.95, REPS, 0)

    assert correlation_word(tau(0.5, 0.1, 0.8)) == "holds"
    assert correlation_word(tau(-0.5, -0.8, 0.0)) == "does not hold"  # at or below 0
    assert correlation_word(tau(0.2, -0.1, 0.5)) == "inconclusive"
    assert correlation_word(tau(0.9, 0.5, 1.0, n=3)) == "inconclusive"  # fewer than 4 points
    assert correlation_word(tau(0.9, math.nan, math.nan)) == "inconclusive"


def test_claim_2_counts_grid_cells_and_claim_1_names_the_grid_axes() -> None:
    grid = {
        f"{o}-lr{f}": {"optimizer": o, "lr": lr * f}
        for o, lr in (("sgd", 0.1), ("adam", 0.001))
        for f in (0.5, 1)
    }
    names = [f"main/{label}/s{s}" for label in grid for s in range(2)]
    flat = [0.01 * (i + 1) for i in range(8)]
    # Within each label, the distance between its two seeds grows with their flatness.
    distances = tuple(
        DistanceRow(names[i], names[i + 1], "main", "geodesic", flat[i] + flat[i + 1], True)
        for i in range(0, 8, 2)
    )
    tests = [0.1 + f for f in flat]
    block = _block(grid, 2, flat, tests, distances=distances)
    closer = claim_closer(block, reps=REPS)
    assert closer.n == 4 and "n = 4 optimizer labels (grid cells)" in closer.statistic
    assert closer.value == pytest.approx(1.0) and closer.statistic_name == "kendall_tau"
    first = claim_flatness_test(block, reps=REPS)
    assert first.statistic.endswith("; granulated tau 1.00 (axes optimizer, lr)")
    plain = _block(PLAIN, 4, FLAT, TESTS)
    assert "optimizer labels (grid cells)" not in claim_closer(plain, reps=REPS).statistic


def _chain_block(peaks: list[float]) -> BlockEvidence:
    names = [f"main/sgd/s{s}" for s in range(len(peaks) + 1)]
    # A star of chains from s0, one per other seed (the rule only counts chains).
    profiles = tuple(_chain(names[0], b, p) for b, p in zip(names[1:], peaks, strict=True))
    flat = [0.01 * (i + 1) for i in range(len(names))]
    return _block({"sgd": {"optimizer": "sgd"}}, len(names), flat, flat, profiles=profiles)


def test_claim_4_reports_the_fraction_with_its_clopper_pearson_interval() -> None:
    verdict = claim_chains(_chain_block([0.0] * 12 + [0.05] * 3))
    low, high = clopper_pearson(12, 15)
    assert verdict.word == "inconclusive"  # the old rule said "does not hold"
    assert verdict.value == pytest.approx(0.8) and verdict.n == 15
    assert (verdict.low, verdict.high) == (low, high)
    assert verdict.statistic_name == "fraction"
    assert verdict.statistic == (
        "12 of 15 polychain chains between minimizers stay at zero training error (0.80, 95% "
        "Clopper-Pearson interval [0.52, 0.96]); largest max training error along a chain "
        "0.0500"
    )
    assert claim_chains(_chain_block([0.0] * 15)).word == "holds"
    assert claim_chains(_chain_block([0.0] * 5 + [0.05] * 5)).word == "does not hold"
    two = claim_chains(_chain_block([0.0, 0.0]))
    assert two.word == "inconclusive" and "(< 3 chains)" in two.statistic


def test_claim_5_lists_each_sub_claims_word_and_n() -> None:
    verdict = claim_binary(_chain_block([0.0] * 6), reps=REPS)
    assert [d.claim for d in verdict.details] == ["5a", "5b", "5c", "5d"]
    assert "5d holds (n = 6)" in verdict.statistic
    assert verdict.details[3].statistic_name == "fraction"


# verdicts.csv ----------------------------------------------------------------------------------


def test_verdicts_csv_names_the_value() -> None:
    chains = claim_chains(_chain_block([0.0] * 9 + [0.05]))
    first = Verdict("1", "t", "holds", "s", RULES["correlation"], 0.4, 0.1, 0.6, 8,
                    statistic_name="kendall_tau")  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(verdicts_csv([first, chains]))))
    assert "rho" not in rows[0]
    assert list(rows[0])[:5] == ["claim", "statement", "verdict", "value", "statistic_name"]
    assert [r["statistic_name"] for r in rows] == ["kendall_tau", "fraction"]
    assert float(rows[1]["value"]) == pytest.approx(0.9) and rows[1]["verdict"] == "holds"
    assert float(rows[1]["low"]) == pytest.approx(clopper_pearson(9, 10)[0])
    assert rows[1]["n"] == "10" and rows[1]["rule"] == RULES["chains"]


def test_the_verdict_table_gives_each_claim_its_n_and_rule() -> None:
    from toroid.study.sections import verdict_table
    from toroid.study.verdicts import RULES, Verdict

    table = verdict_table(
        (
            Verdict(
                "1", "flatness tracks test error", "holds", "tau = 0.4", RULES["correlation"], n=48
            ),
            Verdict("4", "chains", "inconclusive", "2 of 2", RULES["chains"], n=2),
        )
    )
    assert table.columns[-2:] == ("n", "rule")
    assert [row[-2:] for row in table.rows] == [
        ("48", RULES["correlation"]),
        ("2", RULES["chains"]),
    ]


# Several architectures: tau within each, pair-weighted ------------------------------------------

# Two models, two optimizers each, three seeds: within each model the flatter network has the
# lower test error... the other way round (tau < 0 within), but the mlp's dE and test errors
# are both larger, so a tau over all 12 networks would be positive.
MODELS = {
    f"{o}-{m}": {"optimizer": o, "model": m} for m in ("mlp", "lenet") for o in ("sgd", "adam")
}
MODEL_FLAT = [0.01 * i for i in range(1, 7)] + [0.10 + 0.01 * i for i in range(1, 7)]
MODEL_TESTS = [0.16, 0.15, 0.13, 0.14, 0.12, 0.11, 0.36, 0.34, 0.35, 0.33, 0.32, 0.31]


def _model_block(
    distances: tuple[DistanceRow, ...] = (), profiles: tuple[ProfileRow, ...] = ()
) -> BlockEvidence:
    return _block(MODELS, 3, MODEL_FLAT, MODEL_TESTS, distances=distances, profiles=profiles)


def test_claim_1_takes_tau_within_each_model_when_the_block_has_several() -> None:
    block = _model_block()
    names = [n.name for n in block.networks]
    # network_hyperparameters numbers the models in sorted order: lenet 0, mlp 1.
    strata = [block.hyperparameters[n]["model"] for n in names]
    assert strata == [1] * 6 + [0] * 6
    assert kendall_tau(MODEL_FLAT, MODEL_TESTS) > 0  # over all networks: positive
    expected = stratified_kendall(MODEL_FLAT, MODEL_TESTS, strata, reps=REPS, seed=0)
    assert expected.tau < 0 and expected.high <= 0
    verdict = claim_flatness_test(block, models=("lenet", "mlp"), reps=REPS)
    assert (verdict.value, verdict.low, verdict.high) == (expected.tau, expected.low, expected.high)
    assert verdict.word == "does not hold" and verdict.n == 12
    assert verdict.statistic.startswith(
        f"Kendall tau(dE at sigma=0.1, test error) within models (mlp, lenet), pair-weighted "
        f"= {expected.tau:.2f}, 95% stratified bootstrap interval [{expected.low:.2f}, "
        f"{expected.high:.2f}]; n = 12 networks; granulated tau"
    )
    # Without the labels the strata are named by their number.
    assert "within models (1, 0)" in claim_flatness_test(block, reps=REPS).statistic
    assert (
        "(within each architecture, pair-weighted, when the block has several)"
        in RULES["correlation"]
    )
    assert verdict.rule == RULES["correlation"]


def test_claims_2_and_3_take_tau_within_each_model() -> None:
    names = [f"main/{label}/s{s}" for label in MODELS for s in range(3)]
    flat = dict(zip(names, MODEL_FLAT, strict=True))
    # Per label: the distance between seeds 0 and 1 falls as the label's flatness grows
    # within a model; the mlp's distances are 3x larger.
    distances = tuple(
        DistanceRow(
            names[i], names[i + 1], "main", "geodesic",
            (3.0 if i >= 6 else 1.0) * (1.0 - flat[names[i]]), True,
        )
        for i in range(0, 12, 3)
    )  # fmt: skip
    profiles = tuple(
        ProfileRow(
            a=names[i], b=names[j], block="main", path="geodesic", ts=(0.0, 0.5, 1.0),
            train_error=(0.0, 0.1, 0.0), train_loss=(0.0,) * 3, test_error=(0.1,) * 3,
            test_loss=(0.0,) * 3, barrier_train=(2.0 if i >= 6 else 0.5) - flat[names[i]],
            barrier_test=0.1, max_train_error=0.1,
        )
        for i, j in ((0, 1), (0, 2), (3, 4), (3, 5), (6, 7), (6, 8), (9, 10), (9, 11))
    )  # fmt: skip
    block = _model_block(distances, profiles)
    for points, verdict in (
        (flatness_vs_closeness(block), claim_closer(block, models=("lenet", "mlp"), reps=REPS)),
        (
            flatness_vs_barrier(block, "geodesic"),
            claim_barriers(block, models=("lenet", "mlp"), reps=REPS),
        ),
    ):
        assert points.stratified and set(points.strata) == {0, 1}
        expected = stratified_kendall(points.x, points.y, points.strata, reps=REPS, seed=0)
        assert verdict.value == expected.tau
        # Two labels per model: most resamples repeat one label, the interval is undefined.
        assert verdict.low is None if math.isnan(expected.low) else verdict.low == expected.low
        assert "within models (mlp, lenet), pair-weighted" in verdict.statistic
        assert kendall_tau(points.x, points.y) > 0 > expected.tau
    closer = flatness_vs_closeness(block)
    assert closer.strata == (1, 1, 0, 0)  # one model per optimizer label


def test_one_model_changes_nothing() -> None:
    one = {label: dict(h, model="mlp") for label, h in PLAIN.items()}
    block = _block(one, 4, FLAT, TESTS)
    assert all("model" not in h for h in block.hyperparameters.values())
    verdict = claim_flatness_test(block, models=("mlp",), reps=REPS)
    assert verdict == claim_flatness_test(_block(PLAIN, 4, FLAT, TESTS), reps=REPS)
    assert "within models" not in verdict.statistic


def test_model_names_are_the_sorted_grid_models() -> None:
    from types import SimpleNamespace

    def evidence(models: object) -> object:
        return SimpleNamespace(config=SimpleNamespace(grid=SimpleNamespace(models=models)))

    assert model_names(evidence({"mlp": {}, "lenet": {}})) == ("lenet", "mlp")  # type: ignore[arg-type]
    assert model_names(evidence(None)) == ()  # type: ignore[arg-type]
    assert model_names(SimpleNamespace(config=SimpleNamespace(grid=None))) == ()  # type: ignore[arg-type]


def test_the_raw_coordinates_section_takes_claim_3s_statistic() -> None:
    """Its flatness-against-barrier line per path is claim 3's statistic, within models."""
    from toroid.study.document import Table
    from toroid.study.sections import raw_section

    names = [f"main/{label}/s{s}" for label in MODELS for s in range(3)]
    flat = dict(zip(names, MODEL_FLAT, strict=True))
    profiles = tuple(
        ProfileRow(
            a=names[i], b=names[j], block="main", path=path, ts=(0.0, 0.5, 1.0),
            train_error=(0.0, 0.1, 0.0), train_loss=(0.0,) * 3, test_error=(0.1,) * 3,
            test_loss=(0.0,) * 3, barrier_train=(2.0 if i >= 6 else 0.5) - flat[names[i]],
            barrier_test=0.1, max_train_error=0.1,
        )
        for path in ("geodesic", "raw-linear")
        for i, j in ((0, 1), (0, 2), (3, 4), (3, 5), (6, 7), (6, 8), (9, 10), (9, 11))
    )  # fmt: skip
    block = _model_block(profiles=profiles)
    section = raw_section(block, models=("lenet", "mlp"))
    summary = [item for item in section.items if isinstance(item, Table)][-1]
    claim = claim_barriers(block, models=("lenet", "mlp"), reps=REPS)
    row = next(r for r in summary.rows if r[0] == "geodesic")
    assert claim.statistic.split("; n =")[0].split(" = ", 1)[1] in row[2]
    assert "within models (mlp, lenet), pair-weighted" in row[2]
