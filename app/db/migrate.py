"""Apply or undo the Alembic migrations programmatically (used by the CLI, start-up and tests)."""

from __future__ import annotations

import asyncio
import enum
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

import migrations


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    # '%' would be read as interpolation by configparser (passwords may contain it).
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade_to_head(database_url: str) -> None:
    command.upgrade(alembic_config(database_url), "head")


def downgrade_to_base(database_url: str) -> None:
    command.downgrade(alembic_config(database_url), "base")


async def upgrade_to_head_async(database_url: str) -> None:
    # env.py runs its own event loop, so it must run off the caller's loop.
    await asyncio.to_thread(upgrade_to_head, database_url)


@cache
def _shipped_migrations() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config("postgresql://unused"))


@cache
def _shipped_revisions() -> frozenset[str]:
    return frozenset(script.revision for script in _shipped_migrations().walk_revisions())


def head_revision() -> str:
    """The newest migration shipped with this code: what /readyz expects the database at."""
    head = _shipped_migrations().get_current_head()
    if head is None:
        raise RuntimeError("no migrations found")
    return head


class SchemaState(enum.Enum):
    """Where a database's schema stands against the migrations this code ships."""

    CURRENT = "current"
    # An older migration of this code's: `wavy-webhooks migrate` brings it up.
    BEHIND = "behind"
    # A migration this code does not ship: a newer release has migrated (a rolling deploy).
    AHEAD = "ahead"
    UNMIGRATED = "unmigrated"


def schema_state(revision: str | None) -> SchemaState:
    if revision is None:
        return SchemaState.UNMIGRATED
    if revision == head_revision():
        return SchemaState.CURRENT
    return SchemaState.BEHIND if revision in _shipped_revisions() else SchemaState.AHEAD
