"""wavy-webhooks users: the read API's users."""

from __future__ import annotations

from typing import Annotated

import typer
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from app.cli.common import (
    resolve_database_url,
    run_with_connection,
)
from app.cli.root import users_cli
from app.db import users
from app.rules.credentials import MIN_CHOSEN_SECRET_CHARS
from app.rules.scope import Role
from app.settings import Settings


@users_cli.command("add")
def users_add(
    username: Annotated[str, typer.Argument(help="Login name (the UserName header)")],
    role: Annotated[Role, typer.Option(help="admin: every sub-account; user: one")],
    sub_account: Annotated[
        str | None, typer.Option("--sub-account", help="Required for role user")
    ] = None,
    email: Annotated[str | None, typer.Option(help="Also accepted as UserName")] = None,
    token: Annotated[
        str | None,
        typer.Option(help=f"Use this token (min {MIN_CHOSEN_SECRET_CHARS} chars), else random"),
    ] = None,
) -> None:
    """Create a read-API user and print its token (once; only a hash is stored)."""
    if role is Role.USER and not sub_account:
        typer.echo("a user needs --sub-account", err=True)
        raise typer.Exit(2)
    if token is not None and len(token) < MIN_CHOSEN_SECRET_CHARS:
        typer.echo(f"a token must be at least {MIN_CHOSEN_SECRET_CHARS} characters", err=True)
        raise typer.Exit(2)
    settings = Settings()

    async def add(conn: AsyncConnection) -> str:
        return await users.add_user(
            conn, username=username, role=role, sub_account=sub_account, email=email, token=token
        )

    try:
        created = run_with_connection(settings, resolve_database_url(settings), add)
    except IntegrityError:
        typer.echo("that username or e-mail is taken", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"user {username} ({role.value}) created")
    typer.echo(f"AuthenticationToken: {created}")
    typer.echo("The token is shown only now; it is stored hashed.")


@users_cli.command("list")
def users_list() -> None:
    """List read-API users."""
    settings = Settings()
    found = run_with_connection(settings, resolve_database_url(settings), users.list_users)
    typer.echo(f"{'username':20}  {'role':5}  {'sub-account':20}  {'e-mail':30}  status")
    for user in found:
        status = "disabled" if user.disabled_at else "active"
        typer.echo(
            f"{user.username:20}  {user.role:5}  {user.sub_account or '-':20}  "
            f"{user.email or '-':30}  {status}"
        )


@users_cli.command("disable")
def users_disable(username: Annotated[str, typer.Argument()]) -> None:
    """Disable a user (its requests get 401 at once)."""
    settings = Settings()

    async def disable(conn: AsyncConnection) -> bool:
        return await users.disable_user(conn, username)

    if not run_with_connection(settings, resolve_database_url(settings), disable):
        typer.echo(f"no active user {username}", err=True)
        raise typer.Exit(1)
    typer.echo(f"user {username} disabled")


@users_cli.command("enable")
def users_enable(username: Annotated[str, typer.Argument()]) -> None:
    """Let a disabled user log in again (with the token it had)."""
    settings = Settings()

    async def enable(conn: AsyncConnection) -> bool:
        return await users.enable_user(conn, username)

    if not run_with_connection(settings, resolve_database_url(settings), enable):
        typer.echo(f"no disabled user {username}", err=True)
        raise typer.Exit(1)
    typer.echo(f"user {username} enabled")


@users_cli.command("rotate-token")
def users_rotate_token(username: Annotated[str, typer.Argument()]) -> None:
    """Give a user a new random token (the old one stops working at once)."""
    settings = Settings()

    async def rotate(conn: AsyncConnection) -> str | None:
        return await users.rotate_token(conn, username)

    token = run_with_connection(settings, resolve_database_url(settings), rotate)
    if token is None:
        typer.echo(f"no user {username}", err=True)
        raise typer.Exit(1)
    typer.echo(f"AuthenticationToken: {token}")
