"""Command-line interface: thin typer commands over the library."""

from toroid.cli import commands as _commands  # noqa: F401  (registers the commands)
from toroid.cli import measure_commands as _measure_commands  # noqa: F401  (registers them)
from toroid.cli import path_commands as _path_commands  # noqa: F401  (registers them)
from toroid.cli import study_commands as _study_commands  # noqa: F401  (registers them)
from toroid.cli import symmetry_commands as _symmetry_commands  # noqa: F401  (registers them)
from toroid.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
