"""Reconciliation's queries: looking at each MT once as it passes each age (from the marks in
``reconcile_state``) and keeping those whose status is missing in ``overdue``; the pace every
worker and replica shares for asking Wavy; claiming what is due; settling what was asked; and
the listing and counts the API, CLI and dashboard show.

Every time is passed in (``now``, and the times computed from it here), not read from the
database's clock, so that one run sees one instant and the tests can move it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.rules.reconcile import OVERDUE_KINDS, OverdueKind, awaits_dlr, next_backoff_s
from app.rules.scope import Scope

Row = dict[str, Any]

# Each pass looks at this many MTs per age at most; the rest wait for the next pass.
EXAMINE_BATCH = 5000


@dataclass(frozen=True, slots=True)
class Ages:
    """When a status is overdue, and when Wavy no longer knows the message."""

    callback_after: timedelta
    dlr_after: timedelta
    window: timedelta
    no_dlr_carriers: tuple[str, ...]


# ---------------------------------------------------------------------------- examining

# The one state row, made again if it was removed (an emptied table): a pass never stalls.
_ENSURE_STATE = text(
    "INSERT INTO reconcile_state (id, next_ask_at) VALUES (1, 'epoch') ON CONFLICT (id) DO NOTHING"
)
_SERIAL = text("SET LOCAL max_parallel_workers_per_gather = 0")
_LOCK_STATE = text(
    "SELECT callback_mark_at, callback_mark_id, dlr_mark_at, dlr_mark_id FROM reconcile_state "
    "WHERE id = 1 FOR UPDATE SKIP LOCKED"
)
# From a mark, in (submitted_at, id) order: each MT as its age passes, with its status so far.
_SEEN = text(
    "SELECT t.id, t.message_id, t.sub_account, t.outcome, t.submitted_at, "
    "m.sent_status_code, m.sent_at, "
    "m.delivered_status_code, m.carrier_name "
    "FROM mts AS t LEFT JOIN messages AS m ON m.id = t.message_id "
    "WHERE (t.submitted_at, t.id) > (:mark_at, :mark_id) AND t.submitted_at <= :until "
    "ORDER BY t.submitted_at, t.id LIMIT :limit"
)
_ADD = text(
    "INSERT INTO overdue (mt_id, kind, message_id, sub_account, sent_at, waiting_since, "
    "next_check_at) "
    "SELECT * FROM unnest(CAST(:ids AS text[]), CAST(:kinds AS text[]), "
    "CAST(:message_ids AS text[]), CAST(:sub_accounts AS text[]), "
    "CAST(:sent AS timestamptz[]), CAST(:since AS timestamptz[]), "
    "CAST(:due AS timestamptz[])) ON CONFLICT (mt_id) DO NOTHING"
)
_MARK = {
    kind: text(
        f"UPDATE reconcile_state SET {kind}_mark_at = :at, "  # noqa: S608 - constant names
        f"{kind}_mark_id = :id WHERE id = 1"
    )
    for kind in ("callback", "dlr")
}


async def examine(conn: AsyncConnection, now: datetime, ages: Ages) -> int:
    """Looks at the MTs that passed an age since the last pass (one worker at a time: another
    that finds the state locked skips); the overdue among them are added. How many were."""
    await conn.execute(_ENSURE_STATE)
    # A slice of a few hundred MTs read from an index: the planner, misjudging the range of a
    # row comparison, would start parallel workers, which cost more than the reading.
    await conn.execute(_SERIAL)
    state = (await conn.execute(_LOCK_STATE)).mappings().one_or_none()
    if state is None:  # another worker is looking
        return 0
    added = 0
    oldest = now - ages.window  # older ones Wavy no longer knows: not worth listing now
    for kind, after in (("callback", ages.callback_after), ("dlr", ages.dlr_after)):
        mark_at, mark_id = state[f"{kind}_mark_at"], state[f"{kind}_mark_id"]
        if mark_at is None or mark_at < oldest:
            mark_at, mark_id = oldest, ""
        seen = (
            (
                await conn.execute(
                    _SEEN,
                    {
                        "mark_at": mark_at,
                        "mark_id": mark_id,
                        "until": now - after,
                        "limit": EXAMINE_BATCH,
                    },
                )
            )
            .mappings()
            .all()
        )
        if not seen:
            continue
        chosen = [
            (row, found)
            for row in seen
            if (found := _overdue_row(kind, row, now, ages)) is not None
        ]
        if chosen:
            await conn.execute(
                _ADD,
                {
                    "ids": [row["id"] for row, _ in chosen],
                    "kinds": [kind for _ in chosen],
                    "message_ids": [row["message_id"] for row, _ in chosen],
                    "sub_accounts": [row["sub_account"] for row, _ in chosen],
                    "sent": [row["submitted_at"] for row, _ in chosen],
                    "since": [since for _, (since, _) in chosen],
                    "due": [due for _, (_, due) in chosen],
                },
            )
            added += len(chosen)
        await conn.execute(_MARK[kind], {"at": seen[-1]["submitted_at"], "id": seen[-1]["id"]})
    return added


def _overdue_row(
    kind: str, seen: Any, now: datetime, ages: Ages
) -> tuple[datetime, datetime] | None:
    """(waiting since, next check) when the MT just looked at is overdue for ``kind``."""
    if kind == "callback":
        if seen["outcome"] in ("sent", "unknown") and seen["sent_status_code"] is None:
            return (seen["submitted_at"], now)
        return None
    if seen["outcome"] == "sent" and awaits_dlr(
        seen["sent_status_code"],
        seen["delivered_status_code"],
        seen["carrier_name"],
        ages.no_dlr_carriers,
    ):
        since = seen["sent_at"] or seen["submitted_at"]
        return (since, max(now, since + ages.dlr_after))
    return None


_GIVE_UP = text(
    "UPDATE overdue SET given_up_at = :now WHERE given_up_at IS NULL AND sent_at < :oldest "
    "RETURNING kind"
)


async def give_up(conn: AsyncConnection, now: datetime, window: timedelta) -> list[OverdueKind]:
    """Those Wavy no longer knows (older than the window) are asked no more: their kinds."""
    rows = await conn.execute(_GIVE_UP, {"now": now, "oldest": now - window})
    return [row.kind for row in rows]


# ---------------------------------------------------------------------------- asking

# The shared pace: a turn to ask Wavy is taken when it is due and something is to be asked.
_TAKE_TURN = text(
    "UPDATE reconcile_state SET next_ask_at = :next_ask_at "
    "WHERE id = 1 AND next_ask_at <= :now AND EXISTS (SELECT 1 FROM overdue "
    "WHERE given_up_at IS NULL AND next_check_at <= :now) RETURNING 1"
)
_BACKOFF_SO_FAR = text("SELECT backoff_s FROM reconcile_state WHERE id = 1 FOR UPDATE")
_BACK_OFF = text(
    "UPDATE reconcile_state SET backoff_s = :backoff, next_ask_at = :next_ask_at WHERE id = 1"
)
_BACKED_OFF_NO_MORE = text(
    "UPDATE reconcile_state SET backoff_s = 0 WHERE id = 1 AND backoff_s > 0"
)
_CLAIM = text(
    "UPDATE overdue AS o SET next_check_at = :held_until "
    "FROM (SELECT mt_id FROM overdue WHERE given_up_at IS NULL AND next_check_at <= :now "
    "ORDER BY next_check_at LIMIT :limit FOR UPDATE SKIP LOCKED) AS due, mts AS t "
    "WHERE o.mt_id = due.mt_id AND t.id = o.mt_id "
    "RETURNING o.mt_id, o.kind, o.checks, o.message_id, t.correlation_id, t.destination, "
    "o.sub_account"
)


async def take_turn(conn: AsyncConnection, now: datetime, interval_s: float) -> bool:
    """This worker's turn to ask Wavy once (every worker and replica share one pace)."""
    next_ask_at = now + timedelta(seconds=interval_s)
    taken = await conn.scalar(_TAKE_TURN, {"now": now, "next_ask_at": next_ask_at})
    return taken is not None


