"""Kendall's tau-b, its bootstrap over networks and Jiang et al.'s granulated tau: against
scipy.stats.kendalltau (variant b), by hand, and against a brute-force enumeration of the
hyperparameter grid written here independently of toroid's grouping."""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import pytest
from scipy import stats

from toroid.errors import InvalidArgumentError
from toroid.study.statistics import (
    bootstrap_kendall,
    granulated_tau,
    kendall_tau,
    stratified_kendall,
)


def scipy_tau(x: Sequence[float], y: Sequence[float]) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.kendalltau(x, y, variant="b").statistic)


# kendall_tau ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_kendall_matches_scipy_without_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    x = rng.normal(size=n)
    y = 0.5 * x + rng.normal(size=n)
    assert kendall_tau(list(x), list(y)) == pytest.approx(scipy_tau(x, y), abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_kendall_matches_scipy_with_ties_in_one_or_both(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(3, 80))
    x = rng.integers(0, 4, n).astype(float)
    y = x + rng.integers(-2, 3, n)
    z = rng.normal(size=n)
    for a, b in ((x, y), (x, z), (z, y)):
        if np.ptp(a) == 0 or np.ptp(b) == 0:
            continue
        assert kendall_tau(list(a), list(b)) == pytest.approx(scipy_tau(a, b), abs=1e-12)


def test_kendall_by_hand() -> None:
    # Pairs (1,2) and (1,3) concordant, (2,3) discordant: (2 - 1) / 3.
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    # One pair tied in x only: (2 - 0) / sqrt((3 - 1) * (3 - 0)).
    assert kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / math.sqrt(6))
    # One concordant, one discordant, two tied in x, two tied in y.
    assert kendall_tau([1, 1, 2, 2], [1, 2, 1, 2]) == 0.0
    # One pair tied in both, one more tied in y, four concordant: 4 / sqrt((6-1)(6-2)).
    assert kendall_tau([1, 1, 2, 3], [1, 1, 2, 2]) == pytest.approx(4 / math.sqrt(20))
    assert kendall_tau([0.3, 0.1], [5.0, 7.0]) == -1.0
    # Monotone with ties in both: exactly 1 and -1.
    x = [1.0, 1.0, 2.0, 3.0, 3.0, 4.0]
    assert kendall_tau(x, [v**3 for v in x]) == 1.0
    assert kendall_tau(x, [-v for v in x]) == -1.0


