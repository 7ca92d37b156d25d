"""The send API's rows: each MT as its sender asked (``mts``), and the status row an MT that
went to Wavy starts (``messages``), so that it shows in every read before Wavy calls back;
idempotency keys; the send rate shared by every worker."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, Literal, TypeVar

import asyncpg
from sqlalchemy import delete, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.engine import SEND_STAGE_LANES, database_unavailable
from app.db.json_batches import json_columns, rows_from, select_list
from app.db.optouts import Row, opted_out_entries_on
from app.db.tables import mts, send_keys, table_columns
from app.db.writer import Connect, WriterConnection
from app.errors import Unavailable
from app.rules.sending import MtOutcome


@dataclass(frozen=True, slots=True)
class MtRow:
    id: str
    message_id: str | None
    sub_account: str | None
    username: str
    destination: str
    correlation_id: str | None
    message_text: str | None
    outcome: MtOutcome
    wavy_status: int | None
    submitted_at: datetime


_MT_COLUMNS = table_columns(mts)
# The MTs, and the status row each one Wavy took starts, in one statement: a callback or DLR
# that came first (Wavy may call back before this commits) keeps what it wrote, the MT fills
# in what it lacks, and its sending time counts as first seen. (Text in, as json_batches
# sends every batch: one parameter per column; plain asyncpg SQL, as the writer's.)
_RECORD = (
    f"WITH batch AS (SELECT {select_list(_MT_COLUMNS, 'u')} "  # noqa: S608 - our own names
    f"FROM {rows_from(_MT_COLUMNS, 'u')}), "
    f"recorded AS (INSERT INTO mts ({', '.join(_MT_COLUMNS)}) "
    f"SELECT {', '.join(_MT_COLUMNS)} FROM batch) "
    "INSERT INTO messages AS m (id, sub_account, correlation_id, destination, first_seen_at, "
    "updated_at) "
    "SELECT message_id, sub_account, correlation_id, destination, submitted_at, submitted_at "
    "FROM batch WHERE message_id IS NOT NULL AND outcome = 'sent' ORDER BY message_id "
    "ON CONFLICT (id) DO UPDATE SET "
    "sub_account = coalesce(m.sub_account, EXCLUDED.sub_account), "
    "correlation_id = coalesce(m.correlation_id, EXCLUDED.correlation_id), "
    "destination = coalesce(m.destination, EXCLUDED.destination), "
    "first_seen_at = least(m.first_seen_at, EXCLUDED.first_seen_at), "
    "change_seq = nextval('messages_change_seq'), tx_id = pg_current_xact_id()::text::bigint"
)


async def record_mts(conn: asyncpg.Connection, rows: Sequence[MtRow]) -> None:
    """The MTs as sent, and the status rows of those Wavy took (shown at once, no status)."""
    if rows:
        # orjson writes the times as ISO-8601
        await conn.execute(_RECORD, *json_columns(rows, _MT_COLUMNS))


# ---------------------------------------------------------------------------- idempotency


@dataclass(frozen=True, slots=True)
class KeyClaim:
    """What a send's Idempotency-Key found: the key is this send's now (``new``), a first
    answer to give again (``replay``), another body under the key (``conflict``), or the first
    send still running (``running``)."""

    state: Literal["new", "replay", "conflict", "running"]
    status: int | None = None
    answer: bytes | None = None


# Taken when new, or when the key's last use is older than the window (then it is reused).
_CLAIM_KEY = text(
    "INSERT INTO send_keys AS k (username, key, body_sha256) VALUES (:username, :key, :body) "
    "ON CONFLICT (username, key) DO UPDATE SET body_sha256 = EXCLUDED.body_sha256, "
    "status = NULL, answer = NULL, created_at = now() "
    "WHERE k.created_at < now() - CAST(:window AS interval) RETURNING 1"
)
_KEY_USE = text(
    "SELECT body_sha256, status, answer FROM send_keys WHERE username = :username AND key = :key"
)


async def claim_key(
    conn: AsyncConnection, username: str, key: str, body_sha256: str, window: timedelta
) -> KeyClaim:
    taken = await conn.scalar(
        _CLAIM_KEY, {"username": username, "key": key, "body": body_sha256, "window": window}
    )
    if taken is not None:
        return KeyClaim("new")
    found = (await conn.execute(_KEY_USE, {"username": username, "key": key})).one()
    if found.body_sha256 != body_sha256:
        return KeyClaim("conflict")
    if found.status is None:
        return KeyClaim("running")
    return KeyClaim("replay", found.status, found.answer)


async def keep_answer(
    conn: AsyncConnection, username: str, key: str, status: int, answer: bytes
) -> None:
    await conn.execute(
        update(send_keys)
        .where(send_keys.c.username == username, send_keys.c.key == key)
        .values(status=status, answer=answer)
    )


async def release_key(conn: AsyncConnection, username: str, key: str) -> None:
    """The send did nothing a retry could repeat: the key is free for it."""
    await conn.execute(
        delete(send_keys).where(
            send_keys.c.username == username, send_keys.c.key == key, send_keys.c.status.is_(None)
        )
    )


# ---------------------------------------------------------------------------- the rate

# A minute's ring of one-second slots: a slot is taken over when its second is past, and
# counts up to the limit within its second. One row per second, whatever the traffic.
_TAKE_SENDS = text(
    "INSERT INTO send_rate AS r (slot, second, count) VALUES (:slot, :second, :wanted) "
    "ON CONFLICT (slot) DO UPDATE SET second = EXCLUDED.second, "
    "count = CASE WHEN r.second = EXCLUDED.second THEN r.count + EXCLUDED.count "
    "ELSE EXCLUDED.count END "
    "WHERE r.second <> EXCLUDED.second OR r.count + EXCLUDED.count <= :limit RETURNING count"
)
# The count needs no durability (a second later it is history): its commit does not wait for
# the disk, so the one row every sender updates is held for microseconds, not a flush.
_NOT_DURABLE = text("SET LOCAL synchronous_commit = off")
RING_SECONDS = 60


async def take_sends(conn: AsyncConnection, second: int, wanted: int, limit: int) -> bool:
    """``wanted`` sends in ``second`` (Unix time), if that keeps its count within ``limit``
    (in the caller's transaction, made not durable)."""
    await conn.execute(_NOT_DURABLE)
    taken = await conn.scalar(
        _TAKE_SENDS,
        {"slot": second % RING_SECONDS, "second": second, "wanted": wanted, "limit": limit},
    )
    return taken is not None


# ---------------------------------------------------------------------------- batches

T = TypeVar("T")
R = TypeVar("R")


Work = Callable[[asyncpg.Connection, list[T]], Awaitable[list[R]]]


class Batched(Generic[T, R]):
    """Work that concurrent sends share: what is handed in while a batch runs goes in the next
    one, so that a burst costs a statement (and a commit, a flush to disk) per batch, not per
    send.

    Like the ingest writer (app.db.writer), each of a few lanes runs its batches on an asyncpg
    connection of its own (opened once sends begin, outside the read pool, and kept), in
    autocommit: a batch is one statement and one round trip, with no pool checkout, liveness
    ping, BEGIN or COMMIT around it, and none of SQLAlchemy's per-statement work (each a cost
    on a busy worker), and a send never waits for a whole batch ahead of its own. So ``work``
    must be one statement, or statements each complete on its own.

    A batch that fails is run again item by item, so one send's fault is not its neighbours';
    when the database is away, every item of it fails at once as Unavailable (a send per item
    would only wait out timeouts). A connection that saw an error is dropped."""

    def __init__(
        self,
        connect: Connect,
        work: Work[T, R],
        *,
        max_items: int,
        name: str,
        lanes: int = SEND_STAGE_LANES,
    ) -> None:
        self._connect = connect
        self._work = work
        self._max_items = max_items
        self._name = name
        self._lanes = lanes
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._running = 0  # batches being worked on
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __call__(self, item: T) -> R:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._lane(), name=f"{self._name}-{n}")
                for n in range(self._lanes)
            ]
        done: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, done))
        self._idle.clear()
        self._wake.set()
        return await done

    async def stop(self) -> None:
        """Finish what sends handed in, then end the lanes and close their connections."""
        while self._pending or self._running:
            self._idle.clear()
            await self._idle.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _lane(self) -> None:
        conn = WriterConnection(self._connect)
        try:
            while True:
                while not self._pending:
                    self._wake.clear()
                    await self._wake.wait()
                batch = self._pending[: self._max_items]
                del self._pending[: self._max_items]
                self._running += 1
                try:
                    await self._settle(conn, batch)
                finally:
                    self._running -= 1
                    if not self._pending and not self._running:
                        self._idle.set()
        finally:
            await conn.close()

    async def _settle(
        self, conn: WriterConnection, batch: list[tuple[T, asyncio.Future[R]]]
    ) -> None:
        """Runs the batch; a connection that saw an error is dropped (the next batch opens
        another)."""
        try:
            results = await self._work(await conn.acquire(), [item for item, _ in batch])
        except Exception as error:
            conn.discard()
            if database_unavailable(error):
                away = Unavailable("the database is unavailable")
                for _, done in batch:
                    if not done.done():
                        done.set_exception(away)
                return
            if len(batch) == 1:
                if not batch[0][1].done():
                    batch[0][1].set_exception(error)
                return
            for one in batch:
                await self._settle(conn, [one])
            return
        for (_, done), result in zip(batch, results, strict=True):
            if not done.done():
                done.set_result(result)


