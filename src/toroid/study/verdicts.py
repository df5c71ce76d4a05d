"""One verdict per claim of the paper, each with its statistic and a word.

Flatness is a network's dE at the block's summary level (sigma, or flip probability p)
on the training split; "flat" means small dE. The correlation claims take Spearman's rho
with a seeded percentile-bootstrap 95% interval over the points (networks, optimizers or
pairs):

- holds when the interval lies above 0, does not hold when it lies at or below 0,
  inconclusive when it contains 0, when rho is undefined (constant values) or when
  there are fewer than MIN_POINTS points;
- the chain claim holds when at least CHAIN_FRACTION of the chains between two
  minimizers (both endpoints at zero training error) never leave zero training error,
  and is inconclusive with fewer than MIN_CHAINS such chains;
- the binary claim holds when all four claims hold for the binary block, does not hold
  when any of them does not hold, and is inconclusive otherwise;
- claim 6 (only with `analyses.measures`) holds when toroid's canonical local energy at the
  summary sigma is invariant under the random reparametrization and at least one
  raw-coordinate measure is not, with its Kendall tau against test error moved by more
  than the half-width of its before interval (`symmetry_word`).

docs/study.md ("Report") states the same rules for readers of the report."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from toroid.study.evidence import (
    RAW_MEASURES,
    BlockEvidence,
    Evidence,
    MeasureSummary,
    summarize_measure,
    values_at,
)
from toroid.study.statistics import Correlation, bootstrap_spearman, summary_level

Word = Literal["holds", "does not hold", "inconclusive", "not configured"]
MIN_POINTS = 4
MIN_CHAINS = 3
CHAIN_FRACTION = 0.9
REPS = 2000
SEED = 0
LEVEL = 0.95
TITLES: dict[str, str] = {
    "1": "flatness tracks test error",
    "2": "flatter minima are closer",
    "3": "barriers between flat minima are small",
    "4": "single-bend chains reach zero training error",
    "5": "binary networks agree",
    "6": "the results hinge on symmetry removal",
}
RULES: dict[str, str] = {
    "correlation": (
        f"holds if the {LEVEL:.0%} bootstrap interval of Spearman's rho lies above 0; does not "
        "hold if it lies at or below 0; inconclusive if it contains 0, if rho is undefined, "
        f"or with fewer than {MIN_POINTS} points"
    ),
    "chains": (
        f"holds if at least {CHAIN_FRACTION:.0%} of the chains between two minimizers stay at "
        f"zero training error; inconclusive with fewer than {MIN_CHAINS} such chains"
    ),
    "binary": (
        "holds if claims 1-4 all hold for the binary block; does not hold if any does not "
        "hold; inconclusive otherwise"
    ),
    "symmetry": (
        "holds if toroid's canonical local energy at the summary sigma is invariant under the "
        "reparametrization (every network's value after equals its value before to relative "
        "1e-4 plus absolute 1e-9) and at least one raw-coordinate measure (raw_energy, "
        "raw_hessian_trace, sam_sharpness, log_norm) is not invariant and its Kendall tau "
        "against test error moves by more than half the width of its 95% bootstrap interval "
        "before; does not hold if the canonical local energy is not invariant, or if every "
        "raw-coordinate measure is decided and none moves that far; inconclusive without "
        "reparametrized copies, without local_energy or a raw-coordinate measure, with fewer "
        f"than {MIN_POINTS} networks measured before and after, or when the only measures "
        "that could move have an undefined tau or interval"
    ),
}


@dataclass(frozen=True)
class Verdict:
    """A claim's word and the statistic behind it; `details` holds sub-verdicts (the
    binary block's claims)."""

    claim: str
    title: str
    word: Word
    statistic: str
    rule: str
    value: float | None = None
    low: float | None = None
    high: float | None = None
    n: int = 0
    details: tuple[Verdict, ...] = ()

    def line(self) -> str:
        return f"{self.claim}. {self.title}: {self.word.upper()} — {self.statistic}"


@dataclass(frozen=True)
class Points:
    """Paired values a claim correlates: `labels[i]` names point (x[i], y[i])."""

    labels: tuple[str, ...]
    x: tuple[float, ...]
    y: tuple[float, ...]


