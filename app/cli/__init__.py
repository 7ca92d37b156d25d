"""The ``wavy-webhooks`` command, one module per group of commands: ``service`` (serve,
migrate, purge, doctor), ``keys``, ``endpoints``, ``optouts``, ``users``, ``rejected``,
``stats``; ``common`` is what they share."""

from __future__ import annotations

import typer
from pydantic import ValidationError

from app.cli import (  # noqa: F401 - they register commands
    endpoints,
    keys,
    optouts,
    rejected,
    service,
    stats,
    users,
)
from app.cli.root import cli
from app.db.engine import CannotConnect


def main() -> None:
    try:
        cli()
    except ValidationError as error:  # from Settings(): name the variable, skip the traceback
        for problem in error.errors():
            name = "_".join(str(part) for part in problem["loc"]).upper()
            typer.echo(f"invalid setting WAVY_{name}: {problem['msg']}", err=True)
        raise SystemExit(2) from None
    except CannotConnect as error:
        typer.echo(f"wavy-webhooks: {error}", err=True)
        raise SystemExit(1) from None
