"""Opt-outs: a reply such as SAIR or STOP puts its sender on its sub-account's list, VOLTAR
takes it off, Wavy's 204 and 203 callbacks add what people told Wavy, the latest change wins
whatever the order of arrival, and senders check numbers before sending."""

from __future__ import annotations

import asyncio
import csv
import io
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncConnection
from standardwebhooks.webhooks import Webhook

from app.api.schemas import OptoutEntry
from app.db import users
from app.db.reads import FeedPosition, feed_end, feed_page, feed_statement
from app.rules.optouts import NotAPhoneNumber, e164_or_none, parsed_e164, reply_keyword
from app.rules.scope import Role, Scope
from tests.conftest import add_key
from tests.receivers import receiving
from tests.test_migrations_and_cli import run_cli

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, epoch ms
MINUTE = 60_000
ANA = "5511987654321"  # a person in São Paulo, as Wavy writes numbers
BIA = "5521998765432"


class Team:
    """An admin, a user of acme and one of globex; webhook keys of acme, globex and the
    account's own (no sub-account)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.headers: dict[str, dict[str, str]] = {}
        self.keys: dict[str | None, str] = {}
        self.sent = 0

    async def hook(self, kind: str, body: Any, key: str | None = "acme") -> httpx.Response:
        answer = await self.client.post(
            f"/v1/webhooks/{kind}", params={"key": self.keys[key]}, json=body
        )
        assert answer.status_code == 200, answer.text
        return answer

    async def reply(
        self, text: str, *, source: str = ANA, at: int = T0, sub: str | None = "acme", **more: Any
    ) -> None:
        self.sent += 1
        body = {
            "id": f"mo-{self.sent}",
            "source": source,
            "messageText": text,
            "receivedAt": at,
            **({"subAccount": sub} if sub else {}),
            **more,
        }
        await self.hook("mo", body, key=sub)

    async def call(self, who: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.client.request(method, path, headers=self.headers[who], **kwargs)

    async def check(self, who: str, *numbers: str, **params: Any) -> list[dict[str, Any]]:
        answer = await self.call(
            who, "POST", "/v1/optouts/check", json={"numbers": list(numbers)}, params=params
        )
        assert answer.status_code == 200, answer.text
        results: list[dict[str, Any]] = answer.json()["results"]
        return results

    async def opted_out(self, who: str, number: str = ANA, **params: Any) -> bool | None:
        result: bool | None = (await self.check(who, number, **params))[0]["optedOut"]
        return result


@pytest.fixture
async def team(app: FastAPI, client: httpx.AsyncClient) -> Team:
    found = Team(client)
    async with app.state.engine.begin() as conn:
        for name, role, sub in (
            ("boss", Role.ADMIN, None),
            ("ana", Role.USER, "acme"),
            ("gil", Role.USER, "globex"),
        ):
            token = await users.add_user(
                conn, username=name, role=role, sub_account=sub, email=None, token=None
            )
            found.headers[name] = {"UserName": name, "AuthenticationToken": token}
    for sub in ("acme", "globex", None):
        found.keys[sub] = await add_key(app, sub)
    return found


@pytest.mark.parametrize(
    "text", ["SAIR", "  sair! ", "Sáir", "PARAR.", "pare", "Cancelar", "STOP", "stop", "Baja",
             "ALTO", "unsubscribe", "OptOut", "salir", "¡Salir!", "END"]
)  # fmt: skip
async def test_keywords_as_people_type_them_opt_out(team: Team, text: str) -> None:
    await team.reply(text)
    assert await team.opted_out("ana") is True


@pytest.mark.parametrize(
    "text", ["quero pizza", "SIM", "Yes", "Stop please", "não quero sair", "ok", "", "SAIRR"]
)
async def test_other_replies_opt_nobody_out(team: Team, text: str) -> None:
    await team.reply(text)
    assert await team.opted_out("ana") is False


async def test_the_formats_of_one_number_are_one_number(team: Team) -> None:
    await team.reply("SAIR", source="+55 11 98765-4321")
    results = await team.check(
        "ana", "5511987654321", "+55 11 98765-4321", "(11) 98765-4321", "+5511987654321",
        "011 98765-4321", "5511987654322",
    )  # fmt: skip
    assert [r["e164"] for r in results[:5]] == ["+5511987654321"] * 5
    assert [r["optedOut"] for r in results] == [True, True, True, True, True, False]
    assert results[1]["number"] == "+55 11 98765-4321"  # as given
    assert results[0]["keyword"] == "SAIR"
    assert results[0]["source"] == "mo"
    assert results[0]["since"] == "2026-01-01T00:00:00.000Z"
    assert results[0]["subAccount"] == "acme"


async def test_a_number_that_cannot_be_read_is_reported_never_false(team: Team) -> None:
    results = await team.check("ana", "not a number", "123", ANA)
    assert [r["optedOut"] for r in results] == [None, None, False]
    assert results[0]["error"] == "not_a_phone_number"
    assert results[0]["e164"] is None
    answer = await team.call("ana", "PUT", "/v1/optouts/banana")
    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "not_a_phone_number"


async def test_check_answers_in_the_order_given_and_at_most_1000(team: Team) -> None:
    await team.reply("STOP", source=BIA)
    numbers = [f"55119{n:08d}" for n in range(998)] + [BIA, ANA]
    results = await team.check("ana", *numbers)
    assert [r["number"] for r in results] == numbers
    assert [r["number"] for r in results if r["optedOut"]] == [BIA]
    answer = await team.call("ana", "POST", "/v1/optouts/check", json={"numbers": [ANA] * 1001})
    assert answer.status_code == 422


async def test_an_opt_out_belongs_to_its_sub_account(team: Team) -> None:
    await team.reply("SAIR", sub="acme")
    assert await team.opted_out("ana") is True
    assert await team.opted_out("gil") is False  # globex may still send to them
    assert await team.opted_out("boss", subAccount="acme") is True
    assert await team.opted_out("boss", subAccount="globex") is False


async def test_an_admins_check_without_a_sub_account_names_every_list_that_holds_it(
    team: Team,
) -> None:
    """The dashboard's first user is the admin: a check that consulted the account-wide list
    alone answered "not opted out" for people who replied SAIR to a sub-account."""
    await team.reply("SAIR", sub="acme")
    await team.reply("STOP", sub="globex")
    await team.reply("SAIR", source=BIA, sub="globex")
    answer = await team.call("boss", "POST", "/v1/optouts/check", json={"numbers": [ANA, BIA]})
    assert answer.json()["listsChecked"] == ["(every list)"]
    ana, bia = answer.json()["results"]
    assert (ana["optedOut"], ana["optedOutOf"]) == (True, ["acme", "globex"])
    assert (bia["optedOut"], bia["optedOutOf"]) == (True, ["globex"])
    narrowed = await team.call(
        "boss", "POST", "/v1/optouts/check", json={"numbers": [BIA]}, params={"subAccount": "acme"}
    )
    assert narrowed.json()["listsChecked"] == ["acme", "(account-wide)"]
    assert narrowed.json()["results"][0]["optedOut"] is False
    mine = await team.call("ana", "POST", "/v1/optouts/check", json={"numbers": [ANA, BIA]})
    assert mine.json()["listsChecked"] == ["acme", "(account-wide)"]
    assert [r["optedOutOf"] for r in mine.json()["results"]] == [["acme"], []]


async def test_voltar_opts_back_in(team: Team) -> None:
    await team.reply("SAIR", at=T0)
    await team.reply("voltar", at=T0 + MINUTE)
    assert await team.opted_out("ana") is False
    detail = (await team.call("ana", "GET", f"/v1/optouts/{ANA}")).json()
    assert [(h["optedOut"], h["keyword"], h["source"]) for h in detail["history"]] == [
        (True, "SAIR", "mo"),
        (False, "VOLTAR", "mo"),
    ]
    assert detail["history"][0]["moId"] == "mo-1"


@pytest.mark.parametrize("order", ["in_order", "reversed"])
async def test_the_latest_reply_wins_whatever_the_arrival_order(team: Team, order: str) -> None:
    replies = [("SAIR", T0), ("START", T0 + MINUTE), ("PARE", T0 + 2 * MINUTE)]
    for text, at in replies if order == "in_order" else list(reversed(replies)):
        await team.reply(text, at=at)
    result = (await team.check("ana", ANA))[0]
    assert result["optedOut"] is True
    assert result["keyword"] == "PARE"

    await team.reply("VOLTAR", at=T0 + 3 * MINUTE)
    await team.reply("STOP", at=T0 - MINUTE)  # an old reply, retried late by Wavy
    assert await team.opted_out("ana") is False


async def test_a_retried_reply_is_one_change(team: Team) -> None:
    body = {"id": "mo-x", "subAccount": "acme", "source": ANA, "messageText": "SAIR",
            "receivedAt": T0}  # fmt: skip
    await team.hook("mo", body)
    await team.hook("mo", body)
    detail = (await team.call("ana", "GET", f"/v1/optouts/{ANA}")).json()
    assert len(detail["history"]) == 1


async def test_a_204_callback_puts_the_destination_on_its_sub_accounts_list(team: Team) -> None:
    callback = {"id": "mt-1", "destination": ANA, "sentStatusCode": 204,
                "sentStatus": "DESTINATION_BLOCKED_BY_OPTOUT", "sentAt": T0}  # fmt: skip
    await team.hook("callback", callback, key="acme")
    result = (await team.check("ana", ANA))[0]
    assert result["optedOut"] is True
    assert result["source"] == "wavy"
    assert result["subAccount"] == "acme"
    assert await team.opted_out("gil") is False


async def test_a_204_sent_with_the_account_key_takes_its_messages_sub_account(team: Team) -> None:
    await team.hook("callback", {"id": "mt-2", "destination": ANA, "sentStatusCode": 2}, key="acme")
    await team.hook("dlr", {"id": "mt-2", "destination": ANA, "sentStatusCode": 204}, key=None)
    assert await team.opted_out("ana") is True
    assert await team.opted_out("gil") is False


async def test_a_203_callback_puts_the_destination_on_the_account_wide_list(team: Team) -> None:
    callback = {"id": "mt-3", "destination": BIA, "sentStatusCode": 203,
                "sentStatus": "BLACKLISTED"}  # fmt: skip
    await team.hook("callback", callback, key=None)  # the account's own key
    for who in ("ana", "gil", "boss"):
        result = (await team.check(who, BIA))[0]
        assert result["optedOut"] is True, who
        assert result["subAccount"] is None
        assert result["keyword"] == "BLACKLISTED"


async def test_a_sub_accounts_key_cannot_blacklist_a_number_for_the_others(team: Team) -> None:
    """An intruder holding globex's key posts 203s for numbers acme sends to: they land on
    globex's own list only."""
    callback = {"id": "mt-3", "destination": BIA, "sentStatusCode": 203}
    await team.hook("callback", callback, key="globex")
    assert await team.opted_out("gil", BIA) is True
    assert await team.opted_out("ana", BIA) is False
    # The account-wide list is untouched: globex's own list alone holds it.
    assert (await team.check("boss", BIA))[0]["optedOutOf"] == ["globex"]


