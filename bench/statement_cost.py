"""PostgreSQL's CPU for the writer's batch statement against the idempotent floor's, the two
alternated statement by statement on one connection each, so that the host's drift (on this
shared machine, a factor of two within minutes) falls on both alike.

    .venv/bin/python -m bench.statement_cost              # batches of 1000 and of 30 (≈ 2 min)
    .venv/bin/python -m bench.statement_cost --sizes 1000 --pairs 500

The writer's side is ``write_records`` with new DLRs of one sub-account's key, as an array of
1000 or a gathered batch of single DLRs sends it (one autocommitted statement: the events, the
status merge, the owner check, the reply count and the stats rollup's triggers). The floor's is
the least an idempotent receiver sends for the same rows (``bench.db_capacity``: message rows
with the read API's indexes and their event rows, ``INSERT ... ON CONFLICT``). Each backend's
CPU is read (psutil) before and after each of its statements, so PostgreSQL must run on
this machine; a clock tick falls on whichever statement was running, and over hundreds of
statements each side's share is its cost. Arrays are bound by PostgreSQL's CPU, so the floor's
cost over the writer's is about the arrays' target ratio with the host's speed left out.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass

import asyncpg
import psutil

from app.db.ingest import write_records
from app.rules.optouts import DEFAULT_MATCHER
from bench.common import calibration_line, host_line, scratch_database
from bench.db_capacity import (
    ALL_FLOOR_INDEXES,
    build_batches,
    create_floor_tables,
    floor_rows,
    insert_floor_rows,
)


@dataclass
class Side:
    """One side's connection, and its backend's CPU over the statements timed."""

    conn: asyncpg.Connection
    cpu_s: float = 0.0
    rows: int = 0

    def __post_init__(self) -> None:
        self.backend = psutil.Process(self.conn.get_server_pid())

    def _cpu_seconds(self) -> float:
        times = self.backend.cpu_times()
        return float(times.user + times.system)

    async def timed(self, statement: Awaitable[object]) -> None:
        before = self._cpu_seconds()
        await statement
        self.cpu_s += self._cpu_seconds() - before

    def per_row_us(self) -> float:
        return self.cpu_s / self.rows * 1e6


async def compare(dsn: str, size: int, pairs: int) -> tuple[float, float]:
    """PostgreSQL's CPU per row of the writer's statement and of the floor's, in µs."""
    await create_floor_tables(dsn, ALL_FLOOR_INDEXES, events=True)
    writer = Side(await asyncpg.connect(dsn))
    floor = Side(await asyncpg.connect(dsn))
    tag = f"cost-{size}-{time.monotonic_ns()}"
    chunk = max(1, min(pairs, 20_000 // size))  # records made ahead, a chunk at a time
    try:
        for warm in range(3):  # plans cached, both tables past their first pages
            warm_records = build_batches(1, size, f"{tag}-w{warm}")[0]
            await write_records(writer.conn, warm_records, DEFAULT_MATCHER)
            await insert_floor_rows(floor.conn, floor_rows(f"{tag}-f{warm}", size))
        for start in range(0, pairs, chunk):
            records = build_batches(chunk, size, f"{tag}-{start}")
            rows = [floor_rows(f"{tag}-{start}-{n}", size) for n in range(chunk)]
            for n in range(chunk):
                first_writer = (start + n) % 2 == 0
                for side in (writer, floor) if first_writer else (floor, writer):
                    if side is writer:
                        await side.timed(write_records(side.conn, records[n], DEFAULT_MATCHER))
                    else:
                        await side.timed(insert_floor_rows(side.conn, rows[n]))
                    side.rows += size
    finally:
        await writer.conn.close()
        await floor.conn.close()
    return writer.per_row_us(), floor.per_row_us()


def main() -> None:
    parser = argparse.ArgumentParser(description="the writer's statement against the floor's")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 30])
    parser.add_argument(
        "--pairs", type=int, default=0, help="statements of each (default: 300 of 1000 rows)"
    )
    args = parser.parse_args()
    print(host_line(), calibration_line(), sep="\n", flush=True)
    for size in args.sizes:
        pairs = args.pairs or max(300, 300_000 // size // 10)
        with scratch_database("wavy_bench_statement") as url:
            dsn = url.replace("postgresql+asyncpg://", "postgresql://")
            writer_us, floor_us = asyncio.run(compare(dsn, size, pairs))
        print(
            f"batches of {size:4}, {pairs} of each, alternated: PostgreSQL {writer_us:5.1f} us/row "
            f"for the writer's statement, {floor_us:5.1f} for the idempotent floor's: "
            f"the floor costs {floor_us / writer_us:.2f} of the writer",
            flush=True,
        )


if __name__ == "__main__":
    main()
