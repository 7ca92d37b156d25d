"""The batching writer: many requests, one commit, and an answer only after the commit.

Requests hand their records to ``BatchWriter.write`` and wait. Each of a few writer tasks, on
a connection of its own, takes everything waiting (up to ``batch_max_items``) and writes it
with set-based statements over column arrays: callbacks and DLRs in one autocommitted
statement (one round trip: on a busy event loop every round trip costs a loop turn), replies
or several events of one message in an explicit transaction. Only after the commit does it
wake the waiting requests with their counts. Under load batches grow by themselves (group
commit): while one commits, the next gathers.

A failed batch fails nobody yet: it is retried request by request, so one poisoned request
cannot take its neighbours down; whatever still fails gets ``WriteFailed`` (the HTTP layer
answers 503, never 200).

A batch with replies also queues the messages they answer (table reply_recounts, in the same
transaction); a sweep on a connection of its own sets their reply counts again from the stored
replies once every transaction that was already running has ended (see ``RECOUNT_REPLIES``).
Being in the database, the queue outlives the worker: any worker's sweep takes what another
one, killed in between, or a replay left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from app import metrics
from app.logs import FailureLog
from app.rules.records import EventRecord
from app.rules.status_merge import DESCRIPTIVE_FIELDS, merge_status_events

log = logging.getLogger(__name__)

# What a database call can fail with that the writer survives (the next batch tries again).
RECOVERABLE = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)

# PostgreSQL errors worth a second try of the same transaction.
TRANSIENT_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock
TRANSIENT_ATTEMPTS = 3


Connect = Callable[[], Awaitable[asyncpg.Connection]]


class WriterOverloaded(Exception):
    """The queue is full: the caller should be told to come back later (503)."""


class WriteFailed(Exception):
    """The records could not be committed (503)."""


@dataclass(frozen=True, slots=True)
class WriteResult:
    received: int
    duplicates: int


class WriteRefused(WriteFailed):
    """PostgreSQL refused this request's own data, alone in its batch (a data exception, an
    integrity violation, a program limit): retrying it can only fail again."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class WriteTimedOut(WriteFailed):
    """Not committed within the writer's timeout (503); it may still be, later."""


# How often overdue requests are answered: the timeout is honoured within this much.
DEADLINE_SWEEP_S = 0.1


@dataclass(slots=True)
class _Pending:
    records: list[EventRecord]
    future: asyncio.Future[WriteResult] = field(repr=False)
    deadline: float


# Plain asyncpg SQL with positional parameters: the writer talks to asyncpg directly (see
# write_records), skipping SQLAlchemy's per-statement layer on the hottest path.
#
# A batch travels as one JSON array per column, written by orjson in one call each and split
# again by json_array_elements_text. asyncpg's binary arrays cost the service far more: its
# encoder tests every element against collections.abc's ABCs. write_records took 9.1 us of
# service CPU per event of a 1000-DLR batch that way, 3.1 us this way, for about 2.6 us more
# in PostgreSQL (docs/benchmarks.md).


def _rows_from(columns: dict[str, str], alias: str, first: int = 1) -> str:
    """The batch's rows, from parameters ``$first...`` (see _json_columns), as ``alias``."""
    calls = ", ".join(
        f"json_array_elements{'' if kind == 'json' else '_text'}(${n}::json)"
        for n, kind in enumerate(columns.values(), first)
    )
    return f"ROWS FROM ({calls}) AS {alias}({', '.join(columns)})"


def _typed(name: str, kind: str, alias: str) -> str:
    """A column of _rows_from with its SQL type (the functions yield text, or json)."""
    return f"{alias}.{name}" if kind in ("text", "json") else f"{alias}.{name}::{kind}"


def _select_list(columns: dict[str, str], alias: str) -> str:
    return ", ".join(_typed(name, kind, alias) for name, kind in columns.items())


def _json_columns(rows: list[Any], names: Iterable[str]) -> list[str]:
    return [orjson.dumps([getattr(row, name) for row in rows]).decode() for name in names]


def _json_payloads(rows: list[EventRecord]) -> str:
    """The payload column: each item's JSON text is already JSON, so it is joined, not
    written again."""
    return "[" + ",".join([row.payload_json for row in rows]) + "]"


