"""Running a study: build the task graph, skip what is finished, run the rest on an
executor in dependency order, record every result as it arrives, then write the report.

Killing the process at any moment loses nothing already recorded; re-running finishes the
study with the same numbers (training resumes from its last epoch; an interrupted analysis
task runs again, deterministically)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from toroid.errors import InvalidArgumentError, ToroidError
from toroid.storage import atomic_write_bytes
from toroid.study.config import StudyConfig, validate_config
from toroid.study.executors import check_executor, make_executor
from toroid.study.graph import Task, build_graph
from toroid.study.store import Store

CONFIG_FILE = "config.yaml"


class StudyTaskError(ToroidError):
    """A task of the study failed; the message names it."""


@dataclass(frozen=True)
class StudyStatus:
    """Per stage: tasks finished and pending; the pending task keys."""

    directory: Path
    done: dict[str, int]
    pending: dict[str, int]
    pending_tasks: tuple[str, ...]
    seconds: dict[str, float]

    @property
    def complete(self) -> bool:
        return not self.pending_tasks


def save_config(config: StudyConfig, directory: Path) -> None:
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    atomic_write_bytes(directory / CONFIG_FILE, text.encode())


def read_config(directory: str | Path) -> StudyConfig:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise InvalidArgumentError(f"{directory} is not a study directory (no {CONFIG_FILE})")
    return validate_config(yaml.safe_load(path.read_text()), source=str(path))


def _pending(tasks: list[Task], finished: dict[str, str]) -> list[Task]:
    return [t for t in tasks if finished.get(t.key) != t.config_hash]


def status(directory: str | Path) -> StudyStatus:
    """What is finished and what is pending in the study at `directory`."""
    directory = Path(directory)
    config = read_config(directory)
    tasks = build_graph(config)
    with Store(directory) as store:
        finished = store.finished()
        seconds: dict[str, float] = {}
        for _, kind, spent in store.task_rows():
            seconds[kind] = seconds.get(kind, 0.0) + (spent or 0.0)
    pending = _pending(tasks, finished)
    pending_keys = {t.key for t in pending}
    done = Counter(t.kind for t in tasks if t.key not in pending_keys)
    return StudyStatus(
        directory,
        {t.kind: done[t.kind] for t in tasks},
        dict(Counter(t.kind for t in pending)),
        tuple(t.key for t in pending),
        seconds,
    )


class _Progress:
    """One rich progress bar per stage (task kind), on stderr; silent when disabled."""

    def __init__(self, tasks: list[Task], pending: list[Task], enabled: bool) -> None:
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
) -> StudyStatus:
    """Run (or finish) the study of `config` in `directory`. A directory that holds
    another study's config is refused unless the new config differs only in ways its
    finished tasks do not depend on (their hashes decide what re-runs)."""
    check_executor(executor, workers=workers, address=address)
    if config.device.startswith("cuda") and executor == "local" and not torch.cuda.is_available():
        raise InvalidArgumentError(
            f"study {config.name!r} runs on {config.device} and this machine has no CUDA GPU; "
            "run it on a GPU machine or cluster (--executor ray --address ...)"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tasks = build_graph(config)
    save_config(config, directory)
    with Store(directory) as store:
        store.set_meta("started_at", time.time())
        store.keep_only({t.key: t.config_hash for t in tasks})
        pending = _pending(tasks, store.finished())
        finished = {t.key for t in tasks} - {t.key for t in pending}
        bars = _Progress(tasks, pending, progress)
        runner = make_executor(executor, directory, workers=workers, address=address)
        waiting = list(pending)
        running: set[str] = set()
        try:
            with bars.shown():
                while waiting or running:
                    ready = [t for t in waiting if all(d in finished for d in t.deps)]
                    for task in ready[: max(0, runner.slots - len(running))]:
                        waiting.remove(task)
                        running.add(task.key)
                        runner.submit(task)
                    if not running:
                        raise StudyTaskError(
                            f"tasks {[t.key for t in waiting][:3]} wait on unfinished tasks"
                        )
                    for task, results, seconds, error in runner.wait():
                        running.discard(task.key)
                        if error is not None:
                            raise StudyTaskError(
                                f"task {task.key} failed: {type(error).__name__}: {error}"
                            ) from error
                        assert results is not None
                        store.record(task.key, task.kind, task.config_hash, results, seconds)
                        finished.add(task.key)
                        bars.advance(task.kind)
        finally:
            runner.close()
        store.set_meta("finished_at", time.time())
    if report:
        from toroid.study.report import write_report

        write_report(directory)
    return status(directory)
