"""Reconciliation's rules, no I/O: which MT is overdue for which status, whose carrier is spared
the DLR, how often one is asked again, and how an item of Wavy's status search becomes the
callback and DLR it would have posted."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

import orjson

from app.payloads import EventKind, replace_nul_characters, validate_items
from app.rules.records import EventRecord, build_event_records

OverdueKind = Literal["callback", "dlr"]
OVERDUE_KINDS: tuple[OverdueKind, ...] = ("callback", "dlr")

# The sent status after which a DLR is awaited: the carrier took the message.
SENT_SUCCESS = 2
# Ids (or correlationIds) in one status search: Wavy documents no limit; this keeps a request
# small while one a second still covers hundreds of thousands of messages an hour.
ASK_BATCH = 100
# Asked again after 1 min, 2, 4, ... up to once an hour (Wavy may learn a status late).
FIRST_RECHECK = timedelta(minutes=1)
LONGEST_RECHECK = timedelta(hours=1)
# How long a claimed check may run before another worker may take it (a worker that died).
CLAIM_LEASE = timedelta(minutes=2)
# Wavy's 429 or 5xx: no request for this long, doubling to the longest while they last.
FIRST_BACKOFF_S = 2.0
LONGEST_BACKOFF_S = 300.0

_DELIVERED_FIELDS = ("deliveredStatusCode", "deliveredStatus", "deliveredAt", "deliveredDate")


def carrier_words(name: str) -> tuple[str, ...]:
    """A carrier's name as words, however it is spelt: "Oi", "OI", "oi móvel", "Oi-Móvel"."""
    plain = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().upper()
    return tuple("".join(c if c.isalnum() else " " for c in plain).split())


def spared_dlr(carrier_name: str | None, no_dlr_carriers: Iterable[str]) -> bool:
    """True when the carrier never sends a DLR: a listed name's words begin the carrier's."""
    if not carrier_name:
        return False
    words = carrier_words(carrier_name)
    for listed in no_dlr_carriers:
        wanted = carrier_words(listed)
        if wanted and words[: len(wanted)] == wanted:
            return True
    return False


def awaits_dlr(
    sent_status_code: int | None,
    delivered_status_code: int | None,
    carrier_name: str | None,
    no_dlr_carriers: Iterable[str],
) -> bool:
    """A successful callback whose DLR has not come, from a carrier that sends DLRs."""
    return (
        sent_status_code == SENT_SUCCESS
        and delivered_status_code is None
        and not spared_dlr(carrier_name, no_dlr_carriers)
    )


def recheck_after(checks: int) -> timedelta:
    """How long after its ``checks``-th unanswered check a message is asked about again."""
    doubled: timedelta = FIRST_RECHECK * 2 ** min(max(checks - 1, 0), 20)
    return min(doubled, LONGEST_RECHECK)


def next_backoff_s(previous_s: float) -> float:
    return min(max(previous_s * 2, FIRST_BACKOFF_S), LONGEST_BACKOFF_S)


def retry_after_s(header: str | None) -> float | None:
    """Wavy's Retry-After in seconds, when it is a number of them."""
    try:
        seconds = float(header) if header else None
    except ValueError:
        return None
    if seconds is None or not 0 <= seconds <= LONGEST_BACKOFF_S:
        return None
    return seconds


def status_items(body: bytes) -> list[dict[str, Any]] | None:
    """The items of a status search's answer (``smsStatuses``), or None when it is not one."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    items = parsed.get("smsStatuses") if isinstance(parsed, dict) else None
    if not isinstance(items, list):
        return None
    return [item for item in items if isinstance(item, dict) and isinstance(item.get("id"), str)]


def records_from_status(
    item: Mapping[str, Any], *, sub_account: str | None, received_at: datetime
) -> list[EventRecord]:
    """What Wavy would have posted for what its status search knows of a message: a callback
    for the sent stage, a DLR for the delivered one (it carries the sent fields too, as Wavy's
    DLRs do), each marked reconciled. Merged by the writer as any posted status is."""
    item = dict(replace_nul_characters(dict(item)))
    callbacks: list[dict[str, Any]] = []
    dlrs: list[dict[str, Any]] = []
    if item.get("sentStatusCode") is not None:
        callbacks.append({k: v for k, v in item.items() if k not in _DELIVERED_FIELDS})
    if item.get("deliveredStatusCode") is not None:
        dlrs.append(item)
    records: list[EventRecord] = []
    stages: tuple[tuple[EventKind, list[dict[str, Any]]], ...] = (
        ("callback", callbacks),
        ("dlr", dlrs),
    )
    for kind, payloads in stages:
        if payloads:
            records += build_event_records(
                kind,
                validate_items(kind, payloads),
                [orjson.dumps(payload).decode() for payload in payloads],
                sub_account=sub_account,
                received_at=received_at,
                reconciled=True,
            )
    return records


def item_of(items: Sequence[Mapping[str, Any]], message_id: str) -> Mapping[str, Any] | None:
    """Wavy's item for the message with this id."""
    return next((item for item in items if item.get("id") == message_id), None)


def items_sent_as(
    items: Sequence[Mapping[str, Any]], correlation_id: str | None, destination: str
) -> list[Mapping[str, Any]]:
    """Wavy's items that may be a send that timed out (no id known): its correlationId and
    destination together (a correlationId alone may be reused). A client that retried the
    send has several."""
    if correlation_id is None:
        return []
    return [
        item
        for item in items
        if item.get("correlationId") == correlation_id
        and str(item.get("destination", "")).lstrip("+") == destination
    ]
