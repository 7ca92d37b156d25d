"""The send API's rows: each MT as its sender asked (``mts``), and the status row an MT that
went to Wavy starts (``messages``), so that it shows in every read before Wavy calls back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import delete, func, insert, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.tables import CURRENT_TX_ID, messages, messages_change_seq, mts, send_keys
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


async def record_mts(conn: AsyncConnection, rows: Sequence[MtRow]) -> None:
    if rows:
        await conn.execute(insert(mts), [asdict(row) for row in rows])


async def start_statuses(conn: AsyncConnection, rows: Sequence[MtRow]) -> None:
    """The status row of each MT Wavy took, with no status yet. A callback or DLR that came
    first (Wavy may call back before this commits) keeps what it wrote; the MT fills in what
    it lacks, and its sending time counts as first seen."""
    sent = [row for row in rows if row.message_id is not None]
    if not sent:
        return
    statement = pg_insert(messages).values(
        [
            {
                "id": row.message_id,
                "sub_account": row.sub_account,
                "correlation_id": row.correlation_id,
                "destination": row.destination,
                "first_seen_at": row.submitted_at,
                "updated_at": row.submitted_at,
            }
            for row in sent
        ]
    )
    existing, new = messages.c, statement.excluded
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=[messages.c.id],
            set_={
                "sub_account": func.coalesce(existing.sub_account, new.sub_account),
                "correlation_id": func.coalesce(existing.correlation_id, new.correlation_id),
                "destination": func.coalesce(existing.destination, new.destination),
                "first_seen_at": func.least(existing.first_seen_at, new.first_seen_at),
                "change_seq": messages_change_seq.next_value(),
                "tx_id": CURRENT_TX_ID,
            },
        )
    )


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
_TAKE_SEND = text(
    "INSERT INTO send_rate AS r (slot, second, count) VALUES (:slot, :second, 1) "
    "ON CONFLICT (slot) DO UPDATE SET second = EXCLUDED.second, "
    "count = CASE WHEN r.second = EXCLUDED.second THEN r.count + 1 ELSE 1 END "
    "WHERE r.second <> EXCLUDED.second OR r.count < :limit RETURNING count"
)
RING_SECONDS = 60


async def take_send(conn: AsyncConnection, second: int, limit: int) -> bool:
    """One send in ``second`` (Unix time), if fewer than ``limit`` were taken in it."""
    taken = await conn.scalar(
        _TAKE_SEND, {"slot": second % RING_SECONDS, "second": second, "limit": limit}
    )
    return taken is not None
