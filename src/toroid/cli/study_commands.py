"""`toroid study run|status|report`: thin commands over `toroid.study`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from toroid.cli.app import app
from toroid.cli.commands import _choice
from toroid.errors import InvalidArgumentError
from toroid.study import PRESETS, load_config, run_study, status
from toroid.study.executors import EXECUTORS
from toroid.study.run import INCOMPLETE_EXIT, StudyStatus

console = Console()
study_app = typer.Typer(
    help="Studies: train minimizers with several optimizers and analyse them.",
    no_args_is_help=True,
)
app.add_typer(study_app, name="study")


def _print(text: str) -> None:
    console.print(text, soft_wrap=True, markup=False, highlight=False)


def _status_table(result: StudyStatus) -> Table:
    table = Table(title=f"study {result.directory}")
    table.add_column("stage")
    table.add_column("done", justify="right")
    table.add_column("failed", justify="right")
    table.add_column("skipped", justify="right")
    table.add_column("pending", justify="right")
    table.add_column("seconds", justify="right")
    for stage, done in result.done.items():
        counts = (result.failed, result.blocked, result.pending)
        table.add_row(
            stage,
            str(done),
            *(str(c.get(stage, 0)) for c in counts),
            f"{result.seconds.get(stage, 0.0):.1f}",
        )
    return table


def _failures(result: StudyStatus) -> None:
    """One line per failed task, and the count of tasks skipped because of them."""
    for failure in result.failures:
        retried = "" if failure.deterministic else " (retried by the next run)"
        _print(f"failed: {failure.task}: {failure.error}: {failure.reason}{retried}")
    if result.blocked_tasks:
        count = len(result.blocked_tasks)
        _print(f"skipped: {count} task{'s' if count != 1 else ''} that depend on a failed task")


@study_app.command("run")
def run_command(
    config: Annotated[
        Path | None, typer.Argument(help="Study config (YAML), merged over --preset when given.")
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="quick, default or paper-cpu (default without a config).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Study directory (default: runs/study-<name>).")
    ] = None,
    executor: Annotated[str, typer.Option(help="local or ray.")] = "local",
    workers: Annotated[int, typer.Option(help="Worker processes (local) or CPUs (ray).")] = 1,
    address: Annotated[
        str | None, typer.Option(help="Address of a running Ray cluster (ray executor).")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
    force: Annotated[
        bool,
        typer.Option(
            help="Drop the finished results in --out that this config or executor would not "
            "reproduce (refused without it)."
        ),
    ] = False,
    retry_failed: Annotated[
        bool, typer.Option(help="Run again the tasks that failed for a reason of their own.")
    ] = False,
) -> None:
    """Run a study, or finish an interrupted one: finished tasks are skipped; then the
    report is written (report.html, summary.md, csv/). A task that fails is recorded with
    its reason and the tasks that depend on it are skipped; the rest runs. Exit status 3
    when some tasks failed or were skipped."""
    if preset is not None:
        _choice("--preset", preset, PRESETS)
    _choice("--executor", executor, EXECUTORS)
    if workers < 1:
        raise InvalidArgumentError(f"--workers must be at least 1, got {workers}")
    study = load_config(config, preset=preset)
    directory = out if out is not None else Path("runs") / f"study-{study.name}"
    from toroid.study.report import write_report

    started = time.perf_counter()
    result = run_study(
        study,
        directory,
        executor=executor,
        workers=workers,
        address=address,
        progress=not quiet,
        report=False,
        force=force,
        retry_failed=retry_failed,
    )
    report = write_report(directory)
    if result.dropped:
        count = len(result.dropped)
        _print(
            f"--force dropped {count} finished task{'s' if count != 1 else ''} of the earlier "
            f"config or executor (e.g. {', '.join(result.dropped[:3])})"
        )
    console.print(_status_table(result))
    _print(f"study {study.name}: {time.perf_counter() - started:.1f} s")
    for verdict in report.verdicts:
        _print(verdict.line())
    _print(f"report: {report.html}")
    if not result.complete:
        _failures(result)
        _print(f"study {study.name} is incomplete (exit status {INCOMPLETE_EXIT})")
        raise typer.Exit(INCOMPLETE_EXIT)


@study_app.command("status")
def status_command(
    directory: Annotated[Path, typer.Argument(help="Study directory.")],
    pending: Annotated[bool, typer.Option(help="List the pending tasks.")] = False,
) -> None:
    """Finished and pending tasks per stage."""
    result = status(directory)
    console.print(_status_table(result))
    state = "complete" if result.complete else f"{len(result.pending_tasks)} tasks pending"
    if result.failures:
        state += f", {len(result.failures)} failed, {len(result.blocked_tasks)} skipped"
    _print(f"{directory}: {state}")
    _failures(result)
    if pending:
        for key in result.pending_tasks:
            _print(f"  {key}")


@study_app.command("report")
def report_command(
    directory: Annotated[Path, typer.Argument(help="Study directory.")],
    to: Annotated[
        Path | None,
        typer.Option(help="Write the report here instead (for a read-only, archived study)."),
    ] = None,
) -> None:
    """(Re)write the report from what is finished so far."""
    from toroid.study.report import write_report

    status(directory)  # refuses a directory that holds no study
    report = write_report(directory, to=to)
    for verdict in report.verdicts:
        _print(verdict.line())
    _print(f"report: {report.html}")
