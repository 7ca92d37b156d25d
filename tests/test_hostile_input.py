"""Hostile and odd input: schemathesis against our own OpenAPI spec, and the cases it found."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import users
from app.rules.scope import Role
from tests.conftest import add_key, fetch_all

# Response-side checks: no 5xx, every status / content type / header / body as documented,
# credentials really enforced, 405 with a correct Allow. The request-side heuristics
# (positive_data_acceptance, negative_data_rejection) are left out on purpose: the webhooks
# accept Wavy's documented leniencies (blank fields mean absent, unknown fields are kept) and
# cursors are opaque tokens a made-up string does not satisfy.
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "missing_required_header",
        "unsupported_method",
        "allow_header_conformance",
        "ignored_auth",
    ]
)


def schemathesis_command() -> list[str]:
    found = Path(sys.executable).with_name("schemathesis")
    return [str(found)] if found.exists() else [shutil.which("schemathesis") or "schemathesis"]


@pytest.mark.slow
async def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_spec(
    app: FastAPI, base_url: str
) -> None:
    key = await add_key(app, "acme")
    async with app.state.engine.begin() as conn:
        token = await users.add_user(
            conn, username="fuzz", role=Role.ADMIN, sub_account=None, email=None, token=None
        )
    command = [
        *schemathesis_command(),
        "run",
        f"{base_url}/openapi.json",
        "--checks",
        CHECKS,
        "--header",
        f"X-Webhook-Key: {key}",
        "--header",
        "UserName: fuzz",
        "--header",
        f"AuthenticationToken: {token}",
        "--max-examples",
        "25",
        "--seed",
        "20261125",  # reproducible in CI; change it locally to explore further
        # Every phase. The coverage phase (boundary values for each parameter, about 1500
        # requests in a few seconds) once crashed inside schemathesis; it runs clean on 4.32.5.
        "--phases",
        "examples,coverage,fuzzing,stateful",
        # The feeds long-poll for up to 10 s (wait=10 is valid): its default 10 s would call a
        # kept promise a network error.
        "--request-timeout",
        "20",
    ]

    # In a thread: the service answers from this test's own event loop.
    result = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=600, check=False
    )

    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    # Exit code 0 means no check failed; make sure cases were really sent.
    assert re.search(r"(\d+) generated, \1 passed", result.stdout), result.stdout[-3000:]


@pytest.fixture
async def admin_headers(app: FastAPI) -> dict[str, str]:
    async with app.state.engine.begin() as conn:
        token = await users.add_user(
            conn, username="probe", role=Role.ADMIN, sub_account=None, email=None, token=None
        )
    return {"UserName": "probe", "AuthenticationToken": token}


async def test_a_nul_in_a_search_finds_what_was_stored_for_it(
    hook: Any, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    """Found by schemathesis: PostgreSQL refused the NUL and the search answered 500."""
    await hook("dlr", {"id": "m1", "correlationId": "a\u0000b", "deliveredStatusCode": 4})

    found = await client.get(
        "/v1/sms/status", params={"correlationId": "a\u0000b"}, headers=admin_headers
    )
    by_path = await client.get("/v1/sms/status/m%00", headers=admin_headers)
    narrowed = await client.get(
        "/v1/sms/receive/search", params={"subAccount": "\u0000"}, headers=admin_headers
    )

    assert found.status_code == 200
    assert [item["id"] for item in found.json()["items"]] == ["m1"]
    assert found.json()["items"][0]["correlationId"] == "a\ufffdb"
    assert by_path.status_code == 404
    assert narrowed.status_code == 200


@pytest.mark.parametrize("value", ["0.5", "1700000000", "-3", "1e9"])
async def test_a_bare_number_is_not_taken_for_a_time(
    client: httpx.AsyncClient, admin_headers: dict[str, str], value: str
) -> None:
    """Found by schemathesis: the spec says ISO-8601, pydantic would read a Unix time."""
    response = await client.get(
        "/v1/sms/receive/search", params={"start": value}, headers=admin_headers
    )

    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "query.start"


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/v1/sms/status", "from"),
        ("/v1/sms/status", "to"),
        ("/v1/sms/receive/search", "start"),
        ("/v1/sms/receive/search", "end"),
        ("/v1/stats", "from"),
        ("/v1/stats", "to"),
    ],
)
@pytest.mark.parametrize("value", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"])
async def test_a_time_beyond_the_calendar_once_in_utc_gets_422(
    client: httpx.AsyncClient, admin_headers: dict[str, str], path: str, name: str, value: str
) -> None:
    """Valid ISO-8601, but past year 9999 (or before year 1) once converted to UTC: the
    driver could not send it and the search answered 500."""
    response = await client.get(path, params={name: value}, headers=admin_headers)

    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == f"query.{name}"


async def test_times_with_an_offset_are_read_as_the_same_instant_in_utc(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    response = await client.get(
        "/v1/sms/receive/search",
        params={"start": "2026-01-01T09:30:00+05:30", "end": "2026-01-01T06:00:00"},
        headers=admin_headers,
    )

    assert response.status_code == 200
    assert response.json()["start"].startswith("2026-01-01T04:00:00")
    assert response.json()["end"].startswith("2026-01-01T06:00:00")


async def test_a_window_ending_in_year_one_is_answered(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    """Found by schemathesis: the default start (end minus five days) overflowed into a 500."""
    response = await client.get(
        "/v1/sms/receive/search", params={"end": "0001-01-02T00:00:00Z"}, headers=admin_headers
    )

    assert response.status_code == 200
    assert response.json()["start"].startswith("0001-01-01T00:00:00")


async def test_405_names_every_method_the_path_serves(client: httpx.AsyncClient) -> None:
    """Found by schemathesis: Starlette's Allow named only the first route of the path."""
    response = await client.put("/v1/webhooks/mo")

    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"
    assert response.json()["error"]["code"] == "method_not_allowed"


