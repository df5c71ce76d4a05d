"""The typer application and its error policy: one line on stderr, exit code 2."""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.core import TyperGroup

from toroid.errors import ToroidError


class OneLineErrors(TyperGroup):
    """Usage errors and `ToroidError`s print one line naming the problem and exit 2."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            result = super().main(*args, **kwargs)
        except ToroidError as exc:
            print(f"toroid: error: {exc}", file=sys.stderr)
            sys.exit(2)
        except typer.Abort:
            print("toroid: interrupted", file=sys.stderr)
            sys.exit(130)
        except typer.TyperException as exc:  # usage errors (exit code 2) and the like
            if not exc.format_message():  # `toroid` alone: the help was already shown
                sys.exit(exc.exit_code)
            ctx = getattr(exc, "ctx", None)
            where = f" (in '{ctx.command_path}')" if ctx is not None else ""
            message = " ".join(exc.format_message().split())
            print(f"toroid: error: {message}{where}", file=sys.stderr)
            sys.exit(exc.exit_code)
        sys.exit(result if isinstance(result, int) else 0)


app = typer.Typer(
    cls=OneLineErrors,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="toroid: the loss landscape of deep classifiers with all parameter symmetries removed.",
)
