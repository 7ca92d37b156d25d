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

from dataclasses import dataclass, replace
from functools import reduce

import asyncpg
import orjson

from app.db.json_batches import json_columns, rows_from, select_list, typed
from app.db.optouts import apply_changes_in_batch
from app.db.tables import events, messages, mos, reply_answers, table_columns
from app.rules.optouts import WAVY_LIST_CODES, OptoutMatcher
from app.rules.records import EventRecord, MoRecord
from app.rules.status_merge import (
    DESCRIPTIVE_FIELDS,
    MessageStatus,
    merge_status_events,
    merge_statuses,
)

# Plain asyncpg SQL with positional parameters: the writer talks to asyncpg directly (see
# write_records), skipping SQLAlchemy's per-statement layer on the hottest path. A batch
# travels as JSON column arrays (app.db.json_batches).


def _json_payloads(rows: list[EventRecord]) -> str:
    """The payload column: each item's JSON text is already JSON, so it is joined, not
    written again."""
    return "[" + ",".join([row.payload_json for row in rows]) + "]"


# Each table's columns as the batch sends them, read from app.db.tables (one source): the
# events' (the last one, payload, is _json_payloads), less the identity.
_EVENT_COLUMNS = table_columns(events, leaving_out=("id",))
_EVENT_FIELDS = tuple(_EVENT_COLUMNS)[:-1]  # EventRecord attributes sent as JSON columns
# The batch as sent: the events' columns, then the sending key's sub-account.
_BATCH_COLUMNS: dict[str, str] = {**_EVENT_COLUMNS, "claimant": "text"}


def _owned_elsewhere(row: str) -> str:
    """True when the row's id belongs to a sub-account other than its key's. An id belongs to
    the sub-account whose key first stored it; the account's own key (no claimant) is never
    refused, and an id stored without a sub-account is still free to claim."""
    return (
        f"({row}.claimant IS NOT NULL AND CASE WHEN {row}.kind = 'mo' "  # noqa: S608
        f"THEN EXISTS (SELECT 1 FROM mos AS o WHERE o.id = {row}.message_id "
        f"AND o.sub_account <> {row}.claimant) "
        f"ELSE EXISTS (SELECT 1 FROM messages AS o WHERE o.id = {row}.message_id "
        f"AND o.sub_account <> {row}.claimant) END)"
    )


# The batch as rows: a CTE read more than once, so PostgreSQL decodes the arrays once.
_ROWS = (
    f"batch AS (SELECT {select_list(_BATCH_COLUMNS, 'u')} "  # noqa: S608 - constant names
    f"FROM {rows_from(_BATCH_COLUMNS, 'u')})"
)
# A row's verdict: store its event, refuse it (another sub-account's id), or judge it again.
STORE, REFUSED, UNDECIDED = 0, 1, 2

# The batch with each row's verdict, where every row is checked for its owner as the
# statement's snapshot shows it (a row is never undecided here: see WRITE_EVENTS_AND_STATUSES).
_JUDGED = (
    "judged AS (SELECT e.*, CASE WHEN "  # noqa: S608
    + _owned_elsewhere("e")
    + f" THEN {REFUSED} ELSE {STORE} END AS verdict FROM batch AS e)"
)


def _new_events(judged: str) -> str:
    """The events of the rows neither refused nor undecided, each stored once (a retry is not
    a new event)."""
    return (
        f"new_events AS (INSERT INTO events ({', '.join(_EVENT_COLUMNS)}) "  # noqa: S608
        f"SELECT {', '.join(_EVENT_COLUMNS)} FROM {judged} WHERE verdict = {STORE} "
        "ON CONFLICT ON CONSTRAINT uq_events_exact_retry DO NOTHING "
        "RETURNING message_id, kind, sent_status_code, delivered_status_code)"
    )


def _outcomes(judged: str) -> str:
    """Each row of the answer is an event that was new, one refused, or one undecided (the
    last two with their claimant in refused_for)."""
    return (
        "SELECT message_id, kind, sent_status_code, delivered_status_code, "  # noqa: S608
        "NULL AS refused_for, false AS undecided FROM new_events UNION ALL "
        f"SELECT message_id, kind, NULL, NULL, claimant, verdict = {UNDECIDED} FROM {judged} "
        f"WHERE verdict <> {STORE}"
    )


