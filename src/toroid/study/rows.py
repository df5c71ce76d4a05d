"""What study tasks write: one frozen `Row` type per result table. The store derives its
tables and typed columns from these classes and the report reads them back as the same
classes, so the schema lives here and nowhere else."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NetworkRow:
    """A trained network: its training outcome and the stem of its weights."""

    network: str
    block: str
    optimizer: str
    seed: int
    epochs: int
    reached_zero_train_error: bool
    train_error: float
    train_loss: float
    test_error: float | None
    test_loss: float | None
    grad_evals: int
    wall_time: float
    weights: str

    @property
    def name(self) -> str:
        return self.network


@dataclass(frozen=True)
class CanonicalRow:
    network: str
    block: str
    weights: str


@dataclass(frozen=True)
class AlignmentRow:
    network: str
    block: str
    reference: str
    similarity_before: float
    similarity_after: float
    weights: str


@dataclass(frozen=True)
class EnergyRow:
    """dE at one noise level (sigma, or flip probability) of one network and split; `raw`
    holds the per-sample increases whose mean and standard error these are."""

    network: str
    block: str
    split: str
    noise: str
    level: float
    mean: float
    stderr: float
    base: float
    raw: tuple[float, ...]


@dataclass(frozen=True)
class DistanceRow:
    a: str
    b: str
    block: str
    kind: str
    value: float
    aligned: bool


@dataclass(frozen=True)
class ProfileRow:
    """Errors and losses along one path; barriers are `max_minus_mean` of the training and
    test error (for flip paths: the mean over flip orders of each order's barrier)."""

    a: str
    b: str
    block: str
    path: str
    ts: tuple[float, ...]
    train_error: tuple[float, ...]
    train_loss: tuple[float, ...] | None
    test_error: tuple[float, ...] | None
    test_loss: tuple[float, ...] | None
    barrier_train: float
    barrier_test: float | None
    max_train_error: float


@dataclass(frozen=True)
class BendRow:
    a: str
    b: str
    block: str
    method: str
    kind: str
    epochs: int
    grad_evals: int | None
    wall_time: float | None
    weights: str


@dataclass(frozen=True)
class MeasureRow:
    """One flatness measure of one network (`reparametrized`: of its copy transformed by a
    random symmetry), at `level` (a noise scale, for the energies; None otherwise), with
    its standard error where the measure has one."""

    network: str
    block: str
    measure: str
    reparametrized: bool
    level: float | None
    value: float
    stderr: float | None


Row = (
    NetworkRow
    | CanonicalRow
    | AlignmentRow
    | EnergyRow
    | DistanceRow
    | ProfileRow
    | BendRow
    | MeasureRow
)

# Result table of each row type, in the order the store creates them.
TABLES: dict[type, str] = {
    NetworkRow: "networks",
    CanonicalRow: "canonical",
    AlignmentRow: "alignments",
    EnergyRow: "local_energy",
    DistanceRow: "distances",
    ProfileRow: "profiles",
    BendRow: "bends",
    MeasureRow: "measures",
}
