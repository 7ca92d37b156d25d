"""The forwarder's queries: turning the safe feeds into deliveries, claiming deliveries to send,
recording attempts, disabling dead endpoints, and the figures its metrics show.

Every step is a short transaction, and nothing lives only in memory:
- an endpoint's position in each feed moves in the transaction that stores the deliveries it
  read, so a crash repeats or loses nothing (one dispatcher per endpoint at a time, across
  workers and replicas, by a transaction-scoped advisory lock);
- a claimed delivery is leased (its ``next_attempt_at`` moved past the attempt's timeout) and
  committed before it is sent, so another worker skips it while it is in flight, and sends
  it if the claimant dies before it records the outcome;
- a status is not claimed while an earlier delivery of the same message to the same
  endpoint is still pending: one message's changes arrive in the order they were stored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.reads import FeedKind, FeedPosition, Row, feed_page
from app.rules.forwarding import EventType
from app.rules.scope import Scope


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """What the forwarder needs of an enabled endpoint."""

    id: int
    url: str
    sub_account: str | None
    events: tuple[EventType, ...]
    secret: str
    previous_secret: str | None  # while a rotation's overlap lasts
    replaying: bool


async def enabled_endpoints(conn: AsyncConnection) -> list[EndpointConfig]:
    rows = await conn.execute(
        text(
            "SELECT id, url, sub_account, events, secret, "
            "CASE WHEN previous_secret_until > now() THEN previous_secret END AS previous_secret, "
            "replay_next_id IS NOT NULL AS replaying "
            "FROM endpoints WHERE disabled_at IS NULL ORDER BY id"
        )
    )
    return [
        EndpointConfig(
            id=row.id,
            url=row.url,
            sub_account=row.sub_account,
            events=tuple(row.events),
            secret=row.secret,
            previous_secret=row.previous_secret,
            replaying=row.replaying,
        )
        for row in rows
    ]


@dataclass(frozen=True, slots=True)
class NewDelivery:
    webhook_id: str
    event_type: EventType
    message_id: str | None
    body: bytes


# What the forwarder makes of a feed's row: the delivery of that change.
Render = Callable[[int, FeedKind, Row], NewDelivery]

# Which feed each event type is read from.
FEED_OF: dict[EventType, FeedKind] = {
    "status.updated": "status",
    "mo.received": "mo",
    "optout.changed": "optout",
}
_POSITION_COLUMNS: dict[FeedKind, tuple[str, str]] = {
    "status": ("status_tx_id", "status_seq"),
    "mo": ("mo_tx_id", "mo_seq"),
    "optout": ("optout_tx_id", "optout_seq"),
}
_DISPATCH_LOCK = text("SELECT pg_try_advisory_xact_lock(hashtext('wavy-forward'), :id)")

_INSERT_DELIVERIES = text(
    "INSERT INTO deliveries (endpoint_id, webhook_id, event_type, message_id, body, "
    "next_attempt_at, attempts) "
    "SELECT :endpoint_id, w, t, m, b, now() + make_interval(secs => :delay), :attempts "
    "FROM unnest(CAST(:webhook_ids AS text[]), CAST(:types AS text[]), "
    "CAST(:message_ids AS text[]), CAST(:bodies AS bytea[])) AS d(w, t, m, b)"
)
_INSERT_LEASED = text(_INSERT_DELIVERIES.text + " RETURNING id, webhook_id, body, attempts")
# The messages that already have a delivery pending to the endpoint: a new change of theirs
# waits behind it.
_PENDING_MESSAGES = text(
    "SELECT DISTINCT message_id FROM deliveries "
    "WHERE endpoint_id = :id AND state = 'pending' AND message_id = ANY(:messages)"
)


@dataclass(frozen=True, slots=True)
class LeaseOffer:
    """A sender ready to send up to ``rows`` deliveries now: the dispatch stores that many
    already leased to it (as a claim would), and saves the claim's statements and the row
    update per delivery."""

    rows: int
    lease_s: float


@dataclass(frozen=True, slots=True)
class Dispatched:
    made: int
    leased: list[Claimed]


async def dispatch(
    conn: AsyncConnection,
    endpoint: EndpointConfig,
    render: Render,
    *,
    page_rows: int,
    first_delay_s: float,
    offer: LeaseOffer | None = None,
) -> Dispatched | None:
    """One page of each feed the endpoint receives, stored as its deliveries, its positions
    moved past them, in the caller's transaction. None when another worker is dispatching
    this endpoint; else what was made, and what was leased to the ``offer``'s sender."""
    if not await conn.scalar(_DISPATCH_LOCK, {"id": endpoint.id}):
        return None
    position_row = (
        await conn.execute(
            text(
                "SELECT status_tx_id, status_seq, mo_tx_id, mo_seq, optout_tx_id, optout_seq "
                "FROM endpoints "
                "WHERE id = :id AND disabled_at IS NULL"
            ),
            {"id": endpoint.id},
        )
    ).first()
    if position_row is None:  # removed or disabled meanwhile
        return Dispatched(0, [])
    positions = position_row._mapping
    scope = Scope(sub_account=endpoint.sub_account)
    made: list[NewDelivery] = []
    moved: dict[str, int] = {}
    for event_type in endpoint.events:
        kind = FEED_OF[event_type]
        tx_column, seq_column = _POSITION_COLUMNS[kind]
        after = FeedPosition(positions[tx_column], positions[seq_column])
        rows, position = await feed_page(conn, kind, scope, after, page_rows)
        made.extend(render(endpoint.id, kind, row) for row in rows)
        if position != after:
            moved.update({tx_column: position.tx_id, seq_column: position.seq})
    leased: list[Claimed] = []
    if made:
        leased = await _insert(conn, endpoint.id, made, first_delay_s, offer)
    if moved:
        assignments = ", ".join(f"{column} = :{column}" for column in moved)
        await conn.execute(
            text(f"UPDATE endpoints SET {assignments} WHERE id = :id"),  # noqa: S608 - our names
            {**moved, "id": endpoint.id},
        )
    return Dispatched(len(made), leased)


