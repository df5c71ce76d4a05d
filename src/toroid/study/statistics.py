"""The statistics of the report: means with standard errors, Spearman's rho with a seeded
percentile-bootstrap interval, and linear interpolation of a measured curve.

Pure functions of sequences of floats; NaN marks a value that cannot be computed (too few
points, constant input), never an exception, so a partial study still gets a report."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

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
        raise ValueError(f"x and y differ in length: {len(x)} != {len(y)}")
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
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if reps < 1:
        raise ValueError(f"reps must be at least 1, got {reps}")
    rho = spearman(x, y)
    n = len(x)
    if math.isnan(rho):
        return Correlation(rho, NAN, NAN, n, level, reps, seed)
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    index = np.random.default_rng(seed).integers(0, n, size=(reps, n))
    # Ranking every resample at once is the same computation as spearmanr per resample
    # (Pearson's r of average ranks), 2000 times faster to call.
    rhos = _row_pearson(_rank_rows(a[index]), _rank_rows(b[index]))
    valid = rhos[~np.isnan(rhos)]
    if valid.size < reps / 2:
        return Correlation(rho, NAN, NAN, n, level, reps, seed)
    low, high = np.quantile(valid, [(1 - level) / 2, (1 + level) / 2])
    return Correlation(rho, float(low), float(high), n, level, reps, seed)


def interpolate(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """ys at x, linear between measured points; NaN outside [min xs, max xs]."""
    if len(xs) != len(ys):
        raise ValueError(f"xs and ys differ in length: {len(xs)} != {len(ys)}")
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
