"""Where study tasks run: in this process, in N local worker processes (torch threads
split among them), or as Ray tasks with their CPU/GPU needs. The unit an executor runs is
a job: one task, or the train tasks of one population (toroid.study.populations), which
train together as one Ray task with its resources. Every executor runs `run_job` and hands
back per task (rows, seconds) or its error; the coordinator alone writes the database.
Worker processes exit when their coordinator dies (kill -9 included).

Results differ in the last bits across executors and torch thread counts (BLAS reductions
split differently), so `numerics` names what a run computes with; the study records it and
refuses to resume with another."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from toroid.errors import InvalidArgumentError
from toroid.study.graph import Task
from toroid.study.rows import Row
from toroid.study.tasks import TrainOutcome, TrainParams, execute, train_networks

ExecutorName = Literal["local", "ray"]
EXECUTORS: tuple[str, ...] = ("local", "ray")
Outcome = tuple[Task, list[Row] | None, float, BaseException | None]
Result = tuple[list[Row], float]
Job = tuple[Task, ...]
# How often a worker checks that its coordinator is alive.
ORPHAN_POLL_SECONDS = 0.5


def run_task(task: Task, directory: str | Path) -> Result:
    """Run `task` against the store in `directory`; its rows and seconds."""
    return execute(task.kind, task.params, task.key, task.hash, directory)


def run_job(
    job: Job, directory: str | Path, record: frozenset[str] | None = None
) -> list[TrainOutcome]:
    """Run a job; per task, its rows, seconds and error, of the tasks in `record` (default:
    all; the others train along, unrecorded). A population's train tasks train together;
    any other job is one task. Never raises: an error is the outcome of the tasks it
    concerns."""
    if all(isinstance(t.params, TrainParams) for t in job):
        members = [(t.params, t.key, t.hash) for t in job if isinstance(t.params, TrainParams)]
        try:
            return train_networks(members, directory, record=record)
        except Exception as exc:  # the job as a whole was wrong: every task fails with it
            return [(None, 0.0, exc) for _ in job]
    outcomes: list[TrainOutcome] = []
    for task in job:
        try:
            rows, seconds = run_task(task, directory)
            outcomes.append((rows, seconds, None))
        except Exception as exc:  # reported by the coordinator with the task's key
            outcomes.append((None, 0.0, exc))
    return outcomes


def _outcomes(job: Job, results: Sequence[TrainOutcome]) -> list[Outcome]:
    return [(task, *result) for task, result in zip(job, results, strict=True)]


def threads_per_task(name: str, *, workers: int) -> int:
    if name == "ray":
        return 1  # each Ray task asks for one CPU and uses one thread
    if workers == 1:
        return torch.get_num_threads()
    return max(1, (os.cpu_count() or 1) // workers)


def numerics(name: str, *, workers: int = 1, device: str = "cpu") -> str:
    """What a run's numbers depend on besides its tasks' settings: the executor, torch
    threads per task, torch's version and the device."""
    threads = threads_per_task(name, workers=workers)
    return (
        f"the {name} executor with {threads} torch thread{'s' if threads != 1 else ''} per "
        f"task (torch {torch.__version__}, {device})"
    )


class Executor(Protocol):
    slots: int
    gpus: float  # GPUs the executor's tasks can use

    def submit(self, job: Job, record: frozenset[str]) -> None: ...

    def wait(self) -> list[Outcome]: ...

    def close(self) -> None: ...


class InProcess:
    """Runs each task when it is submitted, in this process."""

    slots = 1

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.gpus = float(torch.cuda.device_count())
        self._done: list[Outcome] = []

    def submit(self, job: Job, record: frozenset[str]) -> None:
        self._done.extend(_outcomes(job, run_job(job, self.directory, record)))

    def wait(self) -> list[Outcome]:
        done, self._done = self._done, []
        return done

    def close(self) -> None:
        pass


def _exit_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(ORPHAN_POLL_SECONDS)
    os._exit(1)  # the coordinator is gone: nobody will read this worker's results


def _init_worker(threads: int, parent: int) -> None:
    torch.set_num_threads(threads)
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


