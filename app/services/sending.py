"""Sending through the service, as a drop-in for Wavy's send API: each MT checked as Wavy
checks it, refused here when its destination is on an opt-out list that applies (with the 204
or 203 status Wavy itself would give it), passed to Wavy with the client's own credentials
otherwise, and recorded before the client is answered.

The answers are Wavy's: its body for a send it took or refused, ours in its shape for the rest
(``SendAnswer``). Nothing here knows HTTP routing; app.api.sending only calls these."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from app import metrics
from app.db import sending as queries
from app.db.sending import Batched, Found, Lookup, MtRow
from app.db.writer import BatchWriter
from app.errors import BadSend, Unavailable, WriteRefused
from app.outbound.wavy import WavyClient, WavyTimedOut, WavyUnreachable
from app.payloads import replace_nul_characters, validate_items
from app.rules.optouts import ACCOUNT_WIDE
from app.rules.plain_text import is_printable
from app.rules.records import build_event_records
from app.rules.scope import Reader, Role
from app.rules.sending import (
    Mt,
    MtOutcome,
    as_sent,
    check_depth,
    lists_for,
    named_sub_account,
    owners_named,
    read_bulk,
    read_mt,
    refusal_for,
)
from app.rules.webhook_body import items_as_json

log = logging.getLogger(__name__)

SINGLE_PATH = "/v1/send-sms"
BULK_PATH = "/v1/send-bulk-sms"


@dataclass(frozen=True, slots=True)
class SendAnswer:
    """What the client gets: a status, a body (bytes as Wavy wrote them, or ours), headers."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    # Wavy took the message, or may have: an Idempotency-Key keeps this answer whatever it is,
    # so that a retry never sends it again.
    sent: bool = False


def wavy_error(status: int, message: str, **headers: str) -> SendAnswer:
    """An answer in Wavy's error shape, ``{"errorCode", "errorMessage"}``."""
    body = orjson.dumps({"errorCode": status, "errorMessage": message})
    return SendAnswer(status, body, headers)


@dataclass(frozen=True, slots=True)
class SendContext:
    engine: AsyncEngine
    writer: BatchWriter
    wavy: WavyClient
    region: str
    store_text: bool
    recorder: Batched[Sequence[MtRow], None]  # MTs committed, in batches, before answering
    lookups: Batched[Lookup, Found]  # opt-out checks, in batches
    rate: SendRate  # the sends passed to Wavy per second, every worker and replica together
    max_wait_s: float  # how long a send past the rate waits before its 429


@dataclass(frozen=True, slots=True)
class Sender:
    """Who sends, and for which sub-account: a user for their own, an admin for the one the
    body names (``subAccount``, as at Wavy), or for none."""

    reader: Reader
    sub_account: str | None


def sender_of(reader: Reader, body: Mapping[str, Any]) -> Sender:
    check_depth(body)
    named = named_sub_account(body.get("subAccount"))
    if reader.role is Role.ADMIN:
        sender = Sender(reader, named)
    elif named not in (None, reader.sub_account):
        raise BadSend("subAccount may be named by an admin only")
    else:
        sender = Sender(reader, reader.sub_account)
    if any(named_sub_account(inner) != sender.sub_account for inner in owners_named(body)):
        raise BadSend("a message's subAccount must be the send's (name it at the root)")
    return sender


async def _refusals(
    context: SendContext, sender: Sender, mts: Sequence[Mt]
) -> list[tuple[int, str] | None]:
    """For each MT, the status that refuses it (its destination on a list that applies)."""
    lists = tuple(lists_for(sender.sub_account))
    wanted = tuple(sorted({"+" + mt.destination for mt in mts}))
    found = await context.lookups((lists, wanted))
    refusals = []
    for mt in mts:
        on = {entry["sub_account"] for entry in found.get("+" + mt.destination, [])}
        refusals.append(refusal_for(bool(on - {ACCOUNT_WIDE}), ACCOUNT_WIDE in on))
    return refusals


def _row(
    context: SendContext,
    sender: Sender,
    mt: Mt,
    outcome: MtOutcome,
    message_id: str | None,
    wavy_status: int | None,
    at: datetime,
) -> MtRow:
    return MtRow(
        id=uuid.uuid4().hex,
        message_id=message_id,
        sub_account=sender.sub_account,
        username=sender.reader.username,
        destination=mt.destination,
        # Wavy takes what PostgreSQL cannot store (U+0000): kept as U+FFFD, as ingestion does.
        correlation_id=stored_text(mt.correlation_id),
        message_text=stored_text(mt.text) if context.store_text else None,
        outcome=outcome,
        wavy_status=wavy_status,
        submitted_at=at,
    )


