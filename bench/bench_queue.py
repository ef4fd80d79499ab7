"""Queue benchmark: durable enqueue and ack rates of queue.py, batched (group commit) and
unbatched (one transaction per row), next to raw SQLite anchors measured in the same run on the
same kind of file (WAL, synchronous=NORMAL), as ratios; and what synchronous=FULL (an fsync per
commit, which would survive power cuts too) costs with group commit.

    python bench/bench_queue.py            # about 20 s

Anchors: "raw insert+delete" is a row inserted and deleted again with plain sqlite3 calls,
either one transaction per row or 100 rows per transaction (executemany), the best a queue on
this table shape could do. Ours: ``PacketQueue.put`` until durable, then the outbox sends and
the ack deletes it, through ``GroupCommit``. "streaming" is a producer that keeps enqueueing
while earlier batches commit (the gateway under load); "cycle" is a closed loop of bursts of
1000 packets, each enqueued, sent and acked before the next (a packet's whole life).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
import os
from pathlib import Path
import sqlite3
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "addon" / "src"))

from i4t_gateway.queue import GroupCommit, Outbox, PacketQueue, QueueLimits
from i4t_gateway.store import open_store

SECONDS = 0.6
ROUNDS = 3
PACKET = os.urandom(200)
HOP = "uplink"


def raw_rate(database: Path, batch: int) -> float:
    """Rows per second through insert + delete with plain sqlite3, ``batch`` rows a transaction."""
    conn = open_store(database)
    insert = "INSERT INTO hop_queue (hop, message_id, packet, enqueued_ms) VALUES (?, ?, ?, ?)"
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < SECONDS:
        rows = [(HOP, os.urandom(16), PACKET, 0) for _ in range(batch)]
        conn.execute("BEGIN")
        conn.executemany(insert, rows)
        conn.execute("COMMIT")
        ids = conn.execute(
            "SELECT id FROM hop_queue WHERE hop = ? ORDER BY id LIMIT ?", (HOP, batch)
        ).fetchall()
        conn.execute("BEGIN")
        conn.executemany("DELETE FROM hop_queue WHERE id = ?", ids)
        conn.execute("COMMIT")
        done += batch
    elapsed = time.perf_counter() - start
    conn.close()
    return done / elapsed


async def measure(step: Callable[[], Awaitable[int]]) -> float:
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < SECONDS:
        done += await step()
    return done / (time.perf_counter() - start)


class OurQueue:
    """A queue, an outbox with an instant transport, and a helper to ack what was sent."""

    def __init__(self, database: Path, max_rows: int, synchronous: str) -> None:
        conn = open_store(database)
        conn.execute(f"PRAGMA synchronous={synchronous}")
        self.commits = GroupCommit(conn, max_rows=max_rows)
        self.queue = PacketQueue(self.commits, limits=QueueLimits(10**9, 2**40))
        self.sent: list[bytes] = []
        self.outbox = Outbox(self.queue, HOP, self._send, window=1_000_000)

    def _send(self, data: bytes) -> bool:
        self.sent.append(data[:16])
        return True

    async def enqueue(self, count: int) -> int:
        """A burst of ``count`` packets, waiting until all of them are durable."""
        futures = [self.queue.put(HOP, mid, mid + PACKET) for mid in _ids(count)]
        await asyncio.gather(*futures)
        return count

    async def stream(self) -> float:
        """Sustained rate of a producer that keeps going while earlier batches commit."""
        done, last = 0, None
        start = time.perf_counter()
        while time.perf_counter() - start < SECONDS:
            for mid in _ids(100):
                last = self.queue.put(HOP, mid, mid + PACKET)
            done += 100
            await asyncio.sleep(0)  # other work of the loop (sockets) runs between bursts
        if last is not None:
            await last
        return done / (time.perf_counter() - start)

    async def drain(self) -> int:
        self.outbox.pump()
        sent, self.sent = self.sent, []
        for message_id in sent:
            self.outbox.acked(message_id)
        await self.commits.committed()
        return len(sent)

    async def cycle(self, count: int) -> int:
        await self.enqueue(count)
        return await self.drain()

    def close(self) -> None:
        self.commits.flush()
        self.commits.connection.close()


def _ids(count: int) -> list[bytes]:
    return [os.urandom(16) for _ in range(count)]


async def ours(
    database: Path, max_rows: int, chunk: int, synchronous: str = "NORMAL"
) -> tuple[float, float, float]:
    """Streaming enqueue, ack and whole-cycle (bursts of ``chunk``) rates, rows/s."""
    q = OurQueue(database, max_rows, synchronous)
    enqueue = await q.stream()
    start = time.perf_counter()
    acked = await q.drain()
    ack = acked / (time.perf_counter() - start)
    cycle = await measure(lambda: q.cycle(chunk))
    q.close()
    return enqueue, ack, cycle


Rates = tuple[float, float, float]


def one_round(folder: Path, n: int) -> tuple[float, float, Rates, Rates, Rates]:
    """Every measurement once, on fresh files, so that each sees the same machine load."""
    return (
        raw_rate(folder / f"raw1-{n}.db", 1),
        raw_rate(folder / f"raw100-{n}.db", 100),
        asyncio.run(ours(folder / f"batched-{n}.db", max_rows=256, chunk=1000)),
        asyncio.run(ours(folder / f"unbatched-{n}.db", max_rows=1, chunk=100)),
        asyncio.run(ours(folder / f"full-{n}.db", 256, 1000, synchronous="FULL")),
    )


def median_rates(runs: list[Rates]) -> Rates:
    enqueue, ack, cycle = (statistics.median(column) for column in zip(*runs, strict=True))
    return enqueue, ack, cycle


def main() -> None:
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent) as tmp:
        rounds = [one_round(Path(tmp), n) for n in range(ROUNDS)]
    raw_one = statistics.median(r[0] for r in rounds)
    raw_hundred = statistics.median(r[1] for r in rounds)
    batched, unbatched, full = (median_rates([r[i] for r in rounds]) for i in (2, 3, 4))
    print(
        f"sqlite {sqlite3.sqlite_version}, packets of {len(PACKET) + 16} bytes, WAL, NORMAL; "
        f"medians of {ROUNDS} interleaved rounds"
    )
    print(f"{'anchor: raw insert+delete, 1 row/transaction':52s} {raw_one:>10,.0f} rows/s")
    print(f"{'anchor: raw insert+delete, 100 rows/transaction':52s} {raw_hundred:>10,.0f} rows/s")
    rows = [
        ("ours, group commit (256 rows / 2 ms)", batched),
        ("ours, unbatched (1 row / transaction)", unbatched),
        ("ours, group commit, synchronous=FULL (fsync per batch)", full),
    ]
    for label, (enqueue, ack, cycle) in rows:
        print(f"{label}:")
        print(f"  {'enqueue, streaming, until durable':50s} {enqueue:>10,.0f} rows/s")
        print(f"  {'ack (send + delete, committed)':50s} {ack:>10,.0f} rows/s")
        print(
            f"  {'cycle (burst enqueue + send + ack, durable)':50s} {cycle:>10,.0f} rows/s"
            f"   {cycle / raw_hundred:5.2f} x raw batched, {cycle / raw_one:5.2f} x raw unbatched"
        )
    print(f"group commit speed-up, streaming:   {batched[0] / unbatched[0]:.1f} x")
    print(f"group commit speed-up on the cycle: {batched[2] / unbatched[2]:.1f} x")
    print(f"raw batching speed-up:              {raw_hundred / raw_one:.1f} x")
    print("(a burst cycle waits for two commit intervals: it measures latency as much as cost)")


if __name__ == "__main__":
    main()