class LocalPool:
    """N worker processes (spawned), each with cores / N torch threads."""

    def __init__(self, directory: Path, workers: int) -> None:
        self.directory = directory
        self.slots = workers
        self.gpus = float(torch.cuda.device_count())
        self._pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(threads_per_task("local", workers=workers), os.getpid()),
        )
        self._running: dict[Future[list[TrainOutcome]], Job] = {}

    def submit(self, job: Job, record: frozenset[str]) -> None:
        self._running[self._pool.submit(run_job, job, self.directory, record)] = job

    def wait(self) -> list[Outcome]:
        done, _ = wait(list(self._running), return_when=FIRST_COMPLETED)
        out: list[Outcome] = []
        for future in done:
            job = self._running.pop(future)
            exc = future.exception()
            if exc is None:
                out.extend(_outcomes(job, future.result()))
            else:
                out.extend((task, None, 0.0, exc) for task in job)
        return out

    def close(self) -> None:
        for future in self._running:
            future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor:
    """Each task a Ray task with its CPU/GPU needs, on the cluster at `address` or on a
    local Ray instance started here with `workers` CPUs. The study directory must be on a
    filesystem every node sees (tasks read and write weights there)."""

    def __init__(self, directory: Path, workers: int, address: str | None) -> None:
        try:
            import ray
        except ImportError as exc:
            raise InvalidArgumentError(
                "the ray executor needs Ray: pip install -c constraints.txt 'ray>=2.9'"
            ) from exc
        self._ray: Any = ray
        self._started = not ray.is_initialized()
        if self._started:
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address is None:
                options.update(num_cpus=workers, address="local")
            else:
                options["address"] = address
            try:
                ray.init(**options)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = f"the Ray cluster at {address}" if address else "a local Ray instance"
                message = " ".join(str(exc).split())[:200]
                raise InvalidArgumentError(f"cannot start {where}: {message}") from None
        self.directory = directory
        resources: dict[str, float] = ray.available_resources()  # type: ignore[no-untyped-call]
        self.slots = max(1, int(resources.get("CPU", workers)))
        total: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
        self.gpus = float(total.get("GPU", 0.0))
        self._remote = ray.remote(_ray_execute)
        self._running: dict[Any, Job] = {}

    def submit(self, job: Job, record: frozenset[str]) -> None:
        # A population is one Ray task: it needs what its most demanding network needs.
        handle = self._remote.options(
            num_cpus=max(t.cpus for t in job), num_gpus=max(t.gpus for t in job)
        ).remote(job, str(self.directory), record)
        self._running[handle] = job

    def wait(self) -> list[Outcome]:
        ready, _ = self._ray.wait(list(self._running), num_returns=1)
        out: list[Outcome] = []
        for handle in ready:
            job = self._running.pop(handle)
            try:
                out.extend(_outcomes(job, self._ray.get(handle)))
            except Exception as exc:  # RayTaskError wraps the job's own exception
                cause = getattr(exc, "cause", None)
                error = cause if isinstance(cause, Exception) else exc
                out.extend((task, None, 0.0, error) for task in job)
        return out

    def close(self) -> None:
        for handle in self._running:
            self._ray.cancel(handle, force=True)
        if self._started:
            self._ray.shutdown()


def _ray_execute(job: Job, directory: str, record: frozenset[str]) -> list[TrainOutcome]:
    torch.set_num_threads(threads_per_task("ray", workers=1))
    return run_job(job, directory, record)


def check_executor(name: str, *, workers: int = 1, address: str | None = None) -> None:
    if name not in EXECUTORS:
        raise InvalidArgumentError(f"executor must be one of {', '.join(EXECUTORS)}, got {name!r}")
    if workers < 1:
        raise InvalidArgumentError(f"workers must be at least 1, got {workers}")
    if address is not None and name != "ray":
        raise InvalidArgumentError("an address is for the ray executor")


def make_executor(
    name: str, directory: Path, *, workers: int = 1, address: str | None = None
) -> Executor:
    check_executor(name, workers=workers, address=address)
    if name == "ray":
        return RayExecutor(directory, workers, address)
    return InProcess(directory) if workers == 1 else LocalPool(directory, workers)


__all__: Sequence[str] = [
    "EXECUTORS",
    "Executor",
    "Job",
    "make_executor",
    "numerics",
    "run_job",
    "run_task",
]