def _not_recorded(rows: Sequence[MtRow]) -> SendAnswer:
    """What Wavy took (or may have) could not be recorded: never "nothing was sent"."""
    log.exception("MTs Wavy took were not recorded: %s", [row.message_id for row in rows])
    metrics.SENDS.labels("not_recorded", "").inc()
    answer = wavy_error(
        503,
        "Wavy took the message, but it could not be recorded here: do not send it again (its "
        "statuses still come back through the webhooks)",
    )
    return replace(answer, sent=True)


async def _refuse(
    context: SendContext,
    sender: Sender,
    refused: Sequence[tuple[Mt, tuple[int, str]]],
    at: datetime,
) -> list[str]:
    """Each refused MT gets an id of ours and the status Wavy would have called back with,
    stored as that callback: visible in the reads, pushed to endpoints, counted."""
    ids = [str(uuid.uuid4()) for _ in refused]
    callbacks = [
        {
            "id": message_id,
            "destination": mt.destination,
            "sentStatusCode": code,
            "sentStatus": name,
            "sentAt": int(at.timestamp() * 1000),
            **({"correlationId": stored_text(mt.correlation_id)} if mt.correlation_id else {}),
        }
        for message_id, (mt, (code, name)) in zip(ids, refused, strict=True)
    ]
    outcome: dict[int, MtOutcome] = {204: "refused_optout", 203: "refused_blacklisted"}
    rows = [
        _row(context, sender, mt, outcome[code], message_id, None, at)
        for message_id, (mt, (code, _)) in zip(ids, refused, strict=True)
    ]
    records = build_event_records(
        "callback",
        validate_items("callback", callbacks),
        items_as_json(callbacks),
        sub_account=sender.sub_account,
        received_at=at,
    )
    # The status first: an MT recorded without its status would be a refusal nobody sees.
    try:
        await context.writer.write(records)
    except WriteRefused as error:  # our own callback: a fault of ours, not the client's
        raise Unavailable(f"the refusal's status was not stored ({error.sqlstate})") from None
    await context.recorder(rows)
    for _, (code, _) in refused:
        metrics.SENDS.labels("refused", str(code)).inc()
    return ids


def stored_text(value: str | None) -> str | None:
    return None if value is None else str(replace_nul_characters(value))


def _forwarded_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The client's credentials, the very ones checked here, for Wavy to check again."""
    kept = {"content-type": "application/json", "accept": "application/json"}
    for name, value in headers.items():
        if name.lower() in ("username", "authenticationtoken"):
            kept[name] = value
    return kept


# How long to hold back after a 429 whose Retry-After is missing or not a number of seconds.
DEFAULT_BACK_OFF_S = 1.0
MAX_BACK_OFF_S = 60.0


def _seconds(retry_after: str | None) -> float:
    try:
        seconds = float(retry_after) if retry_after else DEFAULT_BACK_OFF_S
    except ValueError:
        seconds = DEFAULT_BACK_OFF_S
    return min(max(seconds, 0.0), MAX_BACK_OFF_S) if math.isfinite(seconds) else MAX_BACK_OFF_S


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