# The events' columns, as named in the table; the last one, payload, is _json_payloads.
_EVENT_COLUMNS: dict[str, str] = {
    "kind": "text",
    "message_id": "text",
    "sub_account": "text",
    "sent_status_code": "int",
    "delivered_status_code": "int",
    "received_at": "timestamptz",
    "payload": "json",
}
_EVENT_FIELDS = tuple(_EVENT_COLUMNS)[:-1]  # EventRecord attributes sent by _json_columns

INSERT_EVENTS = (
    f"INSERT INTO events ({', '.join(_EVENT_COLUMNS)}) "  # noqa: S608 - constant names only
    f"SELECT {_select_list(_EVENT_COLUMNS, 'u')} FROM {_rows_from(_EVENT_COLUMNS, 'u')} "
    "ON CONFLICT ON CONSTRAINT uq_events_exact_retry DO NOTHING "
    "RETURNING message_id, kind, sent_status_code, delivered_status_code, sub_account, "
    "received_at"
)

_MO_COLUMNS: dict[str, str] = {
    "id": "text",
    "sub_account": "text",
    "campaign_alias": "text",
    "carrier_id": "bigint",
    "carrier_name": "text",
    "source": "text",
    "short_code": "text",
    "message_text": "text",
    "received_at": "timestamptz",
    "mt_id": "text",
    "mt_correlation_id": "text",
    "mt_username": "text",
    "mt_email": "text",
    "stored_at": "timestamptz",
}


INSERT_MOS = (
    f"INSERT INTO mos ({', '.join(_MO_COLUMNS)}) "  # noqa: S608 - constant column names only
    f"SELECT {_select_list(_MO_COLUMNS, 'u')} FROM {_rows_from(_MO_COLUMNS, 'u')} "
    "ON CONFLICT (id) DO NOTHING"
)

_STATUS_COLUMNS: dict[str, str] = {
    "id": "text",
    "sub_account": "text",
    "correlation_id": "text",
    "destination": "text",
    "carrier_id": "bigint",
    "carrier_name": "text",
    "campaign_id": "text",
    "extra_info": "text",
    "sent_source": "smallint",
    "sent_status_code": "int",
    "sent_status": "text",
    "sent_at": "timestamptz",
    "delivered_status_code": "int",
    "delivered_status": "text",
    "delivered_at": "timestamptz",
    "first_seen_at": "timestamptz",
    "updated_at": "timestamptz",
}
_SENT_STAGE = ("sent_source", "sent_status_code", "sent_status", "sent_at")
_DELIVERED_STAGE = ("delivered_status_code", "delivered_status", "delivered_at")


def _sent_key(row: str) -> str:
    return (
        f"({row}.sent_source, COALESCE({row}.sent_at, '-infinity'), "
        f"COALESCE({row}.sent_status_code, -1), COALESCE({row}.sent_status, '') COLLATE \"C\")"
    )


def _delivered_key(row: str) -> str:
    return (
        f"(COALESCE({row}.delivered_at, '-infinity'), "
        f"COALESCE({row}.delivered_status_code, -1) = 4, "
        f"COALESCE({row}.delivered_status_code, -1), "
        f"COALESCE({row}.delivered_status, '') COLLATE \"C\")"
    )


def _merged_expressions() -> dict[str, str]:
    """The SQL twin of app.rules.status_merge.merge_statuses (held to it by the tests)."""
    merged: dict[str, str] = {}
    for name in DESCRIPTIVE_FIELDS:
        collate = ' COLLATE "C"' if _STATUS_COLUMNS[name] == "text" else ""
        merged[name] = f"GREATEST(m.{name}{collate}, EXCLUDED.{name}{collate})"
    sent_wins = f"{_sent_key('EXCLUDED')} > {_sent_key('m')}"
    for name in _SENT_STAGE:
        merged[name] = f"CASE WHEN {sent_wins} THEN EXCLUDED.{name} ELSE m.{name} END"
    delivered_wins = f"{_delivered_key('EXCLUDED')} > {_delivered_key('m')}"
    for name in _DELIVERED_STAGE:
        merged[name] = f"CASE WHEN {delivered_wins} THEN EXCLUDED.{name} ELSE m.{name} END"
    return merged


