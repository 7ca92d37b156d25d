"""What every command shares: the database to use (DATABASE_URL, else the embedded one),
running work against it with one-line errors, printing webhook URLs, the settings review."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import typer
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db import queries
from app.db.engine import (
    connections_per_worker,
    create_engine,
    database_unavailable,
    sqlstate,
    start_embedded_postgres,
    sync_url,
    wait_for_database,
    where,
)
from app.errors import CannotConnect
from app.rules.postgres_settings import (
    ADMIN_CONNECTIONS,
    Finding,
    ServerFacts,
    review_settings,
)
from app.settings import Settings

T = TypeVar("T")


def resolve_database_url(settings: Settings) -> str:
    """DATABASE_URL when set; otherwise the embedded PostgreSQL under WAVY_DATA_DIR (said once,
    to a person at a terminal: in a pipe or a script it would land among the output)."""
    if settings.database_url:
        return sync_url(settings.database_url)
    if sys.stderr.isatty() and not _EMBEDDED_NOTICE_GIVEN:
        _EMBEDDED_NOTICE_GIVEN.append(True)
        typer.echo(
            f"DATABASE_URL is not set: using the embedded PostgreSQL in {settings.data_dir}",
            err=True,
        )
    return start_embedded_postgres(settings.data_dir)


_EMBEDDED_NOTICE_GIVEN: list[bool] = []


def wait_at_start(settings: Settings, database_url: str) -> None:
    """serve and migrate start with their database, or before it (containers, an init step)."""
    asyncio.run(wait_for_database(settings, database_url, timeout_s=settings.db_start_timeout_s))


def run_with_connection(
    settings: Settings, database_url: str, work: Callable[[AsyncConnection], Awaitable[T]]
) -> T:
    """For work done in one transaction (most commands)."""

    async def in_transaction(engine: AsyncEngine) -> T:
        async with engine.begin() as conn:
            return await work(conn)

    return run_with_engine(settings, database_url, in_transaction)


UNDEFINED_TABLE = "42P01"


def run_with_engine(
    settings: Settings, database_url: str, work: Callable[[AsyncEngine], Awaitable[T]]
) -> T:
    """For work that manages its own transactions (purge batches, replays)."""

    async def main() -> T:
        engine = create_engine(settings, database_url, for_requests=False)
        try:
            return await work(engine)
        except Exception as error:
            # An operator's command against a database that is away: one line that says so
            # (main), not a page of traceback through the driver.
            if sqlstate(error) == UNDEFINED_TABLE:
                raise CannotConnect(
                    f"the database at {where(database_url)} has no schema yet: run "
                    "`wavy-webhooks migrate` (serve migrates at start)"
                ) from None
            if not database_unavailable(error):
                raise
            raise CannotConnect(
                f"PostgreSQL at {where(database_url)} is not reachable: {error}"
            ) from None
        finally:
            await engine.dispose()

    return asyncio.run(main())


# What stands for a key in the URLs a later start prints (keys are shown only when made).
KEY_PLACEHOLDER = "YOUR_KEY"


def webhook_urls(settings: Settings, key: str) -> list[str]:
    base = settings.webhook_base_url()
    return [f"{base}/v1/webhooks/{kind}?key={key}" for kind in ("callback", "dlr", "mo")]


def print_webhook_urls(settings: Settings, key: str, sub_account: str | None) -> None:
    labels = ("Callback URL", "DLR URL     ", "MO URL      ")
    typer.echo(f"Webhook key for sub-account {sub_account or '(none)'}; paste into Wavy's portal:")
    for label, url in zip(labels, webhook_urls(settings, key), strict=True):
        typer.echo(f"  {label}  {url}")
    typer.echo("The key is shown only now; it is stored hashed.")


def print_webhook_url_shapes(settings: Settings) -> None:
    """Every later start: where the webhooks are, with no key (keys are stored hashed)."""
    typer.echo(
        f"Webhook URLs (each sub-account's key in place of {KEY_PLACEHOLDER}: "
        "`wavy-webhooks keys list`; a new one: `keys add --sub-account NAME`):"
    )
    labels = ("Callback URL", "DLR URL     ", "MO URL      ")
    for label, url in zip(labels, webhook_urls(settings, KEY_PLACEHOLDER), strict=True):
        typer.echo(f"  {label}  {url}")


def reconciliation_line(settings: Settings) -> str:
    """Whether the service asks Wavy for the statuses that never came, said at every start and
    by doctor."""
    if settings.reconciles:
        return (
            f"Reconciliation  on: overdue statuses are asked of {settings.api_url} as "
            f"{settings.api_username} (`wavy-webhooks reconcile` shows them)"
        )
    return (
        "Reconciliation  off: set WAVY_API_USERNAME and WAVY_API_TOKEN (the account's admin at "
        "Wavy) to ask Wavy for statuses that never came; `wavy-webhooks reconcile` lists them"
    )


def review_server(settings: Settings, database_url: str) -> list[Finding]:
    """PostgreSQL's settings against what ``settings.workers`` workers need."""
    needed = settings.workers * connections_per_worker(settings) + ADMIN_CONNECTIONS

    async def review(conn: AsyncConnection) -> list[Finding]:
        facts = ServerFacts(needed, await queries.id_index_bytes(conn))
        return review_settings(await queries.server_settings(conn), facts)

    return run_with_connection(settings, database_url, review)
