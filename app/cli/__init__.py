"""The ``wavy-webhooks`` command, one module per group of commands: ``service`` (serve,
forward, migrate, purge, doctor), ``sending`` (send, sandbox), ``keys``, ``endpoints``, ``optouts``,
``users``, ``rejected``, ``stats``, ``reconcile``; ``common`` is what they share.

A command's module is imported only when that command runs: ``keys list`` does not load the
web framework, the HTTP client and the migrations that ``serve`` needs (a call took 1.3 s of
imports). Help on the whole command imports them all."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

import typer
from pydantic import ValidationError

from app.cli.root import cli
from app.errors import CannotConnect

# Each top-level command or group, and the module that registers it.
COMMAND_MODULES = {
    "serve": "service",
    "forward": "service",
    "migrate": "service",
    "purge": "service",
    "doctor": "service",
    "send": "sending",
    "sandbox": "sending",
    "keys": "keys",
    "optouts": "optouts",
    "endpoints": "endpoints",
    "rejected": "rejected",
    "users": "users",
    "stats": "stats",
    "reconcile": "reconcile",
}


def register_commands(argv: Sequence[str]) -> None:
    """Import the module of the command named in ``argv``, or every one when none is."""
    named = next((arg for arg in argv if not arg.startswith("-")), None)
    module = COMMAND_MODULES.get(named) if named else None
    for name in [module] if module else sorted(set(COMMAND_MODULES.values())):
        importlib.import_module(f"app.cli.{name}")


def main() -> None:
    register_commands(sys.argv[1:])
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
