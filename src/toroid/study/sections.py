"""The sections of the report, built from a study's evidence and verdicts.

Every builder works on what has finished and says, in a highlighted note, what is not
configured or not finished yet; none fails on a partial study. The builders that take a
block serve the main block and the binary block alike."""

from __future__ import annotations

import math
from collections.abc import Sequence

from toroid.study import figures
from toroid.study.document import Image, Item, Paragraph, Section, Table, number, plus_minus
from toroid.study.evidence import (
    INVARIANCE_ATOL,
    INVARIANCE_RTOL,
    STAGES,
    BlockEvidence,
    Evidence,
    MeasureSummary,
    MeasureValues,
    NetworkRecord,
    ProfileRecord,
    measure_summaries,
)
from toroid.study.figures import Panel, Series
from toroid.study.statistics import KendallTau, mean_stderr
from toroid.study.verdicts import (
    LEVEL,
    REPS,
    RULES,
    SEED,
    Verdict,
    barrier_path,
    chains,
    describe_correlation,
    flatness_vs_barrier,
    flatness_vs_closeness,
    flatness_vs_test,
    kendall_of,
    model_names,
)

EXAMPLE_PROFILES = 3
MAX_CHAINS_PLOTTED = 8
RAW_PATH = "raw-linear"


def short(name: str) -> str:
    """A network name without its block: `optimizer/sSEED`."""
    return name.split("/", 1)[1] if "/" in name else name


def pair_name(a: str, b: str) -> str:
    return f"{short(a)} ~ {short(b)}"


def _note(text: str) -> Paragraph:
    return Paragraph(text, note=True)


def _notes(*reasons: str | None) -> tuple[Item, ...]:
    return tuple(_note(f"Partial or missing: {r}.") for r in reasons if r)


def _prefix(block: BlockEvidence) -> str:
    return "Binary: " if block.block == "binary" else ""


def _level_text(block: BlockEvidence) -> str:
    if block.level is None:
        return "dE (no positive level measured)"
    return f"dE at {block.level_name} = {block.level:g} ({block.flatness_split} split)"


def by_optimizer(block: BlockEvidence) -> dict[str, list[NetworkRecord]]:
    groups: dict[str, list[NetworkRecord]] = {o: [] for o in block.optimizers}
    for net in block.networks:
        groups.setdefault(net.optimizer, []).append(net)
    return {k: v for k, v in groups.items() if v}


def _color(block: BlockEvidence, optimizer: str) -> str:
    order = list(block.optimizers)
    return figures.color(order.index(optimizer) if optimizer in order else len(order))


def flatness_order(block: BlockEvidence) -> list[str]:
    """Network names, flattest first; networks without a flatness value last."""
    names = list(block.names())
    return sorted(names, key=lambda n: (n not in block.flatness, block.flatness.get(n, 0.0)))


# Overview and verdicts --------------------------------------------------------------------


def overview(evidence: Evidence) -> Section:
    config = evidence.config
    grid_models = config.grid.models if config.grid is not None else None
    # With grid.models the main networks are those architectures (the top-level model is
    # not trained).
    models = (
        "models " + ", ".join(f"{label} ({m.get('name', '?')})" for label, m in grid_models.items())
        if grid_models
        else f"model {config.model.get('name', '?')}"
    )
    evaluated = (
        f"; the analyses evaluate on {config.data.eval_train_size or 'all'} training and "
        f"{config.data.eval_test_size or 'all'} test examples"
        if config.data.eval_train_size or config.data.eval_test_size
        else ""
    )
    items: list[Item] = [
        Paragraph(
            f"Dataset {config.data.name} (train size {config.data.train_size or 'all'}, test "
            f"size {config.data.test_size or 'all'}{evaluated}); {models}; "
            f"optimizers {', '.join(o.key for o in config.optimizers)}; seeds "
            f"{', '.join(str(s) for s in config.seeds)}; device {config.device}."
        )
    ]
    blocks = [evidence.main] + ([evidence.binary] if evidence.binary is not None else [])
    rows = [
        (b.block, STAGES[kind], str(p.done), str(p.failed), str(p.total))
        for b in blocks
        for kind, p in b.progress.items()
    ]
    pending = sum(p.missing - p.failed for b in blocks for p in b.progress.values())
    pending -= len(evidence.blocked)
    if pending > 0:
        items.append(
            _note(
                f"This study is not finished: {pending} task{'s' if pending != 1 else ''} "
                "pending. Every section uses the results finished so far."
            )
        )
    if evidence.failures:
        skipped = len(evidence.blocked)
        items.append(
            _note(
                f"{len(evidence.failures)} task{'s' if len(evidence.failures) != 1 else ''} "
                f"failed; {skipped} task{'s' if skipped != 1 else ''} that depend on them "
                f"{'were' if skipped != 1 else 'was'} skipped. Every section uses the other "
                "networks' results."
            )
        )
        items.append(
            Table(
                ("failed task", "error", "reason", "retried by a re-run"),
                tuple(
                    (f.task, f.error or "", f.reason or "", "no" if f.deterministic else "yes")
                    for f in evidence.failures
                ),
            )
        )
    off = sorted({"local_energy", "distances", "paths", "bends"} - evidence.main.configured)
    if off:
        items.append(_note(f"Not configured: {', '.join(f'analyses.{a}' for a in off)}."))
    if evidence.binary is None:
        items.append(Paragraph("No binary block is configured."))
    items.append(Table(("block", "stage", "finished", "failed", "tasks"), tuple(rows)))
    return Section("Study", tuple(items))


