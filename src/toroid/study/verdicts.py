"""One verdict per claim of the paper, each with its statistic and a word.

Flatness is a network's dE at the block's summary level (sigma, or flip probability p)
on the training split; "flat" means small dE. The correlation claims take Kendall's tau-b
with a seeded percentile-bootstrap 95% interval over the points (networks, optimizer labels
or pairs); when the block pools several architectures (grid.models), tau-b is taken within
each architecture and pooled, weighted by each one's number of pairs, with a bootstrap
that resamples within each (`stratified_kendall`): distances and dE differ in scale across
architectures, so a tau over all points would mostly say which architecture is flatter:

- holds when the interval lies above 0, does not hold when it lies at or below 0,
  inconclusive when it contains 0, when tau is undefined (constant values) or when
  there are fewer than MIN_POINTS points; claim 1 also shows Jiang's granulated tau over
  the block's hyperparameter axes, for information only;
- the chain claim counts the chains between two minimizers (both endpoints at zero
  training error) that never leave zero training error, with a Clopper-Pearson 95%
  interval for that fraction: it holds when the fraction is at least CHAIN_FRACTION and the
  interval's low end is above CHAIN_LOW, does not hold when the interval's high end is
  below CHAIN_FRACTION, and is inconclusive otherwise or with fewer than MIN_CHAINS such
  chains. A point fraction alone is not enough to reject: 12 of 15 is 0.80, but its
  interval [0.52, 0.96] still contains 90%;
- the binary claim holds when all four claims hold for the binary block, does not hold
  when any of them does not hold, and is inconclusive otherwise;
- claim 6 (only with `analyses.measures`) holds when toroid's canonical local energy at the
  summary sigma is invariant under the random reparametrization and at least one
  raw-coordinate measure is not, with its Kendall tau against test error moved by more
  than the half-width of its before interval (`symmetry_word`).

docs/study.md ("Report") states the same rules for readers of the report."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from toroid.study.evidence import (
    RAW_MEASURES,
    BlockEvidence,
    Evidence,
    MeasureSummary,
    hyperparameter_axes,
    summarize_measure,
    values_at,
)
from toroid.study.statistics import (
    GranulatedTau,
    KendallTau,
    bootstrap_kendall,
    clopper_pearson,
    granulated_tau,
    stratified_kendall,
    summary_level,
)

Word = Literal["holds", "does not hold", "inconclusive", "not configured"]
MIN_POINTS = 4
MIN_CHAINS = 3
CHAIN_FRACTION = 0.9
# The chain claim holds only if the interval's low end is above this: with all chains at
# zero error that needs 6 or more of them (5 of 5 gives [0.48, 1]).
CHAIN_LOW = 0.5
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
        f"holds if the {LEVEL:.0%} bootstrap interval of Kendall's tau-b (within each "
        "architecture, pair-weighted, when the block has several) lies above 0; does not "
        "hold if it lies at or below 0; inconclusive if it contains 0, if tau is "
        f"undefined, or with fewer than {MIN_POINTS} points"
    ),
    "chains": (
        f"holds if at least {CHAIN_FRACTION:.0%} of the chains between minimizers stay at zero "
        f"training error and the {LEVEL:.0%} Clopper-Pearson interval's lower end is above "
        f"{CHAIN_LOW:.0%}; does not hold if the interval's upper end is below "
        f"{CHAIN_FRACTION:.0%}; inconclusive otherwise, or with fewer than {MIN_CHAINS} such "
        "chains"
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
    binary block's claims). `value` is the number the word rests on (None where it is
    undefined or nothing was measured), with its interval `low`, `high` over `n` points;
    `statistic_name` says what it is whether or not it could be computed: "kendall_tau",
    "fraction" of zero-error chains, "tau_shift" (claim 6's largest move of a raw
    measure's tau), or "" for claim 5, which only combines its sub-claims."""

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
    statistic_name: str = ""

    def line(self) -> str:
        return f"{self.claim}. {self.title}: {self.word.upper()} — {self.statistic}"


@dataclass(frozen=True)
class Points:
    """Paired values a claim correlates: `labels[i]` names point (x[i], y[i]); `strata[i]`
    is its architecture (`model_of`; empty when not given)."""

    labels: tuple[str, ...]
    x: tuple[float, ...]
    y: tuple[float, ...]
    strata: tuple[Hashable, ...] = ()

    @property
    def stratified(self) -> bool:
        """Whether the points span more than one architecture."""
        return len(set(self.strata)) > 1


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


