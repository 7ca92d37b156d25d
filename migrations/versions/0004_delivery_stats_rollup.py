"""delivery stats rollup, kept by triggers

Reviewed by hand. Autogenerate gave the table, its hour index and messages.reply_count; the
functions and triggers are written here. Every insert, update or delete of a messages or mos
row subtracts the row's old contribution from stats_rollup and adds its new one, set-based,
once per statement (transition tables), in primary-key order so concurrent writers take the
rollup's row locks in the same order. The rules are app.rules.delivery_stats (bucket bounds
and carriers without DLR are repeated here as this migration's frozen copy; a test holds them
equal). Existing rows are counted in at the end (a full scan of messages and mos: run it in a
quiet hour on a big store).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 13:13:17.324367
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LATENCY_BOUNDS = "1,2,5,10,15,30,60,120,300,600,900,1800,3600,7200,14400,28800,86400,172800"
OPEN_BUCKET = 2147483647
CARRIERS_WITHOUT_DLR = "'OI', 'SERCOMTEL'"

HOUR = "(date_trunc('hour', {ts} AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')"
# The rollup's key, and the row every contribution function returns (key, then its weight).
KEY = "sub_account, hour, campaign_id, carrier_name, metric, value"
C_KEY = ", ".join(f"c.{column.strip()}" for column in KEY.split(","))
CONTRIBUTION = """TABLE (sub_account text, hour timestamptz, campaign_id text, carrier_name text,
                   metric text, value integer, weight integer)"""

FUNCTIONS = [
    f"""
    CREATE FUNCTION stats_latency_bucket(seconds double precision) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
        SELECT (ARRAY[{LATENCY_BOUNDS},{OPEN_BUCKET}])
               [width_bucket(seconds, ARRAY[{LATENCY_BOUNDS}]::double precision[]) + 1]
    $$""",
    f"""
    CREATE FUNCTION stats_message_contributions(m messages)
    RETURNS {CONTRIBUTION}
    LANGUAGE sql STABLE PARALLEL SAFE AS $$
        SELECT coalesce(m.sub_account, ''), {HOUR.format(ts="m.first_seen_at")},
               coalesce(m.campaign_id, ''), coalesce(m.carrier_name, ''),
               c.metric, c.value, c.weight
        FROM (VALUES
            ('messages', 0, 1),
            ('sent', coalesce(m.sent_status_code, -1), 1),
            ('delivered', coalesce(m.delivered_status_code, -1), 1),
            ('latency',
             coalesce(stats_latency_bucket(
                 extract(epoch FROM m.delivered_at - m.sent_at)::double precision), 0),
             CASE WHEN m.delivered_status_code = 4 AND m.delivered_at >= m.sent_at
                  THEN 1 ELSE 0 END),
            ('waiting',
             CASE WHEN upper(btrim(coalesce(m.carrier_name, ''))) IN ({CARRIERS_WITHOUT_DLR})
                  THEN 0 ELSE 1 END,
             CASE WHEN m.sent_status_code = 2 AND m.delivered_status_code IS NULL
                  THEN 1 ELSE 0 END),
            ('replied', 0, CASE WHEN m.reply_count > 0 THEN 1 ELSE 0 END),
            ('replies', 0, m.reply_count)
        ) AS c(metric, value, weight)
        WHERE c.weight <> 0
    $$""",
    f"""
    CREATE FUNCTION stats_mo_contributions(r mos)
    RETURNS {CONTRIBUTION}
    LANGUAGE sql STABLE PARALLEL SAFE AS $$
        SELECT coalesce(r.sub_account, ''), {HOUR.format(ts="r.received_at")}, '',
               coalesce(r.carrier_name, ''), 'mos_received', 0, 1
    $$""",
]


def _rollup_trigger_function(table: str, contributions: str) -> str:
    def apply(rows: str) -> str:
        return f"""
            INSERT INTO stats_rollup AS s ({KEY}, count)
            SELECT {KEY}, sum(weight) FROM ({rows}) AS d
            GROUP BY {KEY} HAVING sum(weight) <> 0
            ORDER BY {KEY}
            ON CONFLICT ON CONSTRAINT pk_stats_rollup
            DO UPDATE SET count = s.count + EXCLUDED.count;"""

    added = f"SELECT c.* FROM new_rows AS n, LATERAL {contributions}(n) AS c"
    removed = (
        f"SELECT {C_KEY}, -c.weight AS weight FROM old_rows AS o, LATERAL {contributions}(o) AS c"
    )
    return f"""
    CREATE FUNCTION stats_rollup_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN {apply(added)}
        ELSIF TG_OP = 'UPDATE' THEN {apply(f"{added} UNION ALL {removed}")}
        ELSE {apply(removed)}
        END IF;
        RETURN NULL;
    END $$"""


def _triggers(table: str) -> list[str]:
    return [
        f"CREATE TRIGGER stats_{table}_insert AFTER INSERT ON {table} "
        f"REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT "
        f"EXECUTE FUNCTION stats_rollup_{table}()",
        f"CREATE TRIGGER stats_{table}_update AFTER UPDATE ON {table} "
        f"REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT "
        f"EXECUTE FUNCTION stats_rollup_{table}()",
        f"CREATE TRIGGER stats_{table}_delete AFTER DELETE ON {table} "
        f"REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT "
        f"EXECUTE FUNCTION stats_rollup_{table}()",
    ]


BACKFILL = f"""
    INSERT INTO stats_rollup ({KEY}, count)
    SELECT {KEY}, sum(weight)
    FROM (SELECT c.* FROM messages AS m, LATERAL stats_message_contributions(m) AS c
          UNION ALL
          SELECT c.* FROM mos AS r, LATERAL stats_mo_contributions(r) AS c) AS d
    GROUP BY {KEY}
