"""What an operator relies on: health and readiness probes, metrics, request ids, logs that
never leak secrets, and slow bodies cut off."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import pytest
import yaml
from fastapi import FastAPI
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app import metrics
from app.api.middleware import SUMMARY_EVERY_S
from app.db.migrate import head_revision, upgrade_to_head
from app.logs import FailureLog, RequestIdFilter
from app.settings import Settings
from tests.conftest import (
    _admin,
    changed_settings,
    fetch_all,
    free_port,
    serving,
    silent_database_url,
    writes_going_to,
)
from tests.test_migrations_and_cli import Service, run_cli


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_healthz_answers_without_credentials(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_reports_the_schema_head(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {"status": "ready", "schema": head_revision()}


@pytest.mark.usefixtures("unreachable_database")
async def test_readyz_is_503_while_the_database_is_unreachable(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")

    assert response.status_code == 503
    assert response.headers["retry-after"]
    assert response.json()["error"]["code"] == "not_ready"


@pytest.fixture
async def database_away() -> AsyncIterator[httpx.AsyncClient]:
    """A client of the service started while its PostgreSQL refuses connections (nothing
    listens on port 9)."""
    settings = Settings(
        database_url="postgresql://postgres@127.0.0.1:9/away",
        port=free_port(),
        public_url=None,
        db_connect_timeout_s=1,
    )
    async with (
        serving(settings),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.port}", timeout=30) as client,
    ):
        yield client


async def test_reads_while_the_database_is_away_get_503_with_retry_after_not_500(
    database_away: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    reader = {"UserName": "ana", "AuthenticationToken": "t" * 32}

    with caplog.at_level(logging.WARNING):
        answers = [
            await database_away.get("/v1/me", headers=reader),
            await database_away.get("/v1/sms/status/m1", headers=reader),
            await database_away.get("/v1/sms/status/export", headers=reader),
        ]

    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert answer.headers["retry-after"] == "5"
        assert answer.json()["error"]["code"] == "unavailable"
    outage_lines = [r for r in caplog.records if "answered 503" in r.getMessage()]
    assert len(outage_lines) == 1  # one line for the outage, not one per request
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_webhook_key_that_cannot_be_checked_gets_503_not_401(
    database_away: httpx.AsyncClient,
) -> None:
    """A key may be valid though the keys cannot be loaded: a 401 could make the sender give
    up on a status; a 503 makes it come back."""
    dlr = {"id": "m1", "sentStatusCode": 2, "deliveredStatusCode": 4}
    keyed = await database_away.post("/v1/webhooks/dlr", params={"key": "k" * 32}, json=dlr)
    keyless = await database_away.post("/v1/webhooks/dlr", json=dlr)

    assert keyed.status_code == 503
    assert keyed.headers["retry-after"] == "5"
    assert keyless.status_code == 401  # no key at all is wrong whatever the database says


@pytest.mark.usefixtures("silent_database")
async def test_readyz_answers_503_promptly_when_the_database_hangs(
    client: httpx.AsyncClient,
) -> None:
    started = time.monotonic()

    response = await client.get("/readyz")

    assert response.status_code == 503
    # A load balancer's probe gives up after a few seconds; ours must answer before that.
    assert time.monotonic() - started < 4


@pytest.fixture
async def read_only_database(
    app: FastAPI, settings: Settings, empty_database: str, webhook_key: str
) -> AsyncIterator[None]:
    """Reads and writes go to a migrated database that answers but takes no write, as a
    standby does (a failover that left the service on the old primary). The webhook key is
    made first, in the real database."""
    await asyncio.to_thread(upgrade_to_head, empty_database)
    name = make_url(empty_database).database
    await _admin(empty_database, f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    async with writes_going_to(app, settings, empty_database):
        yield


@pytest.mark.usefixtures("read_only_database")
async def test_a_read_only_database_makes_readyz_503_and_webhooks_503_never_200(
    client: httpx.AsyncClient, hook: Any
) -> None:
    ready = await client.get("/readyz")
    stored = await hook("dlr", {"id": "standby-1", "deliveredStatusCode": 4})

    assert ready.status_code == 503
    assert "read-only" in ready.json()["error"]["message"]
    assert stored.status_code == 503  # not committed, so not acknowledged; Wavy retries
    assert stored.headers["retry-after"]


@pytest.fixture
async def schema_at(engine: AsyncEngine) -> AsyncIterator[Callable[[str], Awaitable[None]]]:
    """Sets the database's recorded migration (as another release would leave it), then puts
    the head back."""

    async def set_revision(revision: str) -> None:
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE alembic_version SET version_num = :revision"),
                {"revision": revision},
            )

    yield set_revision
    await set_revision(head_revision())


async def test_readyz_is_503_when_the_schema_is_not_migrated(
    client: httpx.AsyncClient, schema_at: Callable[[str], Awaitable[None]]
) -> None:
    await schema_at("0001")
    response = await client.get("/readyz")

    assert response.status_code == 503
    assert "0001" in response.json()["error"]["message"]


async def test_readyz_stays_ready_when_a_newer_release_has_migrated(
    client: httpx.AsyncClient, schema_at: Callable[[str], Awaitable[None]], hook: Any
) -> None:
    # A rolling deploy: the first new replica migrated to a revision this code does not ship.
    # The old replicas must keep serving until each is replaced, not all leave at once.
    await schema_at("9999_from_a_newer_release")
    response = await client.get("/readyz")
    stored = await hook("dlr", {"id": "rolling-1", "deliveredStatusCode": 4})

    assert response.status_code == 200
    assert response.json()["schema"] == "9999_from_a_newer_release"
    assert head_revision() in response.json()["note"]
    assert stored.status_code == 200


async def test_metrics_count_accepted_duplicates_and_latency_per_route(
    client: httpx.AsyncClient, hook: Any
) -> None:
    before = await scrape(client)

    assert (await hook("dlr", {"id": "m1", "deliveredStatusCode": 4})).status_code == 200
    assert (await hook("dlr", {"id": "m1", "deliveredStatusCode": 4})).status_code == 200
    after = await scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("wavy_events_total", kind="dlr", outcome="accepted") == 1
    assert delta("wavy_events_total", kind="dlr", outcome="duplicate") == 1
    route = {"method": "POST", "route": "/v1/webhooks/dlr", "status": "200"}
    assert delta("wavy_http_request_duration_seconds_count", **route) == 2
    assert delta("wavy_writer_batch_items_count") >= 1
    assert delta("wavy_writer_commit_duration_seconds_count") >= 1


async def test_metrics_tell_when_the_stats_fold_and_the_reply_recount_last_worked(
    client: httpx.AsyncClient,
) -> None:
    """An operator alerts on their age: either failing for long leaves figures stale."""
    await asyncio.sleep(2.5)  # one fold period at least, whenever the app started
    samples = await scrape(client)

    name = "wavy_background_last_success_timestamp_seconds"
    for task in ("stats_fold", "reply_recount"):  # every 2 s and 5 s: recent, if not now
        assert time.time() - value(samples, name, task=task) < 15


ALERT_RULES = Path(__file__).parent.parent / "docs" / "prometheus-alerts.yml"


def exported_series() -> dict[str, set[str]]:
    """Every series name the service's metrics export, with the labels each carries."""
    series: dict[str, set[str]] = {}
    for metric in vars(metrics).values():
        if isinstance(metric, Counter):
            series[f"{metric._name}_total"] = set(metric._labelnames)
        elif isinstance(metric, Gauge):
            series[metric._name] = set(metric._labelnames)
        elif isinstance(metric, Histogram):
            labels = set(metric._labelnames)
            series[f"{metric._name}_bucket"] = labels | {"le"}
            series[f"{metric._name}_count"] = series[f"{metric._name}_sum"] = labels
    return series