def model_of(block: BlockEvidence, network: str) -> Hashable | None:
    """A network's architecture as the block's hyperparameters hold it: with `grid.models`
    the "model" entry (`network_hyperparameters` stores the model's position among the
    sorted model labels), None without one."""
    return block.hyperparameters.get(network, {}).get("model")


def _points(block: BlockEvidence, rows: Sequence[tuple[str, float, float, str]]) -> Points:
    """Points from rows (label, x, y, a network of the point, whose model is the point's)."""
    return Points(
        tuple(r[0] for r in rows),
        tuple(r[1] for r in rows),
        tuple(r[2] for r in rows),
        tuple(model_of(block, r[3]) for r in rows),
    )


def flatness_vs_test(block: BlockEvidence) -> Points:
    """Per network: flatness and test error."""
    rows = [
        (n.name, block.flatness[n.name], n.test_error, n.name)
        for n in block.networks
        if n.name in block.flatness and n.test_error is not None
    ]
    return _points(block, rows)


def within_distances(block: BlockEvidence, kind: str) -> dict[str, list[float]]:
    """Per optimizer: the distances (of `kind`) between pairs of its networks."""
    out: dict[str, list[float]] = {}
    for d in block.distances_of(kind):
        if block.optimizer_of(d.a) == block.optimizer_of(d.b):
            out.setdefault(block.optimizer_of(d.a), []).append(d.value)
    return out


def flatness_vs_closeness(block: BlockEvidence) -> Points:
    """Per optimizer label: the mean flatness of its networks and the mean distance
    between them. The label, not the network, is the unit: networks of one label share
    their pairwise distances, so per-network points would not be independent. With a
    hyperparameter grid every grid point is a label of its own (`sam-b64-lr0.5`), so the
    unit is then a grid cell: one optimizer at one batch size and learning rate."""
    within = within_distances(block, block.distance_kind)
    rows = []
    for optimizer in block.optimizers:
        mine = [name for name in block.flatness if block.optimizer_of(name) == optimizer]
        flat = [block.flatness[name] for name in mine]
        if flat and within.get(optimizer):
            distances = within[optimizer]
            mean_flat, mean_distance = sum(flat) / len(flat), sum(distances) / len(distances)
            # A label's networks share one model (the label names it).
            rows.append((optimizer, mean_flat, mean_distance, mine[0]))
    return _points(block, rows)


def barrier_path(block: BlockEvidence) -> str | None:
    """The path whose barriers claim 3 uses: the first of the block's barrier paths with
    a profile (geodesic before linear)."""
    return next((p for p in block.barrier_paths if block.profiles_on(p)), None)


def flatness_vs_barrier(block: BlockEvidence, path: str) -> Points:
    """Per pair profiled on `path`: the mean flatness of its ends and its training-error
    barrier (max_minus_mean)."""
    rows = [
        (f"{p.a} ~ {p.b}", (block.flatness[p.a] + block.flatness[p.b]) / 2, p.barrier_train, p.a)
        for p in block.profiles_on(path)
        if p.a in block.flatness and p.b in block.flatness and not math.isnan(p.barrier_train)
    ]
    # Pairs are formed within one architecture, so the first end's model is the pair's.
    return _points(block, rows)


def chains(block: BlockEvidence) -> tuple[Chain, ...]:
    def minimizer(name: str) -> bool:
        net = block.network(name)
        return net is not None and net.reached_zero_train_error

    return tuple(
        Chain(p.a, p.b, p.max_train_error, minimizer(p.a) and minimizer(p.b))
        for p in block.profiles_on(block.chain_path)
    )


# Rules ----------------------------------------------------------------------------------


def correlation_word(correlation: KendallTau, *, minimum: int = MIN_POINTS) -> Word:
    if correlation.n < minimum or not correlation.defined:
        return "inconclusive"
    if correlation.low > 0:
        return "holds"
    if correlation.high <= 0:
        return "does not hold"
    return "inconclusive"


def chain_word(zero: int, eligible: int) -> Word:
    """Claim 4's rule on `zero` of `eligible` chains between minimizers at zero training
    error. The interval, not the point fraction, decides "does not hold": 12 of 15 (0.80)
    has the interval [0.52, 0.96], which still contains 90%, so it is inconclusive."""
    if eligible < MIN_CHAINS:
        return "inconclusive"
    low, high = clopper_pearson(zero, eligible, level=LEVEL)
    if zero / eligible >= CHAIN_FRACTION and low > CHAIN_LOW:
        return "holds"
    if high < CHAIN_FRACTION:
        return "does not hold"
    return "inconclusive"


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