INSERT_EVENTS = f"WITH {_ROWS}, {_JUDGED}, {_new_events('judged')} {_outcomes('judged')}"

# The replies' columns, less the feed's order (a sequence and the writing transaction).
_MO_COLUMNS = table_columns(mos, leaving_out=("seq", "tx_id"))


CURRENT_TX_ID = "pg_current_xact_id()::text::bigint"

# What a retry of a stored reply may fill in: fields the stored copy lacks (never the id, the
# times, or a sub-account it already has).
_MO_FILLED = tuple(name for name in _MO_COLUMNS if name not in ("id", "received_at", "stored_at"))


def _fill_reply() -> str:
    """A retry that brings what the stored reply lacks fills it in, and moves the reply up its
    feed (tx_id); only a reply of the same sub-account, or of none yet, is filled."""
    filled = [f"COALESCE(mos.{name}, EXCLUDED.{name})" for name in _MO_FILLED]
    current = ", ".join(f"mos.{name}" for name in _MO_FILLED)
    return (
        "ON CONFLICT (id) DO UPDATE SET "
        + ", ".join(f"{name} = {value}" for name, value in zip(_MO_FILLED, filled, strict=True))
        + f", tx_id = {CURRENT_TX_ID} "
        "WHERE (mos.sub_account IS NULL OR mos.sub_account = EXCLUDED.sub_account) "
        f"AND ROW({', '.join(filled)}) IS DISTINCT FROM ROW({current})"
    )


INSERT_MOS = (
    f"INSERT INTO mos ({', '.join(_MO_COLUMNS)}) "  # noqa: S608 - constant column names only
    f"SELECT {select_list(_MO_COLUMNS, 'u')} FROM {rows_from(_MO_COLUMNS, 'u')} "
    f"{_fill_reply()} RETURNING id, mt_id, sub_account"
)

# The statuses' columns, less what PostgreSQL keeps (the feed's order, the reply count).
_STATUS_COLUMNS = table_columns(messages, leaving_out=("change_seq", "tx_id", "reply_count"))
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
    # The owner is never changed, only set where there was none (see _owned_elsewhere).
    merged: dict[str, str] = {"sub_account": "COALESCE(m.sub_account, EXCLUDED.sub_account)"}
    for name in DESCRIPTIVE_FIELDS:
        if name in merged:
            continue
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
        f"tx_id = {CURRENT_TX_ID}",
    ]
    # Rewrite the row (and move it up the change feed) only when the merge changes something,
    # and never for another sub-account's key: _owned_elsewhere refuses such events, and this
    # holds where two first writes of one id race (neither saw the other's row).
    merged_row = ", ".join(merged.values())
    current_row = ", ".join(f"m.{c}" for c in merged)
    return (
        "ON CONFLICT (id) DO UPDATE SET " + ", ".join(assignments) + " "
        f"WHERE ROW({merged_row}) IS DISTINCT FROM ROW({current_row}) "
        "AND (EXCLUDED.sub_account IS NULL OR m.sub_account IS NULL "
        "OR m.sub_account = EXCLUDED.sub_account)"
    )


def _replies_so_far(message_id: str, sub_account: str) -> str:
    """A message row starts with the replies already stored for it (a reply can arrive before
    anything about its message); COUNT_REPLIES counts the later ones on the existing row."""
    return (
        f"(SELECT count(*)::int FROM mos WHERE mos.mt_id = {message_id} "  # noqa: S608
        f"AND {reply_answers('mos.sub_account', sub_account)})"
    )


# Only our own constant column names go into these texts; values are bound parameters.
_STATUS_COLUMN_LIST = ", ".join(_STATUS_COLUMNS)
UPSERT_MESSAGES = (
    f"INSERT INTO messages AS m ({_STATUS_COLUMN_LIST}, reply_count) "  # noqa: S608
    f"SELECT {select_list(_STATUS_COLUMNS, 'u')}, {_replies_so_far('u.id', 'u.sub_account')} "
    f"FROM {rows_from(_STATUS_COLUMNS, 'u')} {_merge_on_conflict()} RETURNING m.id"
)


# A status's key columns are its event's (app.rules.records builds both from one payload): in
# the one-statement path they are read from the batch's event rather than sent twice, which
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