async def _insert(
    conn: AsyncConnection,
    endpoint_id: int,
    made: Sequence[NewDelivery],
    first_delay_s: float,
    offer: LeaseOffer | None,
) -> list[Claimed]:
    """The deliveries; up to ``offer.rows`` of them leased (those of a message with nothing
    pending before them), the rest waiting for a claim. The leased ones, as claimed."""
    to_lease: list[NewDelivery] = []
    waiting = list(made)
    if offer is not None and first_delay_s == 0:
        messages = [item.message_id for item in made if item.message_id is not None]
        blocked = set()
        if messages:
            found = await conn.execute(_PENDING_MESSAGES, {"id": endpoint_id, "messages": messages})
            blocked = {row.message_id for row in found}
        free = [item for item in made if item.message_id not in blocked]
        to_lease = free[: offer.rows]
        chosen = {id(item) for item in to_lease}
        waiting = [item for item in made if id(item) not in chosen]
    if waiting:
        await conn.execute(_INSERT_DELIVERIES, _rows_of(endpoint_id, waiting, first_delay_s, 0))
    if not to_lease:
        return []
    assert offer is not None
    rows = await conn.execute(_INSERT_LEASED, _rows_of(endpoint_id, to_lease, offer.lease_s, 1))
    claimed = [Claimed(row.id, row.webhook_id, row.body, row.attempts) for row in rows]
    claimed.sort(key=lambda item: item.id)
    return claimed


def _rows_of(
    endpoint_id: int, made: Sequence[NewDelivery], delay_s: float, attempts: int
) -> dict[str, Any]:
    return {
        "endpoint_id": endpoint_id,
        "webhook_ids": [item.webhook_id for item in made],
        "types": [item.event_type for item in made],
        "message_ids": [item.message_id for item in made],
        "bodies": [item.body for item in made],
        "delay": delay_s,
        "attempts": attempts,
    }


# A replay's page: the original deliveries, copied as new ones under the same webhook ids, as
# Svix replays: a consumer that drops the ids it has processed (what the README advises) then
# processes each event once, whether it missed it or not.
_REPLAY_PAGE = text(
    "WITH page AS ("
    "  SELECT id, webhook_id, event_type, message_id, body FROM deliveries"
    "  WHERE endpoint_id = :id AND id >= :first AND id <= :last AND replay_of IS NULL"
    "  ORDER BY id LIMIT :rows"
    "), copied AS ("
    "  INSERT INTO deliveries (endpoint_id, webhook_id, event_type, message_id, body, replay_of)"
    "  SELECT :id, webhook_id, event_type, message_id, body, id FROM page ORDER BY id"
    "  RETURNING replay_of"
    ") SELECT max(replay_of) AS last_copied, count(*) AS copied FROM copied"
)


