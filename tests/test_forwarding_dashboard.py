"""The dashboard's Endpoints section in a real headless Chromium: each endpoint's health, its
attempts, and the replay button."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.receivers import receiving
from tests.test_dashboard_browser import CHROMIUM, browser, log_in  # noqa: F401 - the fixture
from tests.test_forwarding import People, dlr, people  # noqa: F401 - the fixture

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed")


@pytest.mark.slow
async def test_the_endpoints_section_shows_health_attempts_and_replays(
    browser: Any,  # noqa: F811 - the fixture
    base_url: str,
    people: People,  # noqa: F811 - the fixture
) -> None:
    answers = {"status": 500}
    async with receiving(lambda _n, _body: answers["status"]) as receiver:
        endpoint = await people.add_endpoint("ana", receiver.url)
        await people.add_endpoint("gil", "http://127.0.0.1:9/theirs")
        await people.hook("dlr", dlr("m-1"))
        await receiver.wait_for(3)  # every attempt of the tests' schedule failed
        await asyncio.sleep(0.5)

        page = await browser.new_page()
        await log_in(page, base_url, "ana", people.headers["ana"]["AuthenticationToken"])
        row = f"#endpoint-table tr[data-endpoint='{endpoint['id']}']"
        await page.wait_for_selector(row)
        rows = await page.locator("#endpoint-table tbody tr").count()
        cells = await page.locator(f"{row} td").all_text_contents()
        await page.click(row)
        await page.wait_for_selector("#attempt-table tbody tr")
        results = await page.locator("#attempt-table tbody tr td:nth-child(2)").all_text_contents()

        answers["status"] = 200
        await page.fill("#replay-form input[name=since]", "2020-01-01T00:00:00")
        await page.click("#replay-form button[type=submit]")
        await page.wait_for_selector("[data-testid=replay-status]:not(:empty)")
        replayed = await page.text_content("[data-testid=replay-status]")
        await receiver.wait_for(4)

    assert rows == 1  # ana sees her own endpoint only, not globex's
    assert cells[1] == receiver.url
    assert cells[2] == "failing"  # every attempt failed; none waits to retry
    assert cells[3:5] == ["0", "\u2013"]  # backlog, next retry: none
    assert cells[6].startswith("20")  # failing since a date, not a dash
    assert cells[7:] == ["1", "acme"]  # failed, sub-account
    assert results == ["500", "500", "500"]
    assert replayed == "1 deliveries queued again"
    assert receiver.received[3].json["data"]["id"] == "m-1"
