"""Reconciliation: asks Wavy's status search for the statuses that never came back, and merges
what it knows exactly as if Wavy had posted it (the writer's merge, forwarding and opt-out
rules), marked ``reconciled``.

Each worker runs one; they share, through PostgreSQL, both the work (claims that another
worker skips) and the pace (WAVY_RECONCILE_MAX_RPS for all of them together, backing off on
Wavy's 429 and 5xx). Without WAVY_API_USERNAME and WAVY_API_TOKEN nothing is asked, and the
passes still list what is overdue."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from app import metrics
from app.db import reconcile as queries
from app.db.reconcile import Ages, Settled
from app.db.writer import BatchWriter
from app.errors import WriteFailed, WriteRefused, WriterOverloaded
from app.logs import FailureLog
from app.outbound.wavy import WavyClient, WavyTimedOut, WavyUnreachable
from app.rules.reconcile import (
    ASK_BATCH,
    CLAIM_LEASE,
    OVERDUE_KINDS,
    OverdueKind,
    awaits_dlr,
    item_of,
    items_sent_as,
    recheck_after,
    records_from_status,
    retry_after_s,
    status_items,
)
from app.rules.records import EventRecord
from app.rules.scope import Scope
from app.settings import Settings

log = logging.getLogger(__name__)

SEARCH_PATH = "/v1/sms/status/search"
# How often a worker samples the overdue count for its gauge.
GAUGE_EVERY_S = 15.0


@dataclass(slots=True)
class Pass:
    """What one pass did."""

    added: int = 0  # newly overdue
    given_up: int = 0
    asked: int = 0  # messages asked of Wavy
    recovered: int = 0  # statuses Wavy knew
    wavy_status: int | None = None  # its HTTP answer, when it was asked
    problems: list[str] = field(default_factory=list)


def ages_of(settings: Settings) -> Ages:
    return Ages(
        callback_after=_seconds(settings.reconcile_callback_after),
        dlr_after=_seconds(settings.reconcile_dlr_after),
        window=settings.reconcile_window_age(),
        no_dlr_carriers=tuple(settings.reconcile_no_dlr_carriers),
    )


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


class Reconciler:
    def __init__(
        self,
        engine: AsyncEngine,
        writer: BatchWriter,
        settings: Settings,
        wavy: WavyClient | None = None,
    ) -> None:
        self._engine = engine
        self._writer = writer
        self._settings = settings
        self._ages = ages_of(settings)
        # Its own client (``wavy``: one given, closed by stop() all the same); none without
        # the admin's credentials: then nothing is asked.
        if wavy is None and settings.reconciles:
            wavy = WavyClient(settings.api_url, timeout_s=settings.send_timeout_s)
        self._wavy = wavy
        self._task: asyncio.Task[None] | None = None
        self._sample_at = 0.0
        self._failures = FailureLog(log, "reconciliation pass")

    @property
    def interval_s(self) -> float:
        """Between two requests to Wavy, by every worker together."""
        return 1.0 / self._settings.reconcile_max_rps

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="reconciler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._wavy is not None:
            await self._wavy.close()

    async def _run(self) -> None:
        # Each worker looks as often as the shared pace allows (a turn another took is simply
        # not taken here), and at least every few seconds for the passes.
        tick = min(max(self.interval_s, 0.2), 5.0)
        while True:
            await asyncio.sleep(tick)
            try:
                await self.run_once()
                self._failures.succeeded()
            except Exception as error:  # the loop must outlive any one pass
                self._failures.failed(error)

    async def run_once(self, now: datetime | None = None) -> Pass:
        """One pass: look at the MTs that passed an age, give up the too old, and, when it is
        this worker's turn, ask Wavy about the overdue that are due."""
        now = now or datetime.now(UTC)
        done = Pass()
        async with self._engine.begin() as conn:
            done.added = await queries.examine(conn, now, self._ages)
            given_up = await queries.give_up(conn, now, self._ages.window)
        for kind in given_up:
            metrics.RECONCILE_GIVEN_UP.labels(kind).inc()
        done.given_up = len(given_up)
        if time.monotonic() >= self._sample_at:
            self._sample_at = time.monotonic() + GAUGE_EVERY_S
            await self._sample_overdue(now)
        if self._wavy is None:
            return done
        async with self._engine.begin() as conn:
            if not await queries.take_turn(conn, now, self.interval_s):
                return done
            claimed = await queries.claim_due(conn, now, ASK_BATCH, CLAIM_LEASE)
        await self._check(claimed, now, done)
        return done

    async def _sample_overdue(self, now: datetime) -> None:
        async with self._engine.connect() as conn:
            found = await queries.counts(conn, Scope(None), now, self._ages, now)
        for kind in OVERDUE_KINDS:
            metrics.RECONCILE_OVERDUE.labels(kind).set(found[kind]["overdue"])

    async def _check(self, claimed: list[queries.Row], now: datetime, done: Pass) -> None:
        """What came meanwhile is settled as it is; Wavy is asked about the rest."""
        async with self._engine.connect() as conn:
            current = await queries.statuses_of(conn, _ids(claimed))
        to_ask = [row for row in claimed if not _arrived(row, current)]
        items = await self._ask(to_ask, now, done) if to_ask else []
        if items is None:  # Wavy was not asked, or did not answer: due again after the pause
            async with self._engine.begin() as conn:
                await queries.release(conn, now, [row["mt_id"] for row in to_ask])
            items = []
            to_ask = []
        found = await self._found(to_ask, items)
        # A timed-out send takes Wavy's id first, so that its statuses are written only once
        # the id is its own.
        learnt: dict[str, str] = {}
        async with self._engine.begin() as conn:
            for row, item in found:
                if row["message_id"] is None and await queries.learn_message_id(
                    conn, row["mt_id"], str(item["id"])
                ):
                    learnt[row["mt_id"]] = str(item["id"])
        for row in to_ask:
            if row["message_id"] is None:
                row["message_id"] = learnt.get(row["mt_id"])
        records = self._records([(row, item) for row, item in found if row["message_id"]], now)
        if records:
            await self._write(records)
        async with self._engine.begin() as conn:
            current = await queries.statuses_of(conn, _ids(claimed))
            settled, recovered = self._settle(claimed, {id(r) for r in to_ask}, current, now)
            await queries.settle(conn, now, settled)
            await queries.note_recovered(conn, now, recovered)
        for _, kind in recovered:
            metrics.RECONCILE_RECOVERED.labels(kind).inc()
        done.recovered = len(recovered)

    async def _found(
        self, rows: list[queries.Row], items: list[dict[str, Any]]
    ) -> list[tuple[queries.Row, Mapping[str, Any]]]:
        """Each MT with Wavy's item for it: by its id; a send that timed out by its
        correlationId and destination. Wavy's admin sees every sub-account, so those may
        match another's message: an item already another MT's or another sub-account's is
        never taken, one item goes to one MT, and when an MT of another sub-account also
        timed out with the same correlationId and destination, neither is matched (nothing
        tells which is whose: they stay overdue)."""
        found: list[tuple[queries.Row, Mapping[str, Any]]] = []
        for row in rows:
            if row["message_id"] is not None and (item := item_of(items, row["message_id"])):
                found.append((row, item))
        unknown = [row for row in rows if row["message_id"] is None]
        if not unknown:
            return found
        candidates = {
            row["mt_id"]: items_sent_as(items, row["correlation_id"], row["destination"])
            for row in unknown
        }
        async with self._engine.connect() as conn:
            ambiguous = await queries.shared_with_another_sub_account(
                conn, [row["mt_id"] for row in unknown]
            )
            taken = await queries.taken_elsewhere(
                conn,
                [
                    (row["mt_id"], str(item["id"]), row["sub_account"])
                    for row in unknown
                    for item in candidates[row["mt_id"]]
                ],
            )
        given: set[str] = set()
        for row in unknown:
            if row["mt_id"] in ambiguous:
                continue
            for item in candidates[row["mt_id"]]:
                wavy_id = str(item["id"])
                if (row["mt_id"], wavy_id) not in taken and wavy_id not in given:
                    given.add(wavy_id)
                    found.append((row, item))
                    break
        return found

    async def _ask(
        self, rows: list[queries.Row], now: datetime, done: Pass
    ) -> list[dict[str, Any]] | None:
        """Wavy's items for these messages; None when it did not answer (then nobody asks
        for a while)."""
        assert self._wavy is not None
        ids = sorted({row["message_id"] for row in rows if row["message_id"]})
        # Sends that timed out have no id: Wavy finds them by correlationId.
        correlation_ids = sorted(
            {row["correlation_id"] for row in rows if not row["message_id"]} - {None}
        )
        for row in rows:
            metrics.RECONCILE_CHECKS.labels(row["kind"]).inc()
        done.asked = len(rows)
        if not ids and not correlation_ids:
            return []  # timed-out sends without a correlationId: nothing to ask by
        body: dict[str, list[str]] = {"ids": ids} if ids else {}
        if correlation_ids:
            body["correlationIds"] = correlation_ids
        headers = {
            "UserName": self._settings.api_username or "",
            "AuthenticationToken": self._settings.api_token.get_secret_value()
            if self._settings.api_token
            else "",
        }
        retry_after = None
        try:
            answer = await self._wavy.post(SEARCH_PATH, headers, orjson.dumps(body))
        except WavyUnreachable:
            metrics.RECONCILE_ANSWERS.labels("unreachable").inc()
        except WavyTimedOut:
            metrics.RECONCILE_ANSWERS.labels("timeout").inc()
        else:
            done.wavy_status = answer.status
            metrics.RECONCILE_ANSWERS.labels(str(answer.status)).inc()
            if answer.status == 200:
                items = status_items(answer.body)
                if items is not None:
                    async with self._engine.begin() as conn:
                        await queries.answered(conn)
                    return items
                done.problems.append("Wavy's answer was not a status search's envelope")
            else:
                retry_after = retry_after_s(answer.retry_after)
                if answer.status in (401, 403):
                    log.error(
                        "reconciliation: Wavy refused WAVY_API_USERNAME/WAVY_API_TOKEN (%s)",
                        answer.status,
                    )
        async with self._engine.begin() as conn:
            wait_s = await queries.back_off(conn, now, retry_after)
        done.problems.append(f"Wavy did not answer the status search: no request for {wait_s:g} s")
        return None

    def _records(
        self, found: list[tuple[queries.Row, Mapping[str, Any]]], now: datetime
    ) -> list[EventRecord]:
        """The statuses Wavy knows, as the callbacks and DLRs it would have posted."""
        records: list[EventRecord] = []
        for row, item in found:
            try:
                records += records_from_status(
                    item, sub_account=row["sub_account"], received_at=now
                )
            except ValueError as error:  # pydantic's ValidationError: an item we cannot read
                log.warning("reconciliation: unreadable status of %s: %s", item["id"], error)
        return records

    async def _write(self, records: list[EventRecord]) -> None:
        try:
            await self._writer.write(records)
        except WriteRefused as error:
            log.warning("reconciliation: statuses refused by the database (%s)", error.sqlstate)
        except (WriteFailed, WriterOverloaded) as error:
            raise RuntimeError(f"the statuses Wavy gave were not stored: {error}") from error

    def _settle(
        self,
        claimed: list[queries.Row],
        asked: set[int],
        current: dict[str, queries.Row],
        now: datetime,
    ) -> tuple[Settled, list[tuple[str, OverdueKind]]]:
        """Each claimed message: its status came (resolved, or now awaiting its DLR), or it is
        asked again later; and which of those that came were recovered from Wavy."""
        settled = Settled(resolved=[], awaiting_dlr=[], recheck=[])
        recovered: list[tuple[str, OverdueKind]] = []
        for row in claimed:
            status = current.get(row["message_id"] or "")
            if _arrived(row, current):
                if id(row) in asked:
                    recovered.append((row["mt_id"], row["kind"]))
                if (
                    row["kind"] == "callback"
                    and status is not None
                    and awaits_dlr(
                        status["sent_status_code"],
                        status["delivered_status_code"],
                        status["carrier_name"],
                        self._ages.no_dlr_carriers,
                    )
                ):
                    since = status["sent_at"] or now
                    due = max(now, since + self._ages.dlr_after)
                    settled.awaiting_dlr.append((row["mt_id"], since, due))
                else:
                    settled.resolved.append(row["mt_id"])
            elif id(row) in asked:
                settled.recheck.append((row["mt_id"], now + recheck_after(row["checks"] + 1)))
        return settled, recovered


def _ids(rows: list[queries.Row]) -> list[str]:
    return [row["message_id"] for row in rows if row["message_id"]]


def _arrived(row: queries.Row, current: dict[str, queries.Row]) -> bool:
    """The status the row waits for is there now."""
    status = current.get(row["message_id"] or "")
    if status is None:
        return False
    if row["kind"] == "callback":
        return status["sent_status_code"] is not None
    return status["delivered_status_code"] is not None
