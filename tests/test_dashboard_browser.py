"""The dashboard in a real headless Chromium: log in, read the figures, compare them with
/v1/stats, search a message, and check it fits a phone. Screenshots are kept in
``test-artifacts/`` (or ``$TEST_ARTIFACTS``)."""

from __future__ import annotations

import csv
import io
import os
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo

import httpx
import pytest

from tests.test_delivery_stats import Stats, callback, campaign, stats  # noqa: F401 - fixtures

async_api = pytest.importorskip("playwright.async_api")

CHROMIUM = next(
    (found for name in ("chromium", "chromium-browser") if (found := shutil.which(name))), None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium installed (Debian: apt-get install chromium); .ci/run installs it",
)

ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", "test-artifacts"))
TILES = (
    "messages",
    "accepted",
    "delivered",
    "failed",
    "delivery-rate",
    "waiting",
    "waiting-no-dlr",
    "p50",
    "p90",
    "replies",
    "reply-rate",
    "mos",
)


def expected_tiles(totals: dict[str, Any]) -> dict[str, str]:
    """The API's totals, computed the way the page labels them (as the raw values it keeps)."""
    sent, delivered = totals["sentStatusCodes"], totals["deliveredStatusCodes"]
    failed = sum(n for code, n in sent.items() if code not in ("2", "none")) + sum(
        n for code, n in delivered.items() if code not in ("4", "none")
    )
    values: dict[str, Any] = {
        "messages": totals["messages"],
        "accepted": sent.get("2", 0),
        "delivered": delivered.get("4", 0),
        "failed": failed,
        "delivery-rate": totals["deliveryRate"],
        "waiting": totals["waitingForDlr"]["carrierSendsDlr"],
        "waiting-no-dlr": totals["waitingForDlr"]["carrierWithoutDlr"],
        "p50": totals["timeToDeliver"]["p50"],
        "p90": totals["timeToDeliver"]["p90"],
        "replies": totals["replies"],
        "reply-rate": totals["replyRate"],
        "mos": totals["mosReceived"],
    }
    return {key: "" if value is None else _js_number(value) for key, value in values.items()}


def expected_campaign_row(group: dict[str, Any]) -> list[str]:
    """A campaign's (or a sub-account's) row as the page writes it, from the API's group
    (en-US numbers, one decimal for rates)."""

    def rate(value: float | None) -> str:
        return "\u2013" if value is None else f"{value * 100:.1f}%"  # the page's en dash

    sent, delivered = group["sentStatusCodes"], group["deliveredStatusCodes"]
    failed = sum(n for code, n in sent.items() if code not in ("2", "none")) + sum(
        n for code, n in delivered.items() if code not in ("4", "none")
    )
    waiting = (
        group["waitingForDlr"]["carrierSendsDlr"] + group["waitingForDlr"]["carrierWithoutDlr"]
    )
    counts = [group["messages"], sent.get("2", 0), delivered.get("4", 0)]
    return [
        group["key"] or "(none)",
        *(f"{n:,}" for n in counts),
        rate(group["deliveryRate"]),
        f"{failed:,}",
        f"{waiting:,}",
        f"{group['replies']:,}",
        rate(group["replyRate"]),
        f"{group['optOuts']:,}",
        rate(group["optOutRate"]),
    ]


def _js_number(value: float) -> str:
    """How JavaScript writes a number into an attribute (15.0 -> "15")."""
    return str(int(value)) if float(value).is_integer() else repr(value)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """A headless Chromium, closed after the test."""
    async with async_api.async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield launched
        finally:
            await launched.close()


async def download(page: Any, button: str) -> tuple[str, bytes]:
    """Click a download button; the file's suggested name and its bytes."""
    async with page.expect_download() as downloading:
        await page.click(button)
    downloaded = await downloading.value
    return downloaded.suggested_filename, Path(await downloaded.path()).read_bytes()  # noqa: ASYNC240


async def log_in(
    page: Any, base_url: str, username: str, token: str, path: str = "/dashboard"
) -> None:
    await page.goto(base_url + path)
    await page.fill("input[name=username]", username)
    await page.fill("input[name=token]", token)
    await page.click("#login-form button[type=submit]")
    await page.wait_for_selector("body[data-loaded]", timeout=15_000)


