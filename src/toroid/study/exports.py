"""The report's CSV exports: one text per table, with a header row; empty cells for
values not measured. Numbers are written with full precision (repr), so the CSVs carry
the exact values the report rounds."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence

from toroid.study.evidence import BlockEvidence, Evidence, MeasureSummary, measure_summaries
from toroid.study.statistics import KendallTau, mean_stderr
from toroid.study.verdicts import LEVEL, REPS, SEED, Verdict

Cell = str | int | float | bool | None


def _cell(value: Cell) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def to_csv(columns: Sequence[str], rows: Sequence[Sequence[Cell]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(v) for v in row])
    return buffer.getvalue()


def _blocks(evidence: Evidence) -> list[BlockEvidence]:
    return [evidence.main] + ([evidence.binary] if evidence.binary is not None else [])


def networks_csv(evidence: Evidence) -> str:
    columns = (
        "network",
        "block",
        "optimizer",
        "seed",
        "epochs",
        "reached_zero_train_error",
        "train_error",
        "train_loss",
        "test_error",
        "test_loss",
        "grad_evals",
        "wall_time",
        "flatness",
        "flatness_level",
        "flatness_split",
    )
    rows = [
        (
            n.name,
            b.block,
            n.optimizer,
            n.seed,
            n.epochs,
            n.reached_zero_train_error,
            n.train_error,
            n.train_loss,
            n.test_error,
            n.test_loss,
            n.grad_evals,
            n.wall_time,
            b.flatness.get(n.name),
            b.level,
            b.flatness_split,
        )
        for b in _blocks(evidence)
        for n in b.networks
    ]
    return to_csv(columns, rows)


def training_csv(evidence: Evidence) -> str:
    """Per block and optimizer: means and standard errors over seeds."""
    columns = ["block", "optimizer", "networks", "zero_train_error"]
    metrics = ("epochs", "train_error", "test_error", "grad_evals", "wall_time")
    for metric in metrics:
        columns += [f"{metric}_mean", f"{metric}_stderr"]
    rows = []
    for block in _blocks(evidence):
        for optimizer in block.optimizers:
            nets = [n for n in block.networks if n.optimizer == optimizer]
            if not nets:
                continue
            row: list[Cell] = [
                block.block,
                optimizer,
                len(nets),
                sum(n.reached_zero_train_error for n in nets),
            ]
            for metric in metrics:
                values = [getattr(n, metric) for n in nets if getattr(n, metric) is not None]
                stats = mean_stderr([float(v) for v in values])
                row += [stats.mean, stats.stderr]
            rows.append(row)
    return to_csv(columns, rows)


def local_energy_csv(evidence: Evidence) -> str:
    columns = ("network", "block", "split", "noise", "level", "mean", "stderr", "base", "samples")
    rows = [
        (c.network, b.block, c.split, c.noise, level, mean, err, c.base, c.samples)
        for b in _blocks(evidence)
        for c in b.energy
        for level, mean, err in zip(c.levels, c.mean, c.stderr, strict=True)
    ]
    return to_csv(columns, rows)


def distances_csv(evidence: Evidence) -> str:
    columns = ("a", "b", "block", "kind", "value", "aligned", "same_optimizer")
    rows = [
        (d.a, d.b, b.block, d.kind, d.value, d.aligned, b.optimizer_of(d.a) == b.optimizer_of(d.b))
        for b in _blocks(evidence)
        for d in b.distances
    ]
    return to_csv(columns, rows)


def profiles_csv(evidence: Evidence) -> str:
    """Barriers per pair and path (the curves themselves stay in study.db)."""
    columns = (
        "a",
        "b",
        "block",
        "path",
        "points",
        "barrier_train",
        "barrier_test",
        "max_train_error",
        "same_optimizer",
        "mean_flatness",
    )
    rows = []
    for b in _blocks(evidence):
        for p in b.profiles:
            flat = (
                (b.flatness[p.a] + b.flatness[p.b]) / 2
                if p.a in b.flatness and p.b in b.flatness
                else None
            )
            rows.append(
                (
                    p.a,
                    p.b,
                    b.block,
                    p.path,
                    len(p.ts),
                    p.barrier_train,
                    p.barrier_test,
                    p.max_train_error,
                    b.optimizer_of(p.a) == b.optimizer_of(p.b),
                    flat,
                )
            )
    return to_csv(columns, rows)


def verdicts_csv(verdicts: Sequence[Verdict]) -> str:
    """One row per claim and binary sub-claim: the word, the value it rests on and what
    that value is (`statistic_name`: kendall_tau, fraction, tau_shift or empty), its
    interval, n, the statistic as the report writes it and the rule."""
    columns = (
        "claim",
        "statement",
        "verdict",
        "value",
        "statistic_name",
        "low",
        "high",
        "n",
        "statistic",
        "rule",
    )
    flat = [d for v in verdicts for d in (v, *v.details)]
    rows = [
        (
            v.claim,
            v.title,
            v.word,
            v.value,
            v.statistic_name,
            v.low,
            v.high,
            v.n,
            v.statistic,
            v.rule,
        )
        for v in flat
    ]
    return to_csv(columns, rows)


def _tau_cells(tau: KendallTau | None) -> tuple[Cell, Cell, Cell]:
    return (None, None, None) if tau is None else (tau.tau, tau.low, tau.high)


def measures_csv(summaries: Sequence[MeasureSummary]) -> str:
    """The "Flatness measures" table: one row per measure and level."""
    columns = (
        "measure",
        "level",
        "raw_coordinates",
        "n",
        "tau_test",
        "tau_test_low",
        "tau_test_high",
        "granulated_tau_test",
        "tau_gap",
        "tau_gap_low",
        "tau_gap_high",
        "granulated_tau_gap",
        "axes",
        "invariant",
        "compared",
        "largest_relative_change",
        "n_after",
        "tau_after",
        "tau_after_low",
        "tau_after_high",
    )
    rows = [
        (
            s.measure,
            s.level,
            s.raw,
            s.n,
            *_tau_cells(s.test),
            s.granulated_test.psi if s.granulated_test is not None else None,
            *_tau_cells(s.gap),
            s.granulated_gap.psi if s.granulated_gap is not None else None,
            " ".join(s.axes),
            s.invariance.invariant,
            s.invariance.compared,
            s.invariance.largest_change,
            s.after.n if s.after is not None else None,
            *_tau_cells(s.after),
        )
        for s in summaries
    ]
    return to_csv(columns, rows)


def all_csvs(
    evidence: Evidence, verdicts: Sequence[Verdict], *, reps: int = REPS, seed: int = SEED
) -> dict[str, str]:
    """File name -> CSV text; `measures.csv` only with analyses.measures."""
    out = {
        "networks.csv": networks_csv(evidence),
        "training.csv": training_csv(evidence),
        "local_energy.csv": local_energy_csv(evidence),
        "distances.csv": distances_csv(evidence),
        "profiles.csv": profiles_csv(evidence),
        "verdicts.csv": verdicts_csv(verdicts),
    }
    if evidence.config.analyses.measures is not None:
        summaries = measure_summaries(evidence.main, reps=reps, seed=seed, level=LEVEL)
        out["measures.csv"] = measures_csv(summaries)
    return out
