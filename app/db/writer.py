"""The batching writer: many requests, one commit, and an answer only after the commit.

Requests hand their records to ``BatchWriter.write`` and wait. Each of a few writer tasks, on
a connection of its own, takes everything waiting (up to ``batch_max_items``) and writes it
with set-based statements over column arrays: callbacks and DLRs in one autocommitted
statement (one round trip: on a busy event loop every round trip costs a loop turn), replies
or several events of one message in an explicit transaction. Only after the commit does it
wake the waiting requests with their counts. Under load batches grow by themselves (group
commit): while one commits, the next gathers. A second batch goes out beside one in flight
only once ``parallel_items`` wait: a burst of arrays keeps several connections busy, while
single objects gather into one batch rather than two small ones, each costing a round trip,
a plan and a commit.

A failed batch fails nobody yet: it is retried request by request, so one poisoned request
cannot take its neighbours down; whatever still fails gets ``WriteFailed`` (an unavailability:
503, never 200).

How one batch is written is app.db.ingest. Each worker's writer also sweeps the queued reply
recounts (app.db.reply_recounts) on a connection of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg

from app import metrics
from app.db.engine import refused_data
from app.db.ingest import write_records
from app.db.optouts import KeywordCache
from app.db.reply_recounts import RECOUNT_SWEEP_S, recount_queued_replies
from app.errors import WriteFailed, WriteRefused, WriterOverloaded, WriteTimedOut
from app.logs import FailureLog
from app.rules.records import EventRecord
from app.settings import Settings

log = logging.getLogger(__name__)

# What a database call can fail with that the writer survives (the next batch tries again).
RECOVERABLE = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)

# PostgreSQL errors worth a second try of the same transaction.
TRANSIENT_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock
TRANSIENT_ATTEMPTS = 3


Connect = Callable[[], Awaitable[asyncpg.Connection]]


@dataclass(frozen=True, slots=True)
class WriteResult:
    received: int
    duplicates: int
    # Positions (in the request) of items refused: their id belongs to another sub-account.
    refused: tuple[int, ...] = ()


# How often overdue requests are answered: the timeout is honoured within this much.
DEADLINE_SWEEP_S = 0.1


@dataclass(slots=True)
class _Pending:
    records: list[EventRecord]
    future: asyncio.Future[WriteResult] = field(repr=False)
    deadline: float


def _is_transient(error: BaseException) -> bool:
    return getattr(error, "sqlstate", None) in TRANSIENT_SQLSTATES


def could_be_poison(error: BaseException) -> bool:
    """True when one request's data may have failed the batch. Anything else (the database
    away, restarting, out of connections) fails every request alike, and retrying them one
    by one would only stall the writer for connect timeout after connect timeout."""
    return refused_data(error)


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
        optout_keywords: KeywordCache,
        concurrency: int,
        parallel_items: int,
    ) -> None:
        self._connect = connect
        self.optout_keywords = optout_keywords
        self._concurrency = concurrency
        self._parallel_items = parallel_items
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

    @classmethod
    def of(cls, settings: Settings, connect: Connect) -> BatchWriter:
        """The writer the settings describe, on connections from ``connect``."""
        return cls(
            connect,
            max_items=settings.batch_max_items,
            max_delay_s=settings.batch_max_delay_ms / 1000,
            queue_items=settings.writer_queue_items,
            timeout_s=settings.writer_timeout_s,
            optout_keywords=KeywordCache(
                settings.default_region, enabled=settings.optouts_from_traffic
            ),
            concurrency=settings.writer_concurrency,
            parallel_items=settings.writer_parallel_items,
        )

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

    def _batch_due(self) -> bool:
        """Something waits, and either no batch is in flight or enough waits for another."""
        return bool(self._waiting) and (
            not self._in_flight or self._waiting_items >= self._parallel_items
        )

    async def _next_batch(self) -> list[_Pending]:
        while not self._batch_due():
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
                matcher = await self.optout_keywords.matcher(conn)
                outcome = await write_records(conn, records, matcher)
                break
            except asyncpg.PostgresError as error:
                if attempt == TRANSIENT_ATTEMPTS or not _is_transient(error):
                    raise
        if outcome.recount_queued:
            self._recount_wanted.set()
        results, offset = [], 0
        for pending in batch:
            count = len(pending.records)
            positions = range(offset, offset + count)
            refused = tuple(pos - offset for pos in positions if pos in outcome.refused)
            new = sum(1 for pos in positions if pos in outcome.new)
            results.append(
                WriteResult(received=count, duplicates=count - new - len(refused), refused=refused)
            )
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
