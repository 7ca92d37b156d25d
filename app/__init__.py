"""wavy-webhooks: receives what Wavy sends about SMS, stores it in PostgreSQL, serves it back,
and pushes it on. The layers, highest first (imports run downwards only, tests/test_layers.py):
``main``/``cli``, ``api`` (HTTP in), ``services``, ``outbound`` (HTTP out), ``db``,
``settings``/``metrics``/``logs``, ``rules``, ``payloads``/``errors``."""
