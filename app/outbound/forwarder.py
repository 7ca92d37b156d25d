"""The forwarder: pushes every stored reply and status change to the endpoints that receive it,
signed (Standard Webhooks), retried on a schedule, never lost (app.db.forwarding says how).

One runs in each forwarder process that ``serve`` starts (``run_apart``), or in each worker
(WAVY_FORWARDER=workers); any number may run on one database. Its dispatch loop turns what the
safe feeds hold after each endpoint's position into deliveries, woken by the feeds'
notification (migration 0014) and, should that be lost, by a short poll. Each endpoint has a
sender of its own, so an endpoint that times out holds up only its own deliveries. A sweep
disables dead endpoints and samples the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from datetime import UTC, datetime

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from app import metrics
from app.db import forwarding
from app.db.engine import (
    FORWARDER_APPLICATION_NAME,
    create_forwarder_engine,
    database_unavailable,
    writer_connector,
)
from app.db.forwarding import Claimed, EndpointConfig, LeaseOffer, NewDelivery, Outcome
from app.db.notifications import FEEDS_CHANGED_CHANNEL, follow_changes
from app.db.reads import FeedKind, Row
from app.logs import FailureLog
from app.outbound.delivery_client import Answer, DeliveryClient
from app.rules.answers import iso, mo_out, optout_entry, status_out
from app.rules.forwarding import (
    PIPELINES,
    EventType,
    Signer,
    delay_before_attempt,
    webhook_id_of,
)
from app.rules.retention import parse_age
from app.settings import Settings

log = logging.getLogger(__name__)

# Without a notification (the listening connection lost, or a commit the feed could not serve
# yet because an older transaction was still open), the feeds are looked at this often.
DISPATCH_POLL_S = 0.25
# An idle sender looks for retries that came due this often.
SENDER_POLL_S = 1.0
# After a notification, the dispatch waits this long for what is stored meanwhile.
DISPATCH_GATHER_S = 0.02
# Feed rows read per endpoint and dispatch transaction.
DISPATCH_PAGE_ROWS = 1000
# Dead endpoints are looked for, and the metrics sampled, this often.
SWEEP_INTERVAL_S = 5.0
# A claimed delivery is leased for the attempt's timeout and this much more: the time to record
# its outcome. Past it another worker sends it again (its claimant is taken to be dead).
LEASE_MARGIN_S = 10.0
# How soon a record that met an outage is tried again.
RECORD_RETRY_S = 0.5
# At stop, a sender still sending gets this long to finish and record its attempts.
STOP_GRACE_S = 5.0

# A forwarder started by serve looks this often whether serve is still there (killed with
# kill -9, it could not stop its forwarder).
PARENT_CHECK_S = 1.0

EVENT_OF: dict[FeedKind, EventType] = {feed: event for event, feed in forwarding.FEED_OF.items()}


def render_delivery(endpoint_id: int, kind: FeedKind, row: Row) -> NewDelivery:
    """The delivery of one feed row to one endpoint: the change exactly as the read API shows
    it, under a webhook id made from the change's place in its feed, so that a change turned
    into a delivery twice (a dispatch lost in a crash of PostgreSQL) keeps its id."""
    event_type = EVENT_OF[kind]
    # What goes out in order: one message's statuses, one number's changes in one list.
    in_order_of: str | None = None
    if kind == "status":
        data, seq, in_order_of = status_out(row), row["change_seq"], row["id"]
    elif kind == "optout":
        data, seq = optout_entry(row), row["change_seq"]
        in_order_of = f"optout {row['sub_account']} {row['e164']}"
    else:
        data, seq = mo_out(row), row["seq"]
    body = {"type": event_type, "timestamp": iso(forwarding.row_time(row, kind)), "data": data}
    return NewDelivery(
        webhook_id=webhook_id_of(endpoint_id, kind, row["tx_id"], seq),
        event_type=event_type,
        message_id=in_order_of,
        body=orjson.dumps(body),
    )


class Forwarder:
    """Owns ``engine`` (app.db.engine.create_forwarder_engine's): disposed at stop."""

    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self._engine = engine
        self._settings = settings
        self._schedule = tuple(settings.forward_retry_schedule)
        self._disable_after = parse_age(settings.forward_disable_after)
        self._lease_s = settings.forward_timeout_s + LEASE_MARGIN_S
        self._wake = asyncio.Event()
        self._senders: dict[int, _Sender] = {}
        self._client: DeliveryClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._health_seen: set[int] = set()

    def wake(self) -> None:
        """Something was stored (the feeds' notification): dispatch now."""
        self._wake.set()

    async def start(self) -> None:
        self._client = DeliveryClient(
            timeout_s=self._settings.forward_timeout_s,
            allow_private=self._settings.forward_allow_private,
        )
        self._task = asyncio.create_task(self._run(), name="forwarder")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.gather(*(sender.stop() for sender in self._senders.values()))
        self._senders.clear()
        if self._client is not None:
            await self._client.close()
        await self._engine.dispose()

    async def _run(self) -> None:
        failures = FailureLog(log, "forwarding")
        next_sweep = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), DISPATCH_POLL_S)
            # Under load every commit notifies: what the next few milliseconds store is
            # dispatched together, in one transaction and one batch per endpoint.
            await asyncio.sleep(DISPATCH_GATHER_S)
            self._wake.clear()
            try:
                endpoints = await self._enabled_endpoints()
                for endpoint in endpoints:
                    await self._dispatch(endpoint)
                if time.monotonic() >= next_sweep:
                    await self._sweep()
                    next_sweep = time.monotonic() + SWEEP_INTERVAL_S
                failures.succeeded()
                metrics.record_success("forwarding")
            except Exception as error:  # an outage must not end the loop: the next round retries
                failures.failed(error)

    async def _enabled_endpoints(self) -> list[EndpointConfig]:
        async with self._engine.connect() as conn:
            endpoints = await forwarding.enabled_endpoints(conn)
        wanted = {endpoint.id: endpoint for endpoint in endpoints}
        for gone in set(self._senders) - set(wanted):
            await self._senders.pop(gone).stop()
        assert self._client is not None
        for endpoint in endpoints:
            sender = self._senders.get(endpoint.id)
            if sender is None:
                self._senders[endpoint.id] = _Sender(
                    self._engine, self._client, self._settings, endpoint, self._lease_s
                )
            else:
                sender.endpoint = endpoint
        return endpoints

    async def _dispatch(self, endpoint: EndpointConfig) -> None:
        """Until the endpoint's feeds hold nothing new (and its replay, if any, is copied).
        A sender with a batch free takes what it can send at once straight from the dispatch;
        the rest waits for its claims."""
        sender = self._senders[endpoint.id]
        while True:
            offer = await sender.offer()
            try:
                async with self._engine.begin() as conn:
                    dispatched = await forwarding.dispatch(
                        conn,
                        endpoint,
                        render_delivery,
                        page_rows=DISPATCH_PAGE_ROWS,
                        first_delay_s=self._schedule[0],
                        offer=offer,
                    )
            except BaseException:
                sender.take(offer, [])
                raise
            sender.take(offer, dispatched.leased if dispatched else [])
            if not dispatched or not dispatched.made:
                break
            if dispatched.made > len(dispatched.leased):
                sender.wake()
        while endpoint.replaying:
            async with self._engine.begin() as conn:
                copied = await forwarding.replay_page(conn, endpoint.id, DISPATCH_PAGE_ROWS)
            if copied is None:
                break
            if copied:
                self._senders[endpoint.id].wake()
            await asyncio.sleep(0)  # a large replay must not starve the other endpoints

    async def _sweep(self) -> None:
        async with self._engine.begin() as conn:
            disabled = await forwarding.disable_dead_endpoints(conn, self._disable_after)
            health = await forwarding.endpoint_health(conn)
        for endpoint_id in disabled:
            log.warning(
                "endpoint %d disabled: no successful delivery for %s",
                endpoint_id,
                self._settings.forward_disable_after,
            )
        metrics.sample_forwarding(health, self._health_seen)
        self._health_seen = {item.id for item in health}