@pytest.mark.slow
@pytest.mark.usefixtures("campaign")
async def test_the_dashboard_shows_what_the_stats_api_counts(
    browser: Any,
    base_url: str,
    client: httpx.AsyncClient,
    stats: Stats,  # noqa: F811 - the fixture
) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, tiny
    token = stats.headers["ana"]["AuthenticationToken"]
    outside: list[str] = []
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    page.on(
        "request",
        lambda request: None if request.url.startswith(base_url) else outside.append(request.url),
    )
    refused_by_policy: list[str] = []
    page.on(
        "console",
        lambda message: (
            refused_by_policy.append(message.text)
            if "Content Security Policy" in message.text
            else None
        ),
    )
    await log_in(page, base_url, "ana", token)
    shown = {
        tile: await page.get_attribute(f"[data-testid=kpi-{tile}] .value", "data-value")
        for tile in TILES
    }
    loaded_with = dict(parse_qsl(await page.get_attribute("body", "data-loaded") or ""))
    who = await page.text_content("[data-testid=who]")
    sub_account_offered = await page.is_visible("#sub-account-field")
    vivo = await page.text_content("[data-testid=carrier-VIVO]")
    oi = await page.text_content("[data-testid=carrier-OI]")
    replies = await page.locator("[data-testid=reply]").all_text_contents()
    # Wider than its card, a table is cut off (it scrolls, with its last columns out of view).
    carriers_cut_off = await page.evaluate(
        "(() => { const t = document.querySelector('#carrier-table');"
        " return t.scrollWidth - t.parentElement.clientWidth; })()"
    )
    latency_summary = await page.text_content("[data-testid=latency-summary]")
    icon = await page.request.get(f"{base_url}/favicon.ico")
    await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

    await page.fill("#search-form input[name=q]", "m2")
    await page.click("#search-form button")
    await page.wait_for_selector("[data-testid=history-events] tbody tr")
    history_rows = await page.locator("[data-testid=history-events] tbody tr").count()
    title = await page.text_content("[data-testid=history-title]")

    phone = await browser.new_page(viewport={"width": 390, "height": 844})
    await log_in(phone, base_url, "ana", token)  # a new tab logs in again
    overflow = await phone.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    await phone.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)

    api = await stats.get("ana", **loaded_with, groupBy="day")
    assert shown == expected_tiles(api["totals"])
    assert shown["messages"] == "6"  # the crafted campaign, counted once
    assert who == "ana (user, acme)"
    assert not sub_account_offered  # a user sees their sub-account only
    assert vivo is not None
    assert vivo.startswith("VIVO22")  # 2 messages, 2 accepted
    assert oi is not None
    assert "no DLRs" in oi  # not a 0% delivery rate
    assert len(replies) == 4
    assert any("m1" in reply and "ok" in reply for reply in replies)
    assert title == "Message m2"
    assert history_rows == 2  # its DLR and its callback (the retry was recorded once)
    assert overflow <= 0  # nothing wider than a phone's screen
    assert carriers_cut_off <= 0  # every column of the carriers in view at 1280 px
    assert latency_summary is not None
    assert "timed from" in latency_summary  # not "N delivered" beside another delivered count
    assert icon.status == 200
    assert outside == []  # no CDN, no outside request of any kind
    assert refused_by_policy == []  # the page works under its own Content-Security-Policy


@pytest.mark.slow
async def test_wrong_credentials_stay_on_the_login_form(browser: Any, base_url: str) -> None:
    page = await browser.new_page()
    await page.goto(f"{base_url}/dashboard")
    await page.fill("input[name=username]", "nobody")
    await page.fill("input[name=token]", "wrong-token-wrong-token")
    await page.click("#login-form button[type=submit]")
    # Selectors, not wait_for_function: the page's CSP (rightly) forbids evaluating strings.
    await page.wait_for_selector("#login-error:not(:empty)")
    error = await page.text_content("#login-error")
    board_hidden = await page.is_hidden("#board")

    assert error == "Wrong UserName or token."
    assert board_hidden