def _merge_on_conflict() -> str:
    """The ON CONFLICT clause that merges a status into the stored row (the SQL twin)."""
    merged = _merged_expressions()
    assignments = [f"{c} = {e}" for c, e in merged.items()]
    assignments += [
        "first_seen_at = LEAST(m.first_seen_at, EXCLUDED.first_seen_at)",
        "updated_at = GREATEST(m.updated_at, EXCLUDED.updated_at)",
        "change_seq = nextval('messages_change_seq')",
        "tx_id = pg_current_xact_id()::text::bigint",
    ]
    # Rewrite the row (and move it up the change feed) only when the merge changes something.
    merged_row = ", ".join(merged.values())
    current_row = ", ".join(f"m.{c}" for c in merged)
    return (
        "ON CONFLICT (id) DO UPDATE SET " + ", ".join(assignments) + " "
        f"WHERE ROW({merged_row}) IS DISTINCT FROM ROW({current_row})"
    )


def _replies_so_far(row: str) -> str:
    """A message row starts with the replies already stored for it (a reply can arrive before
    anything about its message); COUNT_REPLIES counts the later ones on the existing row."""
    return f"(SELECT count(*)::int FROM mos WHERE mos.mt_id = {row}.id)"  # noqa: S608


# Only our own constant column names go into these texts; values are bound parameters.
_STATUS_COLUMN_LIST = ", ".join(_STATUS_COLUMNS)
UPSERT_MESSAGES = (
    f"INSERT INTO messages AS m ({_STATUS_COLUMN_LIST}, reply_count) "  # noqa: S608
    f"SELECT {_select_list(_STATUS_COLUMNS, 'u')}, {_replies_so_far('u')} "
    f"FROM {_rows_from(_STATUS_COLUMNS, 'u')} {_merge_on_conflict()}"
)


# A status's key columns are its event's (app.rules.records builds both from one payload): in
# the one-statement path they are read from the inserted event rather than sent twice, which
# spares the driver five arrays of a batch's 25 (timestamps are its dearest values to encode).
_STATUS_FROM_EVENT: dict[str, str] = {
    "sub_account": "e.sub_account",
    "sent_status_code": "e.sent_status_code",
    "delivered_status_code": "e.delivered_status_code",
    "first_seen_at": "e.received_at",
    "updated_at": "e.received_at",
}
_STATUS_OWN_COLUMNS: dict[str, str] = {
    name: kind for name, kind in _STATUS_COLUMNS.items() if name not in _STATUS_FROM_EVENT
}


def _build_write_events_and_statuses() -> str:
    """Events and the statuses of messages with one event in the batch, in one statement:
    autocommitted, a batch of callbacks and DLRs costs one round trip. A status is merged only
    when its event was new (joined to the events' RETURNING), so the message row stays the
    merge of the logged events even when a retry differs from the first copy."""
    first = len(_EVENT_COLUMNS) + 1  # after INSERT_EVENTS's parameters
    values = ", ".join(
        _STATUS_FROM_EVENT.get(name, _typed(name, kind, "s"))
        for name, kind in _STATUS_COLUMNS.items()
    )
    return (
        f"WITH new_events AS ({INSERT_EVENTS}), "  # noqa: S608
        f"statuses AS (INSERT INTO messages AS m ({_STATUS_COLUMN_LIST}, reply_count) "
        f"SELECT {values}, {_replies_so_far('s')} "
        f"FROM {_rows_from(_STATUS_OWN_COLUMNS, 's', first)}, new_events AS e "
        # One event per message here; an MO's id may equal a message id, so kind is checked.
        "WHERE e.message_id = s.id AND e.kind <> 'mo' "
        f"ORDER BY s.id {_merge_on_conflict()}) "
        "SELECT message_id, kind, sent_status_code, delivered_status_code FROM new_events"
    )


WRITE_EVENTS_AND_STATUSES = _build_write_events_and_statuses()

