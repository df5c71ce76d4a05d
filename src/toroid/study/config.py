"""Study configs: YAML validated by pydantic, presets shipped with the package.

A config names the data and model, the optimizer presets and seeds to train, the training
budget and the analyses with their parameters. A bad value is reported in one line with
its field path (`StudyConfigError`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from importlib import resources
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal, get_args

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from toroid.data import DATASET_SIZES, DATASETS
from toroid.errors import InvalidArgumentError, ToroidError
from toroid.grid import parse_grid
from toroid.optim import make_optimizer, resolve_optimizer

PRESETS: tuple[str, ...] = ("quick", "default", "paper-cpu")
DistanceName = Literal["geodesic", "mean_angle", "overlap"]
StudyPathKind = Literal["linear", "geodesic", "raw-linear"]
PairScope = Literal["all", "within", "first-seeds", "within+first-seeds", "none"]
Schedule = Literal["constant", "cosine", "step"]
EnergyNoise = Literal["multiplicative", "spherical"]
EnergySplit = Literal["train", "test", "both"]
BendMethod = Literal["fit", "retrain"]
BendKind = Literal["polychain", "bezier"]
TrainEngine = Literal["vmap", "loop"]
MeasureName = Literal[
    "local_energy",
    "raw_energy",
    "hessian_trace",
    "hessian_top",
    "raw_hessian_trace",
    "sam_sharpness",
    "pac_bayes",
    "log_norm",
]
MEASURES: tuple[MeasureName, ...] = get_args(MeasureName)
# A label names networks, task keys and weight files: keep it to a safe file-name part.
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")
MAX_SEED = 2**63 - 1


class StudyConfigError(ToroidError):
    """A study config that cannot be used; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSpec(_Strict):
    name: str
    train_size: int | None = Field(default=None, gt=0)
    test_size: int | None = Field(default=None, gt=0)
    seed: int = 0
    root: str | None = None
    # The analyses (every task but training) evaluate on fixed, seeded, class-balanced
    # subsets of this many examples of the training and test splits the networks trained
    # on (None: the whole split); training and its recorded errors use the whole splits.
    eval_train_size: int | None = Field(default=None, gt=0)
    eval_test_size: int | None = Field(default=None, gt=0)

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in DATASETS:
            raise ValueError(f"unknown dataset {value!r}; valid: {', '.join(DATASETS)}")
        return value

    @model_validator(mode="after")
    def _eval_sizes(self) -> DataSpec:
        full = DATASET_SIZES.get(self.name)
        for field, size, loaded, index, split in (
            ("eval_train_size", self.eval_train_size, self.train_size, 0, "training"),
            ("eval_test_size", self.eval_test_size, self.test_size, 1, "test"),
        ):
            available = loaded if loaded is not None else (full[index] if full else None)
            if size is not None and available is not None and size > available:
                raise ValueError(
                    f"{field} {size} is larger than the {split} split ({available} examples); "
                    f"choose at most {available}, or leave it out for the whole split"
                )
        return self


class TrainingSpec(_Strict):
    epochs: int = Field(default=60, gt=0)
    schedule: Schedule = "cosine"
    batch_size: int | None = Field(default=None, gt=0)
    # Off by default (issue 16): a minimizer trains through the schedule's end, so that it
    # is not a network that has just crossed the decision boundary at its first epoch with
    # zero training error; true stops there (the cheaper, older behaviour).
    stop_at_zero_train_error: bool = False
    augment: bool = False
    # How the networks of one architecture train together (toroid.train.fit_population):
    # "vmap" in one vectorized pass, "loop" one after another; by default vmap on a GPU and
    # loop on a CPU, where vmap measured no faster (benchmarks/population.py). Part of each
    # network's hash.
    engine: TrainEngine | None = None
    # At most this many networks per population (default: all that can train together).
    population_size: int | None = Field(default=None, gt=0)