def _verdict(row: str) -> str:
    """A row's verdict where the merge has run: STORE its event, REFUSED (another
    sub-account's id), or UNDECIDED. A reply is judged by the snapshot (the replies' own
    check, after their insert, catches a rival's first copy). The merge refuses another
    sub-account's message by itself, so a message it wrote is not another's; only the other
    rows are looked up. An owner, once set, never changes, so a snapshot that shows the row's
    own sub-account as the owner decides too. A row the merge did not write, whose owner the
    snapshot does not show, met a rival's first write that committed after the snapshot was
    taken: undecided, it is judged again by a statement of its own, whose snapshot shows that
    owner (the merge waited for the rival's commit)."""
    return (
        f"CASE WHEN {row}.claimant IS NULL THEN {STORE} "  # noqa: S608
        f"WHEN {row}.kind = 'mo' THEN CASE WHEN {_owned_elsewhere(row)} "
        f"THEN {REFUSED} ELSE {STORE} END "
        f"WHEN {row}.message_id IN (SELECT id FROM statuses) THEN {STORE} "
        f"ELSE COALESCE((SELECT CASE WHEN o.sub_account = {row}.claimant THEN {STORE} "
        f"WHEN o.sub_account IS NOT NULL THEN {REFUSED} END "
        f"FROM messages AS o WHERE o.id = {row}.message_id), {UNDECIDED}) END"
    )


def _build_write_events_and_statuses() -> str:
    """Events and the statuses of messages with one event in the batch, in one statement:
    autocommitted, a batch of callbacks and DLRs costs one round trip. Every status is offered
    to the merge, a retry's too: the merge is idempotent, so an exact retry changes nothing,
    and one that carries fields the first copy lacked fills them in. Each event's verdict
    (_verdict) then looks its owner up only where the merge did not write its message: for a
    new message, the usual row, that lookup was a seventh of the statement's time in
    PostgreSQL."""
    first = len(_BATCH_COLUMNS) + 1  # after the batch's parameters
    values = ", ".join(
        _STATUS_FROM_EVENT.get(name, typed(name, kind, "s"))
        for name, kind in _STATUS_COLUMNS.items()
    )
    return (
        f"WITH {_ROWS}, "  # noqa: S608
        f"statuses AS (INSERT INTO messages AS m ({_STATUS_COLUMN_LIST}, reply_count) "
        f"SELECT {values}, {_replies_so_far('s.id', 'e.sub_account')} "
        f"FROM {rows_from(_STATUS_OWN_COLUMNS, 's', first)}, batch AS e "
        # One event per message here; an MO's id may equal a message id, so kind is checked.
        "WHERE e.message_id = s.id AND e.kind <> 'mo' "
        f"ORDER BY s.id {_merge_on_conflict()} RETURNING m.id), "
        f"judged AS (SELECT e.*, {_verdict('e')} AS verdict FROM batch AS e), "
        f"{_new_events('judged')} {_outcomes('judged')}"
    )


# The hottest statement, one per batch of callbacks and DLRs (each message once), as it reads
# once rendered, with column lists and the merge's expressions elided:
#
#   WITH batch AS (
#          SELECT u.kind, u.message_id, ..., u.claimant
#          FROM ROWS FROM (json_array_elements_text(CAST($1 AS json)), ...) AS u(kind, ...)),
#        statuses AS (
#          INSERT INTO messages AS m (...) SELECT ..., <replies stored so far>
#          FROM ROWS FROM (<$9... likewise>) AS s, batch AS e
#          WHERE e.message_id = s.id AND e.kind <> 'mo' ORDER BY s.id
#          ON CONFLICT (id) DO UPDATE SET <each column merged, the owner kept>
#          WHERE <the merge changes the row> AND <the same owner, or none>
#          RETURNING m.id),
#        judged AS (
#          SELECT e.*, <STORE, REFUSED or UNDECIDED: the owner looked up only where the
#                       merge did not write the message> AS verdict FROM batch AS e),
#        new_events AS (
#          INSERT INTO events (...) SELECT ... FROM judged WHERE verdict = STORE
#          ON CONFLICT ON CONSTRAINT uq_events_exact_retry DO NOTHING
#          RETURNING message_id, kind, sent_status_code, delivered_status_code)
#   SELECT <the new events> UNION ALL
#   SELECT <the refused and the undecided rows, with their claimant>
#
# print(WRITE_EVENTS_AND_STATUSES) shows it whole.
WRITE_EVENTS_AND_STATUSES = _build_write_events_and_statuses()

