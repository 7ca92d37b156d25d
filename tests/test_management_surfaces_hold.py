"""The read and management API against an intruder holding one sub-account's user, and against
no one at all: bodies bounded as they arrive, credentials checked before a body is read, no
text a client can type that answers 500, no secret in the log, strict types."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import psutil
import pytest
from fastapi import FastAPI
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app.api.routing import BODY_CAP_KEY
from app.db import users
from app.rules.scope import Role
from app.settings import Settings
from tests.conftest import add_key

# Every route that takes a body, with the least body it accepts (its required fields).
BASE_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/v1/sms/status/search"): {"ids": ["m-1"]},
    ("post", "/v1/endpoints"): {"url": "https://93.184.216.34/hooks"},
    ("patch", "/v1/endpoints/{endpoint_id}"): {},
    ("post", "/v1/endpoints/{endpoint_id}/replay"): {"since": "2020-01-01T00:00:00Z"},
    ("post", "/v1/optouts/check"): {"numbers": ["5511987654321"]},
    ("put", "/v1/optouts/keywords/{keyword}"): {"action": "out"},
    ("put", "/v1/optouts/{number}"): {},
    ("post", "/v1/send-sms"): {"destination": "5519900004444", "messageText": "x"},
    ("post", "/v1/send-bulk-sms"): {
        "messages": [{"destination": "5519900004444"}],
        "defaultValues": {"messageText": "x"},
    },
}
# A valid value for each path parameter (the endpoint's id is the one the test makes).
PATH_VALUES = {"id": "m-1", "number": "5511987654321", "keyword": "SAIR", "endpoint_id": "1"}
# What no person types, and what made the service answer 500 before: NUL, control characters,
# an unpaired surrogate, line breaks meant for a header, host labels past 63 characters, a
# host of dots, and text far past any documented length.
HOSTILE_TEXTS = [
    "\x00",
    "a\x00b",
    "\x07\x1b[31m",
    "x\r\nX-Injected: 1",
    "\ud800",
    "a\udfffb",
    "https://" + "a" * 64 + ".example/",
    "http://" + "." * 300 + "/",
    "http://a b/",
    "http://127.0.0.1:0/",
    "x" * 5000,
]


@pytest.fixture
async def intruder(app: FastAPI) -> dict[str, dict[str, str]]:
    """Headers of an admin and of a plain user of sub-account acme."""
    found = {}
    async with app.state.engine.begin() as conn:
        for name, role, sub in (("root", Role.ADMIN, None), ("mallory", Role.USER, "acme")):
            token = await users.add_user(
                conn, username=name, role=role, sub_account=sub, email=None, token=None
            )
            found[name] = {"UserName": name, "AuthenticationToken": token}
    return found


def body_routes(app: FastAPI) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, operations in app.openapi()["paths"].items():
        for method, operation in operations.items():
            if "requestBody" in operation and not path.startswith("/v1/webhooks/"):
                yield method, path, operation


def concrete(path: str, **values: str) -> str:
    for name, value in {**PATH_VALUES, **values}.items():
        path = path.replace("{" + name + "}", value)
    return path


async def raw_answer(port: int, head: bytes, *, wait_s: float = 1.0) -> bytes:
    """What the server answers to a head whose body never comes, within ``wait_s``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), wait_s)
    finally:
        writer.close()


