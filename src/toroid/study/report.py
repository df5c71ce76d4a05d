"""The study report: `report.html` (self-contained), `summary.md` (verdict lines first) and
CSV exports under `csv/`, written atomically into the study directory.

It reads whatever has finished, so it can be written mid-study (`toroid study report
DIR`): sections without results say what is not configured or not finished yet."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from toroid.errors import ToroidError
from toroid.storage import atomic_write_bytes
from toroid.study.document import to_html, to_markdown
from toroid.study.evidence import Evidence, gather
from toroid.study.exports import all_csvs
from toroid.study.run import read_config
from toroid.study.sections import all_sections
from toroid.study.verdicts import REPS, SEED, Verdict, verdicts

HTML_FILE = "report.html"


class ReportError(ToroidError):
    """The report cannot be written where it was asked to go."""


SUMMARY_FILE = "summary.md"
CSV_DIR = "csv"


@dataclass(frozen=True)
class Report:
    """What `write_report` wrote: the paths and the verdicts."""

    html: Path
    summary: Path
    csvs: tuple[Path, ...]
    verdicts: tuple[Verdict, ...]
    complete: bool


def render(
    evidence: Evidence, *, reps: int = REPS, seed: int = SEED
) -> tuple[str, str, dict[str, str], tuple[Verdict, ...]]:
    """The report's HTML, Markdown and CSV texts, and the verdicts; writes nothing."""
    found = verdicts(evidence, reps=reps, seed=seed)
    sections = all_sections(evidence, found, reps=reps, seed=seed)
    title = f"Study {evidence.name}: the landscape with symmetries removed"
    html = to_html(title=title, sections=sections)
    markdown = to_markdown(title=title, preamble=[v.line() for v in found], sections=sections)
    return html, markdown, all_csvs(evidence, found, reps=reps, seed=seed), found


def write_report(
    directory: str | Path, *, to: str | Path | None = None, reps: int = REPS, seed: int = SEED
) -> Report:
    """Write the report of the study in `directory` (as far as it has run) into `to`
    (default: the study directory itself). The study is only read, so an archived,
    read-only study can be reported into another directory."""
    directory = Path(directory)
    out = directory if to is None else Path(to)
    evidence = gather(directory, read_config(directory))
    html, markdown, csvs, found = render(evidence, reps=reps, seed=seed)
    csv_paths = []
    try:
        for name, text in csvs.items():
            path = out / CSV_DIR / name
            atomic_write_bytes(path, text.encode())
            csv_paths.append(path)
        atomic_write_bytes(out / SUMMARY_FILE, markdown.encode())
        # The HTML last: its presence means the whole report of this run is in place.
        atomic_write_bytes(out / HTML_FILE, html.encode())
    except OSError as exc:
        hint = "; pass --to DIR to write it elsewhere" if to is None else ""
        raise ReportError(
            f"cannot write the report into {out}: {exc.strerror or exc}{hint}"
        ) from None
    return Report(
        out / HTML_FILE,
        out / SUMMARY_FILE,
        tuple(csv_paths),
        found,
        evidence.complete,
    )
