"""How callbacks and DLRs of one message merge into its single status row.

The merge is a join in the lattice sense: commutative, associative and idempotent, so any order
and any repetition of the same events gives the same row. Each part has its own rule:

* the **sent stage** (code, name, time) comes whole from the event with the greatest
  ``sent_stage_key``: a callback outranks a DLR (which only echoes the sent stage), then the
  later time, then the code and name, so ties are broken deterministically;
* the **delivered stage** comes whole from the greatest ``delivered_stage_key``: the later
  ``deliveredAt`` wins; at equal times ``4 DELIVERED_SUCCESS`` beats other codes, then code, name;
* **descriptive fields** (sub-account, correlationId, destination, carrier, campaign,
  extraInfo) keep the greatest non-null value: null never erases, and disagreements resolve the
  same way whatever the order;
* ``first_seen_at`` is the earliest receive time, ``updated_at`` the latest.

``app.db.ingest`` runs the very same rules in SQL (text compared with ``COLLATE "C"``, which
orders as Python's ``str`` does); the property tests hold both to this module.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import reduce
from typing import Any, TypeVar

from app.payloads import Callback, Dlr, campaign_text
from app.rules.status_codes import DELIVERED_STATUS_NAMES, SENT_STATUS_NAMES, status_name

SENT_BY_NOBODY, SENT_BY_DLR, SENT_BY_CALLBACK = 0, 1, 2
DELIVERED_SUCCESS = 4

# Stand-ins for "absent" that sort below every value validation lets through.
NO_TIME = datetime.min.replace(tzinfo=UTC)
NO_CODE = -1
NO_NAME = ""

DESCRIPTIVE_FIELDS = (
    "sub_account",
    "correlation_id",
    "destination",
    "carrier_id",
    "carrier_name",
    "campaign_id",
    "extra_info",
)


# Not frozen, though never mutated: a frozen dataclass's __init__ sets each field through
# object.__setattr__, several times slower for these 17 fields; one is built per callback or
# DLR, a measurable share of the service's CPU under 1000-item arrays.
@dataclass(slots=True)
class MessageStatus:
    """The merged status of one MT message (one row of the ``messages`` table)."""

    id: str
    sub_account: str | None
    correlation_id: str | None
    destination: str | None
    carrier_id: int | None
    carrier_name: str | None
    campaign_id: str | None
    extra_info: str | None
    sent_source: int
    sent_status_code: int | None
    sent_status: str | None
    sent_at: datetime | None
    delivered_status_code: int | None
    delivered_status: str | None
    delivered_at: datetime | None
    first_seen_at: datetime
    updated_at: datetime


def sent_stage_key(status: MessageStatus) -> tuple[int, datetime, int, str]:
    return (
        status.sent_source,
        status.sent_at or NO_TIME,
        NO_CODE if status.sent_status_code is None else status.sent_status_code,
        status.sent_status or NO_NAME,
    )


def delivered_stage_key(status: MessageStatus) -> tuple[datetime, bool, int, str]:
    code = status.delivered_status_code
    return (
        status.delivered_at or NO_TIME,
        code == DELIVERED_SUCCESS,
        NO_CODE if code is None else code,
        status.delivered_status or NO_NAME,
    )


def status_from_event(
    event: Callback, *, sub_account: str | None, received_at: datetime
) -> MessageStatus:
    """The row a single callback or DLR would produce on its own."""
    sent_time = event.sent_time
    has_sent_stage = event.sent_status_code is not None or sent_time is not None
    # type() rather than isinstance(): pydantic models are ABCs, and isinstance on them was a
    # measurable share of a 1000-item batch.
    delivered = event if type(event) is Dlr else None
    source = SENT_BY_DLR if delivered is not None else SENT_BY_CALLBACK
    # Positional, in the fields' order: for 17 fields keyword arguments cost the call twice as
    # much, and one status is built per callback or DLR. The test
    # test_each_field_of_an_event_lands_in_its_own_column holds every value to its field.
    return MessageStatus(
        event.id,  # id
        sub_account,
        event.correlation_id,
        event.destination,
        event.carrier_id,
        event.carrier_name,
        campaign_text(event.campaign_id),
        event.extra_info,
        source if has_sent_stage else SENT_BY_NOBODY,  # sent_source
        event.sent_status_code if has_sent_stage else None,
        (  # sent_status
            status_name(event.sent_status_code, event.sent_status, SENT_STATUS_NAMES)
            if has_sent_stage
            else None
        ),
        sent_time if has_sent_stage else None,  # sent_at
        delivered.delivered_status_code if delivered else None,
        (  # delivered_status
            status_name(
                delivered.delivered_status_code, delivered.delivered_status, DELIVERED_STATUS_NAMES
            )
            if delivered
            else None
        ),
        delivered.delivered_time if delivered else None,  # delivered_at
        received_at,  # first_seen_at
        received_at,  # updated_at
    )


T = TypeVar("T", str, int)


def _greatest(a: T | None, b: T | None) -> T | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def merge_statuses(a: MessageStatus, b: MessageStatus) -> MessageStatus:
    """Join two partial views of the same message (see the module docstring for the rules)."""
    if a.id != b.id:
        raise ValueError(f"cannot merge statuses of different messages: {a.id} / {b.id}")
    sent = a if sent_stage_key(a) >= sent_stage_key(b) else b
    delivered = a if delivered_stage_key(a) >= delivered_stage_key(b) else b
    descriptive: dict[str, Any] = {
        name: _greatest(getattr(a, name), getattr(b, name)) for name in DESCRIPTIVE_FIELDS
    }
    return replace(
        a,
        **descriptive,
        sent_source=sent.sent_source,
        sent_status_code=sent.sent_status_code,
        sent_status=sent.sent_status,
        sent_at=sent.sent_at,
        delivered_status_code=delivered.delivered_status_code,
        delivered_status=delivered.delivered_status,
        delivered_at=delivered.delivered_at,
        first_seen_at=min(a.first_seen_at, b.first_seen_at),
        updated_at=max(a.updated_at, b.updated_at),
    )


def merge_status_events(statuses: list[MessageStatus]) -> list[MessageStatus]:
    """Fold a batch into one status per message id (PostgreSQL refuses to upsert a row twice in
    one statement), sorted by id so concurrent batches lock rows in the same order."""
    by_id: dict[str, list[MessageStatus]] = {}
    for status in statuses:
        by_id.setdefault(status.id, []).append(status)
    return [reduce(merge_statuses, by_id[message_id]) for message_id in sorted(by_id)]