@dataclass(frozen=True)
class Chain:
    a: str
    b: str
    max_train_error: float
    between_minimizers: bool

    @property
    def zero(self) -> bool:
        return self.max_train_error <= 0.0


# What each claim is measured on --------------------------------------------------------


def flatness_vs_test(block: BlockEvidence) -> Points:
    """Per network: flatness and test error."""
    rows = [
        (n.name, block.flatness[n.name], n.test_error)
        for n in block.networks
        if n.name in block.flatness and n.test_error is not None
    ]
    return Points(tuple(r[0] for r in rows), tuple(r[1] for r in rows), tuple(r[2] for r in rows))


def within_distances(block: BlockEvidence, kind: str) -> dict[str, list[float]]:
    """Per optimizer: the distances (of `kind`) between pairs of its networks."""
    out: dict[str, list[float]] = {}
    for d in block.distances_of(kind):
        if block.optimizer_of(d.a) == block.optimizer_of(d.b):
            out.setdefault(block.optimizer_of(d.a), []).append(d.value)
    return out


def flatness_vs_closeness(block: BlockEvidence) -> Points:
    """Per optimizer: the mean flatness of its networks and the mean distance between
    them. The optimizer, not the network, is the unit: networks of one optimizer share
    their pairwise distances, so per-network points would not be independent."""
    within = within_distances(block, block.distance_kind)
    rows = []
    for optimizer in block.optimizers:
        flat = [v for name, v in block.flatness.items() if block.optimizer_of(name) == optimizer]
        if flat and within.get(optimizer):
            distances = within[optimizer]
            rows.append((optimizer, sum(flat) / len(flat), sum(distances) / len(distances)))
    return Points(tuple(r[0] for r in rows), tuple(r[1] for r in rows), tuple(r[2] for r in rows))


def barrier_path(block: BlockEvidence) -> str | None:
    """The path whose barriers claim 3 uses: the first of the block's barrier paths with
    a profile (geodesic before linear)."""
    return next((p for p in block.barrier_paths if block.profiles_on(p)), None)


def flatness_vs_barrier(block: BlockEvidence, path: str) -> Points:
    """Per pair profiled on `path`: the mean flatness of its ends and its training-error
    barrier (max_minus_mean)."""
    rows = [
        (f"{p.a} ~ {p.b}", (block.flatness[p.a] + block.flatness[p.b]) / 2, p.barrier_train)
        for p in block.profiles_on(path)
        if p.a in block.flatness and p.b in block.flatness and not math.isnan(p.barrier_train)
    ]
    return Points(tuple(r[0] for r in rows), tuple(r[1] for r in rows), tuple(r[2] for r in rows))


def chains(block: BlockEvidence) -> tuple[Chain, ...]:
    def minimizer(name: str) -> bool:
        net = block.network(name)
        return net is not None and net.reached_zero_train_error

    return tuple(
        Chain(p.a, p.b, p.max_train_error, minimizer(p.a) and minimizer(p.b))
        for p in block.profiles_on(block.chain_path)
    )


# Rules ----------------------------------------------------------------------------------


def correlation_word(correlation: Correlation, *, minimum: int = MIN_POINTS) -> Word:
    if correlation.n < minimum or not correlation.defined:
        return "inconclusive"
    if correlation.low > 0:
        return "holds"
    if correlation.high <= 0:
        return "does not hold"
    return "inconclusive"


def chain_word(zero: int, eligible: int) -> Word:
    if eligible < MIN_CHAINS:
        return "inconclusive"
    return "holds" if zero / eligible >= CHAIN_FRACTION else "does not hold"


def binary_word(words: Sequence[Word]) -> Word:
    if words and all(w == "holds" for w in words):
        return "holds"
    if any(w == "does not hold" for w in words):
        return "does not hold"
    return "inconclusive"


# Statistics as text ---------------------------------------------------------------------


def _undefined_reason(points: Points) -> str:
    if len(points.x) < 3:
        return "too few points"
    if len(set(points.x)) == 1:
        return "the flatness values are all equal"
    if len(set(points.y)) == 1:
        return "the other values are all equal"
    return "the bootstrap resamples are mostly constant"


