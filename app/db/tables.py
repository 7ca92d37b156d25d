"""The SQL schema: every table, index and constraint, with the naming convention Alembic uses.

Migrations are written from this module (autogenerate, then reviewed by hand); the running
service never calls ``create_all``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Computed,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Sequence,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSON, JSONB

from app.rules.optouts import KEYWORD_ACTIONS, OPTOUT_SOURCES
from app.rules.reconcile import OVERDUE_KINDS
from app.rules.sending import MT_OUTCOMES

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

TS = DateTime(timezone=True)
# Identifiers (message ids, sub-accounts, codes of things) compare byte by byte: a key's order
# has no language, and every btree descent, ON CONFLICT probe and join on them then costs a
# memcmp instead of a locale's strcoll (a measurable share of PostgreSQL's CPU per stored
# DLR, larger with ICU collations: bench/results/journal.md). Text read by people (names,
# message texts) keeps the database's collation.
KEY = Text(collation="C")
# xid8 as a plain bigint: comparable with pg_snapshot_xmin() the same way, simpler to bind.
CURRENT_TX_ID = text("(pg_current_xact_id()::text::bigint)")


def one_of(column: str, names: tuple[str, ...]) -> str:
    """A check that the column holds one of the rules' names (their Literal, one source)."""
    return f"{column} IN ({', '.join(repr(name) for name in names)})"


webhook_keys = Table(
    "webhook_keys",
    metadata,
    Column("id", Integer, Identity(), primary_key=True),
    # The sub-account every callback/DLR arriving with this key belongs to (they carry none).
    Column("sub_account", Text, nullable=True),
    # sha256 of the key: keys are 192-bit random secrets, so a fast hash is enough.
    Column("key_hash", Text, nullable=False, unique=True),
    Column("key_prefix", Text, nullable=False),
    Column("created_at", TS, nullable=False, server_default=text("now()")),
    Column("revoked_at", TS, nullable=True),
)

messages_change_seq = Sequence("messages_change_seq", metadata=metadata)

# A scoped read always names its sub-account (app.rules.scope), so rows with none, which only
# admins' unscoped reads return, are left out of the scoped indexes: a deployment whose keys
# carry no sub-account then spends two index entries fewer per message and per reply.
SCOPED = text("sub_account IS NOT NULL")
# Deliveries still to be sent: what the forwarder looks up.
PENDING = text("state = 'pending'::text")

