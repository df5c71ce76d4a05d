"""The statistics of the report: means with standard errors, Spearman's rho and Kendall's
tau-b with seeded percentile-bootstrap intervals (tau-b also within strata, pooled, with a
stratified bootstrap), the granulated Kendall coefficient of
Jiang et al. (2020), the Clopper-Pearson interval of a proportion, and linear interpolation
of a measured curve.

Pure functions of sequences of floats; NaN marks a value that cannot be computed (too few
points, constant or non-finite input), never an exception, so a partial study still gets a
report. Bad arguments (lengths that differ, a level outside (0, 1)) raise
`InvalidArgumentError`."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from toroid.errors import InvalidArgumentError

NAN = float("nan")


@dataclass(frozen=True)
class MeanStderr:
    """Mean and standard error of the mean (sample standard deviation / sqrt(n)); the
    standard error is NaN for fewer than two values, the mean NaN for none."""

    mean: float
    stderr: float
    n: int


@dataclass(frozen=True)
class Correlation:
    """Spearman's rho of n points with a percentile-bootstrap interval at `level`
    (`reps` resamples of the points with replacement, drawn from `seed`). NaN where the
    rank correlation is undefined (fewer than 3 points, constant values) or where fewer
    than half of the resamples have one."""

    rho: float
    low: float
    high: float
    n: int
    level: float
    reps: int
    seed: int

    @property
    def defined(self) -> bool:
        return not any(math.isnan(v) for v in (self.rho, self.low, self.high))


def mean_stderr(values: Sequence[float]) -> MeanStderr:
    data = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = int(data.size)
    if n == 0:
        return MeanStderr(NAN, NAN, 0)
    stderr = float(data.std(ddof=1) / math.sqrt(n)) if n > 1 else NAN
    return MeanStderr(float(data.mean()), stderr, n)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho (Pearson's r of average ranks); NaN for fewer than 3 points or a
    constant input."""
    if len(x) != len(y):
        raise InvalidArgumentError(f"x and y differ in length: {len(x)} != {len(y)}")
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return NAN
    return float(stats.spearmanr(a, b).statistic)


def _rank_rows(values: np.ndarray) -> np.ndarray:
    return np.asarray(stats.rankdata(values, axis=1), dtype=float)


def _row_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson's r per row; NaN where a row is constant."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    norm = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (a * b).sum(axis=1) / norm
    out[norm == 0] = np.nan
    return np.asarray(out, dtype=float)


def _check_bootstrap(reps: int, level: float) -> None:
    if not 0 < level < 1:
        raise InvalidArgumentError(f"level must lie in (0, 1), got {level}")
    if reps < 1:
        raise InvalidArgumentError(f"reps must be at least 1, got {reps}")


