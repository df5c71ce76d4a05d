"""The study report (placeholder until the full report lands)."""

from __future__ import annotations

from pathlib import Path


def write_report(directory: str | Path) -> None:
    pass