# One row per MT message id, the merge of its callback and DLR(s); see app.rules.status_merge.
messages = Table(
    "messages",
    metadata,
    Column("id", KEY, primary_key=True),
    Column("sub_account", KEY, nullable=True),
    Column("correlation_id", KEY, nullable=True),
    Column("destination", KEY, nullable=True),
    Column("carrier_id", BigInteger, nullable=True),
    Column("carrier_name", Text, nullable=True),
    Column("campaign_id", KEY, nullable=True),
    Column("extra_info", Text, nullable=True),
    # Who filled the sent stage: 0 nobody, 1 a DLR, 2 a callback (a callback outranks a DLR).
    Column("sent_source", SmallInteger, nullable=False, server_default=text("0")),
    Column("sent_status_code", Integer, nullable=True),
    Column("sent_status", Text, nullable=True),
    Column("sent_at", TS, nullable=True),
    Column("delivered_status_code", Integer, nullable=True),
    Column("delivered_status", Text, nullable=True),
    Column("delivered_at", TS, nullable=True),
    Column("first_seen_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    # Bumped from a sequence whenever the merged row changes: the order of the status feeds.
    Column(
        "change_seq",
        BigInteger,
        nullable=False,
        server_default=messages_change_seq.next_value(),
    ),
    # The transaction that last changed the row: feeds serve only finished transactions, in
    # (tx_id, change_seq) order, so a late commit can never land behind a reader's cursor.
    Column("tx_id", BigInteger, nullable=False, server_default=CURRENT_TX_ID),
    # MOs stored that answer this message (their mt.id): kept by the writer, read by the stats.
    Column("reply_count", Integer, nullable=False, server_default=text("0")),
    Index(None, "correlation_id"),
    Index(None, "destination"),
    # Newest-first listings page on (first_seen_at, id), scoped or not.
    Index(None, "sub_account", "first_seen_at", "id", postgresql_where=SCOPED),
    Index(None, "first_seen_at", "id"),
    Index(None, "tx_id", "change_seq"),
    Index(None, "sub_account", "tx_id", "change_seq", postgresql_where=SCOPED),
)

# Append-only log of every accepted callback, DLR and MO, raw payload included.
events = Table(
    "events",
    metadata,
    # An identity: unique as generated, though only (received_at, id) is enforced (below);
    # nothing looks an event up by id alone.
    Column("id", BigInteger, Identity(), nullable=False),
    Column("kind", KEY, nullable=False),
    Column("message_id", KEY, nullable=False),
    Column("sub_account", KEY, nullable=True),
    Column("sent_status_code", Integer, nullable=True),
    Column("delivered_status_code", Integer, nullable=True),
    Column("received_at", TS, nullable=False),
    # Learnt by asking Wavy (app.outbound.reconciler), not posted by it.
    Column("reconciled", Boolean, nullable=False, server_default=text("false")),
    # json, not jsonb: the raw text exactly as Wavy sent it (key order too), and cheaper to
    # insert; nothing queries inside it.
    Column("payload", JSON, nullable=False),
    CheckConstraint("kind IN ('callback', 'dlr', 'mo')", name="kind"),
    # An exact retry (same kind, id, codes) is one event; message_id leads so the same index
    # answers "the history of message X".
    UniqueConstraint(
        "message_id",
        "kind",
        "sent_status_code",
        "delivered_status_code",
        postgresql_nulls_not_distinct=True,
        name="uq_events_exact_retry",
    ),
    # One index for the purge's range (received_at < cutoff) and the history's order, where a
    # separate id key and received_at index cost a right-edge insert each per event. It is
    # also the key a range partitioning by received_at would need.
    PrimaryKeyConstraint("received_at", "id"),
)

# Every MT sent through the service's send API (app.services.sending), as its sender asked:
# sent to Wavy (message_id: Wavy's id), refused for an opt-out (message_id: ours, with the
# 204 or 203 status Wavy would have given it), or unknown (Wavy did not answer in time: it may
# have sent it; no id yet, found again by correlation id).
mts = Table(
    "mts",
    metadata,
    Column("id", KEY, primary_key=True),  # ours, one per MT
    Column("message_id", KEY, nullable=True),
    Column("sub_account", KEY, nullable=True),
    Column("username", Text, nullable=False),
    Column("destination", KEY, nullable=False),  # E.164 digits, no +
    Column("correlation_id", KEY, nullable=True),
    Column("message_text", Text, nullable=True),  # None with WAVY_SEND_STORE_TEXT=false
    Column("outcome", KEY, nullable=False),
    Column("wavy_status", SmallInteger, nullable=True),  # the HTTP status Wavy answered
    Column("submitted_at", TS, nullable=False),
    CheckConstraint(one_of("outcome", MT_OUTCOMES), name="outcome"),
    Index(None, "message_id"),
    Index(None, "correlation_id"),
    Index(None, "submitted_at", postgresql_using="brin"),
    # Reconciliation looks at each MT as it passes an age, in this order, from a mark.
    Index(None, "submitted_at", "id"),
)

# MTs whose status is overdue (app.outbound.reconciler): no callback after
# WAVY_RECONCILE_CALLBACK_AFTER, or a successful callback and no DLR after
# WAVY_RECONCILE_DLR_AFTER. Each MT is looked at once as it passes each age (the marks in
# reconcile_state), so this holds what is missing, not every MT. A row goes when its status
# comes (by webhook or from Wavy); one Wavy no longer knows is kept, given up, for the listing.
overdue = Table(
    "overdue",
    metadata,
    Column("mt_id", KEY, ForeignKey("mts.id", ondelete="CASCADE"), primary_key=True),
    Column("kind", KEY, nullable=False),
    # The MT's, kept here so that a pass and the counts need not look each MT up: Wavy's id
    # (set when a send that timed out is found), its sub-account, when it was sent.
    Column("message_id", KEY, nullable=True),
    Column("sub_account", KEY, nullable=True),
    Column("sent_at", TS, nullable=False),
    # Since when the status is awaited: the MT's sending (callback), its callback (dlr).
    Column("waiting_since", TS, nullable=False),
    Column("checks", Integer, nullable=False, server_default=text("0")),
    Column("last_checked_at", TS, nullable=True),
    Column("next_check_at", TS, nullable=False),
    Column("given_up_at", TS, nullable=True),
    CheckConstraint(one_of("kind", OVERDUE_KINDS), name="kind"),
    Index(None, "next_check_at", postgresql_where=text("given_up_at IS NULL")),
    Index(None, "sent_at", postgresql_where=text("given_up_at IS NULL")),
    Index(None, "kind", "waiting_since", "mt_id"),
    Index(None, "sub_account", "kind", "waiting_since", "mt_id"),
)

# Each status reconciliation recovered (asked of Wavy after its webhook never came), for the
# counts: recovered today, by sub-account.
recoveries = Table(
    "recoveries",
    metadata,
    Column("mt_id", KEY, ForeignKey("mts.id", ondelete="CASCADE"), nullable=False),
    Column("kind", KEY, nullable=False),
    Column("recovered_at", TS, nullable=False),
    PrimaryKeyConstraint("mt_id", "kind"),
    CheckConstraint(one_of("kind", OVERDUE_KINDS), name="kind"),
    Index(None, "recovered_at"),
)

# One row: how far reconciliation has looked (a mark per age), and the pace every worker and
# replica shares for asking Wavy (no request before next_ask_at; backoff_s grows on 429/5xx).
reconcile_state = Table(
    "reconcile_state",
    metadata,
    Column("id", SmallInteger, primary_key=True),
    Column("callback_mark_at", TS, nullable=True),
    Column("callback_mark_id", KEY, nullable=True),
    Column("dlr_mark_at", TS, nullable=True),
    Column("dlr_mark_id", KEY, nullable=True),
    Column("next_ask_at", TS, nullable=False, server_default=text("now()")),
    Column("backoff_s", Float, nullable=False, server_default=text("0")),
    CheckConstraint("id = 1", name="one_row"),
)

# Sends made with an Idempotency-Key (as Stripe's): the first answer, given again to a retry
# of the same body within a day; the answer is empty while the first is being sent.
send_keys = Table(
    "send_keys",
    metadata,
    Column("username", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("body_sha256", Text, nullable=False),
    Column("status", SmallInteger, nullable=True),
    Column("answer", LargeBinary, nullable=True),
    Column("created_at", TS, nullable=False, server_default=text("now()")),
    PrimaryKeyConstraint("username", "key"),
    Index(None, "created_at", postgresql_using="brin"),
)

# The sends passed to Wavy in each second, by every worker and replica: WAVY_SEND_MAX_RPS holds
# for them together. One row per slot of a minute's ring, reused each minute.
send_rate = Table(
    "send_rate",
    metadata,
    Column("slot", SmallInteger, primary_key=True),
    Column("second", BigInteger, nullable=False),
    Column("count", Integer, nullable=False),
)

# MOs keyed by their own id; mt_id finds the replies to a message.
mos = Table(
    "mos",
    metadata,
    Column("id", KEY, primary_key=True),
    Column("sub_account", KEY, nullable=True),
    Column("campaign_alias", Text, nullable=True),
    Column("carrier_id", BigInteger, nullable=True),
    Column("carrier_name", Text, nullable=True),
    Column("source", Text, nullable=True),
    Column("short_code", Text, nullable=True),
    Column("message_text", Text, nullable=True),
    # receivedAt from the payload, else the time we got it: never null, so it can be indexed.
    Column("received_at", TS, nullable=False),
    Column("mt_id", KEY, nullable=True),
    Column("mt_correlation_id", Text, nullable=True),
    Column("mt_username", Text, nullable=True),
    Column("mt_email", Text, nullable=True),
    Column("stored_at", TS, nullable=False),
    Column("seq", BigInteger, Identity(), nullable=False),
    Column("tx_id", BigInteger, nullable=False, server_default=CURRENT_TX_ID),
    # Window searches page on (received_at, seq), scoped or not.
    Index(None, "sub_account", "received_at", "seq", postgresql_where=SCOPED),
    Index(None, "received_at", "seq"),
    Index(None, "mt_id"),
    Index(None, "seq", unique=True),
    Index(None, "tx_id", "seq"),
    Index(None, "sub_account", "tx_id", "seq", postgresql_where=SCOPED),
)

# Messages whose reply counts are to be counted again (app.db.reply_recounts), queued in the
# transaction that stores their replies: a worker killed before its recount, or a replay, leaves
# the work to the next sweep of any worker instead of a count one short.
reply_recounts = Table(
    "reply_recounts",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("message_id", KEY, nullable=False),
    Column("queued_at", TS, nullable=False, server_default=text("now()")),
)


def _rollup_columns() -> list[Column[Any]]:
    """The delivery counters' key and count: stats_rollup and stats_deltas hold rows alike."""
    return [
        Column("sub_account", KEY, nullable=False),
        Column("hour", TS, nullable=False),
        Column("campaign_id", KEY, nullable=False),
        Column("carrier_name", Text, nullable=False),
        Column("metric", KEY, nullable=False),
        Column("value", Integer, nullable=False),
        Column("count", BigInteger, nullable=False),
    ]


# Delivery statistics per hour, sub-account, campaign and carrier, kept by triggers on
# messages and mos through stats_deltas (migrations 0004, 0005, 0010; rules in
# app.rules.delivery_stats). '' stands for "none" in the key columns so that they can form the
# primary key.
stats_rollup = Table(
    "stats_rollup",
    metadata,
    *_rollup_columns(),
    PrimaryKeyConstraint("sub_account", "hour", "campaign_id", "carrier_name", "metric", "value"),
    # Admins' unscoped windows.
    Index(None, "hour"),
)

# What the triggers add to stats_rollup, appended rather than applied (migration 0010): a
# writer then locks no shared counter row, where two writers of one campaign's hour, each
# transaction updating the rollup in more than one statement (a batch with replies), used to
# deadlock. app.db.stats folds these rows into stats_rollup every few seconds, and its reads
# add up both tables, so the figures are current either way. No key: rows are only appended,
# and taken all at once.
stats_deltas = Table("stats_deltas", metadata, *_rollup_columns())

# Rows the stats fold could not store in stats_rollup (app.db.stats), set aside so that one
# poisoned group never stops the fold for everyone; an operator reads them here.
stats_quarantine = Table(
    "stats_quarantine",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    *_rollup_columns(),
    Column("error", Text, nullable=False),
    Column("quarantined_at", TS, nullable=False, server_default=text("now()")),
)

# The sub-account a rejected body is counted against (its key's; '' for the account key).
REJECTED_OWNER = text("coalesce(sub_account, '')")

# Rejected bodies: every body we refused (except unauthenticated ones), raw, for an operator.
# Bounded (app.db.rejected): a body refused again is counted on its first copy, and past a
# key's byte budget only the first copy of each kind of refusal is kept.
rejected_bodies = Table(
    "rejected_bodies",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("received_at", TS, nullable=False, server_default=text("now()")),
    Column("endpoint", Text, nullable=False),
    Column("method", Text, nullable=False),
    Column("sub_account", Text, nullable=True),
    Column("status_code", SmallInteger, nullable=False),
    Column("reason", Text, nullable=False),
    Column("detail", JSONB, nullable=True),
    Column("content_type", Text, nullable=True),
    Column("body", LargeBinary, nullable=False),
    Column("body_truncated", Boolean, nullable=False, server_default=text("false")),
    Column("replayed_at", TS, nullable=True),
    # Computed by PostgreSQL, so rows written by any release count against the budgets.
    Column("body_bytes", Integer, Computed("octet_length(body)", persisted=True)),
    # sha256 of the body as received: the same body refused again is one row.
    Column("digest", LargeBinary, nullable=True),
    Column("repeats", Integer, nullable=False, server_default=text("0")),
    Column("last_received_at", TS, nullable=True),
    Index(None, "received_at"),
    Index(
        "uq_rejected_bodies_first_copy",
        REJECTED_OWNER,
        "endpoint",
        "method",
        "reason",
        "digest",
        unique=True,
        postgresql_where=text("replayed_at IS NULL"),
    ),
    Index("ix_rejected_bodies_owner", REJECTED_OWNER, postgresql_include=["body_bytes"]),
)

# Read API users, as at Wavy: admins see every sub-account, users only their own.
users = Table(
    "users",
    metadata,
    Column("id", Integer, Identity(), primary_key=True),
    Column("username", Text, nullable=False, unique=True),
    Column("email", Text, nullable=True),
    Column("role", Text, nullable=False),
    Column("sub_account", Text, nullable=True),
    # sha256 of the token (tokens are long random secrets, or at least 16 chars when chosen).
    Column("token_hash", Text, nullable=False),
    Column("created_at", TS, nullable=False, server_default=text("now()")),
    Column("disabled_at", TS, nullable=True),
    CheckConstraint("role IN ('admin', 'user')", name="role"),
    CheckConstraint("role = 'admin' OR sub_account IS NOT NULL", name="user_has_sub_account"),
    Index("uq_users_lower_email", text("lower(email)"), unique=True),
)

# Where each user's consume-on-read lists (status/list, receive/list) stand.
read_cursors = Table(
    "read_cursors",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("feed", Text, primary_key=True),
    # '' for "everything the user may see", else the sub-account an admin narrowed to.
    Column("scope", Text, primary_key=True),
    Column("tx_id", BigInteger, nullable=False, server_default=text("0")),
    Column("seq", BigInteger, nullable=False, server_default=text("0")),
    Column("updated_at", TS, nullable=True),
    CheckConstraint("feed IN ('status', 'mo')", name="feed"),
)


# Downstream endpoints that every stored reply and status change is pushed to
# (app.outbound.forwarder).
endpoints = Table(
    "endpoints",
    metadata,
    Column("id", Integer, Identity(), primary_key=True),
    Column("url", Text, nullable=False),
    # Whose data it receives; none: every sub-account's (admins only).
    Column("sub_account", KEY, nullable=True),
    # The event types it receives (app.rules.forwarding.EventType).
    Column("events", ARRAY(Text), nullable=False),
    # The Standard Webhooks secret (whsec_...). Kept as is: every delivery is signed with it.
    Column("secret", Text, nullable=False),
    # After a rotation the previous secret signs too, until previous_secret_until.
    Column("previous_secret", Text, nullable=True),
    Column("previous_secret_until", TS, nullable=True),
    Column("created_at", TS, nullable=False, server_default=text("now()")),
    Column("created_by", Text, nullable=False),
    Column("disabled_at", TS, nullable=True),
    Column("disabled_reason", Text, nullable=True),
    # Where its deliveries stand in each safe feed (app.db.reads' feed positions): what is
    # after them is still to be turned into deliveries.
    Column("status_tx_id", BigInteger, nullable=False),
    Column("status_seq", BigInteger, nullable=False),
    Column("mo_tx_id", BigInteger, nullable=False),
    Column("mo_seq", BigInteger, nullable=False),
    Column("last_attempt_at", TS, nullable=True),
    Column("last_success_at", TS, nullable=True),
    # The first failed attempt since the last success: the age a dead endpoint is disabled at.
    Column("failing_since", TS, nullable=True),
    # A replay in progress: deliveries of ids in [replay_next_id, replay_last_id] to send again.
    Column("replay_next_id", BigInteger, nullable=True),
    Column("replay_last_id", BigInteger, nullable=True),
    # Its position in the opt-out feed (migration 0015; 0 for endpoints made before it, which
    # do not receive optout.changed).
    Column("optout_tx_id", BigInteger, nullable=False, server_default=text("0")),
    Column("optout_seq", BigInteger, nullable=False, server_default=text("0")),
    CheckConstraint("disabled_reason IN ('manual', 'failing')", name="disabled_reason"),
)

# One row per event per endpoint: the body as signed, and where its sending stands.
deliveries = Table(
    "deliveries",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("endpoint_id", Integer, ForeignKey("endpoints.id", ondelete="CASCADE"), nullable=False),
    # The Standard Webhooks webhook-id: the same on every attempt of this delivery.
    Column("webhook_id", KEY, nullable=False),
    Column("event_type", KEY, nullable=False),
    # A status's message id: one message's deliveries go out in order. None for replies.
    Column("message_id", KEY, nullable=True),
    Column("body", LargeBinary, nullable=False),
    Column("created_at", TS, nullable=False, server_default=text("now()")),
    Column("state", KEY, nullable=False, server_default=text("'pending'")),
    Column("attempts", SmallInteger, nullable=False, server_default=text("0")),
    # When it may be sent (again); while an attempt runs, when that attempt's lease ends.
    Column("next_attempt_at", TS, nullable=False, server_default=text("now()")),
    Column("finished_at", TS, nullable=True),
    # The delivery a replay sends again.
    Column("replay_of", BigInteger, nullable=True),
    # When it last failed, while it waits for a retry (the endpoint is failing meanwhile).
    Column("last_failed_at", TS, nullable=True),
    CheckConstraint("state IN ('pending', 'delivered', 'failed')", name="state"),
    Index(None, "endpoint_id", "next_attempt_at", postgresql_where=PENDING),
    Index(None, "endpoint_id", "message_id", "id", postgresql_where=PENDING),
    # An endpoint's failed deliveries, counted wherever its health is shown (few, if any).
    Index(
        "ix_deliveries_endpoint_id_failed",
        "endpoint_id",
        postgresql_where=text("state = 'failed'::text"),
    ),
    # BRIN, not a btree: rows are appended in time order, and the purge and a replay's start
    # only need the range; a btree entry per row version cost every delivery three.
    Index(None, "created_at", postgresql_using="brin"),
)

# Every attempt to send a delivery, newest looked at first.
delivery_attempts = Table(
    "delivery_attempts",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("endpoint_id", Integer, ForeignKey("endpoints.id", ondelete="CASCADE"), nullable=False),
    Column("delivery_id", BigInteger, nullable=False),
    Column("webhook_id", KEY, nullable=False),
    Column("attempted_at", TS, nullable=False),
    # The HTTP status, or none with an error (no answer, refused address, timeout).
    Column("status_code", SmallInteger, nullable=True),
    Column("error", Text, nullable=True),
    Column("latency_ms", Integer, nullable=False),
    # The answer's first KiB.
    Column("response", Text, nullable=True),
    Index(None, "endpoint_id", "id"),
    Index(None, "attempted_at", postgresql_using="brin"),
)


# ---------------------------------------------------------------------------- opt-outs
# (rules in app.rules.optouts). Lists are keyed by sub-account, '' being the account-wide list.


# Keywords set for a list, over the defaults in app.rules.optouts (action 'none' masks one).
optout_keywords = Table(
    "optout_keywords",
    metadata,
    Column("sub_account", KEY, nullable=False),
    Column("keyword", KEY, nullable=False),
    Column("action", KEY, nullable=False),
    Column("created_at", TS, nullable=False, server_default=text("now()")),
    Column("created_by", Text, nullable=False),
    PrimaryKeyConstraint("sub_account", "keyword"),
    CheckConstraint(one_of("action", KEYWORD_ACTIONS), name="action"),
)

optouts_change_seq = Sequence("optouts_change_seq", metadata=metadata)

# Where each number stands in each list: the latest change (by its time) decides. Numbers that
# opted back in stay, so that a late, older opt-out cannot override them.
optouts = Table(
    "optouts",
    metadata,
    Column("sub_account", KEY, nullable=False),
    Column("e164", KEY, nullable=False),
    Column("opted_out", Boolean, nullable=False),
    # When the current state began, and what began it.
    Column("since", TS, nullable=False),
    Column("source", KEY, nullable=False),
    Column("keyword", Text, nullable=True),
    Column("reason", Text, nullable=True),
    # The latest change's time and history id: a change decides only if it is later.
    Column("decided_at", TS, nullable=False),
    Column("change_id", BigInteger, nullable=False),
    # The state before the latest change (none: the number's first), read back by the
    # statement that records a change to tell whether it moved the list's size.
    Column("was_opted_out", Boolean, nullable=True),
    # The feed's order, bumped when the state changes (as messages' change_seq).
    Column(
        "change_seq",
        BigInteger,
        nullable=False,
        server_default=optouts_change_seq.next_value(),
    ),
    Column("tx_id", BigInteger, nullable=False, server_default=CURRENT_TX_ID),
    # Number first: a check of 1000 numbers against a sender's two lists is then 1000 index
    # descents, not one per number and list.
    PrimaryKeyConstraint("e164", "sub_account"),
    CheckConstraint(one_of("source", OPTOUT_SOURCES), name="source"),
    # The listing, newest first, of the numbers opted out: a list's, and every list's (an
    # admin's, and the dashboard's), which would otherwise sort the whole table per page.
    Index(None, "sub_account", "since", "e164", postgresql_where=text("opted_out")),
    Index(None, "since", "sub_account", "e164", postgresql_where=text("opted_out")),
    # The feed's order: every list's (an admin's), and each list's (a sub-account reads its
    # own and the account-wide list, each by its range here, merged: app.db.reads.feed_page).
    Index(None, "tx_id", "change_seq"),
    Index(None, "sub_account", "tx_id", "change_seq"),
)

# Every change ever made to a list: who or which reply, when, which keyword.
optout_changes = Table(
    "optout_changes",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("sub_account", KEY, nullable=False),
    Column("e164", KEY, nullable=False),
    Column("opted_out", Boolean, nullable=False),
    # The change's own time: the reply's receivedAt, the status's time, a manual change's.
    Column("at", TS, nullable=False),
    Column("source", KEY, nullable=False),
    Column("keyword", Text, nullable=True),
    Column("mo_id", KEY, nullable=True),
    Column("message_id", KEY, nullable=True),
    Column("actor", Text, nullable=True),
    Column("reason", Text, nullable=True),
    Column("recorded_at", TS, nullable=False, server_default=text("now()")),
    CheckConstraint(one_of("source", OPTOUT_SOURCES), name="source"),
    # A number's history, in every list (an admin's) or in a caller's.
    Index(None, "e164", "sub_account", "at"),
    # A reply, or a message's list status, retried by Wavy is one change.
    Index(None, "mo_id", unique=True, postgresql_where=text("mo_id IS NOT NULL")),
    Index(None, "message_id", unique=True, postgresql_where=text("message_id IS NOT NULL")),
    # The stats' windows.
    Index(None, "at"),
)

# Every change of a number's state in a list, at the time of the change that made it: +1 it
# opted out, -1 it opted back in. Their sum is each list's size, at any time: what the list's
# size over time is read from, without replaying the history.
optout_transitions = Table(
    "optout_transitions",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("sub_account", KEY, nullable=False),
    Column("at", TS, nullable=False),
    Column("effect", SmallInteger, nullable=False),
    CheckConstraint("effect IN (-1, 1)", name="effect"),
    Index(None, "sub_account", "at", postgresql_include=["effect"]),
    Index(None, "at", postgresql_include=["effect"]),
)


# How a column's type is spelled in the writer's casts (app.db.ingest).
_SQL_TYPES: dict[type[Any], str] = {
    Text: "text",
    BigInteger: "bigint",
    Integer: "int",
    SmallInteger: "smallint",
    DateTime: "timestamptz",
    Boolean: "boolean",
    Float: "float8",
    JSON: "json",
}


def reply_answers(reply_sub_account: str, message_sub_account: str) -> str:
    """SQL: a reply answers the message it names when both are of one sub-account, or either
    of none (given the two sub-account columns). Another sub-account's key cannot add replies
    to a message's history, its reply count or its campaign's opt-outs by naming its id."""
    reply, owner = reply_sub_account, message_sub_account
    return f"({reply} IS NULL OR {owner} IS NULL OR {reply} = {owner})"


def table_columns(table: Table, *, leaving_out: tuple[str, ...] = ()) -> dict[str, str]:
    """A table's columns in order, with their SQL types: what the writer sends per batch."""
    return {
        column.name: _SQL_TYPES[type(column.type)]
        for column in table.c
        if column.name not in leaving_out
    }
