"""The ceiling: the very same FastAPI app (body read, parse, validate, records, response) with
only the database write removed, to measure what the HTTP stack alone can do.

The writer is swapped on ``app.state`` inside the lifespan, not through
``dependency_overrides``: with overrides FastAPI re-analyses the dependency graph on every
request, which would understate the ceiling several times over."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from app.db.writer import WriteResult
from app.main import create_app
from app.rules.records import EventRecord


class NoDatabaseWriter:
    """The BatchWriter's interface, answering at once."""

    stopping = False
    queued_items = 0

    def is_full(self) -> bool:
        return False

    async def write(self, records: list[EventRecord]) -> WriteResult:
        return WriteResult(received=len(records), duplicates=0)


def create_ceiling_app() -> FastAPI:
    app = create_app()
    real_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(application: FastAPI) -> AsyncIterator[Mapping[str, Any]]:
        async with real_lifespan(application) as state:
            real_writer = application.state.writer
            application.state.writer = NoDatabaseWriter()
            yield state or {}
            application.state.writer = real_writer

    app.router.lifespan_context = lifespan
    return app
