"""wavy-webhooks keys: the webhook keys pasted into Wavy's portal."""

from __future__ import annotations

from typing import Annotated

import typer
from sqlalchemy.ext.asyncio import AsyncConnection

from app.cli.common import (
    print_webhook_urls,
    resolve_database_url,
    run_with_connection,
)
from app.cli.root import keys_cli
from app.db import queries
from app.rules.credentials import MIN_CHOSEN_SECRET_CHARS
from app.settings import Settings


@keys_cli.command("add")
def keys_add(
    sub_account: Annotated[
        str | None, typer.Option("--sub-account", help="Sub-account whose traffic uses this key")
    ] = None,
    key: Annotated[
        str | None, typer.Option(help="Use this key instead of a random one (min 16 chars)")
    ] = None,
) -> None:
    """Create a webhook key and print the three URLs to paste into Wavy's portal."""
    if key is not None and len(key) < MIN_CHOSEN_SECRET_CHARS:
        typer.echo(f"a key must be at least {MIN_CHOSEN_SECRET_CHARS} characters", err=True)
        raise typer.Exit(2)
    settings = Settings()
    url = resolve_database_url(settings)

    async def add(conn: AsyncConnection) -> tuple[int, str]:
        return await queries.add_webhook_key(conn, sub_account=sub_account, key=key)

    key_id, created = run_with_connection(settings, url, add)
    typer.echo(f"key #{key_id} created")
    print_webhook_urls(settings, created, sub_account)


@keys_cli.command("list")
def keys_list() -> None:
    """List webhook keys (only their first characters are known)."""
    settings = Settings()
    found = run_with_connection(settings, resolve_database_url(settings), queries.list_webhook_keys)
    typer.echo(f"{'id':>4}  {'prefix':8}  {'sub-account':20}  {'created':25}  revoked")
    for info in found:
        typer.echo(
            f"{info.id:>4}  {info.key_prefix + '…':8}  {info.sub_account or '-':20}  "
            f"{info.created_at.isoformat(timespec='seconds'):25}  "
            f"{info.revoked_at.isoformat(timespec='seconds') if info.revoked_at else '-'}"
        )


@keys_cli.command("revoke")
def keys_revoke(
    key_id: Annotated[int, typer.Argument(help="The key's id (see keys list)")],
) -> None:
    """Revoke a webhook key (every worker refuses it at once with 401)."""
    settings = Settings()

    async def revoke(conn: AsyncConnection) -> bool:
        return await queries.revoke_webhook_key(conn, key_id)

    if not run_with_connection(settings, resolve_database_url(settings), revoke):
        typer.echo(f"no active key #{key_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"key #{key_id} revoked")