@pytest.mark.slow
@pytest.mark.usefixtures("campaign")
async def test_an_admin_chooses_the_sub_account(
    browser: Any,
    base_url: str,
    stats: Stats,  # noqa: F811 - the fixture
) -> None:
    token = stats.headers["boss"]["AuthenticationToken"]
    page = await browser.new_page()
    await log_in(page, base_url, "boss", token)
    everything = await page.get_attribute("[data-testid=kpi-messages] .value", "data-value")
    await page.fill("#controls input[name=subAccount]", "acme")
    await page.click("#controls button[type=submit]")
    await page.wait_for_selector("body[data-loaded*='subAccount=acme']")
    narrowed = await page.get_attribute("[data-testid=kpi-messages] .value", "data-value")

    assert (everything, narrowed) == ("7", "6")


@pytest.mark.slow
@pytest.mark.usefixtures("campaign")
async def test_an_admin_compares_sub_accounts_and_a_click_shows_one_and_users_see_none(
    browser: Any,
    base_url: str,
    stats: Stats,  # noqa: F811 - the fixture
) -> None:
    admin = await browser.new_page(locale="en-US")
    await log_in(admin, base_url, "boss", stats.headers["boss"]["AuthenticationToken"])
    loaded_with = dict(parse_qsl(await admin.get_attribute("body", "data-loaded") or ""))
    acme_row = await admin.locator("[data-testid=sub-account-acme] td").all_text_contents()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, tiny
    await admin.screenshot(path=str(ARTIFACTS / "dashboard-admin.png"), full_page=True)
    await admin.click("[data-testid=sub-account-acme] button")
    await admin.wait_for_selector("body[data-loaded*='subAccount=acme']")
    narrowed = await admin.get_attribute("[data-testid=kpi-messages] .value", "data-value")
    user = await browser.new_page(locale="en-US")
    await log_in(user, base_url, "ana", stats.headers["ana"]["AuthenticationToken"])
    hidden_for_user = await user.is_hidden("#sub-accounts")

    api = await stats.get("boss", **loaded_with, groupBy="subAccount")
    acme = next(group for group in api["groups"] if group["key"] == "acme")
    assert acme_row == [*expected_campaign_row(acme), f"{acme['mosReceived']:,}"]
    assert acme_row[:2] == ["acme", "6"]
    assert narrowed == "6"
    assert hidden_for_user


@pytest.mark.slow
@pytest.mark.usefixtures("campaign")
async def test_a_live_board_shows_new_messages_without_a_click_until_live_is_unticked(
    browser: Any,
    base_url: str,
    hook: Any,
    stats: Stats,  # noqa: F811 - the fixture
) -> None:
    token = stats.headers["ana"]["AuthenticationToken"]
    tile = "[data-testid=kpi-messages] .value"
    page = await browser.new_page()
    await log_in(page, base_url, "ana", token, path="/dashboard?refresh=1")
    before = await page.get_attribute(tile, "data-value")

    assert (await hook("callback", callback("m7", 2, "VIVO"))).status_code == 200
    await page.wait_for_selector(f"{tile}[data-value='7']", timeout=10_000)
    status = await page.text_content("[data-testid=status]")

    await page.uncheck("[data-testid=live]")
    await page.wait_for_timeout(1500)  # a load already under way may still land
    loads = await page.get_attribute("body", "data-loads")
    assert (await hook("callback", callback("m8", 2, "VIVO"))).status_code == 200
    await page.wait_for_timeout(2500)
    frozen = await page.get_attribute(tile, "data-value")
    loads_after = await page.get_attribute("body", "data-loads")

    assert before == "6"
    assert status is not None
    assert "loaded at" in status
    assert (frozen, loads_after) == ("7", loads)  # unticked: no load since


