"""Bad input gets a clear 4xx, never a 5xx, and every refused body is kept as a rejected body."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import fetch_all


async def rejected_bodies(engine: AsyncEngine) -> list[dict[str, Any]]:
    return await fetch_all(engine, "SELECT * FROM rejected_bodies ORDER BY id")


async def stored_count(engine: AsyncEngine) -> int:
    [row] = await fetch_all(
        engine, "SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM messages) AS n"
    )
    return int(row["n"])


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty_body"),
        (b"   \n", "empty_body"),
        (b'{"id": "m1",', "malformed_json"),
        (b"not json at all", "malformed_json"),
        (b'{"id": "\xff\xfe"}', "malformed_json"),  # invalid UTF-8
        (b"[" * 5000 + b"]" * 5000, "malformed_json"),  # nesting deeper than the parser allows
    ],
)
async def test_unparseable_bodies_get_400_and_are_kept(
    hook: Any, engine: AsyncEngine, body: bytes, reason: str
) -> None:
    response = await hook("dlr", content=body)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == reason
    [letter] = await rejected_bodies(engine)
    assert (letter["reason"], letter["status_code"], letter["endpoint"]) == (reason, 400, "dlr")
    assert letter["body"] == body
    assert letter["sub_account"] == "acme"
    assert await stored_count(engine) == 0


async def test_invalid_item_in_an_array_refuses_the_whole_array_naming_index_and_field(
    hook: Any, engine: AsyncEngine
) -> None:
    body = [
        {"id": "ok-1", "sentStatusCode": 2},
        {"id": "ok-2", "sentStatusCode": 2},
        {"sentStatusCode": "two"},
    ]

    response = await hook("callback", body)

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_failed"
    assert {(d["index"], d["field"]) for d in error["details"]} == {
        (2, "id"),
        (2, "sentStatusCode"),
    }
    assert await stored_count(engine) == 0  # all or nothing
    [letter] = await rejected_bodies(engine)
    assert letter["status_code"] == 422
    assert {d["field"] for d in letter["detail"]} == {"id", "sentStatusCode"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"sentStatusCode": 2}, "id"),
        ({"id": ""}, "id"),
        ({"id": "m1", "sentAt": "yesterday"}, "sentAt"),
        ({"id": "m1", "sentStatusCode": 2**40}, "sentStatusCode"),
        ({"id": "m1", "deliveredAt": -5}, "deliveredAt"),
        ({"id": "m1", "deliveredDate": "2016-13-45T99:00:00Z"}, "deliveredDate"),
        ({"id": "m1", "destination": "5" * 300}, "destination"),
        ({"id": "m1", "carrierId": {"a": 1}}, "carrierId"),
        ({"id": ["m1"]}, "id"),
    ],
)
async def test_a_single_invalid_object_gets_422_naming_the_field(
    hook: Any, engine: AsyncEngine, body: dict[str, Any], field: str
) -> None:
    response = await hook("dlr", body)

    assert response.status_code == 422
    details = response.json()["error"]["details"]
    assert field in {d["field"] for d in details}
    assert all("index" not in d for d in details)
    assert len(await rejected_bodies(engine)) == 1


@pytest.mark.parametrize("body", [b'"just a string"', b"42", b"null", b"true"])
async def test_json_that_is_not_an_object_or_array_gets_422(
    hook: Any, engine: AsyncEngine, body: bytes
) -> None:
    response = await hook("callback", content=body)

    assert response.status_code == 422
    assert len(await rejected_bodies(engine)) == 1


async def test_array_over_1000_items_gets_413(hook: Any, engine: AsyncEngine) -> None:
    response = await hook("dlr", [{"id": f"m{i}"} for i in range(1001)])

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_many_items"
    [letter] = await rejected_bodies(engine)
    assert letter["reason"] == "too_many_items"
    assert await stored_count(engine) == 0


async def test_body_over_1_mib_gets_413_and_its_start_is_kept(
    client: httpx.AsyncClient, webhook_key: str, engine: AsyncEngine
) -> None:
    big = b'{"id": "m1", "extraInfo": "' + b"x" * (1024 * 1024) + b'"}'

    async def stream() -> Any:  # no Content-Length: the limit must hold while reading
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    response = await client.post(
        "/v1/webhooks/callback", params={"key": webhook_key}, content=stream()
    )

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"
    [letter] = await rejected_bodies(engine)
    assert letter["body_truncated"] is True
    assert letter["body"] == big[: 1024 * 1024]
    assert await stored_count(engine) == 0


async def test_oversize_body_with_content_length_keeps_its_first_mebibyte(
    hook: Any, engine: AsyncEngine
) -> None:
    body = b"[" + b'{"id":"x"},' * 100_000 + b'{"id":"y"}]'

    response = await hook("dlr", content=body)  # httpx declares Content-Length

    assert response.status_code == 413
    [letter] = await rejected_bodies(engine)
    assert letter["body_truncated"] is True
    assert letter["body"] == body[: 1024 * 1024]


async def test_invalid_mo_by_get_gets_422_and_its_query_string_is_kept_without_the_key(
    client: httpx.AsyncClient, webhook_key: str, engine: AsyncEngine
) -> None:
    response = await client.get(
        "/v1/webhooks/mo", params={"key": webhook_key, "messageText": "no id", "receivedAt": "x"}
    )

    assert response.status_code == 422
    assert {d["field"] for d in response.json()["error"]["details"]} == {"id", "receivedAt"}
    [letter] = await rejected_bodies(engine)
    assert (letter["method"], letter["endpoint"]) == ("GET", "mo")
    assert letter["body"] == b"messageText=no+id&receivedAt=x"


async def test_nul_characters_are_replaced_and_the_message_is_stored(
    hook: Any, engine: AsyncEngine
) -> None:
    body = {
        "id": "m\u0000nul",
        "extraInfo": "a\u0000b",
        "odd\u0000key": "\u0000",
        "sentStatusCode": 2,
    }

    response = await hook("callback", body)

    assert response.status_code == 200
    [row] = await fetch_all(engine, "SELECT id, extra_info FROM messages")
    assert row == {"id": "m\ufffdnul", "extra_info": "a\ufffdb"}
    [event] = await fetch_all(engine, "SELECT payload FROM events")
    assert event["payload"]["odd\ufffdkey"] == "\ufffd"


async def test_nul_in_a_get_mo_is_replaced_too(
    client: httpx.AsyncClient, webhook_key: str, engine: AsyncEngine
) -> None:
    response = await client.get(
        "/v1/webhooks/mo", params={"key": webhook_key, "id": "mo-1", "messageText": "hi\x00there"}
    )

    assert response.status_code == 200
    [mo] = await fetch_all(engine, "SELECT message_text FROM mos")
    assert mo["message_text"] == "hi\ufffdthere"


async def test_unknown_route_and_wrong_method_answer_in_the_error_shape(
    client: httpx.AsyncClient,
) -> None:
    missing = await client.post("/v1/webhooks/nope")
    wrong_method = await client.delete("/v1/webhooks/dlr")

    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")
    assert (wrong_method.status_code, wrong_method.json()["error"]["code"]) == (
        405,
        "method_not_allowed",
    )


async def test_same_codes_with_other_content_count_as_a_retry(
    hook: Any, engine: AsyncEngine
) -> None:
    """The documented retry rule: same kind, id and codes is one event, logged as first seen;
    the status merges every copy, as it merges every event (the same rule in any order)."""
    await hook("callback", {"id": "m1", "sentStatusCode": 2, "extraInfo": "first"})

    response = await hook("callback", {"id": "m1", "sentStatusCode": 2, "extraInfo": "second"})

    assert response.json() == {"received": 1, "duplicates": 1}
    [event] = await fetch_all(engine, "SELECT payload FROM events")
    assert event["payload"]["extraInfo"] == "first"
    [row] = await fetch_all(engine, "SELECT extra_info FROM messages")
    assert row["extra_info"] == "second"  # the greater of the two, whichever came first


async def test_a_field_nested_too_deep_to_store_gets_400_and_is_kept(
    hook: Any, engine: AsyncEngine
) -> None:
    # Valid JSON within the parser's 1024 levels, but deeper than an event's payload can be
    # written back out: refused with the reason, never a 500.
    body = b'{"id": "m1", "extra": ' + b"[" * 300 + b"]" * 300 + b"}"

    response = await hook("dlr", content=body)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "too_deeply_nested"
    [letter] = await rejected_bodies(engine)
    assert (letter["reason"], letter["body"]) == ("too_deeply_nested", body)
    assert await stored_count(engine) == 0
