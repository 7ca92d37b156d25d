"""stats rollup fed through appended deltas

Reviewed by hand; autogenerate gave the table. The triggers of 0004 and 0005 applied each
statement's contributions to stats_rollup at once (INSERT ... ON CONFLICT DO UPDATE), so a
writer held locks on the rollup's rows of its campaigns' hours until it committed. A batch
with replies changes the rollup in several statements (statuses, replies, reply counts), and
two such batches of one campaign, each holding rows the other's next statement wanted,
deadlocked: under mixed callbacks and replies, 19 batches failed with 503 in 12,000 requests
(docs/benchmarks.md). The triggers now append their contributions to stats_deltas, which
nobody updates; app.db.stats folds them into stats_rollup every few seconds (alone, in primary
key order) and reads both tables.

Same rules, same figures: the contribution functions are untouched, and only where the sums
go changes. The downgrade folds what is pending, then puts 0004's and 0005's triggers back.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-25 21:15:00
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY = "sub_account, hour, campaign_id, carrier_name, metric, value"


def _migration(number: str) -> ModuleType:
    """An earlier migration's frozen definitions."""
    path = next(Path(__file__).parent.glob(f"{number}_*.py"))
    spec = importlib.util.spec_from_file_location(f"migration_{number}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _append(contributions: str) -> str:
    return f"""
        INSERT INTO stats_deltas ({KEY}, count)
        SELECT {KEY}, sum(weight) FROM ({contributions}) AS d
        GROUP BY {KEY} HAVING sum(weight) <> 0;"""


def _trigger_function(table: str, added: str, removed: str) -> str:
    return f"""
    CREATE OR REPLACE FUNCTION stats_rollup_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN {_append(added)}
        ELSIF TG_OP = 'UPDATE' THEN {_append(f"{added} UNION ALL {removed}")}
        ELSE {_append(removed)}
        END IF;
        RETURN NULL;
    END $$"""


def _mo_contributions(rows: str, sign: str) -> str:
    c_key = ", ".join(f"c.{column.strip()}" for column in KEY.split(","))
    return (
        f"SELECT {c_key}, {sign}c.weight AS weight "
        f"FROM {rows} AS r, LATERAL stats_mo_contributions(r) AS c"
    )


FOLD = f"""
    WITH folded AS (DELETE FROM stats_deltas RETURNING {KEY}, count)
    INSERT INTO stats_rollup AS s ({KEY}, count)
    SELECT {KEY}, sum(count) FROM folded GROUP BY {KEY} HAVING sum(count) <> 0
    ORDER BY {KEY}
    ON CONFLICT ON CONSTRAINT pk_stats_rollup DO UPDATE SET count = s.count + EXCLUDED.count
"""


def upgrade() -> None:
    op.create_table(
        "stats_deltas",
        sa.Column("sub_account", sa.Text(collation="C"), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("campaign_id", sa.Text(collation="C"), nullable=False),
        sa.Column("carrier_name", sa.Text(), nullable=False),
        sa.Column("metric", sa.Text(collation="C"), nullable=False),
        sa.Column("value", sa.Integer(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
    )
    groups = _migration("0005")
    op.execute(_trigger_function("messages", groups.ADDED, groups.REMOVED))
    op.execute(
        _trigger_function(
            "mos", _mo_contributions("new_rows", ""), _mo_contributions("old_rows", "-")
        )
    )


def downgrade() -> None:
    op.execute(FOLD)
    op.execute(_migration("0005").TRIGGER_FUNCTION)
    mos_function = _migration("0004")._rollup_trigger_function("mos", "stats_mo_contributions")
    op.execute(mos_function.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
    op.drop_table("stats_deltas")