@pytest.mark.slow
@pytest.mark.usefixtures("campaign")
async def test_the_campaigns_table_counts_each_campaign_and_a_click_shows_only_that_one(
    browser: Any,
    base_url: str,
    hook: Any,
    stats: Stats,  # noqa: F811 - the fixture
) -> None:
    # Beside the fixture's six messages of campaign c1: one of c2 and one of no campaign.
    assert (await hook("callback", callback("n1", 2, "TIM", campaign="c2"))).status_code == 200
    without = {"id": "n2", "sentStatusCode": 2, "sentAt": 1_764_000_000_000, "carrierName": "TIM"}
    assert (await hook("callback", without)).status_code == 200
    token = stats.headers["ana"]["AuthenticationToken"]
    page = await browser.new_page(locale="en-US")
    await log_in(page, base_url, "ana", token)
    loaded_with = dict(parse_qsl(await page.get_attribute("body", "data-loaded") or ""))
    order = await page.locator("#campaign-table tbody tr").evaluate_all(
        "rows => rows.map(row => row.dataset.testid)"
    )
    rows = {
        name: await page.locator(f"[data-testid=campaign-{name}] td").all_text_contents()
        for name in ("c1", "c2", "none")
    }
    statuses_name, exported_bytes = await download(page, "#download-csv")
    replies_name, replies_bytes = await download(page, "#download-replies")
    exported, replies = exported_bytes.decode("utf-8-sig"), replies_bytes.decode("utf-8-sig")
    await page.click("[data-testid=campaign-c2] button")
    await page.wait_for_selector("body[data-loaded*='campaignId=c2']")
    narrowed = await page.get_attribute("[data-testid=kpi-messages] .value", "data-value")
    campaigns_after = await page.locator("#campaign-table tbody tr").count()

    api = await stats.get("ana", **loaded_with, groupBy="campaign")
    by_key = {group["key"]: group for group in api["groups"]}
    assert rows == {
        "c1": expected_campaign_row(by_key["c1"]),
        "c2": expected_campaign_row(by_key["c2"]),
        "none": expected_campaign_row(by_key[""]),
    }
    assert rows["c1"][:2] == ["c1", "6"]  # the fixture's campaign, retries counted once
    assert rows["c1"][-4:-2] == ["3", "33.3%"]  # its replies: m1 twice, m4 once
    assert order[0] == "campaign-c1"  # the busiest first
    assert (narrowed, campaigns_after) == ("1", 1)
    exported_ids = [row["id"] for row in csv.DictReader(io.StringIO(exported))]
    assert statuses_name.startswith("statuses-")
    assert sorted(exported_ids) == ["m1", "m2", "m3", "m4", "m5", "m6", "n1", "n2"]
    replies_by_id = {row["id"]: row for row in csv.DictReader(io.StringIO(replies))}
    assert replies_name.startswith("replies-")
    assert sorted(replies_by_id) == ["r1", "r2", "r3", "r4"]  # the retry of r1 stored once
    assert replies_by_id["r3"]["mt.id"] == "m4"