# New replies counted on the message they answer (the delivery stats' reply rate), and their
# messages queued for a recount (below). An MO stored before its message is counted when the
# message row is created (_replies_so_far).
#
# A message another writer's open transaction holds (its DLR, say) is skipped, not waited for:
# that writer may be waiting for a message this batch holds, in the opposite order, until
# PostgreSQL breaks the deadlock by failing one batch. The queued recount counts it instead,
# once that transaction has ended.
COUNT_REPLIES = """
    WITH replies AS (
        SELECT mt_id, count(*)::int AS n FROM json_array_elements_text($1::json) AS u(mt_id)
        GROUP BY mt_id),
    queued AS (INSERT INTO reply_recounts (message_id) SELECT mt_id FROM replies),
    free AS (
        SELECT m.id FROM messages AS m WHERE m.id IN (SELECT mt_id FROM replies)
        ORDER BY m.id FOR UPDATE SKIP LOCKED)
    UPDATE messages AS m SET reply_count = m.reply_count + r.n
    FROM replies AS r JOIN free AS f ON f.id = r.mt_id
    WHERE m.id = r.mt_id
"""


# A reply and the first event of its message, committed at the same moment by two writers, can
# miss each other: COUNT_REPLIES finds no message row yet, and the new row's count of earlier
# replies (_replies_so_far) cannot see the uncommitted reply. So the messages of a batch's
# replies are counted again, absolutely, once no transaction that began before that batch's
# commit is still running: every such transaction has then committed or rolled back, and the
# recount sees what it wrote. The queue is read first and the clock after, so every queued row
# read was committed before the time waited on.
#
# A session idle in a transaction that has written nothing (no xid: an operator's psql after a
# SELECT, say) is not waited for: under READ COMMITTED its next statement sees the replies.
QUEUED_RECOUNTS = "SELECT id FROM reply_recounts ORDER BY id LIMIT $1"
RECOUNT_CHUNK = 10_000
RECOUNT_FROM = "SELECT clock_timestamp()"
OLDER_TRANSACTIONS_RUNNING = """
    SELECT EXISTS (
        SELECT 1 FROM pg_stat_activity
        WHERE datname = current_database() AND backend_type = 'client backend'
          AND pid <> pg_backend_pid() AND xact_start < $1
          AND (backend_xid IS NOT NULL OR state <> 'idle in transaction'))
"""
# Claims the queued rows read (those another worker's sweep holds are skipped) and deletes
# them in the statement that recounts their messages: a recount cut short leaves them queued.
# Message rows are locked in id order, as the writer's batches lock them.
RECOUNT_REPLIES = """
    WITH claimed AS (
        DELETE FROM reply_recounts WHERE id IN (
            SELECT id FROM reply_recounts
            WHERE id IN (SELECT json_array_elements_text($1::json)::bigint)
            FOR UPDATE SKIP LOCKED)
        RETURNING message_id),
    answered AS (
        SELECT m.id FROM messages AS m
        WHERE m.id IN (SELECT message_id FROM claimed)
        ORDER BY m.id FOR UPDATE)
    UPDATE messages AS m SET reply_count = r.n
    FROM (SELECT mt_id, count(*)::int AS n FROM mos
          WHERE mt_id IN (SELECT id FROM answered) GROUP BY mt_id) AS r
    WHERE m.id = r.mt_id AND m.reply_count <> r.n
"""
RECOUNT_POLL_S = 0.2
# A transaction open this long is no writer's batch (they time out far sooner): a session
# that wrote and then idles must not hold recounts back for ever.
RECOUNT_MAX_WAIT_S = 60.0
# How often each worker looks for recounts it was not told about: left by a worker killed
# before its recount, or queued by a replay.
RECOUNT_SWEEP_S = 5.0


def answers_a_message(records: list[EventRecord], new_positions: set[int]) -> bool:
    """True when a new reply of the batch names the message it answers (a recount is queued)."""
    return any(
        (mo := records[position].mo) is not None and mo.mt_id is not None
        for position in new_positions
    )


def _retry_order(key: tuple[str, str, int | None, int | None]) -> tuple[str, str, int, int]:
    return (key[0], key[1], -1 if key[2] is None else key[2], -1 if key[3] is None else key[3])


def _needs_transaction(records: list[EventRecord]) -> bool:
    """One statement is atomic by itself; a batch needs an explicit transaction only when it
    has replies (their own statements) or several statuses for one message (merged after
    the events' insert tells which were new)."""
    seen: set[str] = set()
    for record in records:
        if record.mo is not None:
            return True
        if record.status is not None:
            if record.message_id in seen:
                return True
            seen.add(record.message_id)
    return False