def test_the_alert_rules_parse_and_name_only_what_the_service_exports() -> None:
    """An alert on a misspelt metric or label never fires, silently: docs/prometheus-alerts.yml
    is checked against app/metrics.py, each expression parsed as Prometheus would."""
    groups = yaml.safe_load(ALERT_RULES.read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    exported = exported_series()
    unknown = []
    for rule in rules:
        selectors: list[promql_parser.VectorSelector] = []

        def collect(node: object, found: list[promql_parser.VectorSelector] = selectors) -> None:
            if isinstance(node, promql_parser.VectorSelector):
                found.append(node)

        promql_parser.walk(promql_parser.parse(rule["expr"]), collect)
        assert selectors, rule["alert"]
        for selector in selectors:
            labels = {matcher.name for matcher in selector.matchers.matchers}
            if selector.name not in exported or not labels <= exported[selector.name]:
                unknown.append((rule["alert"], selector.name, labels))

    assert len(rules) >= 8
    assert len({rule["alert"] for rule in rules}) == len(rules)
    assert unknown == []


async def test_metrics_count_refusals_by_reason(client: httpx.AsyncClient, hook: Any) -> None:
    before = await scrape(client)

    await hook("dlr", content=b"{broken")
    await client.post("/v1/webhooks/dlr", params={"key": "wrong"}, json={"id": "x"})
    await client.post("/v1/webhooks/dlr", json={"id": "x"})
    after = await scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("wavy_rejected_bodies_total", kind="dlr", reason="malformed_json") == 1
    assert delta("wavy_webhook_auth_failures_total", reason="unknown_key") == 1
    assert delta("wavy_webhook_auth_failures_total", reason="no_key") == 1


async def test_every_answer_carries_a_request_id_and_a_sane_one_is_reused(
    client: httpx.AsyncClient,
) -> None:
    generated = await client.get("/healthz")
    reused = await client.get("/healthz", headers={"X-Request-ID": "lb-1234"})
    refused = await client.get("/healthz", headers={"X-Request-ID": "evil value<script>" * 20})

    assert len(generated.headers["x-request-id"]) == 32
    assert reused.headers["x-request-id"] == "lb-1234"
    assert "evil" not in refused.headers["x-request-id"]


@pytest.fixture
def writer_fault(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fault of ours inside the writer (not the database's): every write raises."""

    async def broken(records: object) -> object:
        raise RuntimeError("a bug in the writer")

    monkeypatch.setattr(app.state.writer, "write", broken)


@pytest.mark.usefixtures("writer_fault")
async def test_a_fault_of_ours_on_a_webhook_is_a_logged_json_500_with_its_request_id(
    hook: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Webhooks skip FastAPI's own layers (app.api.fast_path), so this is the fast path's own
    answer: the same 500 as any route's, logged with the request id its sender was given."""
    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.INFO):
        answer = await hook("dlr", {"id": "m-fault"})

    assert answer.status_code == 500
    assert answer.json() == {"error": {"code": "internal_error", "message": "internal error"}}
    logged = [r for r in caplog.records if r.getMessage() == "unhandled error"]
    assert [getattr(r, "request_id", None) for r in logged] == [answer.headers["x-request-id"]]
    assert "a bug in the writer" in (logged[0].exc_text or "")


@pytest.fixture
async def summaries_written() -> None:
    """Whatever an earlier test's webhooks left for the access log's summary is written before
    the test starts, so its lines count only its own requests."""
    await asyncio.sleep(SUMMARY_EVERY_S + 0.2)


@pytest.mark.usefixtures("summaries_written")
async def test_access_log_names_the_route_and_never_the_key_or_the_text(
    hook: Any, webhook_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        await hook("mo", {"id": "mo-1", "messageText": "my secret reply"})
        await hook("mo", {"id": "mo-2", "messageText": "my secret reply", "subAccount": "other"})
        await asyncio.sleep(SUMMARY_EVERY_S + 0.5)

    lines = [r.getMessage() for r in caplog.records if r.name == "app.access"]
    assert any(line.startswith("POST /v1/webhooks/mo 200 x1 in 1s, mean ") for line in lines)
    assert any(line.startswith("POST /v1/webhooks/mo 403 ") for line in lines)
    ours = [r for r in caplog.records if r.name.startswith(("app", "uvicorn"))]
    everything = " ".join(r.getMessage() + str(r.__dict__) for r in ours)
    assert webhook_key not in everything
    assert "my secret reply" not in everything


@pytest.mark.usefixtures("summaries_written")
async def test_accepted_webhooks_are_summarised_each_second_and_refusals_logged_each(
    hook: Any, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A campaign's thousands of accepted DLRs a second are one line a second; a refusal keeps
    a line of its own, with the request id its sender was answered."""
    caplog.handler.addFilter(RequestIdFilter())  # as the service's handler: at the logging call
    with caplog.at_level(logging.INFO, logger="app.access"):
        for n in range(3):
            assert (await hook("dlr", {"id": f"m{n}"})).status_code == 200
        refused = await hook("dlr", content=b"{broken")
        read = await client.get("/healthz")
        await asyncio.sleep(SUMMARY_EVERY_S + 0.5)

    records = [r for r in caplog.records if r.name == "app.access"]
    summaries = [r for r in records if r.getMessage().startswith("POST /v1/webhooks/dlr 200 ")]
    assert [r.getMessage().split(" in ")[0] for r in summaries] == ["POST /v1/webhooks/dlr 200 x3"]
    assert getattr(summaries[0], "count", None) == 3
    assert getattr(summaries[0], "request_id", None) == "-"  # it belongs to no one request
    refusal = [r for r in records if r.getMessage().startswith("POST /v1/webhooks/dlr 400 ")]
    assert [getattr(r, "request_id", None) for r in refusal] == [refused.headers["x-request-id"]]
    assert any(r.getMessage().startswith("GET /healthz 200 ") for r in records)
    assert read.status_code == 200


async def test_requests_failing_during_an_outage_are_logged_once_not_each(
    app: FastAPI, settings: Settings, hook: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A database outage under a campaign fails batch after batch: one warning says it began,
    and one that it ended, where a line per batch would bury both."""
    down = "postgresql://postgres@127.0.0.1:9/nowhere"
    with caplog.at_level(logging.INFO, logger="app.db.writer"):
        async with writes_going_to(app, settings, down, db_connect_timeout_s=0.2):
            for n in range(5):
                assert (await hook("dlr", {"id": f"m{n}"})).status_code == 503

    lines = [r.getMessage() for r in caplog.records if r.name == "app.db.writer"]
    about_batches = [line for line in lines if "recount" not in line]
    assert len(about_batches) == 1
    assert about_batches[0].startswith("writer batch failed: 1 request(s) answered 503: ")


def test_a_long_outage_is_recalled_every_minute_and_its_end_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    failures = FailureLog(logging.getLogger("app.test"), "stats fold", clock=lambda: now[0])

    with caplog.at_level(logging.INFO, logger="app.test"):
        for _ in range(76):  # every 2 s for 150 s
            failures.failed(ConnectionRefusedError("connection refused"))
            now[0] += 2
        failures.succeeded()
        failures.succeeded()

    assert [r.getMessage() for r in caplog.records] == [
        "stats fold failed: connection refused",
        "stats fold still failing (31 times in 60 s): connection refused",
        "stats fold still failing (61 times in 120 s): connection refused",
        "stats fold works again after 152 s (76 failures)",
    ]


@pytest.fixture
def short_body_timeout(app: FastAPI, settings: Settings) -> Iterator[float]:
    with changed_settings(app, settings, body_timeout_s=0.5) as changed:
        yield changed.body_timeout_s


async def test_a_body_that_trickles_in_is_cut_off_with_408_and_kept(
    short_body_timeout: float, settings: Settings, webhook_key: str, engine: AsyncEngine
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", settings.port)
    writer.write(
        f"POST /v1/webhooks/dlr?key={webhook_key} HTTP/1.1\r\nHost: x\r\n"
        'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"id": '.encode()
    )
    await writer.drain()
    started = time.monotonic()

    status_line = await asyncio.wait_for(reader.readline(), timeout=10)

    assert b" 408 " in status_line
    assert time.monotonic() - started < 5
    writer.close()
    kept = await fetch_all(engine, "SELECT reason, body, body_truncated FROM rejected_bodies")
    assert kept == [{"reason": "body_timeout", "body": b'{"id": ', "body_truncated": True}]


@pytest.mark.parametrize("path", ["/v1/webhooks/dlr", "/v1/send-sms"])
async def test_a_client_that_hangs_up_mid_body_is_logged_as_499_not_as_our_error(
    path: str,
    settings: Settings,
    webhook_key: str,
    senders: dict[str, dict[str, str]],
    wavy: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A sender's own timeout under a burst: an operator must not read it as a fault of ours
    (it was "unhandled error" with a traceback, twice), and nothing is sent or stored."""
    caplog.set_level(logging.INFO)
    ana = senders["ana@acme.example"]
    credentials = (
        f"username: {ana['username']}\r\nauthenticationtoken: {ana['authenticationtoken']}"
    )
    _, writer = await asyncio.open_connection("127.0.0.1", settings.port)
    writer.write(
        f"POST {path}?key={webhook_key} HTTP/1.1\r\nHost: x\r\n{credentials}\r\n"
        'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"id": '.encode()
    )
    await writer.drain()
    writer.close()
    await writer.wait_closed()

    deadline = time.monotonic() + 5
    while not [r for r in caplog.records if r.getMessage().startswith(f"POST {path} 499 ")]:
        assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
        await asyncio.sleep(0.05)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert wavy.asked == []


@pytest.fixture
async def full_writer(app: FastAPI, settings: Settings, webhook_key: str) -> AsyncIterator[None]:
    """A writer that holds one item at most, stuck on a database that never answers."""
    async with silent_database_url() as url, writes_going_to(app, settings, url, queue_items=1):
        yield


@pytest.mark.usefixtures("full_writer")
async def test_a_full_write_queue_refuses_at_once_with_503(app: FastAPI, hook: Any) -> None:
    stuck = asyncio.create_task(hook("dlr", {"id": "first"}))
    while app.state.writer.queued_items == 0:  # noqa: ASYNC110 - polling state we do not own
        await asyncio.sleep(0.01)
    started = time.monotonic()

    refused = await hook("dlr", {"id": "second"})

    assert refused.status_code == 503
    assert refused.json()["error"]["message"].startswith("overloaded")
    assert refused.headers["retry-after"]
    assert time.monotonic() - started < 0.5  # not after the stuck write's 1 s timeout
    assert (await stuck).status_code == 503


def post_dlrs_with_the_printed_key(service: Service, prefix: str, count: int) -> tuple[str, str]:
    """Once ``serve`` is up, post ``count`` DLRs (each on a new connection) with the webhook
    key it printed at start-up; returns the base URL and the key."""
    output = service.wait_ready()
    key = re.search(r"/v1/webhooks/dlr\?key=(\S+)", output).group(1)  # type: ignore[union-attr]
    base = f"http://127.0.0.1:{service.port}"
    for n in range(count):
        stored = httpx.post(f"{base}/v1/webhooks/dlr?key={key}", json={"id": f"{prefix}-{n}"})
        assert stored.status_code == 200
    return base, key


@pytest.mark.slow
@pytest.mark.parametrize("operator_dir", [False, True], ids=["own-dir", "operator-dir"])
def test_one_worker_serves_its_metrics(
    empty_database: str, tmp_path: Path, operator_dir: bool
) -> None:
    env = {**os.environ, "DATABASE_URL": empty_database, "WAVY_WORKERS": "1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if operator_dir:
        stale = tmp_path / "metrics"
        stale.mkdir()
        # An earlier run's count, which must not be added to this run's.
        (stale / "counter_999999.db").write_bytes(b"stale")
        env["PROMETHEUS_MULTIPROC_DIR"] = str(stale)
    service = Service(env, free_port(), tmp_path)
    try:
        base, _ = post_dlrs_with_the_printed_key(service, "one", 3)
        scrape = httpx.get(f"{base}/metrics").text
    finally:
        service.stop(signal.SIGTERM)
    assert 'wavy_events_total{kind="dlr",outcome="accepted"} 3.0' in scrape
    assert "wavy_writer_batch_items_count" in scrape


@pytest.mark.slow
def test_two_workers_share_one_view_of_metrics_and_log_json_without_secrets(
    empty_database: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": empty_database,
        "WAVY_WORKERS": "2",
        "WAVY_LOG_FORMAT": "json",
    }
    service = Service(env, free_port(), tmp_path)
    try:
        # New connections each time, so both workers take some of the requests.
        base, key = post_dlrs_with_the_printed_key(service, "w", 40)
        scrapes = [httpx.get(f"{base}/metrics").text for _ in range(6)]
        ready = httpx.get(f"{base}/readyz")
        alive = httpx.get(f"{base}/healthz")
    finally:
        service.stop(signal.SIGTERM)

    accepted = 'wavy_events_total{kind="dlr",outcome="accepted"} 40.0'
    assert all(accepted in scrape for scrape in scrapes)  # whichever worker answered
    assert ready.status_code == alive.status_code == 200
    log_lines = [line for line in service.log.read_text().splitlines() if line.startswith("{")]
    access = [json.loads(line) for line in log_lines if '"app.access"' in line]
    # The accepted DLRs in each worker's summaries (the last written as it stopped), every
    # other request on a line of its own with its id.
    summaries = [entry for entry in access if entry["route"] == "/v1/webhooks/dlr"]
    assert sum(entry["count"] for entry in summaries) == 40
    assert len({entry["process"] for entry in summaries}) == 2  # both workers served
    scraped = [entry for entry in access if entry["route"] == "/metrics"]
    assert len(scraped) == 6
    assert all(len(entry["request_id"]) == 32 for entry in scraped)
    assert all(key not in line for line in log_lines)  # printed once at start-up, never logged


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("WAVY_BATCH_MAX_ITEMS", "0"),
        ("WAVY_WRITER_CONCURRENCY", "0"),
        ("WAVY_WRITER_TIMEOUT_S", "-1"),
        ("WAVY_BATCH_MAX_DELAY_MS", "-2"),
    ],
)
def test_a_setting_that_would_stall_the_writer_stops_the_start(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    field = variable.removeprefix("WAVY_").lower()
    with pytest.raises(ValueError, match=field):
        Settings()


def test_serve_names_the_wrong_setting_and_exits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAVY_WRITER_CONCURRENCY", "0")

    result = run_cli("serve", database_url="postgresql://postgres@127.0.0.1:9/never-reached")

    assert result.returncode == 2
    assert result.stderr.strip() == (
        "invalid setting WAVY_WRITER_CONCURRENCY: Input should be greater than 0"
    )