def _percentile_interval(stats: np.ndarray, reps: int, level: float) -> tuple[float, float]:
    """The percentile interval at `level` of the resamples' statistics, those undefined
    (NaN) dropped; NaN when fewer than half of the `reps` are defined."""
    valid = stats[~np.isnan(stats)]
    if valid.size < reps / 2:
        return NAN, NAN
    low, high = np.quantile(valid, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def bootstrap_spearman(
    x: Sequence[float],
    y: Sequence[float],
    *,
    reps: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> Correlation:
    """Spearman's rho of (x, y) and its percentile-bootstrap interval over resampled
    points. Resamples with a constant coordinate (rho undefined) are dropped."""
    _check_bootstrap(reps, level)
    rho = spearman(x, y)
    n = len(x)
    if math.isnan(rho):
        return Correlation(rho, NAN, NAN, n, level, reps, seed)
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    index = np.random.default_rng(seed).integers(0, n, size=(reps, n))
    # Ranking every resample at once is the same computation as spearmanr per resample
    # (Pearson's r of average ranks), 2000 times faster to call.
    rhos = _row_pearson(_rank_rows(a[index]), _rank_rows(b[index]))
    return Correlation(rho, *_percentile_interval(rhos, reps, level), n, level, reps, seed)


# Kendall's tau-b -------------------------------------------------------------------------


@dataclass(frozen=True)
class KendallTau:
    """Kendall's tau-b of n points with a percentile-bootstrap interval at `level` (`reps`
    resamples of the points with replacement, drawn from `seed`, the same draws as
    `bootstrap_spearman` with the same seed). NaN where tau-b is undefined (fewer than 2
    points, a constant coordinate, a non-finite value) or where fewer than half of the
    resamples have one. `stratified_kendall` returns one too: its tau is the pair-weighted
    mean of the strata's tau-b, its interval from resamples within each stratum."""

    tau: float
    low: float
    high: float
    n: int
    level: float
    reps: int
    seed: int

    @property
    def defined(self) -> bool:
        return not any(math.isnan(v) for v in (self.tau, self.low, self.high))


def _check_pair(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    if len(x) != len(y):
        raise InvalidArgumentError(f"x and y differ in length: {len(x)} != {len(y)}")
    return np.asarray(x, dtype=float).reshape(-1), np.asarray(y, dtype=float).reshape(-1)


def _pair_signs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n x n matrices over ordered pairs (i, j): sign(a_i - a_j) * sign(b_i - b_j) (+1
    concordant, -1 discordant, 0 tied in either), and whether the pair differs in a, in b."""
    sa = np.sign(a[:, None] - a[None, :])
    sb = np.sign(b[:, None] - b[None, :])
    return sa * sb, np.abs(sa), np.abs(sb)


def _tau_b_of_counts(
    counts: np.ndarray, signs: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> np.ndarray:
    """Tau-b of every row of `counts` (how often each original point occurs in a sample).

    Over the pairs of a sample, sum sign(dx) sign(dy) = c' S c / 2 with S the pair-sign
    matrix and c the counts (pairs of copies of one point are tied in both, and S has a zero
    diagonal), likewise the untied pair counts; the halves cancel in the ratio. So each
    sample costs a matrix-vector product instead of re-sorting or re-pairing its points.
    NaN where a sample is constant in either coordinate."""
    concordance, differ_a, differ_b = signs
    numerator = np.einsum("rj,rj->r", counts @ concordance, counts)
    untied_a = np.einsum("rj,rj->r", counts @ differ_a, counts)
    untied_b = np.einsum("rj,rj->r", counts @ differ_b, counts)
    denominator = np.sqrt(untied_a * untied_b)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = numerator / denominator
    out[denominator == 0] = np.nan
    return np.asarray(out, dtype=float)


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (Kendall 1938, with the tie correction of Kendall 1945):

        tau_b = (C - D) / sqrt((P - T_x) (P - T_y))

    over the P = n (n - 1) / 2 pairs of points, C concordant and D discordant, T_x of them
    tied in x and T_y tied in y (a pair tied in both counts in both). It is 1 for a strictly
    increasing relation and -1 for a strictly decreasing one, with or without ties. NaN for
    fewer than 2 points, a constant input or a non-finite value (the caller decides which
    points to drop)."""
    return _kendall(*_check_pair(x, y))


def _kendall(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return NAN
    return float(_tau_b_of_counts(np.ones((1, a.size)), _pair_signs(a, b))[0])


def bootstrap_kendall(
    x: Sequence[float],
    y: Sequence[float],
    *,
    reps: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> KendallTau:
    """Kendall's tau-b of (x, y) and its percentile-bootstrap interval over resampled
    points (networks), drawn as in `bootstrap_spearman`. Resamples constant in either
    coordinate (tau-b undefined) are dropped. Memory grows as n^2 + reps * n floats and time
    as reps * n^2 operations (three matrix products): 2000 resamples of 200 points take
    under 0.1 s on two CPU cores."""
    _check_bootstrap(reps, level)
    tau = kendall_tau(x, y)
    n = len(x)
    if math.isnan(tau):
        return KendallTau(tau, NAN, NAN, n, level, reps, seed)
    a, b = _check_pair(x, y)
    taus = _resampled_taus(a, b, np.random.default_rng(seed), reps)
    return KendallTau(tau, *_percentile_interval(taus, reps, level), n, level, reps, seed)


def _resampled_taus(
    a: np.ndarray, b: np.ndarray, rng: np.random.Generator, reps: int
) -> np.ndarray:
    """Tau-b of `reps` resamples of the points with replacement (NaN where undefined), the
    indices drawn from `rng` as one reps x n array."""
    n = a.size
    index = rng.integers(0, n, size=(reps, n))
    # How often each network occurs in each resample: one bincount over offset indices.
    offsets = index + n * np.arange(reps)[:, None]
    counts = np.bincount(offsets.reshape(-1), minlength=reps * n).reshape(reps, n).astype(float)
    return _tau_b_of_counts(counts, _pair_signs(a, b))


def _strata_of(strata: Sequence[Hashable]) -> list[list[int]]:
    """Indices of the points grouped by stratum, groups in the order their first point
    appears."""
    groups: dict[Hashable, list[int]] = {}
    for i, stratum in enumerate(strata):
        groups.setdefault(stratum, []).append(i)
    return list(groups.values())


def stratified_kendall(
    x: Sequence[float],
    y: Sequence[float],
    strata: Sequence[Hashable],
    *,
    reps: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> KendallTau:
    """Kendall's tau-b of (x, y) within strata (point i lies in stratum `strata[i]`, e.g.
    its architecture), pooled, with a stratified percentile-bootstrap interval.

    The statistic is the mean of the strata's tau-b weighted by their numbers of pairs
    n_s (n_s - 1) / 2: the share of within-stratum pairs each stratum holds, so pairs across
    strata (whose order mostly says which stratum has the larger values) never count. A
    stratum with fewer than 2 points or an undefined tau-b (constant, non-finite) gets
    weight 0; the statistic is NaN when every stratum does. The bootstrap resamples the
    points with replacement within each stratum independently (strata in the order their
    first point appears, each drawing `reps` x n_s indices from one generator seeded with
    `seed`), keeps the weights and drops a resample in which a weighted stratum's tau-b is
    undefined, as `bootstrap_kendall` drops its undefined resamples; fewer than half
    defined leaves the interval undefined. With a single stratum this is
    `bootstrap_kendall` exactly (same draws, same numbers). `n` counts every point."""
    _check_bootstrap(reps, level)
    a, b = _check_pair(x, y)
    if len(strata) != a.size:
        raise InvalidArgumentError(f"strata and x differ in length: {len(strata)} != {a.size}")
    n = int(a.size)
    groups = [g for g in _strata_of(strata) if len(g) > 1]
    taus = [_kendall(a[g], b[g]) for g in groups]
    used = [(g, t) for g, t in zip(groups, taus, strict=True) if not math.isnan(t)]
    if not used:
        return KendallTau(NAN, NAN, NAN, n, level, reps, seed)
    pairs = np.asarray([len(g) * (len(g) - 1) / 2 for g, _ in used], dtype=float)
    # Weights normalized first: with one stratum the weight is exactly 1.0, so tau and every
    # resample's tau are bootstrap_kendall's to the last bit.
    weights = pairs / pairs.sum()
    tau = float(sum(w * t for w, (_, t) in zip(weights, used, strict=True)))
    rng = np.random.default_rng(seed)
    pooled = np.zeros(reps)
    for w, (g, _) in zip(weights, used, strict=True):
        pooled = pooled + w * _resampled_taus(a[g], b[g], rng, reps)
    return KendallTau(tau, *_percentile_interval(pooled, reps, level), n, level, reps, seed)


# Granulated Kendall coefficient ------------------------------------------------------------


@dataclass(frozen=True)
class AxisTau:
    """Psi_i of one hyperparameter axis: the mean of Kendall's tau-b over the `cells` that
    contributed (`taus`, in the order their first network appears). Cells skipped: `single`
    holds fewer than 2 distinct values of the axis (nothing varies along it), `undefined`
    has a tau-b that is undefined (measure or target constant within the cell, or a
    non-finite value). NaN when no cell contributed."""

    axis: str
    psi: float
    cells: int
    single: int
    undefined: int
    taus: tuple[float, ...]

    @property
    def defined(self) -> bool:
        return not math.isnan(self.psi)


@dataclass(frozen=True)
class GranulatedTau:
    """Jiang et al.'s granulated Kendall coefficient of a measure against a target over n
    networks: Psi_i per axis (`per_axis`, in the order the axes were given) and Psi, the
    mean of the defined Psi_i. An axis with no contributing cell is left out of Psi and
    named in `left_out`; Psi is NaN when every axis is."""

    psi: float
    per_axis: tuple[AxisTau, ...]
    n: int

    @property
    def left_out(self) -> tuple[str, ...]:
        return tuple(a.axis for a in self.per_axis if not a.defined)

    @property
    def complete(self) -> bool:
        """Every axis contributed to Psi."""
        return bool(self.per_axis) and not self.left_out

    def axis(self, name: str) -> AxisTau:
        for entry in self.per_axis:
            if entry.axis == name:
                return entry
        raise InvalidArgumentError(f"no axis {name!r}; axes: {[a.axis for a in self.per_axis]}")


def _cells(
    hyperparameters: Sequence[Mapping[str, Hashable]], fixed: Sequence[str]
) -> list[list[int]]:
    """Indices of the networks grouped by their values of the `fixed` keys, groups in the
    order their first network appears."""
    groups: dict[tuple[Hashable, ...], list[int]] = {}
    for i, row in enumerate(hyperparameters):
        groups.setdefault(tuple(row[k] for k in fixed), []).append(i)
    return list(groups.values())


def _axis_tau(
    hyperparameters: Sequence[Mapping[str, Hashable]],
    measure: np.ndarray,
    target: np.ndarray,
    axis: str,
    keys: Sequence[str],
) -> AxisTau:
    taus: list[float] = []
    single = undefined = 0
    for cell in _cells(hyperparameters, [k for k in keys if k != axis]):
        if len({hyperparameters[i][axis] for i in cell}) < 2:
            single += 1
            continue
        tau = _kendall(measure[cell], target[cell])
        if math.isnan(tau):
            undefined += 1
            continue
        taus.append(tau)
    psi = float(np.mean(taus)) if taus else NAN
    return AxisTau(axis, psi, len(taus), single, undefined, tuple(taus))


def granulated_tau(
    hyperparameters: Sequence[Mapping[str, Hashable]],
    measure: Sequence[float],
    target: Sequence[float],
    *,
    axes: Sequence[str],
) -> GranulatedTau:
    """The granulated Kendall coefficient of Jiang, Neyshabur, Mobahi, Krishnan and Bengio,
    "Fantastic generalization measures and where to find them" (ICLR 2020).

    Network k has the hyperparameters `hyperparameters[k]` (one mapping per network, every
    mapping with the same keys, e.g. {"optimizer": "sam", "batch_size": 128, "lr": 0.05,
    "seed": 0}), the value `measure[k]` of a flatness measure and the value `target[k]` of a
    generalization quantity (test error, generalization gap). For each axis i in `axes`, a
    cell is a set of networks that agree on every key but i; Psi_i is the mean over the
    cells of Kendall's tau-b (Kendall 1938, 1945) between measure and target within the
    cell, and Psi the mean of Psi_i over the axes. Psi_i = 1 says that changing
    hyperparameter i alone moves the measure and the target in the same order, every time.
    Cells are those observed: on a complete grid they are Jiang's m_i cells; a cell with
    fewer than 2 distinct values of i, or whose tau-b is undefined, is skipped and counted.

    Seeds: every key that is not the axis is held fixed in a cell, the seed included, so a
    cell holds the networks that differ only in axis i and share a seed, and each seed
    repeats the grid of cells (S seeds give S times Jiang's m_i cells). This is Jiang's
    "networks that differ only in hyperparameter i" taken literally, and it is chosen over
    the two alternatives: pooling a cell's seeds adds pairs that differ only in seed, whose
    concordance measures seed-to-seed noise rather than the effect of axis i (a measure that
    orders axis i perfectly gets Psi_i < 1); averaging over seeds first needs the same set of
    finite results for every configuration and ranks averages of a measure that can be
    heavy-tailed, where holding the seed fixed keeps each network's own values and lets a
    missing network cost only its own cells. Seed values must therefore be shared across
    configurations (seed 0 of lr = 0.1 and seed 0 of lr = 0.05). To pool seeds instead,
    leave the seed out of the mappings; to average, pass one averaged row per configuration.

    Keys other than the axes and the seed (a dataset, a width held constant) are held fixed
    too. Values are compared with ==, so a learning rate must be written the same way in
    every row."""
    n = len(hyperparameters)
    if len(measure) != n or len(target) != n:
        raise InvalidArgumentError(
            f"hyperparameters, measure and target differ in length: "
            f"{n}, {len(measure)}, {len(target)}"
        )
    if not axes:
        raise InvalidArgumentError("axes must name at least one hyperparameter")
    if len(set(axes)) != len(axes):
        raise InvalidArgumentError(f"axes must be distinct, got {list(axes)}")
    keys = sorted(hyperparameters[0]) if n else list(axes)
    for k, row in enumerate(hyperparameters):
        if sorted(row) != keys:
            raise InvalidArgumentError(
                f"network {k} has hyperparameters {sorted(row)}, network 0 has {keys}"
            )
    missing = [a for a in axes if a not in keys]
    if missing:
        raise InvalidArgumentError(f"axes {missing} are not hyperparameters; keys: {keys}")
    m, t = np.asarray(measure, dtype=float), np.asarray(target, dtype=float)
    per_axis = tuple(_axis_tau(hyperparameters, m, t, axis, keys) for axis in axes)
    defined = [a.psi for a in per_axis if a.defined]
    psi = float(np.mean(defined)) if defined else NAN
    return GranulatedTau(psi, per_axis, n)


# Binomial proportions ------------------------------------------------------------------------


def clopper_pearson(successes: int, trials: int, *, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper and Pearson 1934) interval at `level` for a binomial proportion
    after `successes` of `trials`: the low end is the p at which P(X >= successes) =
    (1 - level) / 2, the high end the p at which P(X <= successes) = (1 - level) / 2, read
    off the beta quantiles Beta(s, n - s + 1) and Beta(s + 1, n - s). The low end is 0 for
    no successes and the high end 1 for all, where the tail that defines them is empty.
    Exact rather than a normal approximation: the report's counts are small (a few dozen
    chains) and often all or nothing, where a Wald interval collapses to a point. (NaN, NaN)
    for no trials."""
    if not 0 < level < 1:
        raise InvalidArgumentError(f"level must lie in (0, 1), got {level}")
    for name, value in (("successes", successes), ("trials", trials)):
        if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
            raise InvalidArgumentError(f"{name} must be an integer, got {value!r}")
    if trials < 0:
        raise InvalidArgumentError(f"trials must be at least 0, got {trials}")
    if not 0 <= successes <= trials:
        raise InvalidArgumentError(
            f"successes must lie in [0, trials], got {successes} of {trials}"
        )
    if trials == 0:
        return NAN, NAN
    tail = (1 - level) / 2
    low = 0.0 if successes == 0 else float(stats.beta.ppf(tail, successes, trials - successes + 1))
    high = (
        1.0
        if successes == trials
        else float(stats.beta.ppf(1 - tail, successes + 1, trials - successes))
    )
    return low, high


def interpolate(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """ys at x, linear between measured points; NaN outside [min xs, max xs]."""
    if len(xs) != len(ys):
        raise InvalidArgumentError(f"xs and ys differ in length: {len(xs)} != {len(ys)}")
    if not xs or not min(xs) <= x <= max(xs):
        return NAN
    order = np.argsort(np.asarray(xs, dtype=float))
    return float(
        np.interp(x, np.asarray(xs, dtype=float)[order], np.asarray(ys, dtype=float)[order])
    )


def summary_level(preferred: Sequence[float], measured: Sequence[float]) -> float | None:
    """The level (sigma or flip probability) at which flatness is summarized: the first
    of `preferred` inside the measured range, else the lower median of the positive
    measured levels, else None when nothing positive was measured."""
    if not measured:
        return None
    low, high = min(measured), max(measured)
    for level in preferred:
        if low <= level <= high and level > 0:
            return float(level)
    positive = sorted(v for v in set(measured) if v > 0)
    if not positive:
        return None
    return float(positive[(len(positive) - 1) // 2])