def describe_correlation(correlation: Correlation, points: Points, what: str, unit: str) -> str:
    count = f"n = {correlation.n} {unit}"
    if not correlation.defined:
        rho = "" if math.isnan(correlation.rho) else f" = {correlation.rho:.2f}"
        return (
            f"Spearman rho({what}){rho}, interval undefined: {_undefined_reason(points)}; {count}"
        )
    short = f" (< {MIN_POINTS})" if correlation.n < MIN_POINTS else ""
    return (
        f"Spearman rho({what}) = {correlation.rho:.2f}, {correlation.level:.0%} bootstrap "
        f"interval [{correlation.low:.2f}, {correlation.high:.2f}]; {count}{short}"
    )


def _correlation_verdict(
    claim: str,
    title: str,
    points: Points,
    *,
    what: str,
    unit: str,
    absent: str | None,
    reps: int,
    seed: int,
) -> Verdict:
    rule = RULES["correlation"]
    if not points.x:
        reason = absent or "nothing measured (no pairs or networks selected)"
        return Verdict(claim, title, "inconclusive", f"no data: {reason}", rule)
    correlation = bootstrap_spearman(points.x, points.y, reps=reps, seed=seed, level=LEVEL)
    statistic = describe_correlation(correlation, points, what, unit)
    if absent is not None:
        statistic += f" (partial: {absent})"
    return Verdict(
        claim,
        title,
        correlation_word(correlation),
        statistic,
        rule,
        value=None if math.isnan(correlation.rho) else correlation.rho,
        low=None if math.isnan(correlation.low) else correlation.low,
        high=None if math.isnan(correlation.high) else correlation.high,
        n=correlation.n,
    )


def _level(block: BlockEvidence) -> str:
    return f"dE at {block.level_name}={block.level:g}" if block.level is not None else "dE"


def claim_flatness_test(
    block: BlockEvidence, *, claim: str = "1", reps: int = REPS, seed: int = SEED
) -> Verdict:
    absent = block.why_missing("local_energy", ("train", "energy"))
    return _correlation_verdict(
        claim,
        TITLES["1"],
        flatness_vs_test(block),
        what=f"{_level(block)}, test error",
        unit="networks",
        absent=absent,
        reps=reps,
        seed=seed,
    )


def claim_closer(
    block: BlockEvidence, *, claim: str = "2", reps: int = REPS, seed: int = SEED
) -> Verdict:
    absent = block.why_missing("local_energy", ("train", "energy")) or block.why_missing(
        "distances", ("distance",)
    )
    return _correlation_verdict(
        claim,
        TITLES["2"],
        flatness_vs_closeness(block),
        what=f"mean {_level(block)}, mean {block.distance_kind} distance within the optimizer",
        unit="optimizers",
        absent=absent,
        reps=reps,
        seed=seed,
    )


def claim_barriers(
    block: BlockEvidence, *, claim: str = "3", reps: int = REPS, seed: int = SEED
) -> Verdict:
    absent = block.why_missing("local_energy", ("train", "energy")) or block.why_missing(
        "paths", ("path",)
    )
    path = barrier_path(block)
    if path is None and absent is None:
        absent = "no geodesic or linear paths configured" if block.block == "main" else None
    points = flatness_vs_barrier(block, path) if path is not None else Points((), (), ())
    return _correlation_verdict(
        claim,
        TITLES["3"],
        points,
        what=f"mean {_level(block)} of the pair, {path or 'path'} train-error barrier",
        unit="pairs",
        absent=absent,
        reps=reps,
        seed=seed,
    )


def claim_chains(block: BlockEvidence, *, claim: str = "4") -> Verdict:
    rule = RULES["chains"]
    absent = block.why_missing("bends", ("chain",))
    found = chains(block)
    eligible = [c for c in found if c.between_minimizers]
    if not found:
        statistic = f"no chains: {absent or 'no pairs selected'}"
        return Verdict(claim, TITLES["4"], "inconclusive", statistic, rule)
    zero = sum(c.zero for c in eligible)
    skipped = len(found) - len(eligible)
    worst = max(c.max_train_error for c in found)
    fraction = zero / len(eligible) if eligible else math.nan
    if eligible:
        statistic = (
            f"{zero} of {len(eligible)} {block.chain_path} chains between minimizers stay at "
            f"zero training error"
        )
    else:
        statistic = f"no {block.chain_path} chain joins two minimizers"
    statistic += f"; largest max training error along a chain {worst:.4f}"
    if skipped:
        plural = "s" if skipped > 1 else ""
        statistic += f"; {skipped} chain{plural} skipped (an end is not a minimizer)"
    if 0 < len(eligible) < MIN_CHAINS:
        statistic += f" (< {MIN_CHAINS} chains)"
    if absent is not None:
        statistic += f" (partial: {absent})"
    return Verdict(
        claim,
        TITLES["4"],
        chain_word(zero, len(eligible)),
        statistic,
        rule,
        value=None if math.isnan(fraction) else fraction,
        n=len(eligible),
    )


