"""``python -m app.cli``: the same command as ``wavy-webhooks``."""

from app.cli import main

main()