# New replies counted on the message they answer (the delivery stats' reply rate) when they
# answer it (tables.reply_answers: one sub-account's), and their messages queued for a
# recount (below). An MO stored before its message is counted when the
# message row is created (_replies_so_far).
#
# A message another writer's open transaction holds (its DLR, say) is skipped, not waited for:
# that writer may be waiting for a message this batch holds, in the opposite order, until
# PostgreSQL breaks the deadlock by failing one batch. The queued recount counts it instead,
# once that transaction has ended.
COUNT_REPLIES = f"""
    WITH new AS (
        SELECT mt_id, sub_account
        FROM json_to_recordset($1::json) AS u(mt_id text, sub_account text)),
    queued AS (INSERT INTO reply_recounts (message_id) SELECT DISTINCT mt_id FROM new),
    free AS (
        SELECT m.id FROM messages AS m WHERE m.id IN (SELECT mt_id FROM new)
        ORDER BY m.id FOR UPDATE SKIP LOCKED),
    replies AS (
        SELECT r.mt_id, count(*)::int AS n FROM new AS r JOIN messages AS m ON m.id = r.mt_id
        WHERE {reply_answers("r.sub_account", "m.sub_account")} GROUP BY r.mt_id)
    UPDATE messages AS m SET reply_count = m.reply_count + r.n
    FROM replies AS r JOIN free AS f ON f.id = r.mt_id
    WHERE m.id = r.mt_id
"""  # noqa: S608 - our own constant SQL only


