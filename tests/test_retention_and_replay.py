"""Keeping data tidy: the retention purge and replaying rejected bodies, through the CLI."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.retention import purge_periodically, retention_ages
from app.rules.retention import BadAge, parse_age
from app.settings import Settings
from tests.conftest import fetch_all
from tests.test_migrations_and_cli import run_cli


async def backdate(engine: AsyncEngine, message_id: str, days: int) -> None:
    """Make everything stored about one message (and its replies) ``days`` old."""
    age = "make_interval(days => :days)"
    statements = [
        f"UPDATE events SET received_at = received_at - {age} WHERE message_id = :id",
        f"UPDATE messages SET first_seen_at = first_seen_at - {age}, "
        f"updated_at = updated_at - {age} WHERE id = :id",
        f"UPDATE mos SET received_at = received_at - {age} WHERE id = :id",
    ]
    async with engine.begin() as conn:
        for statement in statements:
            await conn.execute(text(statement), {"id": message_id, "days": days})


async def test_purge_removes_only_what_is_older_than_the_age(
    hook: Any, engine: AsyncEngine, database_url: str
) -> None:
    for message_id in ("old-1", "old-2", "recent"):
        await hook("callback", {"id": message_id, "sentStatusCode": 2})
        await hook("dlr", {"id": message_id, "deliveredStatusCode": 4})
    await hook("mo", [{"id": "old-mo", "messageText": "hi"}, {"id": "new-mo", "messageText": "x"}])
    for old in ("old-1", "old-2", "old-mo"):
        await backdate(engine, old, days=100)
    # Sends' records, an old and a recent one of each: MTs (with their texts) and idempotency keys.
    async with engine.begin() as conn:
        for name, days in (("old", 100), ("recent", 1)):
            await conn.execute(
                text(
                    "INSERT INTO mts (id, username, destination, message_text, outcome, "
                    "submitted_at) VALUES (:id, 'ana', '5521988887777', 'Oi', 'sent', "
                    "now() - make_interval(days => :days))"
                ),
                {"id": f"mt-{name}", "days": days},
            )
            await conn.execute(
                text(
                    "INSERT INTO send_keys (username, key, body_sha256, created_at) "
                    "VALUES ('ana', :key, 'x', now() - make_interval(days => :days))"
                ),
                {"key": f"key-{name}", "days": days},
            )

    result = await asyncio.to_thread(
        run_cli, "purge", "--older-than", "90d", "--batch-rows", "1", database_url=database_url
    )

    assert result.returncode == 0, result.stderr
    assert "events           5" in result.stdout  # 2 callbacks, 2 DLRs, 1 MO
    assert {r["id"] for r in await fetch_all(engine, "SELECT id FROM messages")} == {"recent"}
    assert {r["id"] for r in await fetch_all(engine, "SELECT id FROM mos")} == {"new-mo"}
    events = await fetch_all(engine, "SELECT DISTINCT message_id FROM events")
    assert {r["message_id"] for r in events} == {"recent", "new-mo"}
    assert [r["id"] for r in await fetch_all(engine, "SELECT id FROM mts")] == ["mt-recent"]
    keys = await fetch_all(engine, "SELECT key FROM send_keys")
    assert [r["key"] for r in keys] == ["key-recent"]


async def test_a_message_updated_recently_survives_the_purge(
    hook: Any, engine: AsyncEngine, database_url: str
) -> None:
    await hook("callback", {"id": "m1", "sentStatusCode": 2})
    await backdate(engine, "m1", days=100)
    await hook("dlr", {"id": "m1", "deliveredStatusCode": 4})  # the DLR came late

    result = await asyncio.to_thread(
        run_cli, "purge", "--older-than", "90d", database_url=database_url
    )

    assert result.returncode == 0, result.stderr
    assert [r["id"] for r in await fetch_all(engine, "SELECT id FROM messages")] == ["m1"]


@pytest.mark.parametrize("age", ["0d", "90", "ninety days", "-5d"])
def test_ages_that_are_not_ages_are_refused(age: str) -> None:
    with pytest.raises(BadAge):
        parse_age(age)


def test_ages_read_as_operators_write_them() -> None:
    assert parse_age("90d") == timedelta(days=90)
    assert parse_age("12h") == timedelta(hours=12)
    assert parse_age("2W") == timedelta(weeks=2)


async def store_keep_rejected(engine: AsyncEngine, body: bytes, **columns: Any) -> int:
    values = {
        "endpoint": "dlr",
        "method": "POST",
        "sub_account": "acme",
        "status_code": 422,
        "reason": "validation_failed",
        "body": body,
        "body_truncated": False,
        **columns,
    }
    async with engine.begin() as conn:
        rejected_id = await conn.scalar(
            text(
                f"INSERT INTO rejected_bodies ({', '.join(values)}) "
                f"VALUES ({', '.join(':' + k for k in values)}) RETURNING id"
            ),
            values,
        )
    return int(rejected_id)


async def test_replay_stores_what_now_validates_and_leaves_the_rest(
    engine: AsyncEngine, database_url: str
) -> None:
    # As if a rule had been relaxed since these were refused: this one validates today.
    fixed = await store_keep_rejected(engine, b'[{"id": "r1", "deliveredStatusCode": 4}]')
    broken = await store_keep_rejected(engine, b'{"deliveredStatusCode": 4}')
    cut = await store_keep_rejected(engine, b'{"id": "r2"', body_truncated=True, status_code=413)
    by_get = await store_keep_rejected(
        engine, b"id=mo-9&messageText=ol%C3%A1&mt.id=r1", endpoint="mo", method="GET"
    )

    result = await asyncio.to_thread(
        run_cli, "rejected", "replay", "--all", database_url=database_url
    )

    assert result.returncode == 1  # some are still refused
    assert f"#{fixed} stored (1 new, 0 already stored)" in result.stdout
    assert f"#{broken} still refused: validation_failed" in result.stdout
    assert f"#{cut} not replayable" in result.stdout
    assert f"#{by_get} stored (1 new" in result.stdout
    [message] = await fetch_all(
        engine, "SELECT id, sub_account, delivered_status_code FROM messages"
    )
    assert message == {"id": "r1", "sub_account": "acme", "delivered_status_code": 4}
    [mo] = await fetch_all(engine, "SELECT id, message_text, mt_id FROM mos")
    assert mo == {"id": "mo-9", "message_text": "olá", "mt_id": "r1"}
    replayed = await fetch_all(
        engine, "SELECT id FROM rejected_bodies WHERE replayed_at IS NOT NULL"
    )
    assert {r["id"] for r in replayed} == {fixed, by_get}


async def test_replaying_twice_stores_nothing_twice(engine: AsyncEngine, database_url: str) -> None:
    rejected_id = await store_keep_rejected(engine, b'{"id": "r1", "deliveredStatusCode": 4}')

    first = await asyncio.to_thread(
        run_cli, "rejected", "replay", str(rejected_id), database_url=database_url
    )
    again = await asyncio.to_thread(
        run_cli, "rejected", "replay", str(rejected_id), database_url=database_url
    )

    assert first.returncode == again.returncode == 0
    assert "(0 new, 1 already stored)" in again.stdout
    assert len(await fetch_all(engine, "SELECT id FROM events")) == 1


async def test_the_service_purges_by_itself_when_retention_is_set(
    hook: Any, engine: AsyncEngine
) -> None:
    await hook("dlr", {"id": "old", "deliveredStatusCode": 4})
    await hook("dlr", {"id": "new", "deliveredStatusCode": 4})
    await backdate(engine, "old", days=100)

    purging = asyncio.create_task(
        purge_periodically(engine, retention_ages(timedelta(days=90), None), interval_s=0.05)
    )
    try:
        async with asyncio.timeout(10):
            while await fetch_all(engine, "SELECT id FROM messages WHERE id = 'old'"):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    finally:
        purging.cancel()

    assert [r["id"] for r in await fetch_all(engine, "SELECT id FROM messages")] == ["new"]


def test_retention_setting_must_be_an_age() -> None:
    assert Settings(retention="90d").retention_age() == timedelta(days=90)
    assert Settings().retention_age() is None
    with pytest.raises(ValueError, match="not an age"):
        Settings(retention="ninety")