def verdict_table(verdicts: Sequence[Verdict]) -> Table:
    """One row per claim: its word, the statistic behind it, its n and the rule that made
    the word (fixed before any outcome, docs/study.md)."""
    return Table(
        ("claim", "statement", "verdict", "statistic", "n", "rule"),
        tuple((v.claim, v.title, v.word, v.statistic, str(v.n), v.rule) for v in verdicts),
    )


def verdict_section(verdicts: Sequence[Verdict]) -> Section:
    rules = (
        "Flatness is a network's dE at the summary level (the first of the config's "
        "report.summary_sigmas inside the measured range; for binary networks the lower median of "
        "the positive flip probabilities); flat means small dE. "
        f"Correlation claims: {RULES['correlation']}. Chains: {RULES['chains']}. "
        f"Binary networks: {RULES['binary']}."
    )
    if any(v.claim == "6" for v in verdicts):
        rules += f" Symmetry removal (claim 6): {RULES['symmetry']}."
    return Section("Verdicts", (verdict_table(verdicts), Paragraph(rules)))


# Training ---------------------------------------------------------------------------------


def training_section(block: BlockEvidence) -> Section:
    groups = by_optimizer(block)
    title = f"{_prefix(block)}Training"
    if not groups:
        return Section(title, (_note("No network has finished training yet."),), _level(block))
    rows = []
    for optimizer, nets in groups.items():
        tests = [n.test_error for n in nets if n.test_error is not None]
        rows.append(
            (
                optimizer,
                str(len(nets)),
                _pm([float(n.epochs) for n in nets]),
                _pm([n.train_error for n in nets]),
                _pm(tests),
                _pm([float(n.grad_evals) for n in nets]),
                _pm([n.wall_time for n in nets]),
                f"{sum(n.reached_zero_train_error for n in nets)} / {len(nets)}",
            )
        )
    columns = (
        "optimizer",
        "seeds",
        "epochs",
        "train error",
        "test error",
        "grad evals",
        "wall time (s)",
        "zero train error",
    )
    items: list[Item] = [
        Paragraph("Mean ± standard error over seeds."),
        Table(columns, tuple(rows)),
    ]
    items.extend(_notes(block.why_missing(None, ("train",))))
    return Section(title, tuple(items), _level(block))


def _pm(values: Sequence[float]) -> str:
    stats = mean_stderr(values)
    return plus_minus(stats.mean, stats.stderr)


def _level(block: BlockEvidence) -> int:
    return 3 if block.block == "binary" else 2


# Local energy -----------------------------------------------------------------------------


def optimizer_energy(block: BlockEvidence, optimizer: str, split: str) -> Series | None:
    """Mean over the optimizer's networks of dE at each level they all measured, with
    the standard error over networks."""
    curves = [
        c for c in block.energy if c.split == split and block.optimizer_of(c.network) == optimizer
    ]
    if not curves:
        return None
    levels = sorted(set.intersection(*(set(c.levels) for c in curves)))
    means, errors = [], []
    for level in levels:
        stats = mean_stderr([c.mean[c.levels.index(level)] for c in curves])
        means.append(stats.mean)
        errors.append(stats.stderr)
    label = f"{optimizer} (n={len(curves)})"
    return Series(label, tuple(levels), tuple(means), tuple(errors), _color(block, optimizer))