def kendall_of(
    points: Points, *, models: Sequence[str] = (), reps: int = REPS, seed: int = SEED
) -> tuple[KendallTau, tuple[str, ...]]:
    """The correlation claims' statistic on `points`: Kendall's tau-b with its bootstrap
    interval, within each architecture and pair-weighted when the points span several
    (docs/study.md); and the names of those architectures (empty with one)."""
    if not points.stratified:
        return bootstrap_kendall(points.x, points.y, reps=reps, seed=seed, level=LEVEL), ()
    correlation = stratified_kendall(
        points.x, points.y, points.strata, reps=reps, seed=seed, level=LEVEL
    )
    return correlation, tuple(model_name(v, models) for v in dict.fromkeys(points.strata))


def model_name(value: Hashable, models: Sequence[str] = ()) -> str:
    """A stratum's name: the model label (`models`, sorted as `network_hyperparameters`
    numbers them), or the value itself when it is a label or out of range."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(models):
        return models[value]
    return str(value)


def describe_correlation(
    correlation: KendallTau,
    points: Points,
    what: str,
    unit: str,
    *,
    within: Sequence[str] = (),
) -> str:
    """The statistic's text; `within` names the strata of a `stratified_kendall` tau
    ("Kendall tau(...) within models (mlp, lenet), pair-weighted = 0.31, 95% stratified
    bootstrap interval [...]")."""
    count = f"n = {correlation.n} {unit}"
    name = f"Kendall tau({what})"
    kind = "bootstrap"
    if within:
        name += f" within models ({', '.join(within)}), pair-weighted"
        kind = "stratified bootstrap"
    if not correlation.defined:
        tau = "" if math.isnan(correlation.tau) else f" = {correlation.tau:.2f}"
        reason = _undefined_reason(points)
        if within and math.isnan(correlation.tau):
            reason = "no model has a defined tau (fewer than 2 points or constant values)"
        return f"{name}{tau}, interval undefined: {reason}; {count}"
    short = f" (< {MIN_POINTS})" if correlation.n < MIN_POINTS else ""
    return (
        f"{name} = {correlation.tau:.2f}, {correlation.level:.0%} {kind} "
        f"interval [{correlation.low:.2f}, {correlation.high:.2f}]; {count}{short}"
    )


def granulated(block: BlockEvidence, points: Points) -> GranulatedTau | None:
    """Jiang's granulated tau of `points` (per network: flatness, test error) over the
    block's hyperparameter axes, as the "Flatness measures" table computes it; None
    without an axis or when a network has no hyperparameters."""
    rows = [block.hyperparameters[n] for n in points.labels if n in block.hyperparameters]
    if not points.labels or len(rows) != len(points.labels):
        return None
    axes = hyperparameter_axes(dict(zip(points.labels, rows, strict=True)))
    if not axes:
        return None
    return granulated_tau(rows, points.x, points.y, axes=axes)


def describe_granulated(found: GranulatedTau | None) -> str:
    """The text claim 1 appends, e.g. "; granulated tau 0.35 (axes optimizer, lr)"; empty
    when it is undefined."""
    if found is None or not found.per_axis or math.isnan(found.psi):
        return ""
    used = [a.axis for a in found.per_axis if a.defined]
    text = f"; granulated tau {found.psi:.2f} (axes {', '.join(used)}"
    if found.left_out:
        text += f"; no cell along {', '.join(found.left_out)}"
    return text + ")"


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
    extra: str = "",
    models: Sequence[str] = (),
) -> Verdict:
    rule = RULES["correlation"]
    if not points.x:
        reason = absent or "nothing measured (no pairs or networks selected)"
        return Verdict(
            claim, title, "inconclusive", f"no data: {reason}", rule, statistic_name="kendall_tau"
        )
    correlation, within = kendall_of(points, models=models, reps=reps, seed=seed)
    statistic = describe_correlation(correlation, points, what, unit, within=within) + extra
    if absent is not None:
        statistic += f" (partial: {absent})"
    return Verdict(
        claim,
        title,
        correlation_word(correlation),
        statistic,
        rule,
        value=None if math.isnan(correlation.tau) else correlation.tau,
        low=None if math.isnan(correlation.low) else correlation.low,
        high=None if math.isnan(correlation.high) else correlation.high,
        n=correlation.n,
        statistic_name="kendall_tau",
    )


def _level(block: BlockEvidence) -> str:
    return f"dE at {block.level_name}={block.level:g}" if block.level is not None else "dE"