def block_verdicts(
    block: BlockEvidence, *, prefix: str = "", reps: int = REPS, seed: int = SEED
) -> tuple[Verdict, ...]:
    """Claims 1-4 on one block; `prefix` numbers them (e.g. "5" gives 5a-5d)."""
    ids = ("1", "2", "3", "4") if not prefix else tuple(f"{prefix}{c}" for c in "abcd")
    return (
        claim_flatness_test(block, claim=ids[0], reps=reps, seed=seed),
        claim_closer(block, claim=ids[1], reps=reps, seed=seed),
        claim_barriers(block, claim=ids[2], reps=reps, seed=seed),
        claim_chains(block, claim=ids[3]),
    )


def claim_binary(block: BlockEvidence | None, *, reps: int = REPS, seed: int = SEED) -> Verdict:
    rule = RULES["binary"]
    if block is None:
        return Verdict("5", TITLES["5"], "not configured", "no binary block in the config", rule)
    titles = {"5d": "binary: two-segment flip chains reach zero training error"}
    details = tuple(
        replace(v, title=titles.get(v.claim, f"binary: {v.title}"))
        for v in block_verdicts(block, prefix="5", reps=reps, seed=seed)
    )
    statistic = (
        "; ".join(f"{v.claim} {v.word}" for v in details) + " (claims 1-4 on the binary block)"
    )
    return Verdict(
        "5",
        TITLES["5"],
        binary_word([v.word for v in details]),
        statistic,
        rule,
        n=len(details),
        details=details,
    )


def half_width(summary: MeasureSummary) -> float:
    """Half the width of the before tau's (against test error) bootstrap interval."""
    return (summary.test.high - summary.test.low) / 2


def moved(summary: MeasureSummary) -> bool:
    """Claim 6's test for one raw-coordinate measure: not invariant, and its tau against
    test error after the reparametrization differs from the one before by more than the
    before interval's half-width (False when that cannot be computed)."""
    if summary.invariance.invariant is not False or summary.after is None:
        return False
    if not summary.test.defined or math.isnan(summary.after.tau):
        return False
    return abs(summary.after.tau - summary.test.tau) > half_width(summary)


def decided(summary: MeasureSummary) -> bool:
    """Whether claim 6 can tell if the measure moved: measured before and after on at
    least MIN_POINTS networks, and invariant or with both taus and the interval defined."""
    found = summary.invariance
    if found.compared < MIN_POINTS or found.invariant is None:
        return False
    if found.invariant:
        return True
    return summary.after is not None and summary.test.defined and not math.isnan(summary.after.tau)


def symmetry_word(canonical: MeasureSummary | None, raws: Sequence[MeasureSummary]) -> Word:
    """Claim 6's rule (docs/study.md) on the canonical local energy at the summary sigma
    and the raw-coordinate measures (one summary per measure and level)."""
    if canonical is None or not raws:
        return "inconclusive"
    found = canonical.invariance
    if found.compared < MIN_POINTS or found.invariant is None:
        return "inconclusive"
    if not found.invariant:
        return "does not hold"
    if any(moved(r) for r in raws):
        return "holds"
    return "does not hold" if all(decided(r) for r in raws) else "inconclusive"


def measure_name(summary: MeasureSummary) -> str:
    """`measure` or `measure@level`."""
    return summary.measure if summary.level is None else f"{summary.measure}@{summary.level:g}"