def mt_recorder(connect: Connect) -> Batched[Sequence[MtRow], None]:
    """MTs recorded in batches; each send is answered once its batch is committed (the one
    statement of record_mts commits by itself)."""

    async def record(conn: asyncpg.Connection, sends: list[Sequence[MtRow]]) -> list[None]:
        await record_mts(conn, [row for rows in sends for row in rows])
        return [None] * len(sends)

    return Batched(connect, record, max_items=200, name="mt-recorder")


# A send's opt-out check: the lists that apply to it, and its destinations in E.164.
Lookup = tuple[tuple[str, ...], tuple[str, ...]]
Found = dict[str, list[Row]]


def optout_lookups(connect: Connect) -> Batched[Lookup, Found]:
    """Opt-out checks in batches: one query for every destination of the sends waiting, each
    send then given the entries of its own lists."""

    async def look_up(conn: asyncpg.Connection, lookups: list[Lookup]) -> list[Found]:
        numbers = sorted({number for _, wanted in lookups for number in wanted})
        lists = sorted({name for names, _ in lookups for name in names})
        found = await opted_out_entries_on(conn, lists, numbers)
        return [
            {
                number: [entry for entry in found.get(number, []) if entry["sub_account"] in names]
                for number in wanted
            }
            for names, wanted in lookups
        ]

    return Batched(connect, look_up, max_items=200, name="optout-lookups")
