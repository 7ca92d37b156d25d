"""A webhook that arrives whole is answered in the HTTP protocol (app.api.direct); one whose body
comes later goes the ASGI way to its route. A sender must not be able to tell them apart: the
same answer (status, headers, body), the same rows, the same refusals kept for an operator."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from app.api.direct import DirectWebhooks
from app.http_protocol import DirectAnswer
from app.settings import Settings
from tests.conftest import add_key, changed_settings, fetch_all

# The answer's headers whose values differ from one request to the next.
PER_REQUEST = {b"date", b"x-request-id"}


def request_bytes(path: str, body: bytes, *, key: str | None, extra: bytes = b"") -> bytes:
    query = f"?key={key}" if key else ""
    return (
        f"POST {path}{query} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


async def read_answer(
    reader: asyncio.StreamReader,
) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    """One HTTP answer: its status line, its headers (lowercase names) and its body."""
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
        status, *lines = head[:-4].split(b"\r\n")
        headers = [
            (name.lower(), value.strip())
            for name, _, value in (line.partition(b":") for line in lines)
        ]
        length = int(dict(headers)[b"content-length"])
        return status, headers, await reader.readexactly(length)


Split = bool  # whether the body is sent after its head, apart


async def exchange(port: int, request: bytes, *, split: Split) -> tuple[bytes, list[Any], bytes]:
    """Send a request whole in one write, or its head and then, a moment later, its body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if split:
            head, _, body = request.partition(b"\r\n\r\n")
            writer.write(head + b"\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)  # the server reads the head alone
            writer.write(body)
        else:
            writer.write(request)
        await writer.drain()
        return await read_answer(reader)
    finally:
        writer.close()


def comparable(answer: tuple[bytes, list[tuple[bytes, bytes]], bytes], own_id: str) -> Any:
    status, headers, body = answer
    assert {name for name, _ in headers} >= PER_REQUEST
    fixed = sorted((name, value) for name, value in headers if name not in PER_REQUEST)
    return status, fixed, orjson.loads(body.replace(own_id.encode(), b"<id>"))


@pytest.fixture
def lanes_taken(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths the direct lane answered, in order."""
    taken: list[str] = []
    answer = DirectWebhooks.answer

    async def counted(self: DirectWebhooks, scope: Any, body: bytes) -> DirectAnswer:
        taken.append(scope["path"])
        return await answer(self, scope, body)

    monkeypatch.setattr(DirectWebhooks, "answer", counted)
    return taken


async def test_a_webhook_answered_in_the_protocol_is_answered_as_its_route_answers(
    app: FastAPI,
    settings: Settings,
    webhook_key: str,
    engine: AsyncEngine,
    lanes_taken: list[str],
) -> None:
    """Each case twice, whole (the protocol answers) and split (the route answers), with its
    own ids: the answers match, and so do the rows and the rejected bodies they leave."""
    globex = await add_key(app, "globex")

    def dlr(message_id: str) -> bytes:
        return orjson.dumps({"id": message_id, "sentStatusCode": 2})

    cases: dict[str, Callable[[str], tuple[str, bytes, str | None]]] = {
        "accepted": lambda i: ("/v1/webhooks/dlr", dlr(i), webhook_key),
        "duplicate": lambda i: ("/v1/webhooks/dlr", dlr(i), webhook_key),
        "array": lambda i: (
            "/v1/webhooks/callback",
            orjson.dumps([{"id": f"{i}-a"}, {"id": f"{i}-b"}]),
            webhook_key,
        ),
        "reply": lambda i: (
            "/v1/webhooks/mo",
            orjson.dumps({"id": i, "messageText": "oi", "mt": {"id": f"{i}-mt"}}),
            webhook_key,
        ),
        "malformed": lambda i: ("/v1/webhooks/dlr", b'{"id": "' + i.encode(), webhook_key),
        "invalid": lambda i: (
            "/v1/webhooks/dlr",
            orjson.dumps({"id": i, "sentStatusCode": "x"}),
            webhook_key,
        ),
        "empty": lambda i: ("/v1/webhooks/dlr", b"", webhook_key),
        "no key": lambda i: ("/v1/webhooks/dlr", dlr(i), None),
        "wrong key": lambda i: ("/v1/webhooks/dlr", dlr(i), "w" * 32),
        "foreign": lambda i: ("/v1/webhooks/dlr", dlr(f"{i}-globex"), webhook_key),
    }
    answers: dict[str, list[Any]] = {}
    for split in (False, True):
        lane = "split" if split else "whole"
        for case, make in cases.items():
            own_id = f"{lane}-{case.replace(' ', '-')}"
            path, body, key = make(own_id)
            if case == "foreign":  # the message is globex's first
                posted = request_bytes(path, dlr(f"{own_id}-globex"), key=globex)
                assert (await exchange(settings.port, posted, split=False))[0].endswith(b"200 OK")
            if case == "duplicate":
                path, body, key = cases["accepted"](f"{lane}-accepted")
                own_id = f"{lane}-accepted"
            answer = await exchange(settings.port, request_bytes(path, body, key=key), split=split)
            answers.setdefault(case, []).append(comparable(answer, own_id))

    for case, (whole, split_answer) in answers.items():
        assert whole == split_answer, case
    assert answers["accepted"][0][0] == b"HTTP/1.1 200 OK"
    assert answers["duplicate"][0][2] == {"received": 1, "duplicates": 1}
    assert answers["foreign"][0][2]["error"]["code"] == "foreign_message"
    assert answers["no key"][0][0] == b"HTTP/1.1 401 Unauthorized"
    # The protocol answered every whole request (globex's two among them), and of the split
    # ones only the empty body's, whose head is the whole request.
    assert len(lanes_taken) == len(cases) + 2 + 1

    stored = await fetch_all(engine, "SELECT id, sub_account FROM messages")
    by_lane = {
        lane: sorted(
            (row["id"].removeprefix(f"{lane}-"), row["sub_account"])
            for row in stored
            if row["id"].startswith(f"{lane}-")
        )
        for lane in ("whole", "split")
    }
    assert by_lane["whole"] == by_lane["split"] != []
    kept = await fetch_all(
        engine, "SELECT endpoint, reason, sub_account, body FROM rejected_bodies ORDER BY id"
    )
    whole_kept = [
        {**row, "body": row["body"].replace(b"whole-", b"")}
        for row in kept
        if b"whole-" in row["body"]
    ]
    split_kept = [
        {**row, "body": row["body"].replace(b"split-", b"")}
        for row in kept
        if b"split-" in row["body"]
    ]
    assert whole_kept == split_kept
    assert {row["reason"] for row in whole_kept} >= {
        "malformed_json",
        "validation_failed",
        "foreign_message",
    }


async def test_a_whole_body_past_the_limit_is_refused_and_kept_cut_as_the_route_does(
    app: FastAPI,
    settings: Settings,
    webhook_key: str,
    engine: AsyncEngine,
    lanes_taken: list[str],
) -> None:
    body = orjson.dumps([{"id": f"too-large-{n}"} for n in range(10)])
    posted = request_bytes("/v1/webhooks/dlr", body, key=webhook_key)
    with changed_settings(app, settings, max_body_bytes=64) as small:
        answers = [await exchange(settings.port, posted, split=split) for split in (False, True)]

    assert comparable(answers[0], "-") == comparable(answers[1], "-")
    assert answers[0][0].startswith(b"HTTP/1.1 413 ")
    kept = await fetch_all(engine, "SELECT body, body_truncated, repeats FROM rejected_bodies")
    # Kept once, then counted as its repeat: the two lanes kept the very same bytes.
    assert kept == [{"body": body[: small.max_body_bytes], "body_truncated": True, "repeats": 1}]
    assert lanes_taken == ["/v1/webhooks/dlr"]


async def test_pipelined_webhooks_are_answered_in_order_and_a_closing_one_closes(
    settings: Settings, webhook_key: str, lanes_taken: list[str]
) -> None:
    """Three requests in one write, the last asking to close: three answers in their order,
    then the connection ends."""
    requests = [
        request_bytes("/v1/webhooks/dlr", orjson.dumps({"id": f"piped-{n}"}), key=webhook_key)
        for n in range(2)
    ]
    requests.append(
        request_bytes(
            "/v1/webhooks/dlr", b"{broken", key=webhook_key, extra=b"Connection: close\r\n"
        )
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", settings.port)
    try:
        writer.write(b"".join(requests))
        await writer.drain()
        answers = [await read_answer(reader) for _ in requests]
        async with asyncio.timeout(5):
            rest = await reader.read()
    finally:
        writer.close()

    assert [status for status, _, _ in answers] == [
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 400 Bad Request",
    ]
    assert (b"connection", b"close") in answers[2][1]
    assert rest == b""
    assert len(lanes_taken) == 3


async def test_a_fault_in_the_direct_lane_is_the_apis_500_and_is_logged(
    settings: Settings,
    webhook_key: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(self: DirectWebhooks, scope: Any, body: bytes) -> DirectAnswer:
        raise RuntimeError("a bug in the lane")

    monkeypatch.setattr(DirectWebhooks, "answer", broken)
    posted = request_bytes("/v1/webhooks/dlr", orjson.dumps({"id": "faulty"}), key=webhook_key)
    with caplog.at_level(logging.ERROR):
        status, _, body = await exchange(settings.port, posted, split=False)

    assert status == b"HTTP/1.1 500 Internal Server Error"
    assert orjson.loads(body) == {"error": {"code": "internal_error", "message": "internal error"}}
    assert any("a bug in the lane" in (r.exc_text or "") for r in caplog.records)


def chunked_with_trailer(path: str, body: bytes, trailer: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n".encode()
        + b"%x\r\n%s\r\n0\r\n%s\r\n" % (len(body), body, trailer)
    )


async def test_a_key_sent_in_a_chunked_bodys_trailer_does_not_count(
    settings: Settings, webhook_key: str, engine: AsyncEngine
) -> None:
    """Trailer fields are not headers (RFC 9110): a key after the body is no key, whichever
    lane answers."""
    answers = []
    for split in (False, True):
        body = orjson.dumps({"id": f"trailer-{split}"})
        posted = chunked_with_trailer(
            "/v1/webhooks/dlr", body, b"X-Webhook-Key: %s\r\n" % webhook_key.encode()
        )
        answers.append(await exchange(settings.port, posted, split=split))

    assert [status for status, _, _ in answers] == [b"HTTP/1.1 401 Unauthorized"] * 2
    assert await fetch_all(engine, "SELECT id FROM messages") == []


async def test_a_webhook_followed_by_junk_is_stored_and_the_junk_refused_without_an_error(
    settings: Settings, webhook_key: str, engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """The junk behind a webhook, in the same write, closes the connection with the API's
    400 while the webhook is being stored: its answer then has nowhere to go, and is not
    written (it was, after the connection's end, and failed in the log)."""
    webhook = request_bytes("/v1/webhooks/dlr", orjson.dumps({"id": "junk"}), key=webhook_key)
    with caplog.at_level(logging.WARNING):
        reader, writer = await asyncio.open_connection("127.0.0.1", settings.port)
        writer.write(webhook + b"BLAH\x01 / HTTP/1.1\r\n\r\n")
        async with asyncio.timeout(5):
            answer = await reader.read()  # until the server's end of writing
        await asyncio.sleep(0.3)  # still connected while the webhook is stored
        writer.close()
        gc.collect()  # a failed task's error is logged when the task is freed

    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b'"code":"bad_request"' in answer
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert await fetch_all(engine, "SELECT id FROM messages") == [{"id": "junk"}]


async def test_pipelined_webhooks_past_the_head_limit_in_one_read_are_all_answered(
    settings: Settings, webhook_key: str, engine: AsyncEngine
) -> None:
    """The head limit bounds each request's head, not a read holding many requests (they
    were refused 431 together, the first already stored)."""
    requests = [
        request_bytes("/v1/webhooks/dlr", orjson.dumps({"id": f"many-{n}"}), key=webhook_key)
        for n in range(3 * settings.max_head_bytes // 180)
    ]
    reader, writer = await asyncio.open_connection("127.0.0.1", settings.port)
    try:
        writer.write(b"".join(requests))
        await writer.drain()
        answers = [await read_answer(reader) for _ in requests]
    finally:
        writer.close()

    assert len(b"".join(requests)) > 2 * settings.max_head_bytes
    assert {status for status, _, _ in answers} == {b"HTTP/1.1 200 OK"}
    stored = await fetch_all(engine, "SELECT count(*) AS n FROM messages")
    assert stored == [{"n": len(requests)}]