@pytest.mark.slow
@pytest.mark.usefixtures("campaign")
async def test_a_brazilian_browser_counts_its_own_days_and_gets_csv_split_by_semicolons(
    browser: Any,
    base_url: str,
    stats: Stats,  # noqa: F811 - the fixture
) -> None:
    token = stats.headers["ana"]["AuthenticationToken"]
    english, brazilian = (
        await browser.new_page(locale="en-US", timezone_id="UTC"),
        await browser.new_page(locale="pt-BR", timezone_id="America/Sao_Paulo"),
    )
    downloaded: dict[str, bytes] = {}
    asked: dict[str, dict[str, str]] = {}
    for name, page in (("en-US", english), ("pt-BR", brazilian)):
        await log_in(page, base_url, "ana", token)
        asked[name] = dict(parse_qsl(await page.get_attribute("body", "data-loaded") or ""))
        _, downloaded[name] = await download(page, "#download-csv")
    status = await brazilian.text_content("#status") or ""

    # Its figures are counted in its own days, and it says so.
    assert (asked["en-US"]["tz"], asked["pt-BR"]["tz"]) == ("UTC", "America/Sao_Paulo")
    assert "days and hours in America/Sao_Paulo" in status

    # Both start with the UTF-8 mark (Excel shows accents as typed); each is split by the list
    # separator that a spreadsheet of its locale expects when the file is double-clicked.
    assert downloaded["en-US"].startswith("\ufeffid,".encode())
    assert downloaded["pt-BR"].startswith("\ufeffid;".encode())
    text = downloaded["pt-BR"].decode("utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(text), delimiter=";"))
    assert sorted(row["id"] for row in rows) == ["m1", "m2", "m3", "m4", "m5", "m6"]


# The README's own first steps: a DLR and a SAIR reply, sent with the key the first start makes
# (of no sub-account), the reply naming its sub-account.
README_DLR = {
    "id": "try-1",
    "correlationId": "order-1",
    "carrierId": 5,
    "carrierName": "TIM",
    "destination": "5519900001111",
    "sentStatusCode": 2,
    "sentStatus": "SENT_SUCCESS",
    "deliveredStatusCode": 4,
    "deliveredStatus": "DELIVERED_SUCCESS",
    "deliveredAt": 1700000000000,
}
README_MO = {
    "id": "try-reply-1",
    "subAccount": "iFoodMarketing",
    "source": "5519900001111",
    "messageText": "SAIR",
    "mt": {"id": "try-1"},
}


async def table_rows(page: Any, table: str) -> list[dict[str, str]]:
    """A table's rows as {column: text}, whatever the layout (cards or columns)."""
    names = await page.locator(f"{table} thead th").all_text_contents()
    rows = []
    for row in await page.locator(f"{table} tbody tr").all():
        cells = await row.locator("td").all_text_contents()
        rows.append(dict(zip(names, cells, strict=False)))
    return rows


def count(text: str) -> int:
    return int(text.replace(",", "") or 0)


@pytest.mark.slow
async def test_the_readmes_examples_give_figures_that_agree_on_a_desktop_and_a_phone(
    app: Any, browser: Any, base_url: str, client: httpx.AsyncClient
) -> None:
    """What a newcomer sees after the README's first steps, as the admin the first start makes:
    every figure agrees with the others on the page and with /v1/stats, no rate passes 100 %,
    one time zone is named and used, and on a phone the columns that matter are on screen."""
    from app.db import users
    from app.rules.scope import Role
    from tests.conftest import add_key

    key = await add_key(app, None)
    async with app.state.engine.begin() as conn:
        token = await users.add_user(
            conn, username="admin", role=Role.ADMIN, sub_account=None, email=None, token=None
        )
    headers = {"UserName": "admin", "AuthenticationToken": token}
    for kind, body in (("dlr", README_DLR), ("mo", README_MO)):
        answer = await client.post(f"/v1/webhooks/{kind}", params={"key": key}, json=body)
        assert answer.json() == {"received": 1, "duplicates": 0}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, tiny

    seen: dict[str, dict[str, Any]] = {}
    for name, width in (("desktop", 1280), ("phone", 390)):
        page = await browser.new_page(
            viewport={"width": width, "height": 900},
            locale="en-US",
            timezone_id="America/Sao_Paulo",
        )
        await log_in(page, base_url, "admin", token)
        await page.wait_for_selector("[data-testid=reply]")
        reply_text = page.locator("[data-testid=reply] td.text").first
        box = await reply_text.bounding_box()
        seen[name] = {
            "tiles": {
                tile: await page.get_attribute(f"[data-testid=kpi-{tile}] .value", "data-value")
                for tile in (*TILES, "optouts", "optout-rate")
            },
            "loaded": dict(parse_qsl(await page.get_attribute("body", "data-loaded") or "")),
            "campaigns": await table_rows(page, "#campaign-table"),
            "sub_accounts": await table_rows(page, "#sub-account-table"),
            "replies": await table_rows(page, "#replies"),
            "size": await page.text_content("[data-testid=optout-size]"),
            "status": await page.text_content("[data-testid=status]"),
            "overflow": await page.evaluate(
                "document.documentElement.scrollWidth - window.innerWidth"
            ),
            "reply_text_right": None if box is None else box["x"] + box["width"],
        }
        await page.screenshot(path=str(ARTIFACTS / f"readme-{name}.png"), full_page=True)
        if name == "desktop":
            # A phone number typed as people write it finds its message, and nothing 404s.
            not_found: list[str] = []

            def note_404(response: Any, found: list[str] = not_found) -> None:
                if response.status == 404:
                    found.append(response.url)

            page.on("response", note_404)
            await page.fill("#search-form input[name=q]", "+55 (19) 90000-1111")
            await page.click("#search-form button")
            await page.wait_for_selector("[data-testid=history-title]")
            seen["search"] = {
                "title": await page.text_content("[data-testid=history-title]"),
                "not_found": list(not_found),
            }
            await page.select_option("[data-testid=zone]", "UTC")
            await page.wait_for_selector("body[data-loaded*='tz=UTC']")
            seen["utc"] = {
                "replies": await table_rows(page, "#replies"),
                "status": await page.text_content("[data-testid=status]"),
            }

    loaded = seen["desktop"]["loaded"]
    api = await client.get("/v1/stats", params={**loaded, "groupBy": "day"}, headers=headers)
    totals = api.json()["totals"]
    received = (
        await client.get(
            "/v1/sms/receive/search", params={"start": loaded["from"]}, headers=headers
        )
    ).json()["messages"][0]["receivedDate"]
    for name in ("desktop", "phone"):
        shown = seen[name]
        tiles = shown["tiles"]
        # The page's figures are the API's.
        expected = expected_tiles(totals)
        assert {tile: tiles[tile] for tile in TILES} == expected, name
        assert (tiles["optouts"], totals["optOuts"]) == ("1", 1)
        # The tables add up to the tiles above them: no sub-account, campaign or opt-out hidden.
        campaigns, sub_accounts = shown["campaigns"], shown["sub_accounts"]
        assert sum(count(row["messages"]) for row in campaigns) == int(tiles["messages"])
        assert sum(count(row["messages"]) for row in sub_accounts) == int(tiles["messages"])
        assert sum(count(row["opt-outs"]) for row in campaigns) == int(tiles["optouts"])
        assert sum(count(row["opt-outs"]) for row in sub_accounts) == int(tiles["optouts"])
        assert sum(count(row["replies"]) for row in campaigns) == int(tiles["replies"])
        by_name = {row["sub-account"]: row for row in sub_accounts}
        assert (by_name["iFoodMarketing"]["opt-outs"], by_name["(none)"]["messages"]) == ("1", "1")
        # No rate can pass what it is a share of.
        rates = [row[column] for row in campaigns + sub_accounts for column in row
                 if column.endswith("rate") and row[column] != "\u2013"]  # fmt: skip
        assert rates
        assert all(float(rate.rstrip("%")) <= 100 for rate in rates), rates
        # The list's size says what it counts, apart from the window's opt-out replies.
        assert shown["size"] == "1 number on the lists now (all time)"
        # One zone, named, and the reply's time written in it (São Paulo is UTC-3).
        assert "times, days and hours in America/Sao_Paulo" in shown["status"]
        local = datetime.fromisoformat(received).astimezone(ZoneInfo("America/Sao_Paulo"))
        assert shown["replies"][0]["received"] == f"{local:%Y-%m-%d %H:%M:%S}"
        assert shown["replies"][0]["text"] == "SAIR"
        assert shown["overflow"] <= 0, name
    # On the phone, the reply's text is on screen, not in a column scrolled off to the right.
    assert seen["phone"]["reply_text_right"] is not None
    assert seen["phone"]["reply_text_right"] <= 390
    assert seen["search"] == {"title": "Message try-1", "not_found": []}
    # Switched to UTC, every time on the page moves with the zone it names.
    utc = datetime.fromisoformat(received).astimezone(UTC)
    assert "times, days and hours in UTC" in seen["utc"]["status"]
    assert seen["utc"]["replies"][0]["received"] == f"{utc:%Y-%m-%d %H:%M:%S}"


@pytest.mark.slow
async def test_the_panel_of_statuses_that_never_came_shows_what_the_api_counts(
    browser: Any, base_url: str, client: httpx.AsyncClient, app: Any, senders: Any
) -> None:
    from tests.test_reconciliation import old_mts  # the MTs as the send API writes them

    acme = await old_mts(app, 3, "acme")
    await old_mts(app, 1, "globex")
    await app.state.reconciler.run_once()
    ana = senders["ana@acme.example"]
    api = await client.get(
        "/v1/reconciliation",
        headers={"UserName": ana["username"], "AuthenticationToken": ana["authenticationtoken"]},
    )
    page = await browser.new_page(viewport={"width": 390, "height": 844})
    await log_in(page, base_url, ana["username"], ana["authenticationtoken"])
    callback_row = await page.inner_text("[data-testid=reconcile-callback]")
    state = await page.inner_text("[data-testid=reconcile-state]")
    listed = await page.locator("[data-testid=overdue-row]").all_inner_texts()
    recovered = await page.inner_text("[data-testid=recovered-today]")
    await page.screenshot(path=str(ARTIFACTS / "reconciliation-phone.png"), full_page=True)

    assert api.json()["overdue"]["callback"] == 3
    assert [count(cell) for cell in callback_row.split("\n")[1:] if cell.strip()] == [3, 0]
    assert "Reconciliation is off" in state
    assert "Scope: acme" in state  # a user's own sub-account, said
    assert sorted(next(i for i in acme if i in row) for row in listed) == sorted(acme)
    assert "(UTC day): 0" in recovered
