"""Many rows in one statement: a batch travels as one JSON array per column, and SQL reads it
back as rows. The writer's batches (app.db.ingest) and the opt-out lists' changes
(app.db.optouts) are both sent this way.

Each column is written by orjson in one call and split again by ``json_array_elements_text``.
asyncpg's binary arrays cost the service far more: its encoder tests every element against
collections.abc's ABCs, which made a 1000-DLR batch's parameters about three times the
service's CPU per event, for a little more in PostgreSQL this way (bench/results/journal.md).
Column arrays rather than one array of objects: a row's keys are not repeated on every row,
and PostgreSQL decodes them faster than ``json_to_recordset``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson

# How a statement names its n-th parameter: asyncpg's ``$n``, or a SQLAlchemy bind name.
Placeholder = Callable[[int], str]


def dollar(n: int) -> str:
    """asyncpg's positional parameter."""
    return f"${n}"


def rows_from(
    columns: dict[str, str], alias: str, first: int = 1, placeholder: Placeholder = dollar
) -> str:
    """The batch's rows as ``alias``, from parameters ``first...`` (one per column, in the
    order of ``columns``: see ``json_columns``). Values come out as text (or json)."""
    calls = ", ".join(
        f"json_array_elements{'' if kind == 'json' else '_text'}(CAST({placeholder(n)} AS json))"
        for n, kind in enumerate(columns.values(), first)
    )
    return f"ROWS FROM ({calls}) AS {alias}({', '.join(columns)})"


def typed(name: str, kind: str, alias: str) -> str:
    """A column of ``rows_from`` with its SQL type."""
    return f"{alias}.{name}" if kind in ("text", "json") else f"{alias}.{name}::{kind}"


def select_list(columns: dict[str, str], alias: str) -> str:
    """Every column of ``rows_from``, typed."""
    return ", ".join(typed(name, kind, alias) for name, kind in columns.items())


def json_columns(rows: Sequence[Any], names: Iterable[str]) -> list[str]:
    """The parameters for ``rows_from``: for each name, the rows' attribute as one JSON array."""
    return [orjson.dumps([getattr(row, name) for row in rows]).decode() for name in names]