class OptimizerSpec(_Strict):
    """A registered optimizer or preset with optional overrides; `label` names it in the
    results (default: the name); `epochs` replaces the training budget's for it (rSGD's
    replicas share one pass over the data, so it needs about y times the epochs)."""

    name: str
    label: str | None = None
    epochs: int | None = Field(default=None, gt=0)
    # This entry's minibatch size (default: training.batch_size, else the preset's).
    batch_size: int | None = Field(default=None, gt=0)
    hparams: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _safe_label(self) -> OptimizerSpec:
        if not LABEL.fullmatch(self.key):
            advice = "change its `label`" if self.label is not None else "give it a `label`"
            raise ValueError(
                f"optimizer label {self.key!r} must be 1-40 letters, digits, '_', '.' or '-' "
                f"(starting with a letter or digit): it names files and task keys; {advice}"
            )
        reserved = sorted({"name", "label", "epochs", "batch_size"} & set(self.hparams))
        if reserved:
            raise ValueError(
                f"optimizer {self.key!r}: {reserved[0]!r} is not a hyperparameter; set it on "
                "the entry itself"
            )
        return self

    def resolved(self) -> dict[str, Any]:
        return resolve_optimizer({"name": self.name, **self.hparams})

    @property
    def key(self) -> str:
        return self.name if self.label is None else self.label


def _optimizer_list(value: Any) -> Any:
    if not isinstance(value, list):
        return value
    out: list[Any] = []
    for item in value:
        if isinstance(item, str):
            out.append({"name": item})
        elif (
            isinstance(item, dict) and "name" in item and isinstance(item.get("hparams", {}), dict)
        ):
            own = ("name", "label", "epochs", "batch_size", "hparams")
            extra = {k: v for k, v in item.items() if k not in own}
            merged = {**item.get("hparams", {}), **extra}
            out.append({**{k: item[k] for k in own[:4] if k in item}, "hparams": merged})
        else:
            out.append(item)
    return out


def _grid(value: Any) -> Any:
    """`start:stop:count` or a comma list, as `toroid flatness --sigmas` parses it."""
    return list(parse_grid(value, name="sigmas")) if isinstance(value, str) else value


def _increasing(values: list[float], what: str) -> list[float]:
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError(f"{what} must be finite numbers >= 0")
    if any(b <= a for a, b in pairwise(values)):
        raise ValueError(f"{what} must be strictly increasing")
    return values


class LocalEnergySpec(_Strict):
    sigmas: list[float] = Field(default_factory=lambda: list(parse_grid("0:0.5:11")))
    samples: int = Field(default=8, gt=0)
    noise: EnergyNoise = "multiplicative"
    split: EnergySplit = "both"
    bn_samples: int = Field(default=2000, gt=1)

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, value: Any) -> Any:
        if isinstance(value, dict) and "summary_sigmas" in value:
            raise ValueError(
                "summary_sigmas is a report setting (it changes no measurement): move it to "
                "report.summary_sigmas"
            )
        return value

    _text = field_validator("sigmas", mode="before")(_grid)

    @field_validator("sigmas")
    @classmethod
    def _sigmas(cls, value: list[float]) -> list[float]:
        return _increasing(value, "sigmas")


class DistanceSpec(_Strict):
    kinds: list[DistanceName] = Field(
        default_factory=lambda: list[DistanceName](["geodesic", "mean_angle", "overlap"])
    )
    # Each pair is aligned once (weight matching), which dominates its cost: a large grid
    # measures the pairs claim 2 and the distance matrix need, not all of them.
    pairs: PairScope = "all"


class PathSpec(_Strict):
    kinds: list[StudyPathKind] = Field(
        default_factory=lambda: list[StudyPathKind](["linear", "geodesic", "raw-linear"])
    )
    points: int = Field(default=21, ge=2)
    refine: int = Field(default=0, ge=0)
    pairs: PairScope = "all"
    bn_samples: int = Field(default=2000, gt=1)


class BendSpec(_Strict):
    method: BendMethod = "retrain"
    kind: BendKind = "polychain"
    pairs: PairScope = "first-seeds"
    epochs: int = Field(default=20, gt=0)
    lr: float = Field(default=0.05, gt=0)
    points: int = Field(default=21, ge=2)


