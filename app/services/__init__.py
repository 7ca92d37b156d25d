"""The work behind the routes and the CLI alike: managing endpoints and opt-out lists, and
ingesting webhooks. Nothing here knows HTTP's status codes (app.api maps its errors)."""
