"""read-API users' changes notified

Written by hand (autogenerate does not see triggers). Each worker now remembers read-API
logins that succeeded for WAVY_READER_CACHE_SECONDS (5 s), so that a dashboard's or a poller's
every request does not cost a query to authenticate (app.db.reader_cache). Any change to
users (the CLI's disable or rotate-token, or an UPDATE by hand) sends a notification on the
channel ``wavy_read_users`` when its transaction commits; every worker listens
(app.db.notifications) and forgets its logins, so a disabled user or a replaced token is
refused at once. The cache's age stays the fallback, as for webhook keys (0011).

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-26 00:40:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The channel app.db.notifications listens on (USERS_CHANGED_CHANNEL there).
CHANNEL = "wavy_read_users"


def upgrade() -> None:
    op.execute(
        f"""
        CREATE FUNCTION notify_read_users_changed() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', '');
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER users_changed "
        "AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON users "
        "FOR EACH STATEMENT EXECUTE FUNCTION notify_read_users_changed()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER users_changed ON users")
    op.execute("DROP FUNCTION notify_read_users_changed()")