async def back_off(conn: AsyncConnection, now: datetime, retry_after_s: float | None) -> float:
    """Wavy answered 429 or 5xx: nobody asks for a while (its Retry-After, or a wait that
    doubles while the failures last). The wait taken."""
    backoff = next_backoff_s(float(await conn.scalar(_BACKOFF_SO_FAR) or 0))
    wait_s = retry_after_s if retry_after_s is not None else backoff
    await conn.execute(
        _BACK_OFF, {"backoff": backoff, "next_ask_at": now + timedelta(seconds=wait_s)}
    )
    return wait_s


async def answered(conn: AsyncConnection) -> None:
    """Wavy answered: the backoff starts over."""
    await conn.execute(_BACKED_OFF_NO_MORE)


async def claim_due(
    conn: AsyncConnection, now: datetime, limit: int, lease: timedelta
) -> list[Row]:
    """The overdue messages due for a check, held for ``lease`` (another worker takes them
    if this one dies before settling them)."""
    rows = await conn.execute(_CLAIM, {"now": now, "held_until": now + lease, "limit": limit})
    return [dict(row._mapping) for row in rows]


_STATUSES = text(
    "SELECT id, sent_status_code, sent_at, delivered_status_code, carrier_name "
    "FROM messages WHERE id = ANY(CAST(:ids AS text[]))"
)


