"""What one accepted payload becomes in the database: an event-log row, plus the status it
contributes (callbacks, DLRs) or the reply row (MOs). Plain data, no I/O.

Who may write what: a key of a sub-account writes only that sub-account's data. An MO naming
another sub-account is refused here; a callback, DLR or MO whose id already belongs to another
sub-account is refused by the writer (``EventRecord.claimant``), which alone sees the stored
owner. The account's own key (no sub-account) may write anything and claims nothing."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.errors import Refused
from app.payloads import EventKind, Mo
from app.rules.status_merge import MessageStatus, status_from_event


# Plain (not frozen) slotted dataclasses, like MessageStatus and for the same reason: one is
# built per item, and a frozen __init__ costs several times more. Nothing mutates them.
@dataclass(slots=True)
class MoRecord:
    id: str
    sub_account: str | None
    campaign_alias: str | None
    carrier_id: int | None
    carrier_name: str | None
    source: str | None
    short_code: str | None
    message_text: str | None
    received_at: datetime
    mt_id: str | None
    mt_correlation_id: str | None
    mt_username: str | None
    mt_email: str | None
    stored_at: datetime


@dataclass(slots=True)
class EventRecord:
    kind: EventKind
    message_id: str
    sub_account: str | None
    sent_status_code: int | None
    delivered_status_code: int | None
    received_at: datetime
    # Learnt by asking Wavy (reconciliation), not posted by it: the history says so.
    reconciled: bool
    payload_json: str
    # The sub-account of the key that sent it: the id must not belong to another one. None
    # for the account's own key, which may write any message and never claims one. No
    # default: a record built without it would carry the account key's powers.
    claimant: str | None
    status: MessageStatus | None = None
    mo: MoRecord | None = None

    @property
    def retry_key(self) -> tuple[str, str, int | None, int | None]:
        """Two events with the same key are the same event sent twice."""
        return (self.message_id, self.kind, self.sent_status_code, self.delivered_status_code)

    @property
    def owner_key(self) -> tuple[str, str]:
        """What an id belongs to: MOs and MT messages are apart (a reply may reuse an MT id)."""
        return ("mo" if self.kind == "mo" else "mt", self.message_id)


def mo_record(mo: Mo, *, sub_account: str | None, received_at: datetime) -> MoRecord:
    mt = mo.mt
    return MoRecord(
        id=mo.id,
        # An MO names its sub-account; the key it came with is only the fallback.
        sub_account=mo.sub_account or sub_account,
        campaign_alias=mo.campaign_alias,
        carrier_id=mo.carrier_id,
        carrier_name=mo.carrier_name,
        source=mo.source,
        short_code=mo.short_code,
        message_text=mo.message_text,
        received_at=mo.received_time or received_at,
        mt_id=mt.id if mt else None,
        mt_correlation_id=mt.correlation_id if mt else None,
        mt_username=mt.username if mt else None,
        mt_email=mt.email if mt else None,
        stored_at=received_at,
    )


def foreign_sub_account(key_sub_account: str, indexes: list[int]) -> Refused:
    """A key of one sub-account sent MOs naming another: refused (no retry mends it)."""
    return Refused(
        "foreign_sub_account",
        f"this key belongs to sub-account {key_sub_account!r} and writes replies only for it; "
        "nothing was stored",
        [
            {"index": index, "field": "subAccount", "message": "another sub-account's reply"}
            for index in indexes
        ],
    )


def build_event_records(
    kind: EventKind,
    payloads: list[Any],
    payloads_json: list[str],
    *,
    sub_account: str | None,
    received_at: datetime,
    reconciled: bool = False,
) -> list[EventRecord]:
    """Pair each validated payload with its JSON text (unknown fields included). ``sub_account``
    is the key's; raises Refused when MOs name a sub-account other than the key's.
    ``reconciled``: the statuses were asked of Wavy, not posted by it."""
    if kind == "mo" and sub_account is not None:
        foreign = [
            index
            for index, mo in enumerate(payloads)
            if mo.sub_account is not None and mo.sub_account != sub_account
        ]
        if foreign:
            raise foreign_sub_account(sub_account, foreign)
    records: list[EventRecord] = []
    for payload, item_json in zip(payloads, payloads_json, strict=True):
        if kind == "mo":
            mo = mo_record(payload, sub_account=sub_account, received_at=received_at)
            records.append(
                EventRecord(
                    kind=kind,
                    message_id=payload.id,
                    sub_account=mo.sub_account,
                    sent_status_code=None,
                    delivered_status_code=None,
                    received_at=received_at,
                    reconciled=reconciled,
                    payload_json=item_json,
                    mo=mo,
                    claimant=sub_account,
                )
            )
            continue
        # Positional, in the fields' order, as in status_from_event and for the same reason.
        records.append(
            EventRecord(
                kind,
                payload.id,  # message_id
                sub_account,
                payload.sent_status_code,
                payload.delivered_status_code if kind == "dlr" else None,
                received_at,
                reconciled,
                item_json,  # payload_json
                sub_account,  # claimant
                status_from_event(payload, sub_account=sub_account, received_at=received_at),
            )
        )
    return records
