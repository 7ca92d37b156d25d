"""Each table's columns are defined once (app.db.tables): the writer's column lists are read
from it, and the records the rules build must carry exactly those columns, or a new column
would silently never be written."""

from __future__ import annotations

from dataclasses import fields

from app.db import ingest
from app.db.tables import events, messages, mos
from app.rules.records import EventRecord, MoRecord
from app.rules.status_merge import DESCRIPTIVE_FIELDS, MessageStatus


def names(record: type) -> list[str]:
    return [field.name for field in fields(record)]


def test_a_status_record_carries_every_column_the_writer_sends_to_messages() -> None:
    assert names(MessageStatus) == list(ingest._STATUS_COLUMNS)
    assert set(ingest._STATUS_COLUMNS) | {"change_seq", "tx_id", "reply_count"} == set(
        messages.c.keys()
    )
    assert set(DESCRIPTIVE_FIELDS) <= set(ingest._STATUS_COLUMNS)


def test_a_reply_record_carries_every_column_the_writer_sends_to_mos() -> None:
    assert names(MoRecord) == list(ingest._MO_COLUMNS)
    assert set(ingest._MO_COLUMNS) | {"seq", "tx_id"} == set(mos.c.keys())


def test_an_event_record_carries_every_column_of_the_event_log() -> None:
    assert set(ingest._EVENT_FIELDS) <= set(names(EventRecord))
    assert [*ingest._EVENT_FIELDS, "payload"] == [c.name for c in events.c if c.name != "id"]