async def statuses_of(conn: AsyncConnection, message_ids: Iterable[str]) -> dict[str, Row]:
    """What the messages' rows hold now, by id."""
    ids = sorted(set(message_ids))
    if not ids:
        return {}
    rows = await conn.execute(_STATUSES, {"ids": ids})
    return {row.id: dict(row._mapping) for row in rows}


_LEARN_ID = text(
    "WITH learnt AS (UPDATE mts SET message_id = :message_id, outcome = 'sent' "
    "WHERE id = :mt_id AND message_id IS NULL "
    "AND NOT EXISTS (SELECT 1 FROM mts AS o WHERE o.message_id = :message_id) RETURNING id) "
    "UPDATE overdue SET message_id = :message_id WHERE mt_id IN (SELECT id FROM learnt) "
    "RETURNING mt_id"
)


async def learn_message_id(conn: AsyncConnection, mt_id: str, message_id: str) -> bool:
    """A send that timed out, found at Wavy by its correlationId: Wavy did send it. False
    when the id is already another MT's (then it is not this one's)."""
    learnt = await conn.scalar(_LEARN_ID, {"mt_id": mt_id, "message_id": message_id})
    return learnt is not None


_TAKEN_ELSEWHERE = text(
    "SELECT w.mt_id, w.message_id FROM unnest(CAST(:mt_ids AS text[]), CAST(:ids AS text[]), "
    "CAST(:subs AS text[])) AS w(mt_id, message_id, sub_account) "
    "WHERE EXISTS (SELECT 1 FROM mts AS t WHERE t.message_id = w.message_id "
    "AND t.id <> w.mt_id) "
    "OR EXISTS (SELECT 1 FROM messages AS m WHERE m.id = w.message_id "
    "AND m.sub_account IS NOT NULL AND m.sub_account IS DISTINCT FROM w.sub_account)"
)


async def taken_elsewhere(
    conn: AsyncConnection, found: Sequence[tuple[str, str, str | None]]
) -> set[tuple[str, str]]:
    """Of the ids Wavy gave that may be sends that timed out (mt id, Wavy's id, the MT's
    sub-account), the pairs where the id is already another MT's, or another sub-account's
    message: a correlationId and a destination matched someone else's message."""
    if not found:
        return set()
    rows = await conn.execute(
        _TAKEN_ELSEWHERE,
        {
            "mt_ids": [mt_id for mt_id, _, _ in found],
            "ids": [message_id for _, message_id, _ in found],
            "subs": [sub_account for _, _, sub_account in found],
        },
    )
    return {(row.mt_id, row.message_id) for row in rows}