def energy_section(block: BlockEvidence) -> Section:
    title = f"{_prefix(block)}Local energy"
    absent = block.why_missing("local_energy", ("train", "energy"))
    if not block.energy:
        return Section(
            title, (_note(f"No local energy yet: {absent or 'nothing measured'}."),), _level(block)
        )
    splits = [s for s in ("train", "test") if any(c.split == s for c in block.energy)]
    panels = []
    for split in splits:
        series = [
            optimizer_energy(block, o, split) for o in by_optimizer(block) or block.optimizers
        ]
        panels.append(Panel(f"{split} split", tuple(s for s in series if s is not None)))
    noise = block.energy[0].noise
    xlabel = "flip probability p" if block.level_name == "p" else f"sigma ({noise} noise)"
    png = figures.curves(
        panels=panels,
        xlabel=xlabel,
        ylabel="dE (mean error increase)",
        title="Local energy per optimizer (mean ± s.e. over seeds)",
    )
    rows = []
    for optimizer in by_optimizer(block):
        values = [
            block.flatness[n.name]
            for n in by_optimizer(block)[optimizer]
            if n.name in block.flatness
        ]
        rows.append((optimizer, str(len(values)), _pm(values)))
    items: list[Item] = [
        Image(
            png,
            "local energy curves per optimizer",
            "dE against the perturbation size; error bars: standard error over seeds.",
        ),
        Paragraph(f"Flatness summary: {_level_text(block)}, mean ± s.e. over seeds."),
        Table(("optimizer", "networks", "flatness"), tuple(rows)),
    ]
    items.extend(_notes(absent))
    return Section(title, tuple(items), _level(block))


# Flatness against test error --------------------------------------------------------------


def _groups(
    block: BlockEvidence, labels: Sequence[str], x: Sequence[float], y: Sequence[float]
) -> list[Series]:
    groups: dict[str, tuple[list[float], list[float]]] = {}
    for label, xi, yi in zip(labels, x, y, strict=True):
        xs, ys = groups.setdefault(block.optimizer_of(label), ([], []))
        xs.append(xi)
        ys.append(yi)
    return [
        Series(o, tuple(xs), tuple(ys), color=_color(block, o)) for o, (xs, ys) in groups.items()
    ]


def _verdict_note(verdict: Verdict) -> str:
    if verdict.value is None:
        return f"tau undefined, n = {verdict.n}: {verdict.word}"
    interval = (
        f" [{verdict.low:.2f}, {verdict.high:.2f}]"
        if verdict.low is not None and verdict.high is not None
        else ""
    )
    return f"tau = {verdict.value:.2f}{interval}, n = {verdict.n}: {verdict.word}"


def flatness_test_section(block: BlockEvidence, verdict: Verdict) -> Section:
    title = f"{_prefix(block)}Test error against flatness"
    points = flatness_vs_test(block)
    items: list[Item] = [Paragraph(f"Claim {verdict.line()}")]
    if points.x:
        png = figures.scatter(
            groups=_groups(block, points.labels, points.x, points.y),
            xlabel=_level_text(block),
            ylabel="test error",
            title="Test error against flatness",
            note=_verdict_note(verdict),
        )
        items.append(
            Image(
                png,
                "test error against flatness",
                "One point per network; Kendall's tau-b with a 95% bootstrap interval.",
            )
        )
    else:
        items.append(_note("No network has both a flatness value and a test error yet."))
    return Section(title, tuple(items), _level(block))


# Distances --------------------------------------------------------------------------------


def distance_matrix(block: BlockEvidence, kind: str, order: Sequence[str]) -> list[list[float]]:
    index = {name: i for i, name in enumerate(order)}
    matrix = [[math.nan] * len(order) for _ in order]
    for i in range(len(order)):
        matrix[i][i] = 0.0
    for d in block.distances_of(kind):
        if d.a in index and d.b in index:
            matrix[index[d.a]][index[d.b]] = matrix[index[d.b]][index[d.a]] = d.value
    return matrix


