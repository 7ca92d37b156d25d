"""Reply counts set again from the stored replies, once no transaction that could hide a
reply is still running.

A batch with replies queues the messages they answer (table reply_recounts, in its own
transaction: app.db.ingest's COUNT_REPLIES); each worker's writer sweeps the queue on a
connection of its own (``recount_queued_replies``). Being in the database, the queue outlives
the worker: any worker's sweep takes what another one, killed in between, or a replay left.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import orjson

from app import metrics
from app.db.tables import reply_answers

log = logging.getLogger(__name__)

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
RECOUNT_REPLIES = f"""
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
    FROM (SELECT a.id AS mt_id, count(mos.id)::int AS n FROM messages AS a
          LEFT JOIN mos ON mos.mt_id = a.id AND {reply_answers("mos.sub_account", "a.sub_account")}
          WHERE a.id IN (SELECT id FROM answered) GROUP BY a.id) AS r
    WHERE m.id = r.mt_id AND m.reply_count <> r.n
"""  # noqa: S608 - our own constant SQL only
RECOUNT_POLL_S = 0.2
# A transaction open this long is no writer's batch (they time out far sooner): a session
# that wrote and then idles must not hold recounts back for ever.
RECOUNT_MAX_WAIT_S = 60.0
# How often each worker looks for recounts it was not told about: left by a worker killed
# before its recount, or queued by a replay.
RECOUNT_SWEEP_S = 5.0


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