_SHARED = text(
    "SELECT t.id FROM mts AS t WHERE t.id = ANY(CAST(:ids AS text[])) AND EXISTS ("
    "SELECT 1 FROM mts AS o WHERE o.correlation_id = t.correlation_id "
    "AND o.destination = t.destination AND o.message_id IS NULL AND o.id <> t.id "
    "AND o.sub_account IS DISTINCT FROM t.sub_account)"
)


async def shared_with_another_sub_account(conn: AsyncConnection, mt_ids: Sequence[str]) -> set[str]:
    """Of these MTs with no id yet, those whose correlationId and destination another
    sub-account's MT with no id also has: Wavy's answer cannot tell which message is whose."""
    if not mt_ids:
        return set()
    rows = await conn.execute(_SHARED, {"ids": list(mt_ids)})
    return {row.id for row in rows}


_RESOLVED = text("DELETE FROM overdue WHERE mt_id = ANY(CAST(:ids AS text[]))")
_NOW_AWAITS_DLR = text(
    "UPDATE overdue AS o SET kind = 'dlr', checks = 0, last_checked_at = :now, "
    "waiting_since = w.since, next_check_at = w.due "
    "FROM unnest(CAST(:ids AS text[]), CAST(:since AS timestamptz[]), "
    "CAST(:due AS timestamptz[])) AS w(mt_id, since, due) WHERE o.mt_id = w.mt_id"
)
_RECHECK = text(
    "UPDATE overdue AS o SET checks = o.checks + 1, last_checked_at = :now, "
    "next_check_at = w.due "
    "FROM unnest(CAST(:ids AS text[]), CAST(:due AS timestamptz[])) AS w(mt_id, due) "
    "WHERE o.mt_id = w.mt_id"
)
_RELEASE = text("UPDATE overdue SET next_check_at = :now WHERE mt_id = ANY(CAST(:ids AS text[]))")


@dataclass(slots=True)
class Settled:
    """What a check decided for each claimed message."""

    resolved: list[str]  # its status came: no longer overdue
    # Its callback came: a DLR is awaited from then (mt id, since, when it is next due).
    awaiting_dlr: list[tuple[str, datetime, datetime]]
    recheck: list[tuple[str, datetime]]  # nothing yet: asked again then


async def settle(conn: AsyncConnection, now: datetime, done: Settled) -> None:
    if done.resolved:
        await conn.execute(_RESOLVED, {"ids": done.resolved})
    if done.awaiting_dlr:
        await conn.execute(
            _NOW_AWAITS_DLR,
            {
                "now": now,
                "ids": [mt_id for mt_id, _, _ in done.awaiting_dlr],
                "since": [since for _, since, _ in done.awaiting_dlr],
                "due": [due for _, _, due in done.awaiting_dlr],
            },
        )
    if done.recheck:
        await conn.execute(
            _RECHECK,
            {
                "now": now,
                "ids": [mt_id for mt_id, _ in done.recheck],
                "due": [due for _, due in done.recheck],
            },
        )


async def release(conn: AsyncConnection, now: datetime, mt_ids: Sequence[str]) -> None:
    """Claimed but not asked (Wavy was away): due again at once, no check counted."""
    if mt_ids:
        await conn.execute(_RELEASE, {"now": now, "ids": list(mt_ids)})


# ---------------------------------------------------------------------------- reading


def _listed(scope: Scope, *, with_mt: bool = False) -> str:
    """The overdue of a kind, due, whose status has still not come, in the scope (``with_mt``:
    joined to their MTs, for the fields only the MT holds)."""
    owner = "" if scope.everything else "AND o.sub_account = :sub_account "
    mt = "JOIN mts AS t ON t.id = o.mt_id " if with_mt else ""
    return (
        "FROM overdue AS o " + mt + "LEFT JOIN messages AS m ON m.id = o.message_id "
        "WHERE o.kind = :kind AND o.waiting_since <= :due_since "
        "AND CASE WHEN o.kind = 'callback' THEN m.sent_status_code IS NULL "
        "ELSE m.delivered_status_code IS NULL END " + owner
    )