def claim_flatness_test(
    block: BlockEvidence,
    *,
    models: Sequence[str] = (),
    claim: str = "1",
    reps: int = REPS,
    seed: int = SEED,
) -> Verdict:
    absent = block.why_missing("local_energy", ("train", "energy"))
    points = flatness_vs_test(block)
    return _correlation_verdict(
        claim,
        TITLES["1"],
        points,
        what=f"{_level(block)}, test error",
        unit="networks",
        absent=absent,
        reps=reps,
        seed=seed,
        extra=describe_granulated(granulated(block, points)),
        models=models,
    )


def has_grid(block: BlockEvidence) -> bool:
    """Whether the block's optimizer labels are grid points (a hyperparameter other than
    the optimizer varies within an optimizer)."""
    return any(a != "optimizer" for a in hyperparameter_axes(block.hyperparameters))


def claim_closer(
    block: BlockEvidence,
    *,
    models: Sequence[str] = (),
    claim: str = "2",
    reps: int = REPS,
    seed: int = SEED,
) -> Verdict:
    absent = block.why_missing("local_energy", ("train", "energy")) or block.why_missing(
        "distances", ("distance",)
    )
    return _correlation_verdict(
        claim,
        TITLES["2"],
        flatness_vs_closeness(block),
        what=f"mean {_level(block)}, mean {block.distance_kind} distance within the optimizer "
        "label",
        unit="optimizer labels (grid cells)" if has_grid(block) else "optimizer labels",
        absent=absent,
        reps=reps,
        seed=seed,
        models=models,
    )


def claim_barriers(
    block: BlockEvidence,
    *,
    models: Sequence[str] = (),
    claim: str = "3",
    reps: int = REPS,
    seed: int = SEED,
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
        models=models,
    )


def claim_chains(block: BlockEvidence, *, claim: str = "4") -> Verdict:
    rule = RULES["chains"]
    absent = block.why_missing("bends", ("chain",))
    found = chains(block)
    eligible = [c for c in found if c.between_minimizers]
    if not found:
        statistic = f"no chains: {absent or 'no pairs selected'}"
        return Verdict(
            claim, TITLES["4"], "inconclusive", statistic, rule, statistic_name="fraction"
        )
    zero = sum(c.zero for c in eligible)
    skipped = len(found) - len(eligible)
    worst = max(c.max_train_error for c in found)
    fraction = zero / len(eligible) if eligible else math.nan
    low, high = clopper_pearson(zero, len(eligible), level=LEVEL)
    if eligible:
        statistic = (
            f"{zero} of {len(eligible)} {block.chain_path} chains between minimizers stay at "
            f"zero training error ({fraction:.2f}, {LEVEL:.0%} Clopper-Pearson interval "
            f"[{low:.2f}, {high:.2f}])"
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
        low=None if math.isnan(low) else low,
        high=None if math.isnan(high) else high,
        n=len(eligible),
        statistic_name="fraction",
    )


def block_verdicts(
    block: BlockEvidence,
    *,
    prefix: str = "",
    reps: int = REPS,
    seed: int = SEED,
    models: Sequence[str] = (),
) -> tuple[Verdict, ...]:
    """Claims 1-4 on one block; `prefix` numbers them (e.g. "5" gives 5a-5d); `models`
    names the block's architectures (`model_names`) in the statistic's text."""
    ids = ("1", "2", "3", "4") if not prefix else tuple(f"{prefix}{c}" for c in "abcd")
    return (
        claim_flatness_test(block, models=models, claim=ids[0], reps=reps, seed=seed),
        claim_closer(block, models=models, claim=ids[1], reps=reps, seed=seed),
        claim_barriers(block, models=models, claim=ids[2], reps=reps, seed=seed),
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
        "; ".join(f"{v.claim} {v.word} (n = {v.n})" for v in details)
        + " (claims 1-4 on the binary block)"
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
        return Verdict("6", TITLES["6"], "inconclusive", reason, rule, statistic_name="tau_shift")

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
        statistic_name="tau_shift",
    )


def model_names(evidence: Evidence) -> tuple[str, ...]:
    """The main block's model labels (`grid.models`), sorted, so that position k names the
    model `network_hyperparameters` numbers k; empty without `grid.models`."""
    grid = evidence.config.grid
    return tuple(sorted(grid.models)) if grid is not None and grid.models else ()


def verdicts(evidence: Evidence, *, reps: int = REPS, seed: int = SEED) -> tuple[Verdict, ...]:
    """The verdict lines of a study, in claim order: five, and claim 6 when
    `analyses.measures` is configured."""
    sixth = claim_symmetry(evidence, reps=reps, seed=seed)
    models = model_names(evidence)
    return (
        *block_verdicts(evidence.main, reps=reps, seed=seed, models=models),
        claim_binary(evidence.binary, reps=reps, seed=seed),
        *((sixth,) if sixth is not None else ()),
    )
