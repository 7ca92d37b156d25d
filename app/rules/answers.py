"""How stored rows are shown, in Wavy's field names: the same in the read API's answers, the
events pushed to endpoints and the CLI. (app.api.schemas documents these shapes as models.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

Row = dict[str, Any]


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


def epoch_ms(moment: datetime | None) -> int | None:
    """Whole milliseconds since 1970, exactly: a float's timestamp() * 1000 is a millisecond
    short for some times past year 2242, which Wavy's epoch fields allow."""
    return None if moment is None else (moment - _EPOCH) // _ONE_MS


def status_out(row: Row) -> dict[str, Any]:
    sent_date, sent_at = iso(row["sent_at"]), epoch_ms(row["sent_at"])
    return {
        "id": row["id"],
        "correlationId": row["correlation_id"],
        "carrierId": row["carrier_id"],
        "carrierName": row["carrier_name"],
        "destination": row["destination"],
        "sentStatusCode": row["sent_status_code"],
        "sentStatus": row["sent_status"],
        "sentDate": sent_date,
        "sentAt": sent_at,
        "sentStatusDate": sent_date,
        "sentStatusAt": sent_at,
        "deliveredStatusCode": row["delivered_status_code"],
        "deliveredStatus": row["delivered_status"],
        "deliveredDate": iso(row["delivered_at"]),
        "deliveredAt": epoch_ms(row["delivered_at"]),
        "updatedDate": iso(row["updated_at"]),
        "updatedAt": epoch_ms(row["updated_at"]),
        "campaignId": row["campaign_id"],
        "extraInfo": row["extra_info"],
        "subAccount": row["sub_account"],
        "firstSeenAt": iso(row["first_seen_at"]),
    }


def status_envelope(rows: list[Row], start: datetime, end: datetime) -> dict[str, Any]:
    return {
        "total": len(rows),
        "start": iso(start),
        "end": iso(end),
        "smsStatuses": [status_out(row) for row in rows],
    }


def mo_out(row: Row) -> dict[str, Any]:
    has_mt = any(
        row[name] is not None for name in ("mt_id", "mt_correlation_id", "mt_username", "mt_email")
    )
    return {
        "id": row["id"],
        "subAccount": row["sub_account"],
        "campaignAlias": row["campaign_alias"],
        "carrierId": row["carrier_id"],
        "carrierName": row["carrier_name"],
        "source": row["source"],
        "shortCode": row["short_code"],
        "messageText": row["message_text"],
        "receivedAt": epoch_ms(row["received_at"]),
        "receivedDate": iso(row["received_at"]),
        "mt": {
            "id": row["mt_id"],
            "correlationId": row["mt_correlation_id"],
            "username": row["mt_username"],
            "email": row["mt_email"],
        }
        if has_mt
        else None,
    }


def event_out(row: Row) -> dict[str, Any]:
    return {
        "kind": row["kind"],
        "sentStatusCode": row["sent_status_code"],
        "deliveredStatusCode": row["delivered_status_code"],
        "receivedAt": iso(row["received_at"]),
        # Asked of Wavy by reconciliation, not posted by it.
        "reconciled": row["reconciled"],
        "payload": row["payload"],
    }


def optout_entry(row: Row) -> dict[str, Any]:
    return {
        "number": row["e164"],
        "subAccount": row["sub_account"] or None,
        "optedOut": row.get("opted_out", True),
        "since": iso(row["since"]),
        "source": row["source"],
        "keyword": row["keyword"],
        "reason": row["reason"],
    }


def optout_history_item(row: Row) -> dict[str, Any]:
    return {
        "subAccount": row["sub_account"] or None,
        "optedOut": row["opted_out"],
        "at": iso(row["at"]),
        "source": row["source"],
        "keyword": row["keyword"],
        "moId": row["mo_id"],
        "messageId": row["message_id"],
        "actor": row["actor"],
        "reason": row["reason"],
        "recordedAt": iso(row["recorded_at"]),
    }


def overdue_out(row: Row) -> dict[str, Any]:
    return {
        "id": row["message_id"],
        "correlationId": row["correlation_id"],
        "destination": row["destination"],
        "subAccount": row["sub_account"],
        "sentAt": iso(row["sent_at"]),
        "kind": row["kind"],
        "waitingSince": iso(row["waiting_since"]),
        "checks": row["checks"],
        "lastCheckedAt": iso(row["last_checked_at"]),
        "givenUp": row["given_up_at"] is not None,
    }
