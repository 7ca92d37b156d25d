"""Storing one batch of callbacks, DLRs and MOs: the set-based statements and
``write_records``, which runs them atomically and tells which events were new.

Each table gets one statement per batch over column arrays, never a statement per event: a
batch of callbacks and DLRs is one autocommitted statement (one round trip: on a busy event
loop every round trip costs a loop turn); replies, or several events of one message, take an
explicit transaction. The status merge here is the SQL twin of app.rules.status_merge. What
gathers the batches and answers the requests is app.db.writer; replies' counts are set again
by app.db.reply_recounts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import asyncpg
import orjson

from app.rules.records import EventRecord
from app.rules.status_merge import DESCRIPTIVE_FIELDS, merge_status_events

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