class SendRate:
    """One worker's share of the second's sends, taken from the count every worker and replica
    shares in PostgreSQL a few at a time (a fiftieth of the limit): one round trip per few
    sends, not per send. What a worker took and did not use lapses with its second."""

    def __init__(self, engine: AsyncEngine, limit: int) -> None:
        self._engine = engine
        self._limit = limit
        self._chunk = max(1, limit // 50)
        self._second = -1
        self._left = 0
        self._lock = asyncio.Lock()
        # Until when Wavy asked for no sends (its 429's Retry-After): this worker holds back.
        self._paused_until = 0.0

    def pause(self, seconds: float) -> None:
        """Wavy answered 429: no send from this worker for ``seconds``."""
        self._paused_until = max(self._paused_until, time.time() + seconds)

    async def take(self, max_wait_s: float) -> bool:
        """A place among the second's sends, waiting for later seconds up to ``max_wait_s``."""
        deadline = time.monotonic() + max_wait_s
        while True:
            now = time.time()
            if now < self._paused_until:
                wait = self._paused_until - now
            elif await self._take_in(int(now)):
                return True
            else:
                wait = math.ceil(now) - now + 0.001
            if time.monotonic() + wait > deadline:
                return False
            await asyncio.sleep(wait)

    async def _take_in(self, second: int) -> bool:
        async with self._lock:
            if self._second != second:
                self._second, self._left = second, 0
            if self._left == 0:
                for wanted in dict.fromkeys((self._chunk, 1)):
                    async with self._engine.begin() as conn:
                        if await queries.take_sends(conn, second, wanted, self._limit):
                            self._left = wanted
                            break
            if self._left == 0:
                return False
            self._left -= 1
            return True


async def _call_wavy(
    context: SendContext, path: str, headers: Mapping[str, str], body: Any
) -> SendAnswer | dict[str, Any]:
    """Wavy's parsed answer to a send it took, or the answer the client gets otherwise."""
    if not await context.rate.take(context.max_wait_s):
        metrics.SENDS.labels("rate_limited", "429").inc()
        return wavy_error(
            429,
            "more than WAVY_SEND_MAX_RPS sends a second; nothing was sent",
            **{"Retry-After": "1"},
        )
    try:
        with metrics.SEND_SECONDS.time():
            answer = await context.wavy.post(path, _forwarded_headers(headers), orjson.dumps(body))
    except WavyUnreachable:
        metrics.SENDS.labels("unreachable", "").inc()
        return wavy_error(502, "Wavy could not be reached; nothing was sent, retry")
    metrics.SENDS.labels("wavy", str(answer.status)).inc()
    if 200 <= answer.status < 300:
        parsed = _json_object(answer.body)
        if parsed is not None:
            return parsed
        return wavy_error(502, "Wavy's answer was not the JSON object its API documents")
    if answer.status >= 500:
        return SendAnswer(502, answer.body)
    if answer.status == 429:
        context.rate.pause(_seconds(answer.retry_after))
    extra = {"Retry-After": answer.retry_after} if answer.retry_after else {}
    return SendAnswer(answer.status, answer.body, extra)


async def send_one(
    context: SendContext, reader: Reader, headers: Mapping[str, str], body: Any
) -> SendAnswer:
    """A single send (POST /v1/send-sms, or its GET form's fields)."""
    if not isinstance(body, dict):
        raise BadSend("a send is a JSON object")
    sender = sender_of(reader, body)
    mt = read_mt(body, context.region)
    at = datetime.now(UTC)
    [refusal] = await _refusals(context, sender, [mt])
    if refusal is not None:
        [message_id] = await _refuse(context, sender, [(mt, refusal)], at)
        return _ok({"id": message_id, "correlationId": mt.correlation_id})
    try:
        answer = await _call_wavy(context, SINGLE_PATH, headers, as_sent(mt))
    except WavyTimedOut:
        answer, rows = _timed_out(), [_row(context, sender, mt, "unknown", None, None, at)]
    else:
        if isinstance(answer, SendAnswer):
            return answer
        wavy_id = answer.get("id")
        rows = [_row(context, sender, mt, "sent", str(wavy_id) if wavy_id else None, 200, at)]
        answer = _ok(answer)
    try:
        await context.recorder(rows)
    except Exception:
        return _not_recorded(rows)
    return answer


async def send_bulk(
    context: SendContext, reader: Reader, headers: Mapping[str, str], body: Any
) -> SendAnswer:
    """A bulk send: the allowed messages go to Wavy in one request, in their order; the answer
    lists every message, in the client's order. Nothing is stored when Wavy refuses the bulk,
    so that a retry stores nothing twice."""
    if not isinstance(body, dict):
        raise BadSend("a bulk send is a JSON object")
    sender = sender_of(reader, body)
    mts = read_bulk(body, context.region)
    at = datetime.now(UTC)
    refusals = await _refusals(context, sender, mts)
    refused = [(mt, refusal) for mt, refusal in zip(mts, refusals, strict=True) if refusal]
    allowed = [mt for mt, refusal in zip(mts, refusals, strict=True) if refusal is None]
    if not allowed:  # nothing goes to Wavy: a failure here sent nothing
        refused_ids = iter(await _refuse(context, sender, refused, at))
        return _ok(_bulk_answer(uuid.uuid4().hex, mts, refusals, refused_ids, iter([])))
    try:
        answer = await _call_wavy(
            context, BULK_PATH, headers, {**body, "messages": [as_sent(mt) for mt in allowed]}
        )
    except WavyTimedOut:
        unknown = [_row(context, sender, mt, "unknown", None, None, at) for mt in allowed]
        try:
            await context.recorder(unknown)
        except Exception:
            return _not_recorded(unknown)
        return _timed_out()
    if isinstance(answer, SendAnswer):
        return answer
    items = answer.get("messages")
    sent_ids = [
        item.get("id") if isinstance(item, dict) else None
        for item in (items if isinstance(items, list) else [])
    ]
    sent_ids += [None] * (len(allowed) - len(sent_ids))
    rows = [
        _row(context, sender, mt, "sent", str(sent) if sent else None, 200, at)
        for mt, sent in zip(allowed, sent_ids, strict=False)
    ]
    try:
        refused_ids = iter(await _refuse(context, sender, refused, at) if refused else [])
        await context.recorder(rows)
    except Exception:
        return _not_recorded(rows)
    batch_id = answer.get("id", uuid.uuid4().hex)
    return _ok(_bulk_answer(batch_id, mts, refusals, refused_ids, iter(sent_ids)))


def _bulk_answer(
    batch_id: Any,
    mts: Sequence[Mt],
    refusals: Sequence[tuple[int, str] | None],
    refused_ids: Iterator[str],
    sent_ids: Iterator[Any],
) -> dict[str, Any]:
    """Every message, in the client's order: ours for the refused, Wavy's for the rest."""
    messages = [
        {"id": next(refused_ids) if refusal else next(sent_ids), "correlationId": mt.correlation_id}
        for mt, refusal in zip(mts, refusals, strict=True)
    ]
    return {"id": batch_id, "messages": messages}


def _ok(answer: Mapping[str, Any]) -> SendAnswer:
    return SendAnswer(200, orjson.dumps(answer))


def _timed_out() -> SendAnswer:
    metrics.SENDS.labels("timeout", "").inc()
    answer = wavy_error(
        504,
        "Wavy did not answer in time: the message may have been sent; it is kept as unknown, "
        "look it up by correlationId before sending it again",
    )
    return replace(answer, sent=True)


# ---------------------------------------------------------------------------- idempotency

# As Stripe's: a retry with the same key and body within a day gets the first answer, and
# nothing is sent again. Answers after which nothing was sent are not kept: a retry sends.
IDEMPOTENCY_WINDOW = timedelta(hours=24)
MAX_IDEMPOTENCY_KEY_CHARS = 255
_NOT_KEPT = frozenset({400, 401, 408, 413, 429, 502, 503})


async def send_idempotently(
    context: SendContext,
    reader: Reader,
    key: str | None,
    raw_body: bytes,
    send: Callable[[], Awaitable[SendAnswer]],
) -> SendAnswer:
    """``send()``, or the first answer to the same body under the same Idempotency-Key."""
    if key is None:
        return await send()
    if not key or len(key) > MAX_IDEMPOTENCY_KEY_CHARS or not is_printable(key):
        raise BadSend(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters")
    digest = hashlib.sha256(raw_body).hexdigest()
    username = reader.username
    async with context.engine.begin() as conn:
        claim = await queries.claim_key(conn, username, key, digest, IDEMPOTENCY_WINDOW)
    if claim.state == "conflict":
        return wavy_error(409, "this Idempotency-Key was used with another body")
    if claim.state == "running":
        return wavy_error(
            409, "a send with this Idempotency-Key is still running", **{"Retry-After": "1"}
        )
    if claim.state == "replay":
        assert claim.status is not None
        assert claim.answer is not None
        return SendAnswer(claim.status, claim.answer, {"Idempotent-Replayed": "true"})
    try:
        answer = await send()
    except BaseException:
        async with context.engine.begin() as conn:
            await queries.release_key(conn, username, key)
        raise
    async with context.engine.begin() as conn:
        if answer.status in _NOT_KEPT and not answer.sent:
            await queries.release_key(conn, username, key)
        else:
            await queries.keep_answer(conn, username, key, answer.status, answer.body)
    return answer