async def test_other_status_codes_put_nobody_on_a_list(team: Team) -> None:
    await team.hook("callback", {"id": "mt-4", "destination": ANA, "sentStatusCode": 202})
    await team.hook("dlr", {"id": "mt-5", "destination": ANA, "sentStatusCode": 2,
                            "deliveredStatusCode": 4})  # fmt: skip
    assert await team.opted_out("ana") is False


async def test_manual_add_and_remove_keep_who_and_why(team: Team) -> None:
    answer = await team.call(
        "ana", "PUT", "/v1/optouts/(11) 98765-4321", json={"reason": "asked by phone"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["optedOut"] is True
    assert answer.json()["number"] == "+5511987654321"
    assert await team.opted_out("ana") is True
    answer = await team.call("ana", "DELETE", f"/v1/optouts/{ANA}", params={"reason": "mistake"})
    assert answer.json()["optedOut"] is False
    history = answer.json()["history"]
    assert [(h["optedOut"], h["source"], h["actor"], h["reason"]) for h in history] == [
        (True, "manual", "ana", "asked by phone"),
        (False, "manual", "ana", "mistake"),
    ]


async def test_a_user_cannot_read_or_change_another_sub_accounts_list(team: Team) -> None:
    await team.reply("SAIR", sub="acme")
    # gil (globex) sees nothing of acme's list, anywhere.
    assert await team.opted_out("gil") is False
    assert (await team.call("gil", "GET", "/v1/optouts")).json()["items"] == []
    assert (await team.call("gil", "GET", "/v1/optouts/changes")).json()["items"] == []
    detail = (await team.call("gil", "GET", f"/v1/optouts/{ANA}")).json()
    assert detail["lists"] == []
    assert detail["history"] == []
    export = await team.call("gil", "GET", "/v1/optouts/export")
    assert ANA not in export.text
    # Naming acme is refused, for reads and writes.
    for method, path, body in (
        ("POST", "/v1/optouts/check", {"numbers": [ANA]}),
        ("GET", "/v1/optouts", None),
        ("GET", "/v1/optouts/changes", None),
        ("GET", "/v1/optouts/export", None),
        ("GET", f"/v1/optouts/{ANA}", None),
        ("PUT", f"/v1/optouts/{ANA}", None),
        ("DELETE", f"/v1/optouts/{ANA}", None),
        ("PUT", "/v1/optouts/keywords/SIM", {"action": "out"}),
        ("DELETE", "/v1/optouts/keywords/SIM", None),
    ):
        answer = await team.call("gil", method, path, params={"subAccount": "acme"}, json=body)
        assert answer.status_code == 403, (method, path, answer.text)
    # gil's own DELETE changes globex's list only: acme's opt-out stands.
    await team.call("gil", "DELETE", f"/v1/optouts/{ANA}")
    assert await team.opted_out("ana") is True
    # A user cannot lift an account-wide entry either.
    await team.hook("callback", {"id": "mt-9", "destination": BIA, "sentStatusCode": 203}, None)
    answer = await team.call("ana", "DELETE", f"/v1/optouts/{BIA}")
    assert answer.json()["optedOut"] is True
    assert await team.opted_out("ana", BIA) is True


async def test_listing_is_newest_first_and_pages(team: Team) -> None:
    for n in range(5):
        await team.reply("SAIR", source=f"55119000000{n:02d}", at=T0 + n * MINUTE)
    await team.reply("SAIR", source=BIA, sub="globex")
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await team.call("ana", "GET", "/v1/optouts", params=params)).json()
        seen += [item["number"] for item in page["items"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == [f"+55119000000{n:02d}" for n in reversed(range(5))]
    everything = (await team.call("boss", "GET", "/v1/optouts")).json()["items"]
    assert len(everything) == 6
    bad = await team.call("ana", "GET", "/v1/optouts", params={"cursor": "nonsense"})
    assert bad.status_code == 422


async def test_export_is_a_csv_of_the_list(team: Team) -> None:
    empty = await team.call("boss", "GET", "/v1/optouts/export")
    assert empty.status_code == 200  # nobody opted out yet: the header alone
    assert empty.text.lstrip("\ufeff").splitlines() == [",".join(OptoutEntry.model_fields)]
    await team.reply("SAIR", source=ANA)
    await team.call("ana", "PUT", f"/v1/optouts/{BIA}", json={"reason": "=cmd"})
    answer = await team.call("ana", "GET", "/v1/optouts/export")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(answer.text.lstrip("\ufeff"))))
    assert {row["number"] for row in rows} == {"+5511987654321", "+5521998765432"}
    assert {row["reason"] for row in rows} == {"", "'=cmd"}  # no formula runs
    assert {row["optedOut"] for row in rows} == {"true"}  # as the JSON says it, not True


async def test_the_changes_feed_serves_each_state_change(team: Team) -> None:
    await team.reply("SAIR", at=T0)
    page = (await team.call("ana", "GET", "/v1/optouts/changes")).json()
    assert [(i["number"], i["optedOut"]) for i in page["items"]] == [("+5511987654321", True)]
    await team.reply("STOP", at=T0 + MINUTE)  # no change of state: nothing new
    await team.reply("VOLTAR", at=T0 + 2 * MINUTE)
    page = (
        await team.call("ana", "GET", "/v1/optouts/changes", params={"after": page["next"]})
    ).json()
    assert [(i["number"], i["optedOut"]) for i in page["items"]] == [("+5511987654321", False)]


async def test_a_sub_accounts_feed_merges_its_list_and_the_account_wide_one_in_order(
    team: Team,
) -> None:
    """Pages of two items over changes that alternate between acme's own list and the
    account-wide one, with globex's in between: each change once, in the order they were made."""
    numbers = [f"55119876500{n:02d}" for n in range(7)]
    for n, number in enumerate(numbers):
        who = ("ana", "boss", "gil")[n % 3]  # the admin's change goes to the account-wide list
        answer = await team.call(who, "PUT", f"/v1/optouts/{number}", json={"reason": "asked"})
        assert answer.status_code == 200, answer.text
    seen: list[tuple[str, str]] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        page = (await team.call("ana", "GET", "/v1/optouts/changes", params=params)).json()
        seen += [(i["number"], i["subAccount"]) for i in page["items"]]
        if not page["items"]:
            break
        params["after"] = page["next"]
    assert seen == [
        (f"+{number}", ("acme", None)[n % 3]) for n, number in enumerate(numbers) if n % 3 < 2
    ]


async def test_a_quiet_sub_account_reads_its_feed_without_reading_the_others_changes(
    app: FastAPI, team: Team
) -> None:
    """An endpoint or dashboard of a sub-account with nothing new reads its opt-out feed on
    every dispatch or poll: what it costs must not grow with the other sub-accounts' changes."""
    await team.reply("SAIR", at=T0)  # acme's one change, long ago
    async with app.state.engine.begin() as conn:
        others = await conn.scalar(
            sa.text(
                "INSERT INTO optouts (sub_account, e164, opted_out, since, source, decided_at, "
                "change_id) SELECT 'tenant' || (n % 20), '+5521' || (900000000 + n), true, "
                "now(), 'mo', now(), n FROM generate_series(1, 5000) AS n RETURNING tx_id"
            )
        )
    async with app.state.engine.begin() as conn:
        await conn.execute(sa.text("ANALYZE optouts"))
    async with app.state.engine.begin() as conn:
        await _until_feeds_serve(conn, others)
        end = (await feed_page(conn, "optout", Scope("acme"), FeedPosition(0, 0), 100))[1]
        rows, _ = await feed_page(conn, "optout", Scope("acme"), end, 100)
        read = await _pages_read(conn, feed_statement("optout", Scope("acme"), end, 100))
    # A descent of one index per list: a few pages, where the others' changes take dozens.
    assert (rows, read <= 8) == ([], True), f"{read} pages read for a page with nothing new"


async def _until_feeds_serve(conn: AsyncConnection, tx_id: int) -> None:
    """Feeds serve a transaction's rows once no older one is running (a background task's, say)."""
    for _ in range(100):
        if (await feed_end(conn)).tx_id >= tx_id:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("an older transaction stayed open")


async def _pages_read(conn: AsyncConnection, statement: Any) -> int:
    """Pages of tables and indexes the statement reads, by EXPLAIN (BUFFERS)."""
    compiled = statement.compile(conn.sync_connection, compile_kwargs={"literal_binds": True})
    plan = await conn.scalar(sa.text(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {compiled}"))
    top = plan[0]["Plan"]
    return int(top["Shared Hit Blocks"] + top["Shared Read Blocks"])


async def test_keywords_are_set_per_sub_account_and_account_wide(team: Team) -> None:
    # acme's customers answer "CHEGA" to stop; globex keeps the defaults.
    answer = await team.call("ana", "PUT", "/v1/optouts/keywords/chega", json={"action": "out"})
    assert answer.status_code == 200, answer.text
    # The account turns ALTO off everywhere (a product name, in its market).
    await team.call("boss", "PUT", "/v1/optouts/keywords/ALTO", json={"action": "none"})
    await team.reply("Chega!", source=ANA, sub="acme")
    await team.reply("CHEGA", source=BIA, sub="globex")
    await team.reply("alto", source="5531988887777", sub="acme")
    assert await team.opted_out("ana", ANA) is True
    assert await team.opted_out("gil", BIA) is False
    assert await team.opted_out("ana", "5531988887777") is False
    listed = {
        k["keyword"]: k for k in (await team.call("ana", "GET", "/v1/optouts/keywords")).json()
    }
    assert listed["CHEGA"]["setBy"] == "subAccount"
    assert listed["CHEGA"]["action"] == "out"
    assert listed["SAIR"]["setBy"] == "default"
    assert listed["SAIR"]["origin"] == "Portuguese"
    assert "ALTO" not in listed
    assert listed["VOLTAR"]["action"] == "in"
    answer = await team.call("ana", "DELETE", "/v1/optouts/keywords/CHEGA")
    assert "CHEGA" not in {k["keyword"] for k in answer.json()}
    assert (await team.call("ana", "DELETE", "/v1/optouts/keywords/SAIR")).status_code == 404
    bad = await team.call("ana", "PUT", "/v1/optouts/keywords/%21%21", json={"action": "out"})
    assert bad.status_code == 422


async def test_list_size_over_time(team: Team) -> None:
    await team.reply("SAIR", source=ANA, at=T0)
    await team.reply("SAIR", source=BIA, at=T0 + 86_400_000)
    await team.reply("VOLTAR", source=ANA, at=T0 + 2 * 86_400_000)
    answer = await team.call(
        "ana", "GET", "/v1/optouts/days",
        params={"from": "2025-12-31T00:00:00Z", "to": "2026-01-04T00:00:00Z"},
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    days = [(d["day"], d["optedOut"], d["optedIn"], d["size"]) for d in answer.json()["days"]]
    assert days == [
        ("2025-12-31", 0, 0, 0),
        ("2026-01-01", 1, 0, 1),
        ("2026-01-02", 1, 0, 2),
        ("2026-01-03", 0, 1, 1),
        ("2026-01-04", 0, 0, 1),
    ]


def test_brazils_shortcut_reads_numbers_as_phonenumbers_does() -> None:
    """The shortcuts for Brazil's numbers, written with the country code or as people write
    them at home, give what the library gives, over every two-digit start, both lengths, and
    the usual separators."""
    rng = random.Random(22)
    for start in range(100):
        for length in (10, 11):
            for _ in range(40):
                rest = f"{start:02d}" + "".join(rng.choice("0123456789") for _ in range(length - 2))
                at_home = f"({rest[:2]}) {rest[2:-4]}-{rest[-4:]}"
                for written in (
                    f"55{rest}",
                    f"+55{rest}",
                    f"+55 {rest[:2]} {rest[2:]}",
                    rest,
                    at_home,
                ):
                    try:
                        expected: str | None = parsed_e164(written, "BR")
                    except NotAPhoneNumber:
                        expected = None
                    assert e164_or_none(written, "BR") == expected, written


def test_reply_keywords_are_the_whole_reply_normalised() -> None:
    assert reply_keyword("  Sáir!! ") == "SAIR"
    assert reply_keyword("stop   all") == "STOP ALL"
    assert reply_keyword("x" * 65) is None
    assert reply_keyword("!!!") is None


async def cli(database_url: str, *args: str) -> tuple[int, str]:
    done = await asyncio.to_thread(run_cli, *args, database_url=database_url)
    return done.returncode, done.stdout + done.stderr


async def test_the_optouts_commands_end_to_end(
    team: Team, database_url: str, tmp_path: Path
) -> None:
    existing = tmp_path / "customer-list.csv"
    existing.write_text(
        "phone,reason\n5511987654321,old list\n(21) 99876-5432,\nnot a number,\n"
        "+55 11 98765-4321,the same number again\n",
        encoding="utf-8",
    )
    code, out = await cli(database_url, "optouts", "import", str(existing), "--sub-account", "acme")
    assert code == 2, out  # the unreadable line is reported, the rest imported
    assert "line 4: not a phone number: 'not a number'" in out
    # The repeated number is counted once, as a repeat, not as a second number recorded.
    assert "2 number(s) put on list acme; 0 already on it; 1 line(s) repeating a number" in out
    code, out = await cli(database_url, "optouts", "import", str(existing), "--sub-account", "acme")
    assert "0 number(s) put on list acme; 2 already on it" in out
    assert await team.opted_out("ana", ANA) is True
    assert await team.opted_out("ana", "+5521998765432") is True
    assert await team.opted_out("gil", ANA) is False

    code, out = await cli(
        database_url, "optouts", "check", ANA, "5531900001111", "--sub-account", "acme"
    )
    assert code == 0, out
    assert "lists checked: acme, (account-wide)" in out
    assert "+5511987654321\topted out since" in out
    assert "+5531900001111\tnot opted out" in out
    code, out = await cli(database_url, "optouts", "check", ANA)
    assert code == 0, out
    assert "lists checked: (every list)" in out
    assert "on acme)" in out

    code, out = await cli(
        database_url, "optouts", "remove", ANA, "--sub-account", "acme", "--reason", "asked back"
    )
    assert code == 0, out
    assert await team.opted_out("ana", ANA) is False
    code, out = await cli(database_url, "optouts", "add", BIA, "--reason", "blacklisted by hand")
    assert code == 0, out
    assert await team.opted_out("gil", BIA) is True  # account-wide

    code, out = await cli(database_url, "optouts", "list")
    assert code == 0, out
    assert out.splitlines()[0] == "number\tlist\tsince (UTC)\tsource\tkeyword\treason"
    assert "blacklisted by hand" in out
    assert "+5521998765432\t(account-wide)" in out
    assert "+5521998765432\tacme" in out

    code, out = await cli(
        database_url, "optouts", "keywords", "chega", "out", "--sub-account", "acme"
    )
    assert code == 0, out
    assert "CHEGA\tout\tsubAccount" in out
    assert "SAIR\tout\tdefault (Portuguese)" in out
    await team.reply("chega", source="5531900001111", sub="acme")
    assert await team.opted_out("ana", "5531900001111") is True
    code, out = await cli(database_url, "optouts", "keywords", "chega", "sometimes")
    assert code == 2, out


async def test_forwarding_pushes_each_change_to_the_lists_an_endpoint_receives(
    team: Team,
) -> None:
    async with receiving() as acme, receiving() as globex:
        added = []
        for who, receiver in (("ana", acme), ("gil", globex)):
            answer = await team.call(
                who,
                "POST",
                "/v1/endpoints",
                json={"url": receiver.url, "events": ["optout.changed"]},
            )
            assert answer.status_code == 201, answer.text
            added.append(answer.json())
        await team.reply("SAIR", sub="acme", at=T0)
        at_acme = await acme.wait_for(1)
        await team.reply("VOLTAR", sub="acme", at=T0 + MINUTE)
        await acme.wait_for(2)
        blacklisted = {"id": "mt-1", "destination": BIA, "sentStatusCode": 203}
        await team.hook("callback", blacklisted, key=None)
        at_acme = await acme.wait_for(3)
        at_globex = await globex.wait_for(1)
    changes = [Webhook(added[0]["secret"]).verify(item.body, item.headers) for item in at_acme]
    assert [(c["type"], c["data"]["number"], c["data"]["optedOut"]) for c in changes] == [
        ("optout.changed", "+5511987654321", True),
        ("optout.changed", "+5511987654321", False),
        ("optout.changed", "+5521998765432", True),
    ]
    assert changes[2]["data"]["subAccount"] is None  # the account-wide list reaches everyone
    # globex hears of the account-wide entry only, never of acme's list.
    assert [item.json["data"]["number"] for item in at_globex] == ["+5521998765432"]


async def test_stats_count_opt_outs_for_the_campaign_of_the_message_they_answer(
    team: Team,
) -> None:
    now = datetime.now(UTC)
    at = int(now.timestamp() * 1000)
    sent = {"sentStatusCode": 2, "sentAt": at, "carrierName": "VIVO"}
    for message_id, campaign in (("mt-a", "promo"), ("mt-b", "promo"), ("mt-c", "news")):
        await team.hook("callback", {"id": message_id, "campaignId": campaign, **sent})
    await team.hook("callback", {"id": "mt-g", "campaignId": "promo", **sent}, key="globex")
    await team.reply("SAIR", source=ANA, at=at, mt={"id": "mt-a"})
    await team.reply("quero pizza", source=BIA, at=at, mt={"id": "mt-b"})
    await team.reply("STOP", source=BIA, sub="globex", at=at, mt={"id": "mt-g"})

    answer = await team.call("ana", "GET", "/v1/stats", params={"groupBy": "campaign"})
    assert answer.status_code == 200, answer.text
    groups = {g["key"]: g for g in answer.json()["groups"]}
    assert (groups["promo"]["optOuts"], groups["promo"]["optOutRate"]) == (1, 0.5)
    assert (groups["promo"]["replies"], groups["promo"]["replyRate"]) == (2, 1.0)
    assert (groups["news"]["optOuts"], groups["news"]["optOutRate"]) == (0, 0.0)
    assert answer.json()["totals"]["optOuts"] == 1  # globex's opt-out is not acme's

    answer = await team.call("boss", "GET", "/v1/stats", params={"groupBy": "subAccount"})
    groups = {g["key"]: g for g in answer.json()["groups"]}
    assert (groups["acme"]["optOuts"], groups["globex"]["optOuts"]) == (1, 1)
    hours = await team.call("ana", "GET", "/v1/stats", params={"groupBy": "hour"})
    assert [(g["key"], g["optOuts"]) for g in hours.json()["groups"] if g["optOuts"]] == [
        (f"{now:%Y-%m-%dT%H}:00:00Z", 1)
    ]
    only_news = await team.call("ana", "GET", "/v1/stats", params={"campaignId": "news"})
    assert only_news.json()["totals"]["optOuts"] == 0


async def test_an_opt_out_that_answers_no_known_message_is_no_share_of_any_campaign(
    team: Team,
) -> None:
    """Counted under "" (no campaign), replies with no message made that group's opt-out rate
    300 %: they get a group of their own (key null), of no messages, so no rate."""
    at = int(datetime.now(UTC).timestamp() * 1000)
    await team.hook("callback", {"id": "mt-n", "sentStatusCode": 2, "sentAt": at})
    for n, number in enumerate((ANA, BIA, "5531911112222")):
        await team.reply("SAIR", source=number, at=at + n)

    answer = await team.call("ana", "GET", "/v1/stats", params={"groupBy": "campaign"})
    groups = {g["key"]: g for g in answer.json()["groups"]}
    assert (groups[""]["messages"], groups[""]["optOuts"], groups[""]["optOutRate"]) == (1, 0, 0.0)
    unanswered = groups[None]
    assert (unanswered["messages"], unanswered["optOuts"], unanswered["optOutRate"]) == (0, 3, None)
    assert answer.json()["totals"]["optOuts"] == 3


def test_digits_of_other_scripts_are_read_as_the_library_reads_them() -> None:
    """Full-width and Arabic-Indic digits are digits to str.isdigit and to a regex's \\d: the
    shortcuts must not store them as they are."""
    full_width = str.maketrans("0123456789", "".join(chr(0xFF10 + n) for n in range(10)))
    arabic_indic = str.maketrans("0123456789", "".join(chr(0x0660 + n) for n in range(10)))
    for written in (
        "55" + "11987654321".translate(full_width),  # the ASCII country code, then others
        "(11) " + "98765-4321".translate(full_width),
        "5511987654321".translate(arabic_indic),
        "+55 11 " + "98765-4321".translate(arabic_indic),
    ):
        assert e164_or_none(written, "BR") == "+5511987654321", written


async def test_one_batch_with_a_reply_twice_and_a_later_opt_in_ends_opted_in(team: Team) -> None:
    def reply(mo_id: str, text: str, at: int) -> dict[str, Any]:
        return {"id": mo_id, "subAccount": "acme", "source": ANA, "messageText": text,
                "receivedAt": at}  # fmt: skip

    batch = [reply("a", "SAIR", T0), reply("b", "VOLTAR", T0 + MINUTE), reply("a", "SAIR", T0)]
    answer = await team.hook("mo", batch)
    assert answer.json() == {"received": 3, "duplicates": 1}
    assert await team.opted_out("ana") is False
    history = (await team.call("ana", "GET", f"/v1/optouts/{ANA}")).json()["history"]
    assert [(h["moId"], h["optedOut"]) for h in history] == [("a", True), ("b", False)]


@pytest.mark.parametrize(
    ("window", "status"),
    [
        ({"to": "9999-12-31T23:59:59Z", "tz": "Asia/Tokyo"}, 422),  # 10000 in Tokyo
        ({"from": "9999-12-20T00:00:00Z", "to": "9999-12-31T23:59:59Z"}, 200),
        (
            {
                "from": "0001-01-01T00:00:00Z",
                "to": "0001-01-05T00:00:00Z",
                "tz": "America/Sao_Paulo",
            },
            200,
        ),
        ({"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, 422),
    ],
)
async def test_the_size_over_time_at_the_ends_of_the_calendar_never_answers_500(
    team: Team, window: dict[str, str], status: int
) -> None:
    await team.reply("SAIR", at=T0)
    answer = await team.call("boss", "GET", "/v1/optouts/days", params=window)
    assert answer.status_code == status, answer.text
