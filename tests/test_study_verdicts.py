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
)
from toroid.study.verdicts import (
    RULES,
    Verdict,
    chain_word,
    claim_binary,
    claim_chains,
    claim_closer,
    claim_flatness_test,
    correlation_word,
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
