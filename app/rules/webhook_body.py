"""What makes a webhook body acceptable, and why one is refused (no I/O here).

A body is one JSON object or an array of at most ``max_items`` objects; an array is
all-or-nothing. Each refusal (app.errors.Refused) carries a stable reason (also kept with the
rejected body) and a message that tells the sender what to fix. The one HTTP fact here is the
status each refusal is answered with: it decides whether Wavy retries, and it is kept with the
rejected body.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson
from pydantic import ValidationError

from app.errors import RefusalReason, Refused
from app.payloads import (
    EventKind,
    describe_validation_errors,
    has_nul_escape,
    mo_from_query,
    replace_nul_characters,
    validate_items,
)

# Each refusal's answer. 403 for another sub-account's data, 4xx for whatever no retry mends:
# senders retry 5xx and 429, not other 4xx (docs/payloads.md).
REFUSAL_STATUS: dict[RefusalReason, int] = {
    "empty_body": 400,
    "malformed_json": 400,
    "too_deeply_nested": 400,
    "foreign_message": 403,
    "foreign_sub_account": 403,
    "body_timeout": 408,
    "body_too_large": 413,
    "too_many_items": 413,
    "validation_failed": 422,
    "database_refused": 422,
}


@dataclass(frozen=True, slots=True)
class ParsedBody:
    payloads: list[Any]
    # Each item as JSON text, unknown fields included: what its event row keeps.
    payloads_json: list[str]


def refused_by_database(sqlstate: str) -> Refused:
    """Valid by our rules, yet PostgreSQL refuses it (its text is not echoed: it may quote the
    data). Refused, it stops the sender's retries of a body that can only fail again; it is
    kept, and ``rejected replay`` stores it once the cause is fixed."""
    return Refused(
        "database_refused",
        f"the database refused this body's data (SQLSTATE {sqlstate}); it was kept for an operator",
    )


def owned_elsewhere(indexes: tuple[int, ...], ids: list[str]) -> Refused:
    """Items whose id belongs to another sub-account than the key's: a key may write only its
    own sub-account's messages, and no retry changes that. The body's other items were stored:
    sending it again stores nothing twice."""
    return Refused(
        "foreign_message",
        f"{len(indexes)} item(s) name a message or reply of another sub-account, which this "
        "key may not write; they were not stored (the other items were)",
        [
            {"index": index, "field": "id", "id": message_id, "message": "another sub-account's"}
            for index, message_id in zip(indexes, ids, strict=True)
        ],
    )


def too_large(max_bytes: int) -> Refused:
    return Refused("body_too_large", f"body is larger than {max_bytes} bytes")


def url_too_long(max_bytes: int) -> Refused:
    """An MO sent as GET whose URL passed the request head's limit (cut off before the app)."""
    return Refused(
        "body_too_large",
        f"the URL is longer than {max_bytes} bytes; send a long MO as a POST body",
    )


def too_slow(timeout_s: float) -> Refused:
    return Refused("body_timeout", f"the body did not arrive within {timeout_s:g} s")


def parse_json_body(body: bytes) -> Any:
    if not body.strip():
        raise Refused("empty_body", "the body is empty; send a JSON object or array")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        # orjson also refuses nesting deeper than 1024 and invalid UTF-8 here, cheaply.
        raise Refused("malformed_json", f"body is not valid JSON: {error}") from None
    if has_nul_escape(body):
        document = replace_nul_characters(document)
    return document


def validate_document(kind: EventKind, document: Any, *, max_items: int) -> ParsedBody:
    """Validate an already-decoded JSON document (POST body or the MO's query string)."""
    was_array = isinstance(document, list)
    if was_array:
        items: list[Any] = document
        if len(items) > max_items:
            raise Refused(
                "too_many_items",
                f"an array may hold at most {max_items} items, this one has {len(items)}",
            )
    elif isinstance(document, dict):
        items = [document]
    else:
        raise Refused(
            "validation_failed",
            "the body must be a JSON object or an array of objects",
            [{"field": None, "message": "expected an object or an array", "type": "body_type"}],
        )
    try:
        payloads = validate_items(kind, items)
    except ValidationError as error:
        details = describe_validation_errors(error, was_array=was_array)
        failed = len({d.get("index") for d in details}) if was_array else 1
        noun = "item(s)" if was_array else "body"
        raise Refused(
            "validation_failed",
            f"{failed} {noun} failed validation; nothing was stored",
            details,
        ) from None
    return ParsedBody(payloads=payloads, payloads_json=items_as_json(items))


def items_as_json(items: list[Any]) -> list[str]:
    """Each item written back out as compact JSON. orjson writes at most 254 levels of nesting
    while it reads 1024: an item between the two is refused here, not failed in the writer."""
    try:
        return [orjson.dumps(item).decode() for item in items]
    except orjson.JSONEncodeError:
        raise Refused(
            "too_deeply_nested",
            "an item nests arrays or objects more than 254 levels deep; nothing was stored",
        ) from None


def parse_webhook_body(kind: EventKind, body: bytes, *, max_items: int) -> ParsedBody:
    return validate_document(kind, parse_json_body(body), max_items=max_items)


# Credentials that can ride in a query string: never kept, not even in a rejected body.
CREDENTIAL_PARAMETERS = frozenset({"key"})


def query_without_credentials(query: str) -> str:
    """The query string as sent, minus the webhook key: what a refused GET MO keeps."""
    return "&".join(
        part for part in query.split("&") if part.partition("=")[0] not in CREDENTIAL_PARAMETERS
    )


def parse_mo_query(query: str) -> ParsedBody:
    """An MO sent as a query string (GET), validated like a JSON one."""
    params = dict(parse_qsl(query, keep_blank_values=True))
    document = replace_nul_characters(mo_from_query(params, ignore=CREDENTIAL_PARAMETERS))
    return validate_document("mo", document, max_items=1)


def parse_stored_body(
    endpoint: EventKind, method: str, body: bytes, *, max_items: int
) -> ParsedBody:
    """A rejected body parsed again, the way its route parsed it (replay after a fix)."""
    if method == "GET":
        return parse_mo_query(body.decode("utf-8", "replace"))
    return parse_webhook_body(endpoint, body, max_items=max_items)
