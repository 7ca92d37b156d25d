"""Forwarding as an operator runs it: the ``endpoints`` commands, and a service killed with
kill -9 in the middle of a backlog that still delivers every event once it is back."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import add_key, free_port
from tests.receivers import receiving
from tests.test_migrations_and_cli import Service, run_cli, run_cli_in

FAST_RETRIES = {
    "WAVY_FORWARD_ALLOW_PRIVATE": "true",
    "WAVY_FORWARD_RETRY_SCHEDULE": "0,0.2,0.5",
}


async def cli(database_url: str, *args: str, **env: str) -> tuple[int, str]:
    done = await asyncio.to_thread(run_cli, *args, database_url=database_url, **env)
    return done.returncode, done.stdout + done.stderr


async def cli_in(directory: Path, database_url: str, *args: str) -> tuple[int, str]:
    done = await asyncio.to_thread(run_cli_in, directory, *args, database_url=database_url)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.slow
async def test_the_endpoints_commands_manage_an_endpoint_end_to_end(
    app: FastAPI, client: httpx.AsyncClient, database_url: str
) -> None:
    key = await add_key(app, "acme")
    async with receiving() as receiver:
        code, out = await cli(
            database_url,
            "endpoints",
            "add",
            receiver.url,
            "--sub-account",
            "acme",
            "--events",
            "status.updated",
            **FAST_RETRIES,
        )
        assert code == 0, out
        endpoint_id = re.search(r"endpoint #(\d+) created", out).group(1)  # type: ignore[union-attr]
        assert re.search(r"signing secret: whsec_\S+", out)

        await client.post("/v1/webhooks/dlr", params={"key": key}, json={"id": "m-1"})
        await receiver.wait_for(1)
        await asyncio.sleep(0.3)

        code, out = await cli(database_url, "endpoints", "list")
        assert code == 0
        # id, state, backlog, retrying, failed, sub-account
        row = rf"^\s+{endpoint_id}\s+enabled\s+0\s+0\s+0\s+acme\s"
        assert re.search(row, out, re.MULTILINE), out
        code, out = await cli(database_url, "endpoints", "attempts", endpoint_id)
        assert code == 0
        assert " 200 " in out

        code, out = await cli(database_url, "endpoints", "disable", endpoint_id)
        assert "disabled" in out
        code, out = await cli(database_url, "endpoints", "list")
        assert "disabled (manual)" in out
        code, out = await cli(database_url, "endpoints", "enable", endpoint_id)
        assert code == 0

        code, out = await cli(
            database_url, "endpoints", "replay", endpoint_id, "--since", "2020-01-01T00:00:00Z"
        )
        assert "1 deliveries queued again" in out, out
        await receiver.wait_for(2)

        code, out = await cli(database_url, "endpoints", "rotate-secret", endpoint_id)
        assert re.search(r"new signing secret: whsec_\S+", out)
        code, out = await cli(database_url, "endpoints", "remove", endpoint_id)
        assert "removed" in out
        code, out = await cli(database_url, "endpoints", "remove", endpoint_id)
        assert code == 1
        assert "no such endpoint" in out

    code, out = await cli(database_url, "endpoints", "add", "http://127.0.0.1:9/x")
    assert code == 2
    assert "refused" in out
    assert "not a public address" in out
    assert "WAVY_FORWARD_ALLOW_PRIVATE=true in .env" in out


@pytest.mark.slow
async def test_one_line_in_env_allows_private_addresses_for_the_cli_as_for_serve(
    database_url: str, tmp_path: Path
) -> None:
    """The refusal names the setting; written once in .env, the CLI run from that directory
    reads it as serve does."""
    (tmp_path / ".env").write_text("WAVY_FORWARD_ALLOW_PRIVATE=true\n", encoding="utf-8")
    code, out = await cli_in(tmp_path, database_url, "endpoints", "add", "http://127.0.0.1:9/x")
    assert code == 0, out
    assert "whsec_" in out


@pytest.mark.slow
async def test_a_backlog_cut_by_kill_9_is_delivered_whole_after_a_restart(
    empty_database: str, tmp_path: Path
) -> None:
    total = 300

    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": empty_database,
        "WAVY_WORKERS": "1",
        **FAST_RETRIES,
        # A backlog that drains slowly, and in-flight leases that end soon after the crash.
        "WAVY_FORWARD_TIMEOUT_S": "1",
        "WAVY_FORWARD_CONCURRENCY": "2",
    }
    async with receiving(delay_s=0.02) as receiver:
        service = Service(env, port, tmp_path)
        output = await asyncio.to_thread(service.wait_ready)
        key = re.search(r"/v1/webhooks/dlr\?key=(\S+)", output).group(1)  # type: ignore[union-attr]
        code, out = await cli(empty_database, "endpoints", "add", receiver.url, **FAST_RETRIES)
        assert code == 0, out
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            for n in range(0, total, 50):
                batch = [{"id": f"m-{m}", "deliveredStatusCode": 4} for m in range(n, n + 50)]
                stored = await http.post("/v1/webhooks/dlr", params={"key": key}, json=batch)
                assert stored.status_code == 200
        await receiver.wait_for(30)
        await asyncio.to_thread(service.stop, signal.SIGKILL)
        assert len({body["data"]["id"] for body in receiver.bodies()}) < total

        service = Service(env, port, tmp_path)
        await asyncio.to_thread(service.wait_ready)
        try:
            await receiver.wait_until(
                lambda: len({body["data"]["id"] for body in receiver.bodies()}) == total, 60
            )
        finally:
            await asyncio.to_thread(service.stop, signal.SIGTERM)
    assert {body["data"]["id"] for body in receiver.bodies()} == {f"m-{m}" for m in range(total)}


@pytest.mark.slow
async def test_serve_forwards_from_a_process_of_its_own_and_shows_its_metrics(
    empty_database: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": empty_database, "WAVY_WORKERS": "1", **FAST_RETRIES}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    async with receiving() as receiver:
        service = Service(env, port, tmp_path)
        try:
            output = await asyncio.to_thread(service.wait_ready)
            key = re.search(r"/v1/webhooks/dlr\?key=(\S+)", output).group(1)  # type: ignore[union-attr]
            code, out = await cli(empty_database, "endpoints", "add", receiver.url, **FAST_RETRIES)
            assert code == 0, out
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                stored = await http.post("/v1/webhooks/dlr", params={"key": key}, json={"id": "m"})
                assert stored.status_code == 200
                (item,) = await receiver.wait_for(1)
                await asyncio.sleep(0.5)
                scraped = (await http.get("/metrics")).text
        finally:
            await asyncio.to_thread(service.stop, signal.SIGTERM)
    assert item.json["data"]["id"] == "m"
    assert 'wavy_forward_attempts_total{outcome="success"} 1.0' in scraped
    assert 'wavy_events_total{kind="dlr",outcome="accepted"} 1.0' in scraped
    assert scraped.count("# TYPE wavy_forward_attempts_total counter") == 1
