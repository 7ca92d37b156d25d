"""The dashboard's opt-outs in a real headless Chromium: the opt-out figures beside the
replies, the list's size over time and its latest entries, within the user's sub-account."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from tests.test_dashboard_browser import CHROMIUM, browser, log_in  # noqa: F401 - the fixture
from tests.test_optouts import ANA, BIA, Team, team  # noqa: F401 - the fixture

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed")


@pytest.mark.slow
async def test_the_dashboard_shows_opt_outs_beside_replies_and_the_list(
    browser: Any,  # noqa: F811 - the fixture
    base_url: str,
    team: Team,  # noqa: F811 - the fixture
) -> None:
    at = int(datetime.now(UTC).timestamp() * 1000)
    sent = {"sentStatusCode": 2, "sentAt": at, "campaignId": "promo"}
    await team.hook("callback", {"id": "mt-a", **sent})
    await team.hook("callback", {"id": "mt-b", **sent})
    await team.reply("Sair", source=ANA, at=at, mt={"id": "mt-a"})
    await team.reply("STOP", source=BIA, sub="globex", at=at)  # not acme's
    await team.call("ana", "PUT", "/v1/optouts/5531988887777", json={"reason": "by phone"})

    page = await browser.new_page()
    await log_in(page, base_url, "ana", team.headers["ana"]["AuthenticationToken"])
    await page.wait_for_selector("[data-testid=optout-row]")
    optouts = await page.get_attribute("[data-testid=kpi-optouts] .value", "data-value")
    rate = await page.get_attribute("[data-testid=kpi-optout-rate] .value", "data-value")
    size = await page.text_content("[data-testid=optout-size]")
    numbers = await page.locator("[data-testid=optout-row] td:first-child").all_text_contents()
    promo = await page.locator("[data-testid=campaign-promo] td").all_text_contents()

    assert optouts == "1"  # the reply; the manual entry is no reply
    assert rate == "0.5"
    assert size == "2 numbers on the lists now (all time)"
    assert numbers == ["+5531988887777", "+5511987654321"]  # newest first, acme's only
    assert promo[-2:] == ["1", "50.0%"]