QUEUE_RECOUNTS = "INSERT INTO reply_recounts (message_id) SELECT json_array_elements_text($1::json)"


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What became of each record of a batch, by position."""

    new: frozenset[int]
    # Refused: the id belongs to another sub-account than the record's key (nothing stored).
    refused: frozenset[int] = frozenset()
    # Some reply's message was queued for a recount (app.db.reply_recounts).
    recount_queued: bool = False


def _retry_order(key: tuple[str, str, int | None, int | None]) -> tuple[str, str, int, int]:
    return (key[0], key[1], -1 if key[2] is None else key[2], -1 if key[3] is None else key[3])


def split_rival_claims(records: list[EventRecord]) -> tuple[list[int], list[int]]:
    """Positions of the records to write first, and of those to write after them. Keys of two
    sub-accounts naming one new id in one batch: neither sees a stored owner, so the first
    claimant's records go first and the others' are judged against what they stored."""
    claims: dict[tuple[str, str], str] = {}
    first: list[int] = []
    later: list[int] = []
    for position, record in enumerate(records):
        claimant = record.claimant
        if claimant is not None and claims.setdefault(record.owner_key, claimant) != claimant:
            later.append(position)
        else:
            first.append(position)
    return first, later


def _needs_transaction(records: list[EventRecord]) -> bool:
    """One statement is atomic by itself; a batch needs an explicit transaction when it has
    replies (their own statements) or several statuses for one message (merged after the
    events' insert tells which were refused), or a status that puts a number on an opt-out
    list (its own statement). Rival claims need one too (write_records)."""
    seen: set[str] = set()
    for record in records:
        if record.mo is not None or record.sent_status_code in WAVY_LIST_CODES:
            return True
        if record.status is not None:
            if record.message_id in seen:
                return True
            seen.add(record.message_id)
    return False


def _with_copies(record: EventRecord, copies: list[MessageStatus] | None) -> EventRecord:
    """The record whose status is merged with its copies' in the batch (a copy may carry
    fields the first lacked): one status per event, as the one-statement path needs."""
    if not copies or record.status is None:
        return record
    return replace(record, status=reduce(merge_statuses, copies, record.status))


def _fill_in(a: MoRecord, b: MoRecord) -> MoRecord:
    """Two copies of one reply as one: the first copy's fields, the second's where it lacks."""
    return replace(a, **{name: getattr(b, name) for name in _MO_FILLED if getattr(a, name) is None})


async def write_records(
    conn: asyncpg.Connection, records: list[EventRecord], optouts: OptoutMatcher
) -> BatchOutcome:
    """Write one batch atomically, with the changes it makes to the opt-out lists: as one
    statement when it can, else in a transaction of its own (or the caller's, if one is
    open)."""
    first, later = split_rival_claims(records)
    if (later or _needs_transaction(records)) and not conn.is_in_transaction():
        async with conn.transaction():
            return await write_records(conn, records, optouts)
    if later:  # written in two steps
        done = await _write_claims(conn, [records[p] for p in first], optouts)
        rest = await write_records(conn, [records[p] for p in later], optouts)
        return BatchOutcome(
            new=frozenset({first[p] for p in done.new} | {later[p] for p in rest.new}),
            refused=frozenset({first[p] for p in done.refused} | {later[p] for p in rest.refused}),
            recount_queued=done.recount_queued or rest.recount_queued,
        )
    return await _write_claims(conn, records, optouts)


async def _write_claims(
    conn: asyncpg.Connection, records: list[EventRecord], optouts: OptoutMatcher
) -> BatchOutcome:
    """A batch whose keys claim no id in common: events, statuses, replies and what they do
    to the opt-out lists."""
    first_seen: dict[tuple[tuple[str, str, int | None, int | None], str | None], int] = {}
    copies: dict[int, list[MessageStatus]] = {}  # later copies' statuses, by first position
    for position, record in enumerate(records):
        first = first_seen.setdefault((record.retry_key, record.claimant), position)
        if first != position and record.status is not None:
            copies.setdefault(first, []).append(record.status)
    # Sorted so that concurrent batches (other workers) take row locks in the same order.
    candidates = sorted(first_seen.items(), key=lambda item: (_retry_order(item[0][0]), item[1]))
    rows = [_with_copies(records[position], copies.get(position)) for _, position in candidates]
    statuses = [row.status for row in rows if row.status is not None]
    several_per_message = len({status.id for status in statuses}) < len(statuses)
    if not several_per_message:
        result = list(
            await conn.fetch(
                WRITE_EVENTS_AND_STATUSES,
                *_event_batch(rows),
                *json_columns(statuses, _STATUS_OWN_COLUMNS),
            )
        )
        undecided = {_claim(row) for row in result if row["undecided"]}
        if undecided:  # a rival's first write committed meanwhile: judged again (_verdict)
            again = [row for row in rows if _claim_of(row) in undecided]
            result = [row for row in result if not row["undecided"]]
            result += await conn.fetch(INSERT_EVENTS, *_event_batch(again))
    else:
        # Some message has several events here: the events go first, to learn which are
        # refused. The merged statuses then go in one statement, in id order, like every other
        # batch's: a batch locking its messages in two statements could hold one that another
        # batch waits for while waiting for one that batch holds.
        result = list(await conn.fetch(INSERT_EVENTS, *_event_batch(rows)))
    inserted = {tuple(row)[:4] for row in result if row["refused_for"] is None}
    refused_owners = {_claim(row) for row in result if row["refused_for"] is not None}
    refused = frozenset(
        p for p, record in enumerate(records) if _claim_of(record) in refused_owners
    )
    new: set[int] = set()
    for (retry_key, _), position in candidates:
        if retry_key in inserted and position not in refused:
            new.add(position)
            inserted.discard(retry_key)  # one stored event, one new position
    kept = [record for position, record in enumerate(records) if position not in refused]

    # Records whose claim a rival's first write may have taken: only where this transaction's
    # write of the id did not write its row (the merge and the replies' insert refuse to
    # write another's), each with whether its event was stored here.
    unsure: list[tuple[EventRecord, bool]] = []
    if several_per_message:
        merged = merge_status_events([r.status for r in kept if r.status is not None])
        written: set[str] = set()
        if merged:
            statuses_written = await conn.fetch(
                UPSERT_MESSAGES, *json_columns(merged, _STATUS_COLUMNS)
            )
            written = {row["id"] for row in statuses_written}
        unsure += [
            (records[p], True)
            for p in sorted(new)
            if records[p].status is not None and records[p].message_id not in written
        ]
    new_replies = {records[p].message_id for p in new if records[p].kind == "mo"}
    replies = await _write_replies(conn, kept, new_replies)
    unsure += [
        (record, position in new)
        for position, record in enumerate(records)
        if record.mo is not None and position not in refused and record.mo.id not in replies.ids
    ]
    lost = await _drop_lost_claims(conn, unsure)
    if lost:
        refused |= {p for p, record in enumerate(records) if _claim_of(record) in lost}
        new -= refused
        kept = [r for p, r in enumerate(records) if p not in refused]
    recount_queued = replies.recount_queued
    changes = optouts.changes(kept)
    if changes:
        await apply_changes_in_batch(conn, changes)
    return BatchOutcome(new=frozenset(new), refused=refused, recount_queued=recount_queued)


def _event_batch(rows: list[EventRecord]) -> tuple[str, ...]:
    """The events' columns of these rows, and their claimants, as the batch statements take
    them."""
    return (
        *json_columns(rows, _EVENT_FIELDS),
        _json_payloads(rows),
        json_columns(rows, ("claimant",))[0],
    )


Claim = tuple[str, str, str | None]


def _claim(row: asyncpg.Record) -> Claim:
    """An outcome row's event kind, id and claimant (refused_for holds the claimant)."""
    return (row["kind"], row["message_id"], row["refused_for"])


