"""webhook keys' changes notified

Written by hand (autogenerate does not see triggers). Each worker caches the active webhook
keys and reloaded them only when the cache was older than WAVY_KEY_CACHE_SECONDS (5 s), so a
revoked key, a leaked one say, went on working for up to 5 s on every worker. Any change to
webhook_keys (the CLI's, or an UPDATE by hand) now sends a notification on the channel
``wavy_webhook_keys`` when its transaction commits; every worker listens
(app.db.key_registry) and reloads at its next request. The cache's age stays the fallback.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-25 22:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The channel app.db.key_registry listens on (KEYS_CHANGED_CHANNEL there).
CHANNEL = "wavy_webhook_keys"


def upgrade() -> None:
    op.execute(
        f"""
        CREATE FUNCTION notify_webhook_keys_changed() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', '');
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER webhook_keys_changed "
        "AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON webhook_keys "
        "FOR EACH STATEMENT EXECUTE FUNCTION notify_webhook_keys_changed()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER webhook_keys_changed ON webhook_keys")
    op.execute("DROP FUNCTION notify_webhook_keys_changed()")