def declared_head(method: str, path: str, length: int, headers: dict[str, str]) -> bytes:
    lines = [
        f"{method.upper()} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        f"Content-Length: {length}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_every_route_that_takes_a_body_declares_its_cap_and_documents_the_413(
    app: FastAPI,
) -> None:
    routes = list(body_routes(app))
    assert {(method, path) for method, path, _ in routes} == set(BASE_BODIES)
    for method, path, operation in routes:
        cap = operation[BODY_CAP_KEY]
        assert 0 < cap <= 4 * 1024 * 1024, (method, path)
        assert str(cap) in operation["responses"]["413"]["description"], (method, path)


async def test_a_declared_320_mb_body_is_answered_within_a_second_with_and_without_credentials(
    app: FastAPI, settings: Settings, intruder: dict[str, dict[str, str]]
) -> None:
    for method, path, _ in body_routes(app):
        url = concrete(path)
        stranger = await raw_answer(settings.port, declared_head(method, url, 320_000_000, {}))
        user = await raw_answer(
            settings.port, declared_head(method, url, 320_000_000, intruder["mallory"])
        )
        assert stranger.startswith(b"HTTP/1.1 401 "), (method, path, stranger)
        assert user.startswith(b"HTTP/1.1 413 "), (method, path, user)


async def test_credentials_are_checked_before_the_body_is_read(
    client: httpx.AsyncClient, intruder: dict[str, dict[str, str]]
) -> None:
    """A stranger's malformed body is never parsed: the answer is about the credentials."""
    stranger = await client.post(
        "/v1/optouts/check",
        content=b"{not json",
        headers={
            "content-type": "application/json",
            "UserName": "root",
            "AuthenticationToken": "x",
        },
    )
    user = await client.post(
        "/v1/optouts/check",
        content=b"{not json",
        headers={"content-type": "application/json", **intruder["mallory"]},
    )
    assert stranger.status_code == 401
    assert user.status_code == 422


async def send_chunked_until_answered(
    port: int, head: bytes, *, total: int, chunk: bytes
) -> tuple[bytes, int, int]:
    """Streams a chunked body of up to ``total`` bytes until the server answers. Returns the
    answer's head, the bytes sent, and this process's (the server's) peak RSS meanwhile."""
    process = psutil.Process()
    peak = process.memory_info().rss
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = asyncio.create_task(reader.readuntil(b"\r\n\r\n"))
    sent = 0
    try:
        writer.write(head)
        framed = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        while sent < total and not answer.done():
            writer.write(framed)
            await writer.drain()
            sent += len(chunk)
            peak = max(peak, process.memory_info().rss)
        answered = await asyncio.wait_for(answer, 5)
    finally:
        answer.cancel()
        writer.close()
    return answered, sent, peak


async def test_a_chunked_300_mb_body_is_refused_without_the_worker_growing(
    app: FastAPI, settings: Settings, intruder: dict[str, dict[str, str]]
) -> None:
    head = (
        "POST /v1/optouts/check HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        + "".join(f"{name}: {value}\r\n" for name, value in intruder["mallory"].items())
        + "\r\n"
    ).encode()
    before = psutil.Process().memory_info().rss
    answered, sent, peak = await send_chunked_until_answered(
        settings.port, head, total=300 * 1024 * 1024, chunk=b"[" * (256 * 1024)
    )
    assert answered.startswith(b"HTTP/1.1 413 "), answered
    assert sent < 300 * 1024 * 1024  # answered long before the end
    assert peak - before < 48 * 1024 * 1024


async def test_a_body_within_its_cap_still_works_when_sent_in_chunks(
    client: httpx.AsyncClient, intruder: dict[str, dict[str, str]]
) -> None:
    async def parts() -> Any:
        yield b'{"numbers": '
        yield json.dumps([f"55119876543{n:02d}" for n in range(50)]).encode()
        yield b"}"

    answer = await client.post(
        "/v1/optouts/check",
        content=parts(),
        headers={"content-type": "application/json", **intruder["mallory"]},
    )
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["results"]) == 50


def _string_fields(schema: dict[str, Any], components: dict[str, Any]) -> Iterator[str]:
    """The body's fields that take text, or lists of text."""
    if "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[1]]
    for name, field in schema.get("properties", {}).items():
        kinds = [field, *field.get("anyOf", [])]
        items = [kind.get("items", {}) for kind in kinds if kind.get("type") == "array"]
        if any(kind.get("type") == "string" for kind in [*kinds, *items]):
            yield name


async def hostile_requests(app: FastAPI, endpoint_id: int) -> list[tuple[str, str, dict[str, Any]]]:
    """Every text parameter and body field of every route, each hostile text in turn."""
    spec = app.openapi()
    components = spec["components"]["schemas"]
    found: list[tuple[str, str, dict[str, Any]]] = []
    for path, operations in spec["paths"].items():
        if path.startswith("/v1/webhooks/"):
            continue  # held by their own tests (test_hostile_input, test_bad_input)
        for method, operation in operations.items():
            url = concrete(path, endpoint_id=str(endpoint_id))
            base = BASE_BODIES.get((method, path))
            body = None if base is None else json.dumps(base)
            for parameter in operation.get("parameters", []):
                schema = parameter["schema"]
                kinds = [schema, *schema.get("anyOf", [])]
                if parameter["in"] not in ("path", "query") or not any(
                    kind.get("type") == "string" for kind in kinds
                ):
                    continue
                for hostile in HOSTILE_TEXTS:
                    quoted = hostile.encode("utf-8", "surrogatepass")
                    if parameter["in"] == "path":
                        target = concrete(
                            path, endpoint_id=str(endpoint_id), **{parameter["name"]: quote(quoted)}
                        )
                        found.append((method, target, {"content": body}))
                    else:
                        query = f"?{parameter['name']}={quote(quoted)}"
                        found.append((method, url + query, {"content": body}))
            if "requestBody" in operation:
                schema = operation["requestBody"]["content"]["application/json"]["schema"]
                for name in _string_fields(schema, components):
                    for hostile in HOSTILE_TEXTS:
                        for value in (hostile, [hostile]):
                            content = json.dumps({**(base or {}), name: value})
                            found.append((method, url, {"content": content}))
    return found


