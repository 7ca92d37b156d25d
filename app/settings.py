"""Every configurable value of the service, read from the environment (prefix ``WAVY_``)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

import phonenumbers
from pydantic import (
    AliasChoices,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.rules.delivery_stats import CARRIERS_WITHOUT_DLR
from app.rules.forwarding import (
    DEFAULT_RETRY_SCHEDULE_S,
    MAX_FORWARD_TIMEOUT_S,
    MAX_RETRY_ATTEMPTS,
    MAX_RETRY_DELAY_S,
    PIPELINES,
)
from app.rules.retention import parse_age


class Settings(BaseSettings):
    """The one place settings live. Env names are ``WAVY_<FIELD>``; ``DATABASE_URL`` also works
    unprefixed because that is what every platform and compose file already exports."""

    # Numbers are bounded: a zero batch size or writer count would stall every write, so a
    # wrong value stops the start with the variable's name rather than hanging later.
    # Infinity and NaN are no number of seconds anyone meant. A .env file in the working
    # directory is read too (the environment wins): serve and every CLI command run from the
    # same directory then share one setting, changed once.
    model_config = SettingsConfigDict(
        env_prefix="WAVY_", extra="ignore", allow_inf_nan=False, env_file=".env"
    )

    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "WAVY_DATABASE_URL"),
        description="postgresql://, postgres:// or postgresql+asyncpg:// URL; unset = embedded",
    )
    data_dir: Path = Field(
        default=Path(".wavy-webhooks"),
        description="Where the embedded PostgreSQL keeps its data when DATABASE_URL is unset",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: PositiveInt = 1
    public_url: str | None = Field(
        default=None,
        description="Base URL Wavy reaches us at, used when printing webhook URLs",
    )
    open_ingest: bool = Field(
        default=False, description="Accept webhooks without a key (logged as a warning)"
    )

    max_body_bytes: PositiveInt = 1024 * 1024
    max_items: PositiveInt = 1000

    # The batching writer: commit what concurrent requests hand in together. Measured with
    # 1000-item arrays (bench.ingest): larger batches made PostgreSQL spend more per event and
    # the service wait more (bench/results/journal.md). Single objects never fill a batch.
    batch_max_items: PositiveInt = 2000
    # 0: a writer takes what is waiting at once; under load batches still form, from what
    # arrives while the previous batch commits. A delay only added latency (bench.ingest).
    batch_max_delay_ms: NonNegativeFloat = 0.0
    writer_concurrency: PositiveInt = 2
    # A second batch goes out while one is in flight only once this many items wait: arrays
    # then keep two connections busy, while single objects gather into one larger batch,
    # which costs less per request than two small ones (bench.ingest, docs/benchmarks.md).
    writer_parallel_items: PositiveInt = 100
    writer_queue_items: PositiveInt = 50_000
    writer_timeout_s: PositiveFloat = 10.0

    db_pool_size: PositiveInt = 10
    db_max_overflow: NonNegativeInt = 5
    db_connect_timeout_s: PositiveFloat = 5.0
    # serve and migrate wait this long at start for PostgreSQL to accept connections (a
    # container started before its database); 0 tries once.
    db_start_timeout_s: NonNegativeFloat = 60.0

    # How long a webhook key, or a read-API user's successful login, is trusted from memory
    # when no change notification arrives (each worker is told of changes at once).
    key_cache_seconds: NonNegativeFloat = 5.0
    reader_cache_seconds: NonNegativeFloat = 5.0
    # A body that has not fully arrived after this long is refused (408): slow senders and
    # slowloris clients cannot hold a connection and its buffer forever.
    body_timeout_s: PositiveFloat = 10.0
    # Per worker: past this many requests in flight the service answers 503 with Retry-After
    # at once (a burst gets quick refusals instead of piling up in memory). Connections that
    # have not sent a whole request do not count (app.http_protocol).
    limit_concurrency: PositiveInt = 2048
    # A request line and headers past this many bytes get 431 (below the HTTP parser's own
    # 64 KiB URL limit; nginx allows 32 KiB by default, real clients send under 8).
    max_head_bytes: PositiveInt = 48 * 1024
    # ...or not all there within this many seconds of the connection (or the last answer):
    # 408 and closed. Wavy sends a request at once; a client drip-feeding its headers holds a
    # connection for nothing.
    head_timeout_s: PositiveFloat = 10.0
    # Per worker: past this many open connections, the oldest one still sending its headers is
    # closed to make room (the process's file descriptors are raised to allow this many).
    max_connections: PositiveInt = 8192

    # Keep data this long (90d, 12h, 2w); unset keeps everything. Checked every purge interval.
    retention: str | None = None
    # Rejected bodies: kept this long (unset keeps them), and within these budgets, per key
    # and for all keys together (the table's size on disk); past a budget only the first copy
    # of each kind of refusal is kept (app.db.rejected).
    rejected_retention: str | None = "30d"
    rejected_max_bytes_per_key: PositiveInt = 64 * 1024 * 1024
    rejected_max_bytes: PositiveInt = 1024 * 1024 * 1024
    purge_interval_s: PositiveFloat = 3600.0

    # Where forwarding runs: "process", processes of their own (one per worker) that `serve`
    # starts beside its workers at a lower CPU priority (webhooks first: under a burst that
    # fills the CPU, deliveries fall behind and catch up after); "workers", inside each
    # worker; "off", not in this replica (another one, or a `wavy-webhooks forward` of its
    # own, forwards).
    forwarder: Literal["process", "workers", "off"] = "process"
    # How much lower the forwarder process's CPU priority is (nice, 0-19).
    forward_nice: int = Field(default=10, ge=0, le=19)
    # Forwarding to downstream endpoints (docs/operations.md). An attempt without an answer
    # within this many seconds failed.
    forward_timeout_s: float = Field(default=15.0, gt=0, le=MAX_FORWARD_TIMEOUT_S)
    # Seconds before each attempt, the first included: "0,5,300" tries at once, 5 s later and
    # 5 min after that, then gives up (the delivery is marked failed, and can be replayed).
    forward_retry_schedule: Annotated[
        list[Annotated[float, Field(ge=0, le=MAX_RETRY_DELAY_S)]], NoDecode
    ] = Field(
        default_factory=lambda: list(DEFAULT_RETRY_SCHEDULE_S),
        min_length=1,
        max_length=MAX_RETRY_ATTEMPTS,
    )
    # An endpoint without a single success for this long is disabled (an age: 5d, 12h).
    forward_disable_after: str = "5d"
    # Deliveries may go to loopback, private and link-local addresses (tests, a LAN service).
    forward_allow_private: bool = False
    # Per endpoint and forwarder: requests in flight at once (what one that never answers
    # holds open for WAVY_FORWARD_TIMEOUT_S).
    forward_concurrency: int = Field(default=256, ge=PIPELINES)
    # After a secret's rotation, the previous secret signs too for this long.
    forward_secret_overlap: str = "24h"  # noqa: S105 - an age
    # Sent and failed deliveries, and every attempt, are kept this long (unset: for ever).
    forward_retention: str | None = "30d"

    # Sending through the service (docs/sending.md): where Wavy's send API is, how long a send
    # may wait for its answer (past it the MT is kept as unknown, never sent again: Wavy may
    # have sent it), and whether the MTs' texts are kept (purged with the rest by retention).
    api_url: str = "https://api-messaging.wavy.global"
    send_timeout_s: float = Field(default=10.0, gt=0, le=120)
    send_store_text: bool = True
    # Sends passed to Wavy per second, by every worker and replica together (Wavy's per-IP
    # limit); one past it waits up to WAVY_SEND_MAX_WAIT_S, then gets 429 with Retry-After.
    send_max_rps: int = Field(default=700, ge=1, le=100_000)
    send_max_wait_s: float = Field(default=2.0, ge=0, le=60)

    # Reconciliation (docs/reconciliation.md): the account's admin at Wavy, who sees every
    # sub-account's statuses. Without both, nothing is asked of Wavy (what is overdue is still
    # listed). An MT is overdue with no callback after WAVY_RECONCILE_CALLBACK_AFTER seconds,
    # and a successful callback with no DLR after WAVY_RECONCILE_DLR_AFTER, except from the
    # carriers that never send one; past WAVY_RECONCILE_WINDOW (Wavy's own retention) it is
    # given up. WAVY_RECONCILE_MAX_RPS holds for every worker and replica together.
    api_username: str | None = None
    api_token: SecretStr | None = None
    reconcile_callback_after: float = Field(default=900.0, gt=0, le=3 * 86_400)
    reconcile_dlr_after: float = Field(default=14_400.0, gt=0, le=3 * 86_400)
    reconcile_no_dlr_carriers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: sorted(CARRIERS_WITHOUT_DLR)
    )
    reconcile_window: str = "3d"
    reconcile_max_rps: float = Field(default=1.0, gt=0, le=100)

    # The region (ISO 3166 code) whose way of writing numbers without a country code the
    # opt-out lists read them in: "(11) 98765-4321" is +5511987654321 with BR.
    default_region: str = "BR"
    # Keep the opt-out lists from the traffic: replies that are keywords, and Wavy's 204 and
    # 203 callbacks. Off: the lists change only by hand and by import.
    optouts_from_traffic: bool = True

    log_level: str = "info"
    log_format: Literal["text", "json"] = Field(
        default="text", description="json: one JSON object per line, for a log pipeline"
    )
    access_log: bool = Field(default=True, description="One line per request (at info level)")
    access_log_webhooks: Literal["summary", "each"] = Field(
        default="summary",
        description=(
            "Accepted webhooks (2xx): summary = one line per route and second with their count "
            "and latency; each = a line per request. Refused ones are always logged each."
        ),
    )
    opentelemetry: bool = Field(
        default=False,
        description="FastAPI's built-in OpenTelemetry traces, metrics and logs (opt-in)",
    )

    # Web origins whose pages may call the API from the browser (CORS), e.g. an internal
    # dashboard served elsewhere: "https://dash.example.com,https://ops.example.com", or "*".
    # Empty: same-origin only, as the built-in dashboard is.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("cors_origins", "reconcile_no_dlr_carriers", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("forward_retry_schedule", mode="before")
    @classmethod
    def _seconds_comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("default_region")
    @classmethod
    def _known_region(cls, value: str) -> str:
        region = value.strip().upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{value!r} is not a region code phonenumbers knows (BR, MX, US...)")
        return region

    @field_validator(
        "retention",
        "rejected_retention",
        "forward_retention",
        "forward_disable_after",
        "forward_secret_overlap",
        "reconcile_window",
    )
    @classmethod
    def _retention_is_an_age(cls, value: str | None) -> str | None:
        if value is not None:
            parse_age(value)
        return value

    def retention_age(self) -> timedelta | None:
        return parse_age(self.retention) if self.retention else None

    def rejected_retention_age(self) -> timedelta | None:
        return parse_age(self.rejected_retention) if self.rejected_retention else None

    def forward_retention_age(self) -> timedelta | None:
        return parse_age(self.forward_retention) if self.forward_retention else None

    def reconcile_window_age(self) -> timedelta:
        return parse_age(self.reconcile_window)

    @property
    def reconciles(self) -> bool:
        """Whether Wavy is asked for what never came back (its admin's credentials are set)."""
        return bool(self.api_username) and self.api_token is not None

    def webhook_base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")