def test_kendall_undefined_and_bad_input() -> None:
    assert math.isnan(kendall_tau([1.0], [2.0]))
    assert math.isnan(kendall_tau([], []))
    assert math.isnan(kendall_tau([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    assert math.isnan(kendall_tau([1.0, 2.0, 3.0], [4.0, 4.0, 4.0]))
    assert math.isnan(kendall_tau([1.0, float("nan"), 3.0], [1.0, 2.0, 3.0]))
    assert math.isnan(kendall_tau([1.0, 2.0, 3.0], [1.0, 2.0, float("inf")]))
    with pytest.raises(InvalidArgumentError, match="differ in length"):
        kendall_tau([1.0, 2.0, 3.0], [1.0, 2.0])


# bootstrap_kendall -------------------------------------------------------------------------


def test_bootstrap_kendall_matches_a_plain_loop_over_resamples() -> None:
    rng = np.random.default_rng(2)
    x = np.round(rng.normal(size=11), 1)
    y = np.round(x + rng.normal(0, 1.0, 11), 1)
    reps, seed = 400, 7
    result = bootstrap_kendall(list(x), list(y), reps=reps, seed=seed, level=0.9)
    # The same draws, one scipy call per resample; constant resamples are dropped.
    index = np.random.default_rng(seed).integers(0, 11, size=(reps, 11))
    taus = [scipy_tau(x[row], y[row]) for row in index if np.ptp(x[row]) > 0 and np.ptp(y[row]) > 0]
    low, high = np.quantile(taus, [0.05, 0.95])
    assert result.tau == pytest.approx(scipy_tau(x, y), abs=1e-12)
    assert (result.low, result.high) == pytest.approx((low, high), abs=1e-12)
    assert (result.n, result.reps, result.seed, result.level) == (11, reps, seed, 0.9)


@pytest.mark.parametrize("seed", range(5))
def test_bootstrap_kendall_interval_contains_the_estimate(seed: int) -> None:
    rng = np.random.default_rng(200 + seed)
    x = rng.normal(size=40)
    y = (seed - 2) / 2 * x + rng.normal(size=40)
    result = bootstrap_kendall(list(x), list(y), reps=500, seed=seed)
    assert result.defined
    assert -1 <= result.low <= result.tau <= result.high <= 1


def test_bootstrap_kendall_interval_shrinks_with_n() -> None:
    rng = np.random.default_rng(5)
    widths = []
    for n in (20, 80, 320):
        x = rng.normal(size=n)
        y = x + rng.normal(size=n)  # the same population tau (1/3) at every n
        result = bootstrap_kendall(list(x), list(y), reps=1000, seed=1)
        widths.append(result.high - result.low)
    assert widths[0] > 1.5 * widths[1] > 2.25 * widths[2]


def test_bootstrap_kendall_is_seeded_and_exact_for_a_monotone_relation() -> None:
    x = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    y = [math.exp(v) for v in x]
    first = bootstrap_kendall(x, y, reps=200, seed=3)
    assert first == bootstrap_kendall(x, y, reps=200, seed=3)
    assert (first.tau, first.low, first.high) == (1.0, 1.0, 1.0)
    assert first.defined
    rng = np.random.default_rng(0)
    a, b = list(rng.normal(size=30)), list(rng.normal(size=30))
    one, other = bootstrap_kendall(a, b, reps=300, seed=1), bootstrap_kendall(a, b, reps=300)
    assert one.tau == other.tau and (one.low, one.high) != (other.low, other.high)


def test_bootstrap_kendall_undefined_and_bad_input() -> None:
    result = bootstrap_kendall([0.0] * 5, [1.0, 2.0, 3.0, 4.0, 5.0], reps=50)
    assert not result.defined and math.isnan(result.tau) and math.isnan(result.low)
    # Two points: half the resamples repeat one point, so the interval is often undefined,
    # never an exception.
    assert bootstrap_kendall([1.0, 2.0], [2.0, 1.0], reps=50).tau == -1.0
    with pytest.raises(InvalidArgumentError, match="level"):
        bootstrap_kendall([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], level=1.0)
    with pytest.raises(InvalidArgumentError, match="reps"):
        bootstrap_kendall([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], reps=0)
    with pytest.raises(InvalidArgumentError, match="differ in length"):
        bootstrap_kendall([1.0, 2.0, 3.0], [1.0, 2.0])


# stratified_kendall --------------------------------------------------------------------------


def brute_stratified(x: Sequence[float], y: Sequence[float], strata: Sequence[Hashable]) -> float:
    """Per stratum scipy's tau-b, weighted by the stratum's n_s (n_s - 1) / 2 pairs; strata
    with fewer than 2 points or an undefined tau weigh nothing."""
    total = weight = 0.0
    for s in set(strata):
        xs = [a for a, t in zip(x, strata, strict=True) if t == s]
        ys = [b for b, t in zip(y, strata, strict=True) if t == s]
        if len(xs) < 2:
            continue
        tau = scipy_tau(xs, ys)
        if math.isnan(tau):
            continue
        pairs = len(xs) * (len(xs) - 1) / 2
        total, weight = total + pairs * tau, weight + pairs
    return total / weight if weight else math.nan


@pytest.mark.parametrize("seed", range(5))
def test_stratified_kendall_with_one_stratum_is_bootstrap_kendall(seed: int) -> None:
    rng = np.random.default_rng(300 + seed)
    n = int(rng.integers(2, 30))
    x = list(np.round(rng.normal(size=n), 1))
    y = list(np.round(np.asarray(x) + rng.normal(size=n), 1))
    plain = bootstrap_kendall(x, y, reps=300, seed=seed, level=0.9)
    one = stratified_kendall(x, y, ["mlp"] * n, reps=300, seed=seed, level=0.9)
    assert one == plain  # every field, to the last bit
    # Undefined alike (NaN != NaN, so compared through repr).
    flat = ([1.0] * 4, [1.0, 2.0, 3.0, 4.0])
    undefined = stratified_kendall(*flat, [0] * 4, reps=50)
    assert repr(undefined) == repr(bootstrap_kendall(*flat, reps=50))


@pytest.mark.parametrize("seed", range(6))
def test_stratified_kendall_matches_per_stratum_scipy_weighted_by_pairs(seed: int) -> None:
    rng = np.random.default_rng(400 + seed)
    sizes = [int(v) for v in rng.integers(2, 15, size=int(rng.integers(2, 5)))]
    strata = [f"m{k}" for k, size in enumerate(sizes) for _ in range(size)]
    n = len(strata)
    x = rng.integers(0, 5, n).astype(float)  # ties
    y = x * rng.choice([-1.0, 1.0]) + rng.normal(size=n) + 3 * rng.integers(0, 2, n)
    order = rng.permutation(n)  # strata interleaved
    xs, ys, ss = list(x[order]), list(y[order]), [strata[i] for i in order]
    # A stratum of one point and a constant one weigh nothing.
    xs, ys, ss = [*xs, 9.0, 1.0, 1.0, 1.0], [*ys, 9.0, 0.0, 1.0, 2.0], [*ss, "one", *"ccc"]
    result = stratified_kendall(xs, ys, ss, reps=200, seed=seed)
    assert result.tau == pytest.approx(brute_stratified(xs, ys, ss), abs=1e-12)
    assert result.n == n + 4 and (result.reps, result.seed) == (200, seed)
    # Strata of 2 points are constant in half their resamples: the interval may be undefined.
    assert not result.defined or -1 <= result.low <= result.high <= 1


def test_stratified_bootstrap_matches_a_plain_loop_over_resamples() -> None:
    rng = np.random.default_rng(8)
    sizes = {"lenet": 9, "mlp": 6}
    strata = ["mlp", "lenet"] * 6 + ["lenet"] * 3  # first appearance: mlp, then lenet
    x = np.round(rng.normal(size=15), 1)
    y = np.round(x + rng.normal(0, 1.0, 15), 1) + 5 * (np.asarray(strata) == "mlp")
    reps, seed = 300, 4
    result = stratified_kendall(list(x), list(y), strata, reps=reps, seed=seed, level=0.9)
    # The same draws: mlp's reps x 6 indices, then lenet's reps x 9, from one generator;
    # a resample is dropped when either stratum's resample is constant.
    draw = np.random.default_rng(seed)
    where = {s: np.flatnonzero(np.asarray(strata) == s) for s in ("mlp", "lenet")}
    index = {s: draw.integers(0, sizes[s], size=(reps, sizes[s])) for s in ("mlp", "lenet")}
    pairs = {s: sizes[s] * (sizes[s] - 1) / 2 for s in sizes}
    stats_ = []
    for r in range(reps):
        total = 0.0
        for s in ("mlp", "lenet"):
            chosen = where[s][index[s][r]]
            total += pairs[s] * scipy_tau(x[chosen], y[chosen])
        if not math.isnan(total):
            stats_.append(total / sum(pairs.values()))
    low, high = np.quantile(stats_, [0.05, 0.95])
    assert result.tau == pytest.approx(brute_stratified(list(x), list(y), strata), abs=1e-12)
    assert (result.low, result.high) == pytest.approx((low, high), abs=1e-12)


def test_stratified_kendall_removes_a_between_strata_offset() -> None:
    # Three architectures of 5 networks: within each, flatter (larger x) mostly goes with
    # smaller y (2 of 10 pairs concordant, tau -0.6), but each next architecture has both
    # larger x and larger y, so the 75 pairs across architectures make the pooled tau
    # strongly positive.
    shape = [0.5, 0.3, 0.4, 0.1, 0.2]
    x = [10.0 * k + i for k in range(3) for i in range(1, 6)]
    y = [2.0 * k + v for k in range(3) for v in shape]
    strata = [name for name in ("lenet", "mlp", "vgg") for _ in range(5)]
    assert kendall_tau(x, y) == pytest.approx((75 + 3 * (2 - 8)) / 105)
    within = [kendall_tau(x[k : k + 5], y[k : k + 5]) for k in (0, 5, 10)]
    assert within == pytest.approx([-0.6] * 3)
    result = stratified_kendall(x, y, strata, reps=1000, seed=0)
    assert result.tau == pytest.approx(-0.6)
    assert result.defined and result.high < 0
    assert bootstrap_kendall(x, y, reps=1000, seed=0).low > 0  # pooled says the opposite


def test_stratified_kendall_undefined_and_bad_input() -> None:
    # Every stratum a single point or constant: undefined, no exception.
    lone = stratified_kendall([1.0, 2.0, 3.0], [3.0, 1.0, 2.0], ["a", "b", "c"], reps=50)
    assert not lone.defined and math.isnan(lone.tau) and lone.n == 3
    flat = stratified_kendall([1.0, 1.0, 2.0, 2.0], [1.0, 2.0, 3.0, 4.0], "aabb", reps=50)
    assert math.isnan(flat.tau)
    with pytest.raises(InvalidArgumentError, match="strata and x differ in length: 2 != 3"):
        stratified_kendall([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], ["a", "b"])
    with pytest.raises(InvalidArgumentError, match="level"):
        stratified_kendall([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], "aaa", level=0.0)
    with pytest.raises(InvalidArgumentError, match="reps"):
        stratified_kendall([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], "aaa", reps=0)
    with pytest.raises(InvalidArgumentError, match="differ in length"):
        stratified_kendall([1.0, 2.0, 3.0], [1.0, 2.0], "aaa")


# granulated_tau ----------------------------------------------------------------------------


Row = Mapping[str, Hashable]


def brute_force(
    rows: Sequence[Row],
    measure: Sequence[float],
    target: Sequence[float],
    axes: Sequence[str],
    fixed: Sequence[str],
) -> dict[str, tuple[float, int, int, int]]:
    """Psi_i, contributing, single-valued and undefined cells per axis, by enumerating the
    product of the observed values of every other axis and every `fixed` key (Jiang's sum
    over theta_1 ... theta_(i-1), theta_(i+1) ... theta_n), one scipy call per cell."""
    out = {}
    for axis in axes:
        others = [a for a in axes if a != axis] + list(fixed)
        grids = [sorted({r[k] for r in rows}, key=repr) for k in others]
        taus, single, undefined = [], 0, 0
        for combo in itertools.product(*grids):
            members = [
                k
                for k, r in enumerate(rows)
                if all(r[o] == v for o, v in zip(others, combo, strict=True))
            ]
            if not members:
                continue
            if len({rows[k][axis] for k in members}) < 2:
                single += 1
                continue
            m = [measure[k] for k in members]
            t = [target[k] for k in members]
            if len(members) < 2 or len(set(m)) < 2 or len(set(t)) < 2:
                undefined += 1
                continue
            taus.append(scipy_tau(m, t))
        psi = float(np.mean(taus)) if taus else math.nan
        out[axis] = (psi, len(taus), single, undefined)
    return out


GRID = {"optimizer": ["sgd", "sam", "entropy"], "batch_size": [32, 128], "lr": [0.05, 0.1, 0.2]}
AXES = list(GRID)


def grid_rows(seeds: Sequence[int] = (0, 1)) -> list[dict[str, Hashable]]:
    return [
        {"optimizer": o, "batch_size": b, "lr": lr, "seed": s}
        for o, b, lr in itertools.product(*GRID.values())
        for s in seeds
    ]


@pytest.mark.parametrize("seed", range(4))
def test_granulated_tau_matches_brute_force_on_a_grid(seed: int) -> None:
    rng = np.random.default_rng(300 + seed)
    rows = grid_rows()
    # Drop some networks (single-valued cells), round values (ties), flatten one cell's
    # measure (undefined tau).
    keep = rng.random(len(rows)) > 0.2
    rows = [r for r, k in zip(rows, keep, strict=True) if k]
    target = list(np.round(rng.normal(size=len(rows)), 1))
    measure = list(np.round(np.asarray(target) + rng.normal(size=len(rows)), 1))
    flat = [k for k, r in enumerate(rows) if r["batch_size"] == 32 and r["seed"] == 0]
    flat = [k for k in flat if rows[k]["optimizer"] == "sam"]
    for k in flat:
        measure[k] = 0.5
    result = granulated_tau(rows, measure, target, axes=AXES)
    expected = brute_force(rows, measure, target, AXES, fixed=["seed"])
    assert result.n == len(rows)
    for axis in AXES:
        got = result.axis(axis)
        psi, cells, single, undefined = expected[axis]
        assert (got.cells, got.single, got.undefined) == (cells, single, undefined)
        assert got.psi == pytest.approx(psi, abs=1e-12, nan_ok=True)
        assert len(got.taus) == got.cells
    defined = [expected[a][0] for a in AXES if not math.isnan(expected[a][0])]
    assert result.psi == pytest.approx(float(np.mean(defined)), abs=1e-12)


def test_granulated_tau_cells_of_a_complete_grid() -> None:
    rng = np.random.default_rng(0)
    rows = grid_rows()
    values = list(rng.normal(size=len(rows)))
    result = granulated_tau(rows, values, list(rng.normal(size=len(rows))), axes=AXES)
    # Jiang's m_i (product of the other axes' sizes) once per seed; nothing skipped.
    assert [a.cells for a in result.per_axis] == [2 * 3 * 2, 3 * 3 * 2, 3 * 2 * 2]
    assert all(a.single == a.undefined == 0 for a in result.per_axis)
    assert result.complete and result.left_out == ()


def test_granulated_tau_concordant_along_one_axis_and_anti_along_another() -> None:
    rows = grid_rows()
    effect = {"sgd": 0.0, "sam": 1.0, "entropy": 2.0}
    target, measure = [], []
    for r in rows:
        # The seed moves both by far more than any hyperparameter does.
        base = 100.0 * r["seed"] + effect[r["optimizer"]]
        target.append(base + 10 * r["lr"] + r["batch_size"] / 100)
        measure.append(base + 10 * r["lr"] - r["batch_size"] / 100)
    result = granulated_tau(rows, measure, target, axes=AXES)
    assert result.axis("optimizer").psi == 1.0
    assert result.axis("lr").psi == 1.0
    assert result.axis("batch_size").psi == -1.0
    assert result.psi == pytest.approx(1 / 3)
    assert set(result.axis("batch_size").taus) == {-1.0}
    # Seeds held fixed (the chosen treatment) is not pooling: without the seed key a batch
    # size cell holds 2 sizes x 2 seeds; its 2 same-seed pairs are discordant, its 4
    # cross-seed pairs concordant (the seed dominates), so tau = (4 - 2) / 6, not -1.
    pooled_rows = [{k: v for k, v in r.items() if k != "seed"} for r in rows]
    pooled = granulated_tau(pooled_rows, measure, target, axes=AXES)
    expected = brute_force(pooled_rows, measure, target, AXES, fixed=[])
    assert pooled.axis("batch_size").psi == pytest.approx(expected["batch_size"][0])
    assert pooled.axis("batch_size").psi == pytest.approx(1 / 3)
    assert [a.cells for a in pooled.per_axis] == [2 * 3, 3 * 3, 3 * 2]


def test_granulated_tau_skips_and_counts_cells() -> None:
    rows = [
        {"lr": 1, "bs": 1, "seed": 0},
        {"lr": 2, "bs": 1, "seed": 0},
        {"lr": 1, "bs": 2, "seed": 0},
        {"lr": 1, "bs": 1, "seed": 1},
        {"lr": 2, "bs": 1, "seed": 1},
    ]
    measure = [1.0, 2.0, 3.0, 5.0, 5.0]
    target = [1.0, 2.0, 0.0, 1.0, 2.0]
    result = granulated_tau(rows, measure, target, axes=["lr", "bs"])
    lr, bs = result.axis("lr"), result.axis("bs")
    # lr: (bs 1, seed 0) gives 1; (bs 1, seed 1) has a constant measure; (bs 2, seed 0)
    # holds one network.
    assert (lr.psi, lr.cells, lr.undefined, lr.single) == (1.0, 1, 1, 1)
    # bs: (lr 1, seed 0) gives -1; (lr 2, seed 0), (lr 1, seed 1), (lr 2, seed 1) single.
    assert (bs.psi, bs.cells, bs.undefined, bs.single) == (-1.0, 1, 0, 3)
    assert result.psi == 0.0


def test_granulated_tau_leaves_out_an_axis_without_cells() -> None:
    rows = [{"lr": lr, "width": 64, "seed": 0} for lr in (0.1, 0.2, 0.3)]
    result = granulated_tau(rows, [1.0, 2.0, 3.0], [1.0, 3.0, 2.0], axes=["lr", "width"])
    assert result.axis("lr").psi == pytest.approx(1 / 3)
    assert math.isnan(result.axis("width").psi) and result.axis("width").single == 3
    assert result.psi == pytest.approx(1 / 3)
    assert result.left_out == ("width",) and not result.complete
    # Repeated runs of one configuration (no seed key) are no variation along the axis.
    repeated = [{"lr": 0.1, "width": 64}, {"lr": 0.1, "width": 64}, {"lr": 0.2, "width": 64}]
    result = granulated_tau(repeated, [1.0, 2.0, 3.0], [1.0, 3.0, 2.0], axes=["lr", "width"])
    assert (result.axis("width").single, result.axis("width").cells) == (2, 0)
    assert result.axis("lr").psi == pytest.approx(1 / 3) and result.left_out == ("width",)
    empty = granulated_tau([], [], [], axes=["lr"])
    assert math.isnan(empty.psi) and empty.axis("lr").cells == 0 and empty.n == 0


def test_granulated_tau_ignores_the_order_of_networks() -> None:
    rng = np.random.default_rng(11)
    rows = grid_rows(seeds=(0, 1, 2))
    measure, target = list(rng.normal(size=len(rows))), list(rng.normal(size=len(rows)))
    order = rng.permutation(len(rows))
    first = granulated_tau(rows, measure, target, axes=AXES)
    second = granulated_tau(
        [rows[k] for k in order],
        [measure[k] for k in order],
        [target[k] for k in order],
        axes=AXES,
    )
    assert second.psi == pytest.approx(first.psi, abs=1e-12)
    for a, b in zip(first.per_axis, second.per_axis, strict=True):
        assert sorted(a.taus) == pytest.approx(sorted(b.taus), abs=1e-12)


def test_granulated_tau_bad_input() -> None:
    rows = grid_rows()[:4]
    values = [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(InvalidArgumentError, match="differ in length"):
        granulated_tau(rows, values[:3], values, axes=["lr"])
    with pytest.raises(InvalidArgumentError, match="at least one"):
        granulated_tau(rows, values, values, axes=[])
    with pytest.raises(InvalidArgumentError, match="distinct"):
        granulated_tau(rows, values, values, axes=["lr", "lr"])
    with pytest.raises(InvalidArgumentError, match="not hyperparameters"):
        granulated_tau(rows, values, values, axes=["depth"])
    ragged = [*rows[:3], {"lr": 0.1, "seed": 0}]
    with pytest.raises(InvalidArgumentError, match="network 3"):
        granulated_tau(ragged, values, values, axes=["lr"])
    with pytest.raises(InvalidArgumentError, match="no axis"):
        granulated_tau(rows, values, values, axes=["lr"]).axis("depth")
