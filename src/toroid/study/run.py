"""Running a study: build the task graph, skip what is finished, run the rest on an
executor in dependency order, record every result as it arrives, then write the report.

Killing the process at any moment loses nothing already recorded; re-running finishes the
study with the same numbers (training resumes from its last epoch; an interrupted analysis
task runs again, deterministically)."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml

import toroid
from toroid.errors import (
    InvalidArgumentError,
    ToroidError,
    TrainingDivergedError,
    UnsupportedModelError,
)
from toroid.storage import atomic_write_bytes
from toroid.study.config import StudyConfig, StudyConfigError, validate_config
from toroid.study.executors import Job, check_executor, make_executor, numerics
from toroid.study.graph import Task, blocks, build_graph, standing_of
from toroid.study.populations import jobs
from toroid.study.store import DB_FILE, Store, TaskRecord
from toroid.study.tasks import (
    POPULATION_PREFIX,
    STATE_DIR,
    population_members,
    state_dir_name,
)

CONFIG_FILE = "config.yaml"
# Exit status of `toroid study run` when some tasks failed or were skipped.
INCOMPLETE_EXIT = 3
# Failures that the same task would meet again, so a re-run does not retry them unless
# asked: a diverging network, a setting found bad only when the task runs, a model the
# symmetry code does not support. Others (missing data or weights, out of memory, a bug)
# may be gone by the next run.
DETERMINISTIC_ERRORS = (TrainingDivergedError, InvalidArgumentError, UnsupportedModelError)


class StudyTaskError(ToroidError):
    """The study cannot go on (a worker process died); the message names the task."""


class StudyDirectoryError(ToroidError):
    """A study directory whose finished results this run would drop; `--force` allows it."""


@dataclass(frozen=True)
class StudyStatus:
    """Per stage (task kind): tasks finished, failed, blocked (waiting on a failed task)
    and pending; the failures with their reasons, the blocked and pending task keys, and
    the tasks this run executed (`ran`) and the finished tasks it dropped (`dropped`, only
    with `force`)."""

    directory: Path
    done: dict[str, int]
    pending: dict[str, int]
    pending_tasks: tuple[str, ...]
    seconds: dict[str, float]
    failed: dict[str, int] = field(default_factory=dict)
    blocked: dict[str, int] = field(default_factory=dict)
    failures: tuple[TaskRecord, ...] = ()
    blocked_tasks: tuple[str, ...] = ()
    ran: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return not (self.pending_tasks or self.failures or self.blocked_tasks)


def save_config(config: StudyConfig, directory: Path) -> None:
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    atomic_write_bytes(directory / CONFIG_FILE, text.encode())


def read_config(directory: str | Path) -> StudyConfig:
    """The config of the study in `directory` (its store's version is checked first: an
    older toroid's study is refused for what it is, not for its config)."""
    path = Path(directory) / CONFIG_FILE
    Store.check_version(directory)
    if not path.is_file():
        raise InvalidArgumentError(f"{directory} is not a study directory (no {CONFIG_FILE})")
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        raise StudyConfigError(
            f"{path}: not a readable YAML config ({type(exc).__name__})"
        ) from None
    return validate_config(raw, source=str(path))


def status(directory: str | Path) -> StudyStatus:
    """What is finished, failed, blocked and pending in the study at `directory`."""
    directory = Path(directory)
    config = read_config(directory)
    tasks = build_graph(config)
    records = Store.records(directory)
    seconds: dict[str, float] = {}
    for record in records.values():
        seconds[record.kind] = seconds.get(record.kind, 0.0) + record.seconds
    standing = standing_of(tasks, records, lambda record: False)
    kind = {t.key: t.kind for t in tasks}
    return StudyStatus(
        directory,
        {k: sum(kind[key] == k for key in standing.finished) for k in dict.fromkeys(kind.values())},
        dict(Counter(t.kind for t in standing.pending)),
        tuple(t.key for t in standing.pending),
        seconds,
        dict(Counter(kind[key] for key in standing.failed)),
        dict(Counter(kind[key] for key in standing.blocked)),
        tuple(standing.failed.values()),
        standing.blocked,
    )


def _dropped(tasks: Sequence[Task], store: Store, identity: str) -> tuple[list[str], str | None]:
    """The finished tasks this run would drop, and why in words (None: nothing dropped)."""
    current = {t.key: t.hash for t in tasks}
    finished = store.finished()
    before = store.meta("numerics")
    if finished and before is not None and before != identity:
        return sorted(finished), (
            f"its {len(finished)} finished tasks were computed with {before}; this run would "
            f"use {identity} (results differ in the last bits across executors and thread "
            "counts): resume with the same executor and --workers"
        )
    stale = sorted(k for k, h in finished.items() if current.get(k) != h)
    if not stale:
        return [], None
    name = store.meta("study")
    held = f"study {name!r}" if name is not None else "a study"
    return stale, (
        f"it holds {held} whose results this config would drop: {len(stale)} of "
        f"{len(finished)} finished tasks (e.g. {', '.join(stale[:3])}) have other settings "
        "or are not in this config"
    )


def _prepare(
    config: StudyConfig, directory: Path, tasks: Sequence[Task], store: Store, identity: str,
    *, force: bool,
) -> list[str]:  # fmt: skip
    """Refuse (unless `force`) or drop the finished results this run would not keep, then
    record the config and provenance; returns the dropped finished tasks."""
    stale, why = _dropped(tasks, store, identity)
    if why is not None and not force:
        raise StudyDirectoryError(
            f"--out {directory}: {why}; pass --force to drop them, or choose another --out"
        )
    current = {t.key: t.hash for t in tasks}
    gone = [k for k, r in store.tasks().items() if current.get(k) != r.hash]
    store.drop(sorted(set(stale) | set(gone)))
    _clean_training_states(directory, tasks, keep=store.meta("numerics") in (None, identity))
    try:
        save_config(config, directory)
    except OSError as exc:
        raise StudyDirectoryError(
            f"--out {directory}: cannot write {CONFIG_FILE}: {exc.strerror or exc}"
        ) from None
    store.set_meta("study", config.name)
    store.set_meta("numerics", identity)
    store.set_meta("toroid_version", toroid.__version__)
    store.set_meta("started_at", time.time())
    return stale


def _clean_training_states(directory: Path, tasks: Sequence[Task], *, keep: bool) -> None:
    """Remove resumable training states of tasks not in this graph, and every state when
    `keep` is false (computed with other numerics: resuming one would mix them)."""
    states = directory / STATE_DIR
    if not states.is_dir():
        return
    current = {state_dir_name(t.key, t.hash) for t in tasks if t.kind == "train"}
    for state in states.iterdir():
        name = state.name
        if name.startswith(POPULATION_PREFIX):
            members = population_members(state)
            stale = members is None or not set(members) <= current
        else:
            stale = name not in current
        if not keep or stale:
            shutil.rmtree(state, ignore_errors=True)


def _foreign_config(directory: Path) -> str | None:
    """Why `directory` is not this project's study to write into, or None."""
    if (directory / CONFIG_FILE).exists() and not (directory / DB_FILE).exists():
        return f"it holds a {CONFIG_FILE} but no {DB_FILE}: it is not a toroid study"
    return None


class _Progress:
    """One rich progress bar per stage (task kind), on stderr; silent when disabled."""

    def __init__(self, tasks: Sequence[Task], pending: Sequence[Task], enabled: bool) -> None:
        self._bars: dict[str, Any] = {}
        self._progress: Any = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description:>12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        )
        totals = Counter(t.kind for t in tasks)
        left = Counter(t.kind for t in pending)
        for kind, total in totals.items():
            self._bars[kind] = self._progress.add_task(
                kind, total=total, completed=total - left[kind]
            )

    @contextmanager
    def shown(self) -> Iterator[None]:
        if self._progress is None:
            yield
            return
        with self._progress:
            yield

    def advance(self, kind: str) -> None:
        if self._progress is not None:
            self._progress.advance(self._bars[kind])