# Texts that any hand-made encoding of a batch would get wrong: quotes, backslashes, escapes,
# separators and control characters, the words null and NULL, and characters beyond the BMP.
TRICKY_TEXTS = [
    'say "hi"',
    "back\\slash \\n not a newline",
    "line\nbreak\ttab\r\x1e\x1f\x7f",
    "null",
    "NULL",
    '{"a": [1, 2]}',
    "a,b;c|d",
    "emoji \U0001f600 and é",
]


async def test_tricky_texts_in_a_batch_are_stored_exactly(hook: Any, engine: AsyncEngine) -> None:
    dlrs = [
        {
            "id": f"tricky-{n}",
            "correlationId": text,
            "carrierName": text,
            "extraInfo": text,
            "sentStatusCode": 2,
            "sentStatus": text,
        }
        for n, text in enumerate(TRICKY_TEXTS)
    ]
    mos = [{"id": f"reply-{n}", "messageText": text} for n, text in enumerate(TRICKY_TEXTS)]

    assert (await hook("dlr", dlrs)).status_code == 200
    assert (await hook("mo", mos)).status_code == 200

    rows = await fetch_all(
        engine,
        "SELECT id, correlation_id, carrier_name, extra_info, sent_status FROM messages",
    )
    stored = {row["id"]: row for row in rows}
    for n, text in enumerate(TRICKY_TEXTS):
        row = stored[f"tricky-{n}"]
        assert (row["correlation_id"], row["carrier_name"], row["extra_info"]) == (text,) * 3
        assert row["sent_status"] == text
    replies = await fetch_all(engine, "SELECT id, message_text FROM mos")
    assert {r["id"]: r["message_text"] for r in replies} == {
        f"reply-{n}": text for n, text in enumerate(TRICKY_TEXTS)
    }
    payloads = await fetch_all(engine, "SELECT payload FROM events WHERE kind = 'dlr'")
    assert sorted((p["payload"] for p in payloads), key=lambda payload: payload["id"]) == dlrs