def _describe_symmetry(canonical: MeasureSummary, raws: Sequence[MeasureSummary]) -> str:
    found = canonical.invariance
    level = f" at sigma={canonical.level:g}" if canonical.level is not None else ""
    change = (
        f"largest relative change {found.largest_change:.1e}"
        if not math.isnan(found.largest_change)
        else "no finite pair"
    )
    word = "invariant" if found.invariant else "not invariant"
    parts = [f"local_energy{level} {word} ({change})"]
    shifted = [r for r in raws if moved(r)]
    changed = sum(r.invariance.invariant is False for r in raws)
    for r in shifted:
        after = r.after.tau if r.after is not None else math.nan
        parts.append(
            f"{measure_name(r)} tau(test error) {r.test.tau:.2f} -> {after:.2f} "
            f"(half-width {half_width(r):.2f})"
        )
    if not shifted:
        undecided = [measure_name(r) for r in raws if not decided(r)]
        text = "no raw-coordinate measure's tau moved beyond its half-width"
        if undecided:
            text += f" (undecided: {', '.join(undecided)})"
        parts.append(text)
    parts.append(f"{changed} of {len(raws)} raw-coordinate measures not invariant")
    return "; ".join(parts) + f"; n = {found.compared} networks"


def symmetry_measures(
    block: BlockEvidence, *, reps: int = REPS, seed: int = SEED
) -> tuple[MeasureSummary | None, tuple[MeasureSummary, ...]]:
    """What claim 6 reads: the canonical local energy at the block's summary sigma
    (interpolated between measured sigmas; None when not measured) and every raw-coordinate
    measure at every level."""
    levels = [v.level for v in block.measures if v.measure == "local_energy" and v.level]
    level = summary_level(block.summary_levels, [float(v) for v in levels if v is not None])
    canonical = None
    if level is not None:
        values = values_at(block.measures, "local_energy", level)
        if values is not None:
            canonical = summarize_measure(block, values, reps=reps, seed=seed, level=LEVEL)
    raws = tuple(
        summarize_measure(block, v, reps=reps, seed=seed, level=LEVEL)
        for v in block.measures
        if v.measure in RAW_MEASURES and v.before
    )
    return canonical, raws


def claim_symmetry(evidence: Evidence, *, reps: int = REPS, seed: int = SEED) -> Verdict | None:
    """Claim 6; None when `analyses.measures` is not configured (no line at all)."""
    spec = evidence.config.analyses.measures
    if spec is None:
        return None
    rule = RULES["symmetry"]

    def inconclusive(reason: str) -> Verdict:
        return Verdict("6", TITLES["6"], "inconclusive", reason, rule)

    if spec.reparametrize is None:
        return inconclusive("no reparametrized copies (analyses.measures.reparametrize is null)")
    if "local_energy" not in spec.kinds:
        return inconclusive("local_energy is not among analyses.measures.kinds")
    if not any(k in RAW_MEASURES for k in spec.kinds):
        return inconclusive("no raw-coordinate measure among analyses.measures.kinds")
    block = evidence.main
    progress = block.progress.get("measure")
    partial = (
        f"{progress.done} of {progress.total} flatness measures tasks finished"
        if progress is not None and progress.missing
        else None
    )
    canonical, raws = symmetry_measures(block, reps=reps, seed=seed)
    if canonical is None or not raws:
        return inconclusive(f"no data: {partial or 'no local_energy or raw measure rows'}")
    statistic = _describe_symmetry(canonical, raws)
    if canonical.invariance.compared < MIN_POINTS:
        statistic += f" (< {MIN_POINTS})"
    if partial is not None:
        statistic += f" (partial: {partial})"
    shifts = [
        abs(r.after.tau - r.test.tau)
        for r in raws
        if r.after is not None and not math.isnan(r.after.tau - r.test.tau)
    ]
    return Verdict(
        "6",
        TITLES["6"],
        symmetry_word(canonical, raws),
        statistic,
        rule,
        value=max(shifts) if shifts else None,
        n=canonical.invariance.compared,
    )


def verdicts(evidence: Evidence, *, reps: int = REPS, seed: int = SEED) -> tuple[Verdict, ...]:
    """The verdict lines of a study, in claim order: five, and claim 6 when
    `analyses.measures` is configured."""
    sixth = claim_symmetry(evidence, reps=reps, seed=seed)
    return (
        *block_verdicts(evidence.main, reps=reps, seed=seed),
        claim_binary(evidence.binary, reps=reps, seed=seed),
        *((sixth,) if sixth is not None else ()),
    )
