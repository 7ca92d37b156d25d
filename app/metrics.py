"""Every Prometheus metric the service exports, and how /metrics collects them across workers.

With several worker processes each one counts on its own; ``serve`` points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before the workers start, prometheus-client
then keeps each worker's values in files there, and /metrics (answered by any worker) adds them
up. Without that variable (tests, a bare ``uvicorn``), the process's own registry is served.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Metric,
    generate_latest,
    values,
)
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.samples import Sample

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

EVENTS = Counter(
    "wavy_events_total",
    "Webhook items committed, by kind and outcome (accepted = new, duplicate = exact retry)",
    ["kind", "outcome"],
)
REJECTED = Counter(
    "wavy_rejected_bodies_total",
    "Webhook bodies refused with a 4xx, by kind and reason (each is kept as a rejected body)",
    ["kind", "reason"],
)
WEBHOOK_AUTH_FAILURES = Counter(
    "wavy_webhook_auth_failures_total",
    "Webhook requests refused for a missing or unknown key",
    ["reason"],
)
SENDS = Counter(
    "wavy_sends_total",
    "MT sends through the service: refused here for an opt-out (code 204/203), answered by "
    "Wavy (code: its HTTP status), Wavy unreachable, or no answer in time",
    ["outcome", "code"],
)
SEND_SECONDS = Histogram(
    "wavy_send_wavy_seconds", "Time Wavy's send API took to answer a send passed to it"
)
RECONCILE_CHECKS = Counter(
    "wavy_reconcile_checks_total",
    "Overdue messages asked of Wavy's status search (kind: the status awaited)",
    ["kind"],
)
RECONCILE_RECOVERED = Counter(
    "wavy_reconcile_recovered_total",
    "Statuses learnt from Wavy's status search after their webhook never came",
    ["kind"],
)
RECONCILE_GIVEN_UP = Counter(
    "wavy_reconcile_given_up_total",
    "Overdue messages asked no more: older than WAVY_RECONCILE_WINDOW, Wavy no longer knows",
    ["kind"],
)
RECONCILE_ANSWERS = Counter(
    "wavy_reconcile_wavy_answers_total",
    "Wavy's status search answers to reconciliation, by HTTP status (unreachable, timeout)",
    ["code"],
)
RECONCILE_OVERDUE = Gauge(
    "wavy_reconcile_overdue",
    "Messages overdue now and still asked about, by the status awaited (sampled each pass)",
    ["kind"],
    # Every worker sees the same count in the database: the most recent one is the answer.
    multiprocess_mode="mostrecent",
)
READER_AUTH_FAILURES = Counter(
    "wavy_reader_auth_failures_total", "Read-API requests refused for bad credentials"
)
UNAVAILABLE = Counter(
    "wavy_webhook_unavailable_total",
    "Webhook requests answered 503 (nothing stored), by reason",
    ["reason"],
)
REQUEST_SECONDS = Histogram(
    "wavy_http_request_duration_seconds",
    "Time from the request's arrival to the end of the answer, by route template",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
BATCH_ITEMS = Histogram(
    "wavy_writer_batch_items",
    "Items per committed batch",
    buckets=(1, 5, 10, 50, 100, 500, 1000, 2500, 5000, 10000),
)
BATCH_REQUESTS = Histogram(
    "wavy_writer_batch_requests",
    "Requests sharing one committed batch",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500),
)
COMMIT_SECONDS = Histogram(
    "wavy_writer_commit_duration_seconds",
    "Time to write and commit one batch",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
REPLY_COUNTS_CORRECTED = Counter(
    "wavy_reply_counts_corrected_total",
    "Messages whose reply count a recount set: a reply and its message's first event were "
    "committed at the same moment by two writers and missed each other, or another writer "
    "held the message when its reply was stored",
)
BATCH_FAILURES = Counter(
    "wavy_writer_batch_failures_total", "Batches the database refused (their requests got 503)"
)
# Gauges are sampled once a second by each worker (see sample_gauges), not on the hot path.
QUEUED_ITEMS = Gauge(
    "wavy_writer_queued_items",
    "Items waiting for the writer (bounded by WAVY_WRITER_QUEUE_ITEMS per worker)",
    multiprocess_mode="livesum",
)
POOL_CHECKED_OUT = Gauge(
    "wavy_db_pool_checked_out",
    "Database connections in use",
    multiprocess_mode="livesum",
)
POOL_CONNECTIONS = Gauge(
    "wavy_db_pool_connections",
    "Database connections open (in use or idle in the pool)",
    multiprocess_mode="livesum",
)

# The background work each worker repeats: when it last worked, for an alert on its age
# (``time() - wavy_background_last_success_timestamp_seconds > 60``). The newest of the live
# workers' counts: one worker's fold serves all.
LAST_SUCCESS = Gauge(
    "wavy_background_last_success_timestamp_seconds",
    "When a background task last succeeded (unix time), by task",
    ["task"],
    multiprocess_mode="livemax",
)


@functools.cache
def events_counted(kind: str, outcome: Literal["accepted", "duplicate"]) -> Counter:
    """EVENTS for one kind and outcome, looked up once: labels() takes a lock and builds a
    tuple per call, on the hottest path (six combinations in all)."""
    return EVENTS.labels(kind, outcome)


def record_success(task: str) -> None:
    LAST_SUCCESS.labels(task).set_to_current_time()


STATS_QUARANTINED = Counter(
    "wavy_stats_quarantined_total",
    "Groups of delivery counts the stats rollup could not store, set aside in stats_quarantine",
)
PURGED_ROWS = Counter(
    "wavy_purged_rows_total", "Rows removed by the retention purge, by table", ["table"]
)

FORWARD_ATTEMPTS = Counter(
    "wavy_forward_attempts_total",
    "Deliveries attempted to downstream endpoints, by outcome (success: a 2xx; http_error: "
    "another status; no_answer: refused, unreachable or timed out)",
    ["outcome"],
)
FORWARD_ATTEMPT_SECONDS = Histogram(
    "wavy_forward_attempt_duration_seconds",
    "Time from sending a delivery to its answer (or to giving up on it)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0),
)
FORWARD_GIVEN_UP = Counter(
    "wavy_forward_deliveries_failed_total",
    "Deliveries given up on after the last attempt of WAVY_FORWARD_RETRY_SCHEDULE (replayable)",
)
# Sampled from the database by every worker's forwarder (all see the same figures: the
# newest of the live workers' is shown).
FORWARD_BACKLOG = Gauge(
    "wavy_forward_backlog",
    "Deliveries still to be sent, by endpoint id",
    ["endpoint"],
    multiprocess_mode="livemax",
)
FORWARD_FAILING_SECONDS = Gauge(
    "wavy_forward_endpoint_failing_seconds",
    "Seconds since an endpoint's first failed attempt after its last success (0: healthy); it "
    "is disabled at WAVY_FORWARD_DISABLE_AFTER",
    ["endpoint"],
    multiprocess_mode="livemax",
)
FORWARD_DISABLED_DEAD = Gauge(
    "wavy_forward_endpoints_disabled_failing",
    "Endpoints disabled for failing too long (enable them again once they answer)",
    multiprocess_mode="livemax",
)


class EndpointFigures(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def failing_for_s(self) -> float: ...
    @property
    def backlog(self) -> int: ...
    @property
    def disabled_for_failing(self) -> bool: ...


def sample_forwarding(endpoints: Sequence[EndpointFigures], seen_before: set[int]) -> None:
    """The endpoints' gauges; those removed since the last sample go to zero."""
    for endpoint in endpoints:
        label = str(endpoint.id)
        FORWARD_BACKLOG.labels(label).set(endpoint.backlog)
        FORWARD_FAILING_SECONDS.labels(label).set(endpoint.failing_for_s)
    for gone in seen_before - {endpoint.id for endpoint in endpoints}:
        FORWARD_BACKLOG.labels(str(gone)).set(0)
        FORWARD_FAILING_SECONDS.labels(str(gone)).set(0)
    FORWARD_DISABLED_DEAD.set(sum(1 for endpoint in endpoints if endpoint.disabled_for_failing))