def _listing_params(scope: Scope, kind: OverdueKind, now: datetime, ages: Ages) -> Row:
    after = ages.callback_after if kind == "callback" else ages.dlr_after
    return {"kind": kind, "due_since": now - after, "sub_account": scope.sub_account}


async def overdue_page(
    conn: AsyncConnection,
    scope: Scope,
    kind: OverdueKind,
    now: datetime,
    ages: Ages,
    after: tuple[datetime, str] | None,
    limit: int,
) -> tuple[int, list[Row]]:
    """How many are overdue in the scope, and a page of them, longest waiting first."""
    params = _listing_params(scope, kind, now, ages)
    total = await conn.scalar(text("SELECT count(*) " + _listed(scope)), params)
    page = (
        "SELECT o.mt_id, o.kind, o.waiting_since, o.checks, o.last_checked_at, o.given_up_at, "
        "o.message_id, o.sub_account, o.sent_at, t.correlation_id, t.destination "
        + _listed(scope, with_mt=True)
        + ("AND (o.waiting_since, o.mt_id) > (:after_at, :after_id) " if after else "")
        + "ORDER BY o.waiting_since, o.mt_id LIMIT :limit"
    )
    if after:
        params |= {"after_at": after[0], "after_id": after[1]}
    rows = await conn.execute(text(page), params | {"limit": limit})
    return int(total or 0), [dict(row._mapping) for row in rows]


_RECOVERED_SINCE = (
    "SELECT count(*) FROM recoveries AS r JOIN mts AS t ON t.id = r.mt_id "
    "WHERE r.recovered_at >= :since "
)
_RECOVERED = text(
    "INSERT INTO recoveries (mt_id, kind, recovered_at) "
    "SELECT mt_id, kind, :now FROM unnest(CAST(:ids AS text[]), CAST(:kinds AS text[])) "
    "AS r(mt_id, kind) ON CONFLICT DO NOTHING"
)


async def note_recovered(
    conn: AsyncConnection, now: datetime, recovered: Sequence[tuple[str, OverdueKind]]
) -> None:
    """Statuses that came from asking Wavy: counted (recovered today, by sub-account)."""
    if recovered:
        await conn.execute(
            _RECOVERED,
            {
                "now": now,
                "ids": [mt_id for mt_id, _ in recovered],
                "kinds": [kind for _, kind in recovered],
            },
        )


async def counts(
    conn: AsyncConnection, scope: Scope, now: datetime, ages: Ages, since: datetime
) -> Row:
    """Overdue now (by kind, given up apart), and the messages recovered since ``since``."""
    found: Row = {}
    for kind in OVERDUE_KINDS:
        params = _listing_params(scope, kind, now, ages)
        row = (
            await conn.execute(
                text(
                    "SELECT count(*) FILTER (WHERE o.given_up_at IS NULL) AS asking, "
                    "count(*) FILTER (WHERE o.given_up_at IS NOT NULL) AS given_up "
                    + _listed(scope)
                ),
                params,
            )
        ).one()
        found[kind] = {"overdue": row.asking, "givenUp": row.given_up}
    owner = "" if scope.everything else "AND t.sub_account = :sub_account"
    found["recovered"] = await conn.scalar(
        text(_RECOVERED_SINCE + owner), {"since": since, "sub_account": scope.sub_account}
    )
    return found


_STATE = text(
    "SELECT callback_mark_at, dlr_mark_at, next_ask_at, backoff_s FROM reconcile_state WHERE id = 1"
)


async def state(conn: AsyncConnection) -> Row:
    """How far the passes have looked, and the shared pace."""
    row = (await conn.execute(_STATE)).mappings().one_or_none()
    return dict(row) if row else {}