async def test_no_text_any_route_takes_answers_500_and_no_secret_reaches_the_log(
    app: FastAPI,
    client: httpx.AsyncClient,
    intruder: dict[str, dict[str, str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    key = await add_key(app, "acme")
    created = await client.post(
        "/v1/endpoints", headers=intruder["mallory"], json={"url": "https://93.184.216.34/hooks"}
    )
    assert created.status_code == 201, created.text
    rotated = await client.post(
        f"/v1/endpoints/{created.json()['id']}/rotate-secret", headers=intruder["mallory"]
    )
    requests = await hostile_requests(app, created.json()["id"])
    assert len(requests) > 500
    failures = []
    for who in ("mallory", "root"):
        for method, url, extra in requests:
            headers = {**intruder[who], "content-type": "application/json"}
            answer = await client.request(method, url, headers=headers, **extra)
            # Every refusal in an error shape: the API's, or Wavy's on its send paths.
            shape = "errorCode" if url.startswith("/v1/send") else "error"
            if answer.status_code >= 500 or (
                answer.status_code >= 400 and shape not in answer.json()
            ):
                failures.append((who, method, url, extra, answer.status_code, answer.text[:200]))
    assert failures == []

    secrets = [
        key,
        created.json()["secret"],
        rotated.json()["secret"],
        *(headers["AuthenticationToken"] for headers in intruder.values()),
    ]
    formatter = logging.Formatter()
    logged = "\n".join(
        formatter.format(record)
        for record in caplog.records
        if not record.name.startswith(("httpx", "httpcore"))  # this test's own client
    )
    assert [secret for secret in secrets if secret in logged] == []


async def test_a_database_error_never_quotes_the_statements_values(app: FastAPI) -> None:
    secret = "whsec_c2VjcmV0LXRoYXQtbXVzdC1uZXZlci1iZS1sb2dnZWQ="
    with pytest.raises(DBAPIError) as raised:
        async with app.state.engine.connect() as conn:
            await conn.execute(text("SELECT CAST(:secret AS text), 1 / 0"), {"secret": secret})
    assert "division by zero" in str(raised.value)
    assert secret not in str(raised.value)


async def test_the_management_api_takes_its_types_strictly(
    client: httpx.AsyncClient, intruder: dict[str, dict[str, str]]
) -> None:
    created = await client.post(
        "/v1/endpoints", headers=intruder["mallory"], json={"url": "https://93.184.216.34/x"}
    )
    endpoint = f"/v1/endpoints/{created.json()['id']}"
    answers = [
        await client.patch(endpoint, headers=intruder["mallory"], json={"disabled": "yes"}),
        await client.patch(endpoint, headers=intruder["mallory"], json={"disabled": 1}),
        await client.post(f"{endpoint}/replay", headers=intruder["mallory"], json={"since": 0}),
        await client.post(
            f"{endpoint}/replay", headers=intruder["mallory"], json={"since": 1700000000}
        ),
    ]
    assert [answer.status_code for answer in answers] == [422, 422, 422, 422]
    shown = await client.get(endpoint, headers=intruder["mallory"])
    assert shown.json()["disabled"] is False


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com\x00.evil/",
        "http://hooks.example.com/a\r\nX-Injected: 1",
        "http://hooks.example.com/a b",
        "http://hooks.example.com:0/x",
        "http://" + "a" * 64 + ".example.com/",
        "http://" + "." * 300 + "/",
    ],
)
async def test_an_endpoint_url_no_delivery_could_use_gets_422(
    client: httpx.AsyncClient, intruder: dict[str, dict[str, str]], url: str
) -> None:
    answer = await client.post("/v1/endpoints", headers=intruder["mallory"], json={"url": url})
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["code"] == "invalid_url"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("forward_retry_schedule", "1e400"),
        ("forward_retry_schedule", "0,5,nan"),
        ("forward_timeout_s", "1e20"),
        ("forward_secret_overlap", "99999999d"),
        ("retention", "99999999d"),
    ],
)
def test_settings_past_their_bounds_stop_the_start(variable: str, value: str) -> None:
    with pytest.raises(ValidationError, match=variable):
        Settings.model_validate({variable: value})