async def replay_page(conn: AsyncConnection, endpoint_id: int, page_rows: int) -> int | None:
    """The next page of the endpoint's replay, if one runs (None when none does, or another
    worker holds it): how many deliveries were copied."""
    if not await conn.scalar(_DISPATCH_LOCK, {"id": endpoint_id}):
        return None
    span = (
        await conn.execute(
            text("SELECT replay_next_id, replay_last_id FROM endpoints WHERE id = :id"),
            {"id": endpoint_id},
        )
    ).first()
    if span is None or span.replay_next_id is None:
        return None
    copied = (
        await conn.execute(
            _REPLAY_PAGE,
            {
                "id": endpoint_id,
                "first": span.replay_next_id,
                "last": span.replay_last_id,
                "rows": page_rows,
            },
        )
    ).one()
    done = copied.copied < page_rows or copied.last_copied >= span.replay_last_id
    await conn.execute(
        text(
            "UPDATE endpoints SET "
            "replay_next_id = CASE WHEN CAST(:done AS boolean) THEN NULL "
            "                      ELSE CAST(:next AS bigint) END, "
            "replay_last_id = CASE WHEN CAST(:done AS boolean) THEN NULL "
            "                      ELSE replay_last_id END "
            "WHERE id = :id"
        ),
        {"done": done, "next": (copied.last_copied or 0) + 1, "id": endpoint_id},
    )
    return int(copied.copied)


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    webhook_id: str
    body: bytes
    attempts: int  # including the one about to be made


# The claim is three statements, each shaped to use its index whatever the planner knows of
# the table (a single statement with NOT EXISTS became a nested loop over the whole backlog
# where no statistics had been gathered yet): the due deliveries in order, locked; the first
# pending delivery of each of their messages; the lease of those that are their message's
# first. The others stay pending, unlocked at commit, for a later claim.
_DUE = text(
    "SELECT id, message_id FROM deliveries "
    "WHERE endpoint_id = :id AND state = 'pending' AND next_attempt_at <= now() "
    "ORDER BY next_attempt_at, id LIMIT :rows FOR UPDATE SKIP LOCKED"
)
_FIRST_OF_MESSAGES = text(
    "SELECT message_id, min(id) AS first FROM deliveries "
    "WHERE endpoint_id = :id AND state = 'pending' AND message_id = ANY(:messages) "
    "GROUP BY message_id"
)
_LEASE = text(
    "UPDATE deliveries SET attempts = attempts + 1, "
    "next_attempt_at = now() + make_interval(secs => :lease) "
    "WHERE id = ANY(:ids) RETURNING id, webhook_id, body, attempts"
)


async def claim(
    conn: AsyncConnection, endpoint_id: int, *, rows: int, lease_s: float
) -> list[Claimed]:
    """Up to ``rows`` deliveries due now, leased for ``lease_s`` (commit before sending)."""
    due = (await conn.execute(_DUE, {"id": endpoint_id, "rows": rows})).all()
    if not due:
        return []
    messages = list({row.message_id for row in due if row.message_id is not None})
    first: dict[str, int] = {}
    if messages:
        found = await conn.execute(_FIRST_OF_MESSAGES, {"id": endpoint_id, "messages": messages})
        first = {row.message_id: row.first for row in found}
    ids = [row.id for row in due if row.message_id is None or first[row.message_id] == row.id]
    if not ids:
        return []
    leased = await conn.execute(_LEASE, {"ids": ids, "lease": lease_s})
    claimed = [Claimed(row.id, row.webhook_id, row.body, row.attempts) for row in leased]
    claimed.sort(key=lambda item: item.id)
    return claimed


@dataclass(frozen=True, slots=True)
class Outcome:
    """One attempt: ``retry_in_s`` None means no further attempt (delivered, or given up)."""

    delivery_id: int
    webhook_id: str
    attempted_at: datetime
    succeeded: bool
    status_code: int | None
    error: str | None
    latency_ms: int
    response: str | None
    retry_in_s: float | None


# Each outcome's new state, by id through the primary key (a join with the outcomes would be
# planned as a scan of the whole table where no statistics were gathered yet).
_DELIVERED = text(
    "UPDATE deliveries SET state = 'delivered', finished_at = now() "
    "WHERE id = ANY(:ids) AND state = 'pending'"
)
_GIVEN_UP = text(
    "UPDATE deliveries SET state = 'failed', finished_at = now() "
    "WHERE id = ANY(:ids) AND state = 'pending'"
)
_RETRY_LATER = text(
    "UPDATE deliveries SET next_attempt_at = now() + make_interval(secs => :delay), "
    "last_failed_at = now() WHERE id = ANY(:ids) AND state = 'pending'"
)
_INSERT_ATTEMPTS = text(
    "INSERT INTO delivery_attempts (endpoint_id, delivery_id, webhook_id, attempted_at, "
    "status_code, error, latency_ms, response) "
    "SELECT :endpoint_id, d, w, a, s, e, l, r FROM unnest(CAST(:ids AS bigint[]), "
    "CAST(:webhook_ids AS text[]), CAST(:at AS timestamptz[]), CAST(:codes AS smallint[]), "
    "CAST(:errors AS text[]), CAST(:latencies AS int[]), CAST(:responses AS text[])) "
    "AS t(d, w, a, s, e, l, r)"
)
# Failing from the first failure until a success leaves no failed delivery waiting for a
# retry (those of this round are excluded: their new state is written after this row).
_ENDPOINT_HEALTH = text(
    "UPDATE endpoints SET last_attempt_at = now(), "
    "last_success_at = CASE WHEN :any_ok THEN now() ELSE last_success_at END, "
    "failing_since = CASE WHEN :last_ok AND NOT :retrying AND NOT EXISTS ("
    "    SELECT 1 FROM deliveries AS d WHERE d.endpoint_id = :endpoint_id "
    "    AND d.state = 'pending' AND d.last_failed_at IS NOT NULL "
    "    AND d.id <> ALL(CAST(:ids AS bigint[]))) THEN NULL "
    "  ELSE coalesce(failing_since, :first_failure) END "
    "WHERE id = :endpoint_id RETURNING id"
)