def _claim_of(record: EventRecord) -> Claim:
    return (record.kind, record.message_id, record.claimant)


# Claims that a rival's first write of the id took, once this transaction's own write of the
# id has run: the events' insert judged them by a snapshot taken before that rival's write
# committed (the status merge, or the replies' insert, waited for the commit and refused to
# write another's row). Their events stored here are dropped before the commit, so never seen,
# and every row's claim is answered refused.
DROP_LOST_CLAIMS = f"""
    WITH claimed AS (
        SELECT * FROM json_to_recordset($1::json) AS c(
            kind text, message_id text, sent_status_code int, delivered_status_code int,
            claimant text, stored boolean)),
    lost AS (SELECT c.* FROM claimed AS c WHERE {_owned_elsewhere("c")}),
    dropped AS (
        DELETE FROM events AS e USING lost AS l
        WHERE l.stored AND e.message_id = l.message_id AND e.kind = l.kind
        AND e.sent_status_code IS NOT DISTINCT FROM l.sent_status_code
        AND e.delivered_status_code IS NOT DISTINCT FROM l.delivered_status_code)
    SELECT kind, message_id, claimant AS refused_for FROM lost
"""  # noqa: S608 - our own constant SQL only


async def _drop_lost_claims(
    conn: asyncpg.Connection, unsure: list[tuple[EventRecord, bool]]
) -> set[Claim]:
    """The claims among these records (each with whether its event was stored here) that a
    rival's first write took (DROP_LOST_CLAIMS)."""
    claimed = [
        {
            "kind": r.kind,
            "message_id": r.message_id,
            "sent_status_code": r.sent_status_code,
            "delivered_status_code": r.delivered_status_code,
            "claimant": r.claimant,
            "stored": stored,
        }
        for r, stored in unsure
        if r.claimant is not None
    ]
    if not claimed:
        return set()
    return {
        _claim(row) for row in await conn.fetch(DROP_LOST_CLAIMS, orjson.dumps(claimed).decode())
    }


@dataclass(frozen=True, slots=True)
class _RepliesWritten:
    # The replies the insert wrote (new, or filled in): none of them is another's.
    ids: frozenset[str] = frozenset()
    # Some message they answer was queued for a recount.
    recount_queued: bool = False


async def _write_replies(
    conn: asyncpg.Connection, kept: list[EventRecord], new_ids: set[str]
) -> _RepliesWritten:
    """Store the batch's replies, new ones and retries alike (a retry may fill fields in)."""
    by_id: dict[str, MoRecord] = {}
    for record in kept:
        if record.mo is not None:
            known = by_id.get(record.mo.id)
            by_id[record.mo.id] = record.mo if known is None else _fill_in(known, record.mo)
    if not by_id:
        return _RepliesWritten()
    mos = [by_id[mo_id] for mo_id in sorted(by_id)]
    written = await conn.fetch(INSERT_MOS, *json_columns(mos, _MO_COLUMNS))
    answered = sorted(
        ({"mt_id": row["mt_id"], "sub_account": row["sub_account"]} for row in written
         if row["mt_id"] and row["id"] in new_ids),
        key=lambda reply: reply["mt_id"],
    )  # fmt: skip
    filled = sorted(row["mt_id"] for row in written if row["mt_id"] and row["id"] not in new_ids)
    if answered:
        await conn.execute(COUNT_REPLIES, orjson.dumps(answered).decode())
    if filled:
        # A retry gave a stored reply its message: counted again by the sweep, not added to.
        await conn.execute(QUEUE_RECOUNTS, orjson.dumps(filled).decode())
    return _RepliesWritten(frozenset(row["id"] for row in written), bool(answered or filled))