"""

REPLY_COUNTS = """
    UPDATE messages AS m SET reply_count = r.n
    FROM (SELECT mt_id, count(*)::int AS n FROM mos WHERE mt_id IS NOT NULL GROUP BY mt_id) AS r
    WHERE m.id = r.mt_id
"""


def upgrade() -> None:
    op.create_table(
        "stats_rollup",
        sa.Column("sub_account", sa.Text(), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("campaign_id", sa.Text(), nullable=False),
        sa.Column("carrier_name", sa.Text(), nullable=False),
        sa.Column("metric", sa.Text(), nullable=False),
        sa.Column("value", sa.Integer(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "sub_account",
            "hour",
            "campaign_id",
            "carrier_name",
            "metric",
            "value",
            name=op.f("pk_stats_rollup"),
        ),
    )
    op.create_index(op.f("ix_stats_rollup_hour"), "stats_rollup", ["hour"], unique=False)
    op.add_column(
        "messages",
        sa.Column("reply_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    # Replies stored before this migration, then the rollup of everything stored so far.
    op.execute(REPLY_COUNTS)
    for statement in FUNCTIONS:
        op.execute(statement)
    for table, contributions in (
        ("messages", "stats_message_contributions"),
        ("mos", "stats_mo_contributions"),
    ):
        op.execute(_rollup_trigger_function(table, contributions))
        for trigger in _triggers(table):
            op.execute(trigger)
    op.execute(BACKFILL)


def downgrade() -> None:
    for table in ("messages", "mos"):
        for event in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER stats_{table}_{event} ON {table}")
        op.execute(f"DROP FUNCTION stats_rollup_{table}()")
    op.execute("DROP FUNCTION stats_mo_contributions(mos)")
    op.execute("DROP FUNCTION stats_message_contributions(messages)")
    op.execute("DROP FUNCTION stats_latency_bucket(double precision)")
    op.drop_column("messages", "reply_count")
    op.drop_index(op.f("ix_stats_rollup_hour"), table_name="stats_rollup")
    op.drop_table("stats_rollup")