def record_attempt(succeeded: bool, status_code: int | None, latency_ms: int) -> None:
    outcome = "success" if succeeded else "http_error" if status_code is not None else "no_answer"
    FORWARD_ATTEMPTS.labels(outcome).inc()
    FORWARD_ATTEMPT_SECONDS.observe(latency_ms / 1000)


def sample_gauges(queued_items: int, pool_checked_out: int, pool_connections: int) -> None:
    QUEUED_ITEMS.set(queued_items)
    POOL_CHECKED_OUT.set(pool_checked_out)
    POOL_CONNECTIONS.set(pool_connections)


def prepare_multiprocess_dir(directory: Path) -> None:
    """Start ``serve`` with a metrics directory holding nothing from an earlier run (it would
    be summed in) and tell the workers, which inherit the environment, to use it. Files of
    this very process stay: it opened them when prometheus_client was imported."""
    directory.mkdir(parents=True, exist_ok=True)
    for path in directory.glob("*.db"):
        if not path.stem.endswith(f"_{os.getpid()}"):
            path.unlink(missing_ok=True)
    os.environ[MULTIPROC_ENV] = str(directory)


def render_metrics() -> tuple[bytes, str]:
    """The exposition text for /metrics and its content type."""
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        _forget_dead_workers(directory)
        registry = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        if _counting_in_files():
            return generate_latest(registry), CONTENT_TYPE_LATEST
        # One worker in serve's own process (its metrics in memory, as the variable was set
        # after prometheus_client was imported) beside the forwarder process (in files).
        merged = CollectorRegistry()
        merged.register(_Merged(REGISTRY, registry))
        return generate_latest(merged), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


def _counting_in_files() -> bool:
    return values.ValueClass is not values.MutexValue


class _Merged:
    """This process's metrics and the other processes' as one: a family both have gets its
    samples added up (a counter's or histogram's counts), or the larger one for a gauge."""

    def __init__(self, *sources: CollectorRegistry) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        samples: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], Sample]] = {}
        for source in self._sources:
            for family in source.collect():
                kept = families.setdefault(family.name, family)
                found = samples.setdefault(family.name, {})
                for sample in family.samples:
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    before = found.get(key)
                    if before is None:
                        found[key] = sample
                    elif kept.type == "gauge":
                        found[key] = sample._replace(value=max(before.value, sample.value))
                    else:
                        found[key] = sample._replace(value=before.value + sample.value)
        for name, family in families.items():
            family.samples = list(samples[name].values())
            yield family


def _forget_dead_workers(directory: str) -> None:
    """A crashed worker's live gauges would be summed forever: drop those of gone processes
    (uvicorn replaces crashed workers, under a new pid)."""
    for path in Path(directory).glob("gauge_live*_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            prometheus_multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
        except PermissionError:
            pass  # alive, owned by someone else