async def write_records(conn: asyncpg.Connection, records: list[EventRecord]) -> set[int]:
    """Write one batch atomically: as one statement when it can, else in a transaction of its
    own (or the caller's, if one is open). Returns the positions (in ``records``) of the events
    that were new; every other one repeats an event already stored."""
    if _needs_transaction(records) and not conn.is_in_transaction():
        async with conn.transaction():
            return await write_records(conn, records)
    first_seen: dict[tuple[str, str, int | None, int | None], int] = {}
    for position, record in enumerate(records):
        first_seen.setdefault(record.retry_key, position)
    # Sorted so that concurrent batches (other workers) take row locks in the same order.
    candidates = sorted(first_seen.items(), key=lambda item: _retry_order(item[0]))
    rows = [records[position] for _, position in candidates]
    events = (*_json_columns(rows, _EVENT_FIELDS), _json_payloads(rows))
    statuses = [row.status for row in rows if row.status is not None]
    several_per_message = len({status.id for status in statuses}) < len(statuses)
    if not several_per_message:
        result = await conn.fetch(
            WRITE_EVENTS_AND_STATUSES, *events, *_json_columns(statuses, _STATUS_OWN_COLUMNS)
        )
        inserted_keys = {tuple(row) for row in result}
    else:
        # Some message has several events here: only the new ones are merged (a retry changes
        # nothing), so the events go first. The merged statuses then go in one statement, in
        # id order, like every other batch's: a batch locking its messages in two statements
        # could hold one that another batch waits for while waiting for one that batch holds.
        result = await conn.fetch(INSERT_EVENTS, *events)
        inserted_keys = {tuple(row)[:4] for row in result}
    new_positions = {pos for key, pos in candidates if key in inserted_keys}
    new_records = [records[pos] for pos in sorted(new_positions)]

    if several_per_message:
        merged = merge_status_events([r.status for r in new_records if r.status is not None])
        if merged:
            await conn.execute(UPSERT_MESSAGES, *_json_columns(merged, _STATUS_COLUMNS))
    mos = sorted((r.mo for r in new_records if r.mo is not None), key=lambda mo: mo.id)
    if mos:
        await conn.execute(INSERT_MOS, *_json_columns(mos, _MO_COLUMNS))
        answered = sorted(mo.mt_id for mo in mos if mo.mt_id is not None)
        if answered:
            await conn.execute(COUNT_REPLIES, orjson.dumps(answered).decode())
    return new_positions


async def driver_connection(conn: AsyncConnection) -> asyncpg.Connection:
    raw = await conn.get_raw_connection()
    driver: asyncpg.Connection = raw.driver_connection
    return driver


def _is_transient(error: BaseException) -> bool:
    return getattr(error, "sqlstate", None) in TRANSIENT_SQLSTATES


# SQLSTATE classes a request's own data can cause: data exception, integrity violation,
# program limit exceeded. Only these are worth isolating request by request.
POISON_SQLSTATE_CLASSES = frozenset({"22", "23", "54"})