def distance_section(block: BlockEvidence, verdict: Verdict) -> Section:
    title = f"{_prefix(block)}Distances"
    kind = block.distance_kind
    absent = block.why_missing("distances", ("distance",))
    if not block.distances_of(kind):
        return Section(
            title,
            (_note(f"No {kind} distances yet: {absent or 'nothing measured'}."),),
            _level(block),
        )
    order = flatness_order(block)
    items: list[Item] = [
        Paragraph(f"Claim {verdict.line()}"),
        Image(
            figures.heatmap(
                matrix=distance_matrix(block, kind, order),
                labels=[short(n) for n in order],
                title=f"{kind} distance, ordered by flatness (flattest first)",
                colorbar=f"{kind} distance",
            ),
            f"{kind} distance matrix",
            f"Distance kind: {kind}, between canonical, aligned networks; blank: not measured.",
        ),
    ]
    rows, groups = [], []
    within = flatness_vs_closeness(block)
    for optimizer, nets in by_optimizer(block).items():
        names = {n.name for n in nets}
        pairs = [d.value for d in block.distances_of(kind) if d.a in names and d.b in names]
        flat = mean_stderr([block.flatness[n] for n in names if n in block.flatness])
        dist = mean_stderr(pairs)
        rows.append(
            (
                optimizer,
                plus_minus(flat.mean, flat.stderr),
                plus_minus(dist.mean, dist.stderr),
                str(len(pairs)),
            )
        )
        if not math.isnan(flat.mean) and not math.isnan(dist.mean):
            groups.append(
                Series(
                    optimizer, (flat.mean,), (dist.mean,), (dist.stderr,), _color(block, optimizer)
                )
            )
    items.append(
        Table(("optimizer", "flatness", f"mean {kind} distance within", "pairs"), tuple(rows))
    )
    if groups:
        items.append(
            Image(
                figures.scatter(
                    groups=groups,
                    xlabel=_level_text(block),
                    ylabel=f"mean {kind} distance within the optimizer",
                    title="Distance between minimizers of one optimizer against flatness",
                    note=_verdict_note(verdict) if within.x else None,
                ),
                "mean distance within each optimizer against flatness",
                "One point per optimizer; error bars: standard error over pairs.",
            )
        )
    items.extend(_notes(absent))
    return Section(title, tuple(items), _level(block))


# Barriers and example profiles ------------------------------------------------------------


def barrier_matrix(block: BlockEvidence, path: str, order: Sequence[str]) -> list[list[float]]:
    index = {name: i for i, name in enumerate(order)}
    matrix = [[math.nan] * len(order) for _ in order]
    for p in block.profiles_on(path):
        if p.a in index and p.b in index:
            matrix[index[p.a]][index[p.b]] = matrix[index[p.b]][index[p.a]] = p.barrier_train
    return matrix


