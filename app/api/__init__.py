"""HTTP in: the routes (webhooks, the read API, endpoints, opt-outs, stats, the dashboard),
their schemas, and what every request passes through (credentials, bounds, errors)."""
