"""The failure scenario ``reconcile`` of bench.failures: the callback URL is down for a while
during sends through the service to the sandbox (a stand-in of Wavy); the statuses it could
not post are lost, as Wavy loses them after its retries; reconciliation must then recover
every one of them from the sandbox's status search, with 0 missing.

The service runs as deployed (``serve``, a worker, in a session of its own) with a Wavy admin
for reconciliation and short ages (overdue after seconds, not minutes). The sandbox runs as
``wavy-webhooks sandbox`` with no callbacks lost on purpose and short retries, so that only the
outage loses statuses. Between them, a door (``Gate``) stands for the callback URL: shut,
nothing listens, as a URL that is down."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from app.db import users
from app.db.engine import normalize_database_url
from app.rules.scope import Role
from bench.common import free_port, running_service, stop, wait_until_answering

SENDER = "bench-lost-sender"
WAVY_ADMIN = "bench-wavy-admin"
# Statuses are overdue after seconds here (not 15 min and 4 h), and Wavy is asked 5 times a
# second: the stand-in is ours, and the run must end within a minute or two.
RECONCILE_ENV = {
    "WAVY_RECONCILE_CALLBACK_AFTER": "3",
    "WAVY_RECONCILE_DLR_AFTER": "3",
    "WAVY_RECONCILE_MAX_RPS": "5",
    "WAVY_FORWARDER": "off",
}
SANDBOX_OPTIONS = (
    *("--lost-callbacks", "0", "--replies", "0", "--seed", "35"),
    *("--callback-after", "0.2,0.6", "--dlr-after", "0.3,1.0", "--retry-waits", "0.3,0.6"),
)


class Gate:
    """A door in front of a port: open, it passes the bytes both ways; shut, nothing listens
    there and the connections through it are cut."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self._target = target_port
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        self.open()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def open(self) -> None:
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=10)

    def shut(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=10)

    def close(self) -> None:
        self.shut()
        self._loop.call_soon_threadsafe(self._loop.stop)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._pass, "127.0.0.1", self.port, reuse_address=True
        )

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._open):
            writer.close()

    async def _pass(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)
        except OSError:
            writer.close()
            return
        self._open.update((writer, up_writer))

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:
                sink.close()
                self._open.discard(sink)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def _add_users(url: str) -> dict[str, str]:
    engine = create_async_engine(normalize_database_url(url))
    try:
        async with engine.begin() as conn:
            return {
                SENDER: await users.add_user(
                    conn, username=SENDER, role=Role.USER, sub_account="acme", email=None,
                    token=None,
                ),
                WAVY_ADMIN: await users.add_user(
                    conn, username=WAVY_ADMIN, role=Role.ADMIN, sub_account=None, email=None,
                    token=None,
                ),
            }  # fmt: skip
    finally:
        await engine.dispose()


@contextmanager
def sandbox(url: str, port: int, webhook_base: str) -> Iterator[str]:
    env = {**os.environ, "DATABASE_URL": url, "WAVY_LOG_LEVEL": "warning"}
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "app.cli", "sandbox", "--port", str(port)),
            *("--webhook-url", webhook_base, *SANDBOX_OPTIONS),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(f"{base}/", process, "the sandbox")
        yield base
    finally:
        stop(process, timeout_s=10)


async def _send(base: str, token: str, seconds: float, gate: Gate) -> list[str]:
    """Single sends through the service, four at a time, for ``seconds``; the callback URL is
    down from a quarter of the way to two thirds of it. The ids Wavy gave."""
    headers = {"username": SENDER, "authenticationtoken": token}
    ids: list[str] = []
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    shut_at, open_at = started + seconds / 4, started + seconds * 2 / 3
    shut = False

    async def lane(session: aiohttp.ClientSession, number: int) -> None:
        nonlocal shut
        turn = 0
        while (now := time.monotonic()) < started + seconds:
            if not shut and shut_at <= now < open_at:
                shut = True
                await loop.run_in_executor(None, gate.shut)
            elif shut and now >= open_at:
                shut = False
                await loop.run_in_executor(None, gate.open)
            turn += 1
            body = {
                "destination": f"55219{number}{turn:07d}",
                "messageText": "Seu pedido saiu para entrega",
                "correlationId": f"lost-{number}-{turn}",
            }
            async with session.post(f"{base}/v1/send-sms", json=body, headers=headers) as answer:
                if answer.status != 200:
                    raise SystemExit(f"a send got {answer.status}: {await answer.text()}")
                ids.append((await answer.json())["id"])
            await asyncio.sleep(0.02)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(lane(session, number) for number in range(4)))
    if shut:
        gate.open()
    return ids


async def _missing(url: str, sandbox_base: str, token: str, ids: list[str]) -> tuple[int, int]:
    """Statuses the sandbox gave that the store lacks; and how many it gave."""
    headers = {"UserName": WAVY_ADMIN, "AuthenticationToken": token}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{sandbox_base}/v1/sms/status/search", json={"ids": ids}, headers=headers
        ) as answer,
    ):
        truth: list[dict[str, Any]] = (await answer.json())["smsStatuses"]
    engine = create_async_engine(normalize_database_url(url))
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT id, sent_status_code, delivered_status_code FROM messages "
                    "WHERE id = ANY(:ids)"
                ),
                {"ids": ids},
            )
            stored = {row.id: (row.sent_status_code, row.delivered_status_code) for row in rows}
    finally:
        await engine.dispose()
    given = missing = 0
    for status in truth:
        have = stored.get(status["id"], (None, None))
        for index, field in enumerate(("sentStatusCode", "deliveredStatusCode")):
            if status.get(field) is not None:
                given += 1
                missing += have[index] != status[field]
    return missing, given


async def _reconciled(url: str) -> int:
    engine = create_async_engine(normalize_database_url(url))
    try:
        async with engine.connect() as conn:
            found = await conn.scalar(text("SELECT count(*) FROM events WHERE reconciled"))
            return int(found or 0)
    finally:
        await engine.dispose()


def lost_callbacks(url: str, seconds: int, timeout_s: float = 120) -> tuple[int, int, int, float]:
    """Missing statuses after recovery, statuses given, statuses recovered by reconciliation,
    and the seconds recovery took after the sends."""
    tokens = asyncio.run(_add_users(url))
    sandbox_port = free_port()
    env = {
        **RECONCILE_ENV,
        "WAVY_API_URL": f"http://127.0.0.1:{sandbox_port}",
        "WAVY_API_USERNAME": WAVY_ADMIN,
        "WAVY_API_TOKEN": tokens[WAVY_ADMIN],
    }
    with running_service(url, extra_env=env) as (base, _):
        gate = Gate(int(base.rsplit(":", 1)[1]))
        try:
            with sandbox(url, sandbox_port, gate.url) as sandbox_base:
                ids = asyncio.run(_send(base, tokens[SENDER], max(seconds, 6), gate))
                sent_at = time.monotonic()
                time.sleep(3)  # the sandbox's last statuses, and their retries
                missing, given = asyncio.run(_missing(url, sandbox_base, tokens[WAVY_ADMIN], ids))
                while missing and time.monotonic() - sent_at < timeout_s:
                    time.sleep(1)
                    missing, given = asyncio.run(
                        _missing(url, sandbox_base, tokens[WAVY_ADMIN], ids)
                    )
                took = time.monotonic() - sent_at
        finally:
            gate.close()
    return missing, given, asyncio.run(_reconciled(url)), took