def run_study(
    config: StudyConfig,
    directory: str | Path,
    *,
    executor: str = "local",
    workers: int = 1,
    address: str | None = None,
    progress: bool = True,
    report: bool = True,
    force: bool = False,
    retry_failed: bool = False,
) -> StudyStatus:
    """Run (or finish) the study of `config` in `directory`.

    A directory whose finished results this run would drop (another config's study, or
    results computed by another executor or thread count) is refused unless `force`. A
    task that fails is recorded with its reason and the tasks that depend on it are
    skipped; the rest of the study runs. A failure the same task would meet again
    (`DETERMINISTIC_ERRORS`: a diverging network, a setting found bad only when the task
    runs, an unsupported model) is not retried by a later run unless `retry_failed`; any
    other error (missing data, out of memory, a bug) is retried."""
    check_executor(executor, workers=workers, address=address)
    if config.device.startswith("cuda") and executor == "local" and not torch.cuda.is_available():
        raise InvalidArgumentError(
            f"study {config.name!r} runs on {config.device} and this machine has no CUDA GPU; "
            "run it on a GPU machine or cluster (--executor ray --address ...)"
        )
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise InvalidArgumentError(f"--out {directory} exists and is not a directory")
    if (why := _foreign_config(directory)) is not None and not force:
        raise StudyDirectoryError(
            f"--out {directory}: {why}; pass --force to overwrite its {CONFIG_FILE}, or choose "
            "another --out"
        )
    tasks = build_graph(config)
    identity = numerics(executor, workers=workers, device=config.device)
    ran: list[str] = []
    with Store(directory) as store:
        # The executor first: a run that cannot start must not drop anything.
        runner = make_executor(executor, directory, workers=workers, address=address)
        try:
            if any(t.gpus for t in tasks) and runner.gpus == 0:
                raise InvalidArgumentError(
                    f"study {config.name!r} runs on {config.device} and the {executor} "
                    "executor has no GPU"
                )
            dropped = _prepare(config, directory, tasks, store, identity, force=force)
            standing = standing_of(
                tasks, store.tasks(), lambda record: retry_failed or not record.deterministic
            )
            finished = set(standing.finished)
            stuck = set(standing.failed) | set(standing.blocked)
            by_key = {t.key: t for t in tasks}
            bars = _Progress(tasks, standing.pending, progress)
            waiting = list(standing.pending)
            running: set[str] = set()
            running_jobs: list[Job] = []
            sizes = {b.name: b.training.population_size for b in blocks(config)}
            with bars.shown():
                while waiting or running:
                    for task in list(waiting):  # in dependency order: blocks transitively
                        if any(d in stuck for d in task.deps):
                            waiting.remove(task)
                            stuck.add(task.key)
                            bars.advance(task.kind)
                    ready = [t for t in waiting if all(d in finished for d in t.deps)]
                    ready_jobs = jobs(
                        ready, slots=runner.slots, population_sizes=sizes, by_key=by_key
                    )
                    running_jobs = [j for j in running_jobs if any(t.key in running for t in j)]
                    for job in ready_jobs[: max(0, runner.slots - len(running_jobs))]:
                        record = []
                        for task in job:
                            # A population's finished networks train again, unrecorded.
                            if task in waiting:
                                waiting.remove(task)
                                running.add(task.key)
                                record.append(task.key)
                        running_jobs.append(job)
                        runner.submit(job, frozenset(record))
                    if not running:
                        if waiting:
                            raise StudyTaskError(
                                f"tasks {[t.key for t in waiting][:3]} wait on unfinished tasks"
                            )
                        break
                    for task, rows, seconds, error in runner.wait():
                        if task.key not in running:
                            continue
                        running.discard(task.key)
                        ran.append(task.key)
                        bars.advance(task.kind)
                        if error is None:
                            assert rows is not None
                            store.record(task.key, task.kind, task.hash, rows, seconds)
                            finished.add(task.key)
                            continue
                        if isinstance(error, BrokenProcessPool):
                            raise StudyTaskError(
                                f"task {task.key}: a worker process died ({error}); re-run to "
                                "resume"
                            ) from error
                        store.record_failure(
                            task.key,
                            task.kind,
                            by_key[task.key].hash,
                            error=type(error).__name__,
                            reason=" ".join(str(error).split()) or type(error).__name__,
                            deterministic=isinstance(error, DETERMINISTIC_ERRORS),
                            seconds=seconds,
                        )
                        stuck.add(task.key)
        finally:
            runner.close()
        store.set_meta("finished_at", time.time())
    if report:
        from toroid.study.report import write_report

        write_report(directory)
    return replace(status(directory), ran=tuple(ran), dropped=tuple(dropped))


__all__ = [
    "CONFIG_FILE",
    "DB_FILE",
    "INCOMPLETE_EXIT",
    "StudyDirectoryError",
    "StudyStatus",
    "StudyTaskError",
    "read_config",
    "run_study",
    "save_config",
    "status",
]