class ReparametrizeSpec(_Strict):
    """The function-preserving reparametrization of Dinh et al. (2017): every network
    transformed by a random element of its symmetry group (`random_symmetry`: log-uniform
    positive scales in `scale_range` per cell, random signs, and unit permutations when
    `permutations`), seeded per network from `seed`; the output layer's global factor,
    which scales the logits, is left out, so the copy's logits and loss are the network's
    own. Permutations are off by default: they
    change no measure's distribution, only which noise draw hits which unit, so with them a
    before/after comparison carries Monte Carlo noise that says nothing about invariance."""

    scale_range: tuple[float, float] = (0.1, 10.0)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    permutations: bool = False

    @field_validator("scale_range")
    @classmethod
    def _range(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
            raise ValueError(f"scale_range must be 0 < low <= high, got {list(value)}")
        return value


class MeasuresSpec(_Strict):
    """Flatness measures side by side on every network of the main block, each on the
    trained network and, with `reparametrize`, on its reparametrized copy (docs/study.md)."""

    kinds: list[MeasureName] = Field(default_factory=lambda: list[MeasureName](MEASURES))
    sigmas: list[float] = Field(default_factory=lambda: [0.1, 0.2, 0.3])
    samples: int = Field(default=8, gt=0)
    bn_samples: int = Field(default=1000, gt=1)
    train_samples: int | None = Field(default=1000, gt=1)
    probes: int = Field(default=16, gt=0)
    iters: int = Field(default=20, gt=0)
    rho: float = Field(default=0.05, gt=0)
    sam_steps: int = Field(default=5, gt=0)
    deviation: float = Field(default=0.1, gt=0, lt=1)
    reparametrize: ReparametrizeSpec | None = Field(default_factory=ReparametrizeSpec)

    _text = field_validator("sigmas", mode="before")(_grid)

    @field_validator("sigmas")
    @classmethod
    def _sigmas(cls, value: list[float]) -> list[float]:
        return _increasing(value, "sigmas")

    @field_validator("kinds")
    @classmethod
    def _kinds(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError(f"kinds must be distinct measures, at least one, got {value}")
        return value


class AnalysesSpec(_Strict):
    local_energy: LocalEnergySpec | None = Field(default_factory=LocalEnergySpec)
    distances: DistanceSpec | None = Field(default_factory=DistanceSpec)
    paths: PathSpec | None = Field(default_factory=PathSpec)
    bends: BendSpec | None = Field(default_factory=BendSpec)
    measures: MeasuresSpec | None = None


def _seeds(value: list[int]) -> list[int]:
    if len(set(value)) != len(value):
        raise ValueError(f"seeds must be distinct, got {value}")
    outside = [s for s in value if not 0 <= s <= MAX_SEED]
    if outside:
        raise ValueError(f"seeds must lie in 0..2**63-1, got {outside[0]}")
    return value


def _distinct_labels(optimizers: list[OptimizerSpec]) -> list[OptimizerSpec]:
    labels = [spec.key for spec in optimizers]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise ValueError(
            f"labels must be distinct, got {twice[0]!r} twice; give repeated optimizers a label"
        )
    return optimizers


# A grid model's label is part of every optimizer label of its networks: keep it short.
MODEL_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,15}")


class GridSpec(_Strict):
    """The main block's hyperparameter grid (Jiang et al. 2020): every optimizer entry is
    trained at each of `batch_sizes` and with its learning rate times each of `lr_factors`
    (Keskar et al. 2017: batch size moves flatness and test error; the rate does too), so
    that flatness and generalization spread for known reasons, and, with `models`, once per
    architecture (a short label -> a model config as `toroid.models.build` takes it; the
    top-level `model` is then not trained). Each grid point is an optimizer label of its
    own, `<label>[-<model>][-b<batch size>][-lr<factor>]`."""

    batch_sizes: list[int] | None = None
    lr_factors: list[float] | None = None
    models: dict[str, dict[str, Any]] | None = None

    @field_validator("models")
    @classmethod
    def _model_labels(cls, value: dict[str, dict[str, Any]] | None) -> Any:
        if value is None:
            return value
        if not value:
            raise ValueError("models must name at least one model")
        for label in value:
            if not MODEL_LABEL.fullmatch(label):
                raise ValueError(
                    f"model label {label!r} must be 1-16 letters, digits, '_', '.' or '-' "
                    "(starting with a letter or digit): it is part of the optimizer labels"
                )
        return value

    @model_validator(mode="after")
    def _axes(self) -> GridSpec:
        for name, values in (("batch_sizes", self.batch_sizes), ("lr_factors", self.lr_factors)):
            if values is None:
                continue
            if not values or len(set(values)) != len(values):
                raise ValueError(f"{name} must be distinct values, at least one, got {values}")
            if any(not (isinstance(v, int | float) and math.isfinite(v) and v > 0) for v in values):
                raise ValueError(f"{name} must be positive numbers, got {values}")
        if self.batch_sizes is None and self.lr_factors is None and self.models is None:
            raise ValueError("a grid needs batch_sizes, lr_factors or both, and/or models")
        return self


def grid_points(
    optimizers: list[OptimizerSpec], grid: GridSpec | None, batch_size: int | None
) -> tuple[list[OptimizerSpec], dict[str, dict[str, Any]]]:
    """The optimizer entries a block trains (each grid point an entry of its own) and each
    entry's hyperparameters by label: its base label, batch size and learning rate (None
    for an optimizer without one), and with `grid.models` its model label ("model")."""
    from toroid.optim import default_batch_size

    sizes: list[int | None] = list(grid.batch_sizes) if grid and grid.batch_sizes else [None]
    factors: list[float | None] = list(grid.lr_factors) if grid and grid.lr_factors else [None]
    models: list[str | None] = list(grid.models) if grid and grid.models else [None]
    entries: list[OptimizerSpec] = []
    axes: dict[str, dict[str, Any]] = {}
    for spec in optimizers:
        resolved = spec.resolved()
        lr = resolved.get("lr")
        for model, size, factor in itertools.product(models, sizes, factors):
            label = spec.key + (f"-{model}" if model is not None else "")
            label += f"-b{size}" if size else ""
            label += f"-lr{factor:g}" if factor else ""
            hparams = dict(spec.hparams)
            if factor is not None:
                if lr is None:
                    raise ValueError(
                        f"optimizer {spec.key!r} has no learning rate for grid.lr_factors"
                    )
                hparams["lr"] = float(lr) * factor
            chosen = size or spec.batch_size
            entry = spec.model_copy(
                update={
                    "label": label if grid else spec.label,
                    "hparams": hparams,
                    "batch_size": chosen,
                }
            )
            axes[entry.key] = {
                "optimizer": spec.key,
                "batch_size": chosen or batch_size or default_batch_size(resolved),
                "lr": hparams.get("lr", lr),
                **({"model": model} if model is not None else {}),
            }
            entries.append(entry)
    return entries, axes


class BinarySpec(_Strict):
    """Binary networks trained and analysed alongside: flip local energy, overlap
    distances, flip paths and the two-segment chain through a re-trained midpoint."""

    model: dict[str, Any]
    optimizers: list[OptimizerSpec] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    flip_probs: list[float] = Field(default_factory=lambda: [0.0, 0.01, 0.02, 0.05, 0.1])
    samples: int = Field(default=8, gt=0)
    flip_orders: int = Field(default=4, gt=0)
    flip_points: int = Field(default=21, ge=2)
    pairs: PairScope = "all"
    chain_pairs: PairScope = "within"
    bn_samples: int = Field(default=2000, gt=1)

    _optimizers = field_validator("optimizers", mode="before")(_optimizer_list)
    _labels = field_validator("optimizers")(_distinct_labels)
    _seed_range = field_validator("seeds")(_seeds)

    @field_validator("flip_probs")
    @classmethod
    def _probs(cls, value: list[float]) -> list[float]:
        _increasing(value, "flip_probs")
        if value[-1] > 1:
            raise ValueError("flip_probs must be at most 1")
        return value

    @field_validator("model")
    @classmethod
    def _binary(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value.get("binary"):
            raise ValueError("the binary block's model needs binary: true")
        return value


class ReportSpec(_Strict):
    """Settings that only the report reads: changing them re-runs no task.
    `summary_sigmas`: the report summarizes flatness at the first of these inside the
    measured sigmas."""

    summary_sigmas: list[float] = Field(default_factory=lambda: [0.3, 0.1])


class StudyConfig(_Strict):
    name: str = "study"
    data: DataSpec
    model: dict[str, Any]
    optimizers: list[OptimizerSpec] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    analyses: AnalysesSpec = Field(default_factory=AnalysesSpec)
    report: ReportSpec = Field(default_factory=ReportSpec)
    binary: BinarySpec | None = None
    grid: GridSpec | None = None
    device: str = "cpu"
    needs_gpu: bool = False

    _optimizers = field_validator("optimizers", mode="before")(_optimizer_list)
    _labels = field_validator("optimizers")(_distinct_labels)
    _seed_range = field_validator("seeds")(_seeds)

    @model_validator(mode="after")
    def _grid_labels(self) -> StudyConfig:
        entries, _ = grid_points(self.optimizers, self.grid, self.training.batch_size)
        for entry in entries:
            if not LABEL.fullmatch(entry.key):
                raise ValueError(
                    f"grid label {entry.key!r} must be 1-40 letters, digits, '_', '.' or '-': "
                    "shorten the optimizer's label (or the model's)"
                )
        _distinct_labels(entries)
        return self

    def digest(self, *parts: str) -> str:
        """A short hash of the named top-level parts (all when none are named)."""
        dumped = self.model_dump(mode="json")
        chosen = {k: dumped[k] for k in parts} if parts else dumped
        text = json.dumps(chosen, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def preset_text(name: str) -> str:
    if name not in PRESETS:
        raise InvalidArgumentError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    return resources.files("toroid.study").joinpath(f"presets/{name}.yaml").read_text()


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    given = first.get("input")
    shown = "" if isinstance(given, dict | list) else f" (got {given!r})"
    more = len(error.errors()) - 1
    tail = f"; and {more} more problem{'s' if more > 1 else ''}" if more else ""
    return f"{where}: {message}{shown}{tail}"


def validate_config(raw: Any, *, source: str = "config") -> StudyConfig:
    """A StudyConfig from parsed YAML; one-line errors with the field path."""
    if not isinstance(raw, dict):
        raise StudyConfigError(f"{source}: expected a mapping at the top level")
    try:
        config = StudyConfig.model_validate(raw)
    except ValidationError as exc:
        raise StudyConfigError(f"{source}: {_describe(exc)}") from None
    entries, _ = grid_points(config.optimizers, config.grid, config.training.batch_size)
    for spec in (
        *entries,
        *(config.binary.optimizers if config.binary else ()),
    ):
        try:
            # Instantiating checks the values too (e.g. a negative rho), before any work.
            make_optimizer(spec.resolved(), [torch.nn.Parameter(torch.zeros(1))])
        except InvalidArgumentError as exc:
            raise StudyConfigError(f"{source}: optimizers: {exc}") from None
    for where, model in (("model", config.model), ("binary.model", binary_model(config))):
        if model is not None:
            _check_model(model, f"{source}: {where}")
    for label, model in grid_models(config).items():
        _check_model(model, f"{source}: grid.models.{label}")
    return config


# More parameters than this is a typo (a width of 10**9), not a study a machine can train.
MAX_PARAMETERS = 2**31


def grid_models(config: StudyConfig) -> dict[str, dict[str, Any]]:
    """The main block's architectures by label (`grid.models`); empty without them."""
    return dict(config.grid.models) if config.grid is not None and config.grid.models else {}


def binary_model(config: StudyConfig) -> dict[str, Any] | None:
    return config.binary.model if config.binary is not None else None


def _check_model(model: dict[str, Any], where: str) -> None:
    """Build `model` on the meta device (no memory is allocated) so that a bad model block
    is refused when the config is read, not when the first network trains."""
    from toroid.models import build

    try:
        with torch.device("meta"):
            built = build(model, seed=0)
    except ToroidError as exc:
        raise StudyConfigError(f"{where}: {exc}") from None
    except (TypeError, ValueError, RuntimeError) as exc:
        message = " ".join(str(exc).split())[:200]
        raise StudyConfigError(f"{where}: cannot build this model ({message})") from None
    count = sum(p.numel() for p in built.parameters())
    if count > MAX_PARAMETERS:
        raise StudyConfigError(
            f"{where}: the model has {count:,} parameters, more than {MAX_PARAMETERS:,}; "
            "check its widths"
        )


def load_config(path: str | Path | None = None, *, preset: str | None = None) -> StudyConfig:
    """The config of `preset` (an embedded YAML), with the YAML file at `path` merged over
    it; or the file alone; or the default preset when neither is given."""
    base: dict[str, Any] = {}
    source = "config"
    if preset is not None or path is None:
        name = preset or "default"
        base = yaml.safe_load(preset_text(name))
        source = f"preset {name}"
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise InvalidArgumentError(f"config file {file} does not exist")
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError) as exc:
            raise StudyConfigError(f"{file}: not a readable UTF-8 text file ({exc})") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise StudyConfigError(f"{file}: not valid YAML{where}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise StudyConfigError(f"{file}: expected a mapping at the top level")
        base = _merge(base, loaded)
        source = str(file)
    return validate_config(base, source=source)