def could_be_poison(error: BaseException) -> bool:
    """True when one request's data may have failed the batch. Anything else (the database
    away, restarting, out of connections) fails every request alike, and retrying them one
    by one would only stall the writer for connect timeout after connect timeout."""
    sqlstate = getattr(error, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate[:2] in POISON_SQLSTATE_CLASSES


class BatchWriter:
    """One per process; started and stopped by the application's lifespan."""

    def __init__(
        self,
        connect: Connect,
        *,
        max_items: int,
        max_delay_s: float,
        queue_items: int,
        timeout_s: float,
        concurrency: int = 2,
    ) -> None:
        self._connect = connect
        self._concurrency = concurrency
        self._max_items = max_items
        self._max_delay_s = max_delay_s
        self._queue_items = queue_items
        self._timeout_s = timeout_s
        # A deque and an Event rather than asyncio.Queue: handing in costs an append, and a
        # writer takes a whole batch at once (no Task and timer per request to gather it).
        self._waiting: deque[_Pending] = deque()
        self._waiting_items = 0
        self._work = asyncio.Event()
        self._idle = asyncio.Event()  # set whenever nothing is waiting or in flight
        self._in_flight: dict[int, list[_Pending]] = {}  # by id(): batches are not compared
        self._queued_items = 0  # waiting or in flight
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._recount_wanted = asyncio.Event()
        self._batch_failures = FailureLog(log, "writer batch")
        self._recount_failures = FailureLog(log, "reply recount")

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def queued_items(self) -> int:
        return self._queued_items

    def is_full(self) -> bool:
        """True when nothing more can be queued: callers refuse at once, before spending CPU
        on parsing a body that could not be taken anyway (a burst then costs little)."""
        return self._stopping or self._queued_items >= self._queue_items

    async def start(self) -> None:
        # Several batches in flight: one commits while the next is written, so the database's
        # round trips and commit waits overlap instead of adding up.
        self._tasks = [
            asyncio.create_task(self._run(), name=f"batch-writer-{n}")
            for n in range(self._concurrency)
        ]
        self._tasks.append(asyncio.create_task(self._expire_overdue(), name="batch-deadlines"))
        self._tasks.append(asyncio.create_task(self._recount_replies(), name="reply-recounts"))

    async def stop(self) -> None:
        """Commit what was handed in, then end (graceful shutdown: nothing accepted is dropped)."""
        self._stopping = True
        while self._waiting or self._in_flight:
            self._idle.clear()
            await self._idle.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def write(self, records: list[EventRecord]) -> WriteResult:
        """Returns once the records are committed; raises WriterOverloaded or WriteFailed
        (WriteTimedOut after ``timeout_s``)."""
        if self._stopping:
            raise WriterOverloaded("shutting down")
        if self._queued_items + len(records) > self._queue_items:
            raise WriterOverloaded("write queue full")
        loop = asyncio.get_running_loop()
        pending = _Pending(records, loop.create_future(), loop.time() + self._timeout_s)
        self._waiting.append(pending)
        self._waiting_items += len(records)
        self._queued_items += len(records)
        self._work.set()
        return await pending.future

    async def _next_batch(self) -> list[_Pending]:
        while not self._waiting:
            self._work.clear()
            await self._work.wait()
        if self._waiting_items < self._max_items and self._max_delay_s > 0:
            await asyncio.sleep(self._max_delay_s)  # let concurrent requests join the batch
        batch: list[_Pending] = []
        size = 0
        while self._waiting and size < self._max_items:
            pending = self._waiting.popleft()
            self._waiting_items -= len(pending.records)
            if pending.future.done():  # its caller went away: nobody to answer
                self._queued_items -= len(pending.records)
                continue
            batch.append(pending)
            size += len(pending.records)
        return batch

    async def _run(self) -> None:
        connection = WriterConnection(self._connect)
        try:
            while True:
                batch = await self._next_batch()
                if not batch:
                    self._note_if_idle()
                    continue
                self._in_flight[id(batch)] = batch
                try:
                    await self._commit_batch(connection, batch)
                except Exception:  # the loop must outlive any single batch
                    log.exception("batch writer: unexpected error")
                    connection.discard()
                    for pending in batch:
                        _fail(pending, WriteFailed("unexpected writer error"))
                finally:
                    del self._in_flight[id(batch)]
                    self._queued_items -= sum(len(pending.records) for pending in batch)
                    self._note_if_idle()
        finally:
            await connection.close()

    def _note_if_idle(self) -> None:
        if not self._waiting and not self._in_flight:
            self._idle.set()

    async def _expire_overdue(self) -> None:
        """Answer WriteTimedOut to whatever waited ``timeout_s``, queued or in flight, so no
        request hangs on a stuck database; one sweep for all is cheaper than a timer each."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(DEADLINE_SWEEP_S)
            now = loop.time()
            while self._waiting and self._waiting[0].deadline <= now:
                pending = self._waiting.popleft()
                self._waiting_items -= len(pending.records)
                self._queued_items -= len(pending.records)
                _fail(pending, WriteTimedOut("waited too long for the database"))
            self._note_if_idle()
            for batch in self._in_flight.values():
                for pending in batch:
                    if pending.deadline <= now:
                        _fail(pending, WriteTimedOut("the database did not commit in time"))

    async def _commit_batch(self, connection: WriterConnection, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            results = await self._commit_with_retries(connection, batch)
        except RECOVERABLE as error:
            metrics.BATCH_FAILURES.inc()
            poison = could_be_poison(error)
            if not poison:
                connection.discard()  # it may be broken; the next batch opens a new one
            if len(batch) == 1 and poison:
                log.warning("PostgreSQL refused a request's data: %s", error)
                _fail(batch[0], WriteRefused(getattr(error, "sqlstate", ""), str(error)))
                return
            if not poison:
                self._batch_failures.failed(f"{len(batch)} request(s) answered 503: {error}")
                for pending in batch:
                    _fail(pending, WriteFailed(str(error)))
                return
            # Isolate the poisoned request: retry each one in its own transaction.
            for pending in batch:
                await self._commit_batch(connection, [pending])
            return
        self._batch_failures.succeeded()
        metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)
        metrics.BATCH_REQUESTS.observe(len(batch))
        metrics.BATCH_ITEMS.observe(sum(len(pending.records) for pending in batch))
        for pending, result in zip(batch, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(result)

    async def _commit_with_retries(
        self, connection: WriterConnection, batch: list[_Pending]
    ) -> list[WriteResult]:
        records = [record for pending in batch for record in pending.records]
        for attempt in range(1, TRANSIENT_ATTEMPTS + 1):
            conn = await connection.acquire()
            try:
                new_positions = await write_records(conn, records)
                break
            except asyncpg.PostgresError as error:
                if attempt == TRANSIENT_ATTEMPTS or not _is_transient(error):
                    raise
        if answers_a_message(records, new_positions):
            self._recount_wanted.set()
        results, offset = [], 0
        for pending in batch:
            count = len(pending.records)
            new = sum(1 for pos in range(offset, offset + count) if pos in new_positions)
            results.append(WriteResult(received=count, duplicates=count - new))
            offset += count
        return results

    async def _recount_replies(self) -> None:
        """Take the queued recounts (see RECOUNT_REPLIES) on a connection of its own: at once
        when this worker stored replies, else every RECOUNT_SWEEP_S (and at start)."""
        connection = WriterConnection(self._connect)
        try:
            while True:
                self._recount_wanted.clear()
                try:
                    while await recount_queued_replies(await connection.acquire()):
                        pass
                    self._recount_failures.succeeded()
                    metrics.record_success("reply_recount")
                except RECOVERABLE as error:  # the queue keeps them for the next sweep
                    self._recount_failures.failed(error)
                    connection.discard()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(RECOUNT_SWEEP_S):
                        await self._recount_wanted.wait()
        finally:
            await connection.close()


async def recount_queued_replies(conn: asyncpg.Connection, chunk: int = RECOUNT_CHUNK) -> bool:
    """Take up to ``chunk`` queued recounts, wait until no transaction begun before they were
    read is running (at most RECOUNT_MAX_WAIT_S), then set their messages' reply counts from
    the stored replies. Returns True when the queue may hold more."""
    queued = [row["id"] for row in await conn.fetch(QUEUED_RECOUNTS, chunk)]
    if not queued:
        return False
    began_before = await conn.fetchval(RECOUNT_FROM)
    for _ in range(int(RECOUNT_MAX_WAIT_S / RECOUNT_POLL_S)):  # polls: PostgreSQL has no event
        if not await conn.fetchval(OLDER_TRANSACTIONS_RUNNING, began_before):
            break
        await asyncio.sleep(RECOUNT_POLL_S)
    status = await conn.execute(RECOUNT_REPLIES, orjson.dumps(queued).decode())
    corrected = int(status.rsplit(" ", 1)[-1])  # "UPDATE <rows>"
    if corrected:
        metrics.REPLY_COUNTS_CORRECTED.inc(corrected)
        # Debug only: skipped messages (COUNT_REPLIES) make this routine under a busy campaign.
        log.debug("reply counts set by the recount for %d message(s)", corrected)
    return len(queued) == chunk


class WriterConnection:
    """One writer task's own connection: no pool checkout and no liveness ping per batch. One
    that may be broken is dropped, and the next batch opens a new one."""

    def __init__(self, connect: Connect) -> None:
        self._connect = connect
        self._conn: asyncpg.Connection | None = None

    async def acquire(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await self._connect()
        return self._conn

    def discard(self) -> None:
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await conn.close(timeout=2)
            except RECOVERABLE:
                conn.terminate()


def _fail(pending: _Pending, error: Exception) -> None:
    if not pending.future.done():
        pending.future.set_exception(error)