async def record(conn: AsyncConnection, endpoint_id: int, outcomes: Sequence[Outcome]) -> int:
    """The attempts, their deliveries' new state and the endpoint's health, in the caller's
    transaction. Returns how many deliveries were given up on."""
    if not outcomes:
        return 0
    # The endpoint's row first, as its removal takes it first: the other order (deliveries,
    # then the endpoint for the attempts' foreign key) deadlocked with a removal.
    last = max(outcomes, key=lambda item: item.attempted_at)
    failures = [item.attempted_at for item in outcomes if not item.succeeded]
    health = {
        "endpoint_id": endpoint_id,
        "any_ok": any(item.succeeded for item in outcomes),
        "last_ok": last.succeeded,
        "retrying": any(not item.succeeded and item.retry_in_s is not None for item in outcomes),
        "ids": [item.delivery_id for item in outcomes],
        "first_failure": min(failures) if failures else None,
    }
    if await conn.scalar(_ENDPOINT_HEALTH, health) is None:
        return 0  # removed while its attempts ran: nothing to keep
    delivered = [item.delivery_id for item in outcomes if item.succeeded]
    given_up = [
        item.delivery_id for item in outcomes if not item.succeeded and item.retry_in_s is None
    ]
    later: dict[float, list[int]] = {}
    for item in outcomes:
        if not item.succeeded and item.retry_in_s is not None:
            later.setdefault(item.retry_in_s, []).append(item.delivery_id)
    if delivered:
        await conn.execute(_DELIVERED, {"ids": delivered})
    failed = (await conn.execute(_GIVEN_UP, {"ids": given_up})).rowcount if given_up else 0
    for delay, ids in later.items():
        await conn.execute(_RETRY_LATER, {"ids": ids, "delay": delay})
    await conn.execute(
        _INSERT_ATTEMPTS,
        {
            "endpoint_id": endpoint_id,
            "ids": [item.delivery_id for item in outcomes],
            "webhook_ids": [item.webhook_id for item in outcomes],
            "at": [item.attempted_at for item in outcomes],
            "codes": [item.status_code for item in outcomes],
            "errors": [item.error for item in outcomes],
            "latencies": [item.latency_ms for item in outcomes],
            "responses": [item.response for item in outcomes],
        },
    )
    return failed


async def disable_dead_endpoints(conn: AsyncConnection, after: timedelta) -> list[int]:
    """Endpoints without a single success for ``after``: disabled, their position kept."""
    result = await conn.execute(
        text(
            "UPDATE endpoints SET disabled_at = now(), disabled_reason = 'failing' "
            "WHERE disabled_at IS NULL AND failing_since < now() - CAST(:after AS interval) "
            # Failing may outlast a success while failed deliveries wait: disabled is for
            # those without a single success since.
            "AND (last_success_at IS NULL OR last_success_at < failing_since) "
            "RETURNING id"
        ),
        {"after": after},
    )
    return [row.id for row in result]


@dataclass(frozen=True, slots=True)
class EndpointHealth:
    id: int
    failing_for_s: float  # 0 when its last attempt succeeded
    backlog: int
    disabled_for_failing: bool


async def endpoint_health(conn: AsyncConnection) -> list[EndpointHealth]:
    rows = await conn.execute(
        text(
            "SELECT e.id, coalesce(extract(epoch FROM now() - e.failing_since), 0) AS failing, "
            "(SELECT count(*) FROM deliveries d WHERE d.endpoint_id = e.id "
            " AND d.state = 'pending') AS backlog, "
            "coalesce(e.disabled_reason = 'failing', false) AS dead FROM endpoints e"
        )
    )
    return [EndpointHealth(row.id, float(row.failing), row.backlog, row.dead) for row in rows]


def row_time(row: Row, kind: FeedKind) -> datetime:
    """When a feed's row was stored (a number's: when its state began): what an event's
    ``timestamp`` says."""
    column = {"status": "updated_at", "mo": "stored_at", "optout": "since"}[kind]
    moment: datetime = row[column]
    return moment
