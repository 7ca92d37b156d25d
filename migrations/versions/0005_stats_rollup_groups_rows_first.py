"""stats rollup trigger groups the changed rows before expanding them

Reviewed by hand (no table changes: autogenerate has nothing to say). Migration 0004's trigger
expanded every changed messages row into its contribution rows (up to seven) and then
aggregated those by the rollup's key: for a batch of 1000 new DLRs that is thousands of rows
through a hash aggregate, with the hour and key expressions evaluated for each, about a fifth
of PostgreSQL's cost of an insert. Rows that contribute alike (same sub-account, hour,
campaign, carrier, codes, latency bucket, reply count) are now counted together first, and only
those few groups are expanded, weighted by their count. Same rollup, same rules:

- ``stats_message_group_contributions`` holds the rules (which metric, value and weight a group
  of messages gives) and is their one SQL home; ``stats_message_contributions(messages)`` (the
  per-row form 0004's backfill uses) now calls it with a group of one.
- The trigger function for messages reads its transition tables through that; mos keep 0004's.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 15:45:00
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CARRIERS_WITHOUT_DLR = "'OI', 'SERCOMTEL'"
KEY = "sub_account, hour, campaign_id, carrier_name, metric, value"

# The profile of a messages row: everything its contributions depend on. Rows with the same
# profile contribute the same, so they are counted once per statement.
PROFILE = """
    coalesce({m}.sub_account, '') AS sub_account,
    (date_trunc('hour', {m}.first_seen_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC') AS hour,
    coalesce({m}.campaign_id, '') AS campaign_id,
    coalesce({m}.carrier_name, '') AS carrier_name,
    {m}.sent_status_code,
    {m}.delivered_status_code,
    CASE WHEN {m}.delivered_status_code = 4 AND {m}.delivered_at >= {m}.sent_at
         THEN coalesce(stats_latency_bucket(
                  extract(epoch FROM {m}.delivered_at - {m}.sent_at)::double precision), 0)
    END AS latency,
    {m}.reply_count"""

GROUP_CONTRIBUTIONS = f"""
    CREATE FUNCTION stats_message_group_contributions(
        g_sub_account text, g_hour timestamptz, g_campaign_id text, g_carrier_name text,
        g_sent_status_code integer, g_delivered_status_code integer, g_latency integer,
        g_reply_count integer, g_messages bigint)
    RETURNS TABLE (sub_account text, hour timestamptz, campaign_id text, carrier_name text,
                   metric text, value integer, weight bigint)
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
        SELECT g_sub_account, g_hour, g_campaign_id, g_carrier_name, c.metric, c.value, c.weight
        FROM (VALUES
            ('messages', 0, g_messages),
            ('sent', coalesce(g_sent_status_code, -1), g_messages),
            ('delivered', coalesce(g_delivered_status_code, -1), g_messages),
            ('latency', coalesce(g_latency, 0),
             CASE WHEN g_latency IS NOT NULL THEN g_messages ELSE 0 END),
            ('waiting',
             CASE WHEN upper(btrim(g_carrier_name)) IN ({CARRIERS_WITHOUT_DLR}) THEN 0 ELSE 1 END,
             CASE WHEN g_sent_status_code = 2 AND g_delivered_status_code IS NULL
                  THEN g_messages ELSE 0 END),
            ('replied', 0, CASE WHEN g_reply_count > 0 THEN g_messages ELSE 0 END),
            ('replies', 0, g_reply_count * g_messages)
        ) AS c(metric, value, weight)
        WHERE c.weight <> 0
    $$"""

# 0004's per-row form, kept for whoever calls it (its backfill), now defined by the groups'.
ROW_CONTRIBUTIONS = f"""
    CREATE OR REPLACE FUNCTION stats_message_contributions(m messages)
    RETURNS TABLE (sub_account text, hour timestamptz, campaign_id text, carrier_name text,
                   metric text, value integer, weight integer)
    LANGUAGE sql STABLE PARALLEL SAFE AS $$
        SELECT c.sub_account, c.hour, c.campaign_id, c.carrier_name, c.metric, c.value,
               c.weight::integer
        FROM (SELECT {PROFILE.format(m="m")}) AS p,
             LATERAL stats_message_group_contributions(p.sub_account, p.hour, p.campaign_id,
                 p.carrier_name, p.sent_status_code, p.delivered_status_code, p.latency,
                 p.reply_count, 1) AS c
    $$"""


def _contributions(rows: str, sign: str) -> str:
    """The contributions of a transition table's rows, counted by profile first."""
    return f"""
        SELECT c.* FROM (
            SELECT {PROFILE.format(m="r")}, {sign}count(*) AS messages
            FROM {rows} AS r GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
        ) AS g, LATERAL stats_message_group_contributions(g.sub_account, g.hour, g.campaign_id,
            g.carrier_name, g.sent_status_code, g.delivered_status_code, g.latency,
            g.reply_count, g.messages) AS c"""


def _apply(contributions: str) -> str:
    # In primary-key order, so concurrent writers take the rollup's row locks alike.
    return f"""
        INSERT INTO stats_rollup AS s ({KEY}, count)
        SELECT {KEY}, sum(weight) FROM ({contributions}) AS d
        GROUP BY {KEY} HAVING sum(weight) <> 0
        ORDER BY {KEY}
        ON CONFLICT ON CONSTRAINT pk_stats_rollup
        DO UPDATE SET count = s.count + EXCLUDED.count;"""


ADDED = _contributions("new_rows", "")
REMOVED = _contributions("old_rows", "-")
TRIGGER_FUNCTION = f"""
    CREATE OR REPLACE FUNCTION stats_rollup_messages() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN {_apply(ADDED)}
        ELSIF TG_OP = 'UPDATE' THEN {_apply(f"{ADDED} UNION ALL {REMOVED}")}
        ELSE {_apply(REMOVED)}
        END IF;
        RETURN NULL;
    END $$"""


def _migration_0004() -> ModuleType:
    """0004's frozen definitions, which the downgrade puts back."""
    path = next(Path(__file__).parent.glob("0004_*.py"))
    spec = importlib.util.spec_from_file_location("migration_0004", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def upgrade() -> None:
    op.execute(GROUP_CONTRIBUTIONS)
    op.execute(ROW_CONTRIBUTIONS)
    op.execute(TRIGGER_FUNCTION)


def downgrade() -> None:
    previous = _migration_0004()
    row_function = next(f for f in previous.FUNCTIONS if "stats_message_contributions" in f)
    op.execute(row_function.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
    trigger_function = previous._rollup_trigger_function("messages", "stats_message_contributions")
    op.execute(trigger_function.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
    op.execute(
        "DROP FUNCTION stats_message_group_contributions(text, timestamptz, text, text, "
        "integer, integer, integer, integer, bigint)"
    )
