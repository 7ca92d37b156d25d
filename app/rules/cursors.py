"""Opaque pagination cursors: URL-safe base64 of a small JSON array, checked on the way in so a
tampered cursor is a 422, never a 500 or an escape from the caller's scope (scope is applied
by every query regardless of the cursor)."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime, timedelta

import orjson

from app.payloads import MAX_KEY_CHARS


class BadCursor(ValueError):
    pass


def encode_cursor(*parts: int | str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(parts))).decode().rstrip("=")


def _decode(cursor: str, arity: int) -> list[object]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        parts = orjson.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, orjson.JSONDecodeError, ValueError):
        raise BadCursor("unreadable cursor") from None
    if not isinstance(parts, list) or len(parts) != arity:
        raise BadCursor("unreadable cursor")
    return parts


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise BadCursor("unreadable cursor")
    return value


def _time(value: object) -> datetime:
    try:
        return EPOCH + timedelta(microseconds=_int(value))
    except OverflowError:
        raise BadCursor("unreadable cursor") from None


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(moment: datetime) -> int:
    # Integer arithmetic: a float timestamp can be a microsecond off and skip a row.
    return (moment - EPOCH) // timedelta(microseconds=1)


def feed_cursor(tx_id: int, seq: int) -> str:
    return encode_cursor(tx_id, seq)


def read_feed_cursor(cursor: str) -> tuple[int, int]:
    tx_id, seq = _decode(cursor, 2)
    return _int(tx_id), _int(seq)


def time_cursor(moment: datetime, tie_breaker: int | str) -> str:
    return encode_cursor(_micros(moment), tie_breaker)


def read_time_cursor_int(cursor: str) -> tuple[datetime, int]:
    moment, tie = _decode(cursor, 2)
    return _time(moment), _int(tie)


def read_time_cursor_str(cursor: str) -> tuple[datetime, str]:
    moment, tie = _decode(cursor, 2)
    # A stored id never holds a NUL (PostgreSQL's text cannot) nor passes the ids' limit: such
    # a tie was never handed out, and PostgreSQL would refuse to compare with it.
    if not isinstance(tie, str) or "\x00" in tie or len(tie) > MAX_KEY_CHARS:
        raise BadCursor("unreadable cursor")
    return _time(moment), tie