async def run_apart(settings: Settings, database_url: str, *, parent: int | None) -> None:
    """The forwarder in a process of its own (``wavy-webhooks forward``), until SIGTERM or
    SIGINT, or until ``parent`` (the ``serve`` that started it) is gone."""
    engine = create_forwarder_engine(settings, database_url)
    forwarder = Forwarder(engine, settings)
    await forwarder.start()
    listen = writer_connector(settings, database_url, application_name=FORWARDER_APPLICATION_NAME)
    listening = asyncio.create_task(
        follow_changes(listen, {FEEDS_CHANGED_CHANNEL: forwarder.wake}), name="feed-changes"
    )
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    try:
        while not stopped.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), PARENT_CHECK_S)
            if parent is not None and os.getppid() != parent:
                log.warning("serve (pid %d) is gone: forwarding stops", parent)
                break
    finally:
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening
        await forwarder.stop()


class _Sender:
    """Sends one endpoint's deliveries from this worker: claims a batch, sends it with bounded
    concurrency, records every outcome, and again while there is work."""

    def __init__(
        self,
        engine: AsyncEngine,
        client: DeliveryClient,
        settings: Settings,
        endpoint: EndpointConfig,
        lease_s: float,
    ) -> None:
        self._engine = engine
        self._client = client
        self._schedule = tuple(settings.forward_retry_schedule)
        # Each batch is sent at once, all of it: no delivery waits in here while its lease
        # (counted from its claim) runs out.
        self._batch = settings.forward_concurrency // PIPELINES
        # A batch in flight holds one: at most PIPELINES batches, claimed or handed over by
        # the dispatch, are sent at once.
        self._slots = asyncio.Semaphore(PIPELINES)
        self._handed: set[asyncio.Task[None]] = set()
        self._lease_s = lease_s
        self.endpoint = endpoint
        self._wake = asyncio.Event()
        self._wake.set()
        self._stopping = False
        self._tasks = [
            asyncio.create_task(self._run(), name=f"forward-{endpoint.id}-{n}")
            for n in range(PIPELINES)
        ]

    def wake(self) -> None:
        self._wake.set()

    async def offer(self) -> LeaseOffer | None:
        """A batch's room, if one is free, for the dispatch to fill (given back by take)."""
        if self._stopping or self._slots.locked():
            return None
        await self._slots.acquire()  # free: returns at once
        return LeaseOffer(rows=self._batch, lease_s=self._lease_s)

    def take(self, offer: LeaseOffer | None, leased: list[Claimed]) -> None:
        """What the dispatch leased to this sender: sent and recorded in a batch of its own."""
        if offer is None:
            return
        if not leased:
            self._slots.release()
            return
        task = asyncio.create_task(self._send_handed(leased))
        self._handed.add(task)
        task.add_done_callback(self._handed.discard)

    async def _send_handed(self, leased: list[Claimed]) -> None:
        try:
            await self._send(self.endpoint, leased)
        except Exception as error:  # the leases run out, and the deliveries are claimed again
            log.warning("forwarding to endpoint %d failed: %s", self.endpoint.id, error)
        finally:
            self._slots.release()

    async def stop(self) -> None:
        """Lets the batch in flight finish and be recorded, for a short while."""
        self._stopping = True
        self._wake.set()
        _, late = await asyncio.wait([*self._tasks, *self._handed], timeout=STOP_GRACE_S)
        for task in late:
            task.cancel()
        for task in late:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        failures = FailureLog(log, f"forwarding to endpoint {self.endpoint.id}")
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), SENDER_POLL_S)
            self._wake.clear()
            try:
                while not self._stopping and await self._send_one_batch():
                    pass
                failures.succeeded()
            except Exception as error:  # an outage: claimed deliveries' leases run out, and
                failures.failed(error)  # they are sent again then
                await asyncio.sleep(SENDER_POLL_S)

    async def _send_one_batch(self) -> bool:
        """True when a batch was sent (there may be more)."""
        endpoint = self.endpoint
        async with self._slots:
            async with self._engine.begin() as conn:
                claimed = await forwarding.claim(
                    conn, endpoint.id, rows=self._batch, lease_s=self._lease_s
                )
            if not claimed:
                return False
            await self._send(endpoint, claimed)
        return True

    async def _send(self, endpoint: EndpointConfig, claimed: list[Claimed]) -> None:
        signer = Signer.of(endpoint.secret, endpoint.previous_secret)
        outcomes = await asyncio.gather(
            *(self._attempt(endpoint.url, signer, item) for item in claimed)
        )
        await self._record(endpoint.id, outcomes)

    async def _attempt(self, url: str, signer: Signer, item: Claimed) -> Outcome:
        attempted_at = datetime.now(UTC)
        headers = signer.headers(item.webhook_id, attempted_at, item.body)
        answer = await self._client.post(url, item.body, headers)
        metrics.record_attempt(answer.succeeded, answer.status_code, answer.latency_ms)
        return self._outcome(item, attempted_at, answer)

    def _outcome(self, item: Claimed, attempted_at: datetime, answer: Answer) -> Outcome:
        retry = None if answer.succeeded else delay_before_attempt(self._schedule, item.attempts)
        return Outcome(
            delivery_id=item.id,
            webhook_id=item.webhook_id,
            attempted_at=attempted_at,
            succeeded=answer.succeeded,
            status_code=answer.status_code,
            error=answer.error,
            latency_ms=answer.latency_ms,
            response=answer.response,
            retry_in_s=retry,
        )

    async def _record(self, endpoint_id: int, outcomes: list[Outcome]) -> None:
        """Survives a short outage: a record lost means sending again, once the lease runs
        out, what may have been delivered. So it is tried again while the lease lasts."""
        deadline = time.monotonic() + LEASE_MARGIN_S
        while True:
            try:
                async with self._engine.begin() as conn:
                    given_up = await forwarding.record(conn, endpoint_id, outcomes)
                break
            except Exception as error:
                if not database_unavailable(error) or time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(RECORD_RETRY_S)
        if given_up:
            metrics.FORWARD_GIVEN_UP.inc(given_up)