def example_pairs(profiles: Sequence[ProfileRecord], count: int) -> list[tuple[str, str]]:
    """The pairs with the highest, median and lowest barrier (up to `count`, distinct)."""
    ranked = sorted(profiles, key=lambda p: (-p.barrier_train, p.a, p.b))
    if len(ranked) <= count:
        return [(p.a, p.b) for p in ranked]
    picks = [0, len(ranked) // 2, len(ranked) - 1][:count]
    return [(ranked[i].a, ranked[i].b) for i in picks]


def _profile_panel(block: BlockEvidence, a: str, b: str, paths: Sequence[str]) -> Panel:
    series = []
    for i, path in enumerate(paths):
        for p in block.profiles_on(path):
            if (p.a, p.b) == (a, b):
                series.append(Series(path, p.ts, p.train_error, color=figures.color(i)))
    return Panel(pair_name(a, b), tuple(series))


def barrier_section(block: BlockEvidence, verdict: Verdict) -> Section:
    title = f"{_prefix(block)}Barriers"
    absent = block.why_missing("paths", ("path",))
    paths = [p for p in (*block.barrier_paths, RAW_PATH) if block.profiles_on(p)]
    if not paths:
        return Section(
            title,
            (
                Paragraph(f"Claim {verdict.line()}"),
                _note(f"No path profiles yet: {absent or 'no pairs selected'}."),
            ),
            _level(block),
        )
    order = flatness_order(block)
    items: list[Item] = [Paragraph(f"Claim {verdict.line()}")]
    for path in block.barrier_paths:
        if block.profiles_on(path):
            items.append(
                Image(
                    figures.heatmap(
                        matrix=barrier_matrix(block, path, order),
                        labels=[short(n) for n in order],
                        title=f"{path} barrier (train error, max - mean of ends)",
                        colorbar="barrier",
                    ),
                    f"{path} barrier matrix",
                    "Ordered by flatness (flattest first); blank: pair not profiled.",
                )
            )
    rows = []
    for path in paths:
        values = [p.barrier_train for p in block.profiles_on(path)]
        stats = mean_stderr(values)
        rows.append(
            (path, str(len(values)), plus_minus(stats.mean, stats.stderr), number(max(values)))
        )
    items.append(Table(("path", "pairs", "mean barrier", "max barrier"), tuple(rows)))
    main_path = barrier_path(block) or paths[0]
    examples = example_pairs(block.profiles_on(main_path), EXAMPLE_PROFILES)
    if examples:
        panels = [_profile_panel(block, a, b, paths) for a, b in examples]
        items.append(
            Image(
                figures.curves(
                    panels=panels,
                    xlabel="t",
                    ylabel="train error",
                    title="Example profiles (highest, median and lowest barrier)",
                    markers=True,
                ),
                "example path profiles",
                "Training error along each path kind for a few pairs.",
            )
        )
    items.extend(_notes(absent))
    return Section(title, tuple(items), _level(block))


# Single-bend chains -----------------------------------------------------------------------


def chain_section(block: BlockEvidence, verdict: Verdict) -> Section:
    title = (
        f"{_prefix(block)}Single-bend chains"
        if block.block == "main"
        else ("Binary: two-segment flip chains")
    )
    absent = block.why_missing("bends", ("chain",))
    profiles = block.profiles_on(block.chain_path)
    items: list[Item] = [Paragraph(f"Claim {verdict.line()}")]
    if not profiles:
        items.append(_note(f"No chains yet: {absent or 'no pairs selected'}."))
        return Section(title, tuple(items), _level(block))
    shown = sorted(profiles, key=lambda p: -p.max_train_error)[:MAX_CHAINS_PLOTTED]
    series = tuple(
        Series(pair_name(p.a, p.b), p.ts, p.train_error, color=figures.color(i))
        for i, p in enumerate(shown)
    )
    items.append(
        Image(
            figures.curves(
                panels=[Panel(block.chain_path, series)],
                xlabel="t",
                ylabel="train error",
                title="Training error along the chains",
            ),
            "chain profiles",
            f"Up to {MAX_CHAINS_PLOTTED} chains, the highest maximum first.",
        )
    )
    others = [p for p in block.barrier_paths if block.profiles_on(p)]
    rows = []
    for chain in chains(block):
        cells = [
            pair_name(chain.a, chain.b),
            number(chain.max_train_error),
            "yes" if chain.between_minimizers else "no",
        ]
        for path in others:
            match = [p for p in block.profiles_on(path) if (p.a, p.b) == (chain.a, chain.b)]
            cells.append(number(match[0].max_train_error) if match else "—")
        rows.append(tuple(cells))
    columns = (
        "pair",
        "max train error (chain)",
        "ends are minimizers",
        *(f"max train error ({p})" for p in others),
    )
    items.append(Table(columns, tuple(rows)))
    items.extend(_notes(absent))
    return Section(title, tuple(items), _level(block))


# Raw coordinates --------------------------------------------------------------------------


def raw_section(block: BlockEvidence, *, models: Sequence[str] = ()) -> Section:
    title = "Raw coordinates: what symmetry removal changes"
    raw = {(p.a, p.b): p for p in block.profiles_on(RAW_PATH)}
    absent = block.why_missing("paths", ("path",))
    if not raw:
        reason = absent or f"{RAW_PATH} is not among analyses.paths.kinds"
        return Section(title, (_note(f"No {RAW_PATH} profiles: {reason}."),))
    aligned = [p for p in ("linear", "geodesic") if block.profiles_on(p)]
    lookup = {path: {(p.a, p.b): p for p in block.profiles_on(path)} for path in aligned}
    rows = []
    for (a, b), p in raw.items():
        cells = [pair_name(a, b), number(p.barrier_train)]
        cells += [
            number(lookup[path][(a, b)].barrier_train) if (a, b) in lookup[path] else "—"
            for path in aligned
        ]
        rows.append(tuple(cells))
    items: list[Item] = [
        Paragraph(
            f"{RAW_PATH}: the straight line between the trained weights as they are; linear "
            "and geodesic: between the canonical, aligned networks. A lower aligned barrier "
            "means the raw barrier was partly an artifact of the parameter symmetries."
        ),
        Table(("pair", f"{RAW_PATH} barrier", *(f"{p} barrier" for p in aligned)), tuple(rows)),
    ]
    summary = []
    for path in (RAW_PATH, *aligned):
        values = [p.barrier_train for p in block.profiles_on(path)]
        stats = mean_stderr(values)
        points = flatness_vs_barrier(block, path)
        # The same statistic as claim 3's (within each architecture when there are several).
        correlation, within = kendall_of(points, models=models, reps=REPS, seed=SEED)
        summary.append(
            (
                path,
                plus_minus(stats.mean, stats.stderr),
                describe_correlation(
                    correlation, points, "mean flatness, barrier", "pairs", within=within
                ),
            )
        )
    items.append(Table(("path", "mean barrier", "flatness against barrier"), tuple(summary)))
    groups = []
    for i, path in enumerate(aligned):
        pairs = [k for k in raw if k in lookup[path]]
        if pairs:
            groups.append(
                Series(
                    path,
                    tuple(raw[k].barrier_train for k in pairs),
                    tuple(lookup[path][k].barrier_train for k in pairs),
                    color=figures.color(i),
                )
            )
    if groups:
        items.append(
            Image(
                figures.scatter(
                    groups=groups,
                    xlabel=f"{RAW_PATH} barrier (raw coordinates)",
                    ylabel="barrier after symmetry removal",
                    title="Barriers before and after symmetry removal",
                    diagonal=True,
                ),
                "raw against aligned barriers",
                "One point per pair; below the dashed line: symmetry removal lowered the barrier.",
            )
        )
    items.extend(_notes(absent))
    return Section(title, tuple(items))


# Flatness measures side by side -------------------------------------------------------------

MEASURES_TITLE = "Flatness measures"


def _tau_text(tau: KendallTau | None) -> str:
    if tau is None or math.isnan(tau.tau):
        return "—"
    if not tau.defined:
        return f"{tau.tau:.2f} [—]"
    return f"{tau.tau:.2f} [{tau.low:.2f}, {tau.high:.2f}]"


def _yes_no(value: bool | None) -> str:
    return "—" if value is None else ("yes" if value else "no")


def measures_table(summaries: Sequence[MeasureSummary]) -> Table:
    columns = (
        "measure",
        "level",
        "n",
        "tau vs test error [95%]",
        "granulated tau (test error)",
        "tau vs gap [95%]",
        "granulated tau (gap)",
        "invariant",
        "largest relative change",
        "tau after vs test error [95%]",
    )
    rows = tuple(
        (
            s.measure,
            number(s.level),
            str(s.n),
            _tau_text(s.test),
            number(s.granulated_test.psi, 2) if s.granulated_test is not None else "—",
            _tau_text(s.gap),
            number(s.granulated_gap.psi, 2) if s.granulated_gap is not None else "—",
            _yes_no(s.invariance.invariant),
            number(s.invariance.largest_change, 2),
            _tau_text(s.after),
        )
        for s in summaries
    )
    return Table(columns, rows)


def measure_panel(block: BlockEvidence, values: MeasureValues) -> Panel:
    """One measure at one level against test error: before (C0) and after (C1)."""
    tests = {n.name: n.test_error for n in block.networks if n.test_error is not None}
    series = []
    for label, side, tone in (
        ("as trained", values.before, 0),
        ("reparametrized", values.after, 1),
    ):
        names = [n for n, v in side.items() if n in tests and math.isfinite(v)]
        if names:
            series.append(
                Series(
                    label,
                    tuple(side[n] for n in names),
                    tuple(float(tests[n]) for n in names),
                    color=figures.color(tone),
                )
            )
    title = values.measure if values.level is None else f"{values.measure} at {values.level:g}"
    return Panel(title, tuple(series))


def measures_section(
    evidence: Evidence, verdict: Verdict | None, *, reps: int = REPS, seed: int = SEED
) -> Section:
    """Every flatness measure against test error and the generalization gap, before and
    after the reparametrization (analyses.measures), and claim 6."""
    block = evidence.main
    items: list[Item] = [Paragraph(f"Claim {verdict.line()}")] if verdict is not None else []
    progress = block.progress.get("measure")
    absent = (
        f"{progress.done} of {progress.total} flatness measures tasks finished"
        + (f", {progress.failed} failed" if progress.failed else "")
        if progress is not None and progress.missing
        else None
    )
    summaries = measure_summaries(block, reps=reps, seed=seed, level=LEVEL)
    if not summaries:
        items.append(_note(f"No flatness measures yet: {absent or 'nothing measured'}."))
        return Section(MEASURES_TITLE, tuple(items))
    axes = sorted({a for s in summaries for a in s.axes})
    items += [
        Paragraph(
            "Kendall's tau-b of each measure against test error and against the "
            "generalization gap (test error - train error) over the main block's networks, "
            f"with its {LEVEL:.0%} bootstrap interval ({reps} resamples of the networks, seed "
            f"{seed}); Jiang et al.'s granulated tau over the axes "
            f"{', '.join(axes) if axes else '(none vary: no granulated tau)'}, the seed "
            "held fixed. Invariant: every network's value on the reparametrized copy equals "
            f"its value as trained to relative {INVARIANCE_RTOL:g} plus absolute "
            f"{INVARIANCE_ATOL:g}; largest relative change: |after - before| / max(|after|, "
            "|before|) over the networks. Tau after: against test error on the copies, "
            "which compute the same functions."
        ),
        measures_table(summaries),
    ]
    panels = [measure_panel(block, v) for v in block.measures if v.before]
    items.append(
        Image(
            figures.scatter_panels(
                panels=panels,
                xlabel="measure",
                ylabel="test error",
                title="Test error against each measure, as trained and reparametrized",
            ),
            "test error against each flatness measure before and after reparametrization",
            "One point per network; circles: as trained, crosses: on the reparametrized copy "
            "(the same function, so the same test error).",
        )
    )
    items.extend(_notes(absent))
    return Section(MEASURES_TITLE, tuple(items))


# Binary block -----------------------------------------------------------------------------


def binary_sections(evidence: Evidence, verdict: Verdict) -> list[Section]:
    head: list[Item] = [Paragraph(f"Claim {verdict.line()}")]
    block = evidence.binary
    if block is None:
        return [
            Section(
                "Binary networks",
                (
                    *head,
                    Paragraph(
                        "Not configured: add a `binary:` block to the config to train binary "
                        "networks and measure flip local energy, overlap distances, flip paths "
                        "and chains."
                    ),
                ),
            )
        ]
    details = verdict.details
    head.append(verdict_table(details))
    head.append(
        Paragraph(
            f"Flatness: flip local energy ({_level_text(block)}); distances: overlap (the "
            "normalized Hamming distance of the canonical, aligned sign weights); paths: flip "
            "the differing weights in random orders (mean over orders); chains: two segments "
            "through a re-trained midpoint."
        )
    )
    return [
        Section("Binary networks", tuple(head)),
        training_section(block),
        energy_section(block),
        flatness_test_section(block, details[0]),
        distance_section(block, details[1]),
        barrier_section(block, details[2]),
        chain_section(block, details[3]),
    ]


def all_sections(
    evidence: Evidence, verdicts: Sequence[Verdict], *, reps: int = REPS, seed: int = SEED
) -> list[Section]:
    main = evidence.main
    sixth = next((v for v in verdicts if v.claim == "6"), None)
    measures = (
        [measures_section(evidence, sixth, reps=reps, seed=seed)]
        if evidence.config.analyses.measures is not None
        else []
    )
    return [
        verdict_section(verdicts),
        overview(evidence),
        training_section(main),
        energy_section(main),
        flatness_test_section(main, verdicts[0]),
        distance_section(main, verdicts[1]),
        barrier_section(main, verdicts[2]),
        chain_section(main, verdicts[3]),
        raw_section(main, models=model_names(evidence)),
        *measures,
        *binary_sections(evidence, verdicts[4]),
    ]
