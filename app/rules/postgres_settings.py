"""What the service needs from PostgreSQL's settings, and why: the settings that would break
its promise (a 200 only for data that survives a crash), those that hurt in production, and
tuning for a campaign's bursts. Read by ``wavy-webhooks doctor`` and logged by ``serve``; and
what the embedded PostgreSQL is given at start (app.db.engine)."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass

GiB = 2**30
# Connections left for psql, backups, migrations and monitoring.
ADMIN_CONNECTIONS = 10

# pg_settings' units, in bytes.
_UNIT_BYTES = {"B": 1, "kB": 2**10, "8kB": 8 * 2**10, "MB": 2**20, "16MB": 16 * 2**20}


# What the embedded PostgreSQL (no DATABASE_URL) is given at start, beyond its defaults: an
# operator's server is the operator's to tune (``doctor`` advises), the embedded one is ours.
# wal_init_zero: a WAL segment is created when none waits to be reused, which a new server's
# whole first stretch of WAL is; filling it with zeros first holds every commit in the
# meantime, and on a shared disk that was a stall of every batch in flight at each segment
# (docs/benchmarks.md, "The tail at 64 connections"). Durability is unchanged: each commit's
# fdatasync still covers what it wrote.
EMBEDDED_SERVER_SETTINGS: Mapping[str, str] = {"wal_init_zero": "off"}


class Level(enum.IntEnum):
    OK = 0
    ADVICE = 1  # tuning for bursts
    WARNING = 2  # hurts in production
    CRITICAL = 3  # breaks the promise that a 200 survives a crash, or stops every write


@dataclass(frozen=True, slots=True)
class Setting:
    """One row of pg_settings: its value and unit as PostgreSQL reports them."""

    value: str
    unit: str | None = None

    def as_bytes(self) -> int:
        return int(self.value) * _UNIT_BYTES.get(self.unit or "B", 1)

    def shown(self) -> str:
        if self.unit is None and len(self.value) == 6 and self.value.isdigit():  # a version
            return f"{int(self.value) // 10000}.{int(self.value) % 10000}"
        if self.unit in _UNIT_BYTES:
            size = self.as_bytes()
            return f"{size / GiB:g} GB" if size >= GiB else f"{size / 2**20:g} MB"
        return f"{self.value} {self.unit}" if self.unit else self.value


@dataclass(frozen=True, slots=True)
class Finding:
    name: str
    shown: str
    level: Level
    why: str


@dataclass(frozen=True, slots=True)
class ServerFacts:
    """What some rules weigh a setting against."""

    # Connections the configured workers may open, plus administration's.
    connections_needed: int
    # The indexes keyed by message id (app.db.queries.ID_INDEXES), in bytes.
    id_index_bytes: int


Rule = Callable[[Setting, ServerFacts], tuple[Level, str]]


def _when(value: str, level: Level, why: str) -> Rule:
    """A finding of ``level`` when the setting is ``value``."""
    return lambda s, _: (level, why) if s.value == value else (Level.OK, "")


def _off_breaks(why: str) -> Rule:
    return _when("off", Level.CRITICAL, why)


def _at_least(size: int, level: Level, why: str) -> Rule:
    return lambda s, _: (level, why) if s.as_bytes() < size else (Level.OK, "")


def _server_version(setting: Setting, _: ServerFacts) -> tuple[Level, str]:
    if int(setting.value) < 150000:
        return Level.CRITICAL, "the schema needs PostgreSQL 15 or newer (NULLS NOT DISTINCT)"
    return Level.OK, ""


def _connections(setting: Setting, facts: ServerFacts) -> tuple[Level, str]:
    needed = facts.connections_needed
    if int(setting.value) < needed:
        return Level.WARNING, (
            f"the service's workers may open {needed - ADMIN_CONNECTIONS} connections "
            f"(writers, recounts, listener and read pool, per worker), and administration "
            f"needs about {ADMIN_CONNECTIONS} more: raise it to {needed} or put PgBouncer in "
            "front"
        )
    return Level.OK, ""


def _buffers(setting: Setting, facts: ServerFacts) -> tuple[Level, str]:
    """Wavy's ids are random, so each new message lands on a random leaf of every index keyed
    by its id: once those indexes outgrow the buffers, inserts read leaves back from the
    operating system, and arrays slow down markedly (docs/benchmarks.md, Growth)."""
    size = facts.id_index_bytes
    indexes = f"{size / GiB:.1f} GB" if size >= GiB else f"{size / 2**20:.0f} MB"
    if setting.as_bytes() < size:
        return Level.WARNING, (
            f"smaller than the indexes keyed by message id ({indexes}): every new message "
            "reads index pages back from the operating system, and ingestion slows down; give "
            "the buffers at least those indexes' size, with room to grow"
        )
    if setting.as_bytes() < 1 * GiB:
        return Level.ADVICE, (
            f"about a quarter of the RAM keeps the indexes keyed by message id ({indexes} "
            "now) in memory as they grow; Wavy's ids are random, so every insert needs its "
            "own index page"
        )
    return Level.OK, ""


RULES: dict[str, Rule] = {
    "server_version_num": _server_version,
    "fsync": _off_breaks("a crash can lose or corrupt committed data: a 200 would not survive"),
    "synchronous_commit": _off_breaks(
        "commits return before their WAL is on disk: a crash loses the last events answered 200"
    ),
    "full_page_writes": _off_breaks("a crash while a page is written can corrupt a table"),
    "transaction_read_only": _when(
        "on",
        Level.CRITICAL,
        "the database takes no writes (a standby, or default_transaction_read_only on): "
        "every webhook gets 503 and /readyz says not ready",
    ),
    "server_encoding": lambda s, _: (
        (
            Level.WARNING,
            "replies are typed on phones: a character this encoding lacks (an emoji, say) "
            "makes PostgreSQL refuse the MO, which is then only kept as a rejected body; create "
            "the database with ENCODING 'UTF8'",
        )
        if s.value != "UTF8"
        else (Level.OK, "")
    ),
    "autovacuum": _when(
        "off",
        Level.WARNING,
        "every DLR rewrites its message's row and purges delete rows: without "
        "autovacuum tables and indexes bloat, and ingestion and reads slow down",
    ),
    "max_connections": _connections,
    "max_wal_size": _at_least(
        2 * GiB,
        Level.ADVICE,
        "a DLR writes about 2 KB of WAL: a burst then checkpoints every few seconds, and each "
        "checkpoint makes the next writes carry whole pages",
    ),
    "min_wal_size": _at_least(
        1 * GiB,
        Level.ADVICE,
        "below a burst's WAL, checkpoints remove old WAL segments instead of keeping them to "
        "reuse, and writers fill new ones with zeros first (a visible share of its CPU under a "
        "burst of arrays)",
    ),
    "shared_buffers": _buffers,
    "idle_in_transaction_session_timeout": _when(
        "0",
        Level.ADVICE,
        "a session left idle inside a write transaction (a forgotten psql BEGIN) holds the "
        "safe feeds and the reply recounts back until it ends; a timeout such as 10 min "
        "bounds that",
    ),
    "wal_compression": _when(
        "off",
        Level.ADVICE,
        "compressing full-page images is cheap and shrinks the WAL of bursts",
    ),
}


def review_settings(settings: Mapping[str, Setting], facts: ServerFacts) -> list[Finding]:
    """Every checked setting the server reported, with its verdict, worst first."""
    findings = []
    for name, rule in RULES.items():
        setting = settings.get(name)
        if setting is None:
            continue
        level, why = rule(setting, facts)
        findings.append(Finding(name, setting.shown(), level, why))
    return sorted(findings, key=lambda finding: -finding.level)
