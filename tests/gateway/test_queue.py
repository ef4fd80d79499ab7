"""The durable queue: group commit, limits, retransmission, persistent de-dup, kill -9."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
import os
from pathlib import Path
import signal
import sqlite3
import subprocess
import sys

import pytest

from i4t_gateway.queue import (
    GroupCommit,
    Outbox,
    PacketQueue,
    PersistentDedup,
    QueuedPacket,
    QueueError,
    QueueFullError,
    QueueLimits,
    RetryPolicy,
    RoundTripTimer,
)
from i4t_gateway.store import open_store

HOP = "router"
WRITER = Path(__file__).with_name("queue_writer.py")


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.ms = 1_763_700_000_000

    def monotonic(self) -> float:
        return self.now

    def clock(self) -> int:
        return self.ms


class Link:
    """A transport that records what was sent and can be taken down."""

    def __init__(self) -> None:
        self.up = True
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> bool:
        if not self.up:
            return False
        self.sent.append(data)
        return True


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    connection = open_store(tmp_path / "gateway.db")
    yield connection
    connection.close()


def mid(i: int) -> bytes:
    return i.to_bytes(16, "big")


async def test_put_is_durable_once_committed_and_batched(tmp_path: Path) -> None:
    commits = GroupCommit(open_store(tmp_path / "g.db"), interval=0.01, max_rows=100)
    queue = PacketQueue(commits)
    futures = [queue.put(HOP, mid(i), b"p%d" % i) for i in range(250)]
    assert commits.commits == 2  # two full batches went at once; 50 rows wait for the timer
    await asyncio.gather(*futures)
    assert commits.commits == 3
    assert commits.rows_committed == 250
    assert queue.depth(HOP) == (250, sum(len(b"p%d" % i) for i in range(250)))
    commits.connection.close()

    reopened = PacketQueue(GroupCommit(open_store(tmp_path / "g.db")))
    assert reopened.depth(HOP)[0] == 250
    rows = reopened.read(HOP, 0, 1000)
    assert [r.message_id for r in rows] == [mid(i) for i in range(250)]
    assert rows[7].data == b"p7"


async def test_a_message_id_queued_twice_is_sent_once(conn: sqlite3.Connection) -> None:
    commits = GroupCommit(conn, interval=0)
    queue = PacketQueue(commits)
    link = Link()
    outbox = Outbox(queue, HOP, link.send)
    await queue.put(HOP, mid(1), b"x")
    await queue.put(HOP, mid(1), b"x")
    await queue.put("other-hop", mid(1), b"x")  # another hop is another queue
    outbox.pump()
    assert link.sent == [b"x"]
    assert outbox.counters.duplicates == 1
    outbox.acked(mid(1))
    await commits.committed()
    assert queue.depth(HOP) == (0, 0)
    assert queue.depth("other-hop") == (1, 1)
    assert conn.execute("SELECT count(*) FROM hop_queue").fetchone()[0] == 1


async def test_full_queue_refuses_new_packets_and_keeps_stored_ones(
    conn: sqlite3.Connection,
) -> None:
    queue = PacketQueue(GroupCommit(conn), limits=QueueLimits(max_rows=3, max_bytes=1000))
    for i in range(3):
        await queue.put(HOP, mid(i), b"x" * 10)
    with pytest.raises(QueueFullError) as refused:
        queue.put(HOP, mid(9), b"x")
    assert refused.value.reason == "queue_full"
    assert queue.refused["queue_full"] == 1
    assert [r.message_id for r in queue.read(HOP, 0, 10)] == [mid(0), mid(1), mid(2)]

    # Bytes count too, and an ack makes room again.
    queue.remove(queue.read(HOP, 0, 1)[0])
    with pytest.raises(QueueFullError):
        queue.put(HOP, mid(10), b"x" * 991)
    await queue.put(HOP, mid(11), b"x" * 980)
    assert queue.depth(HOP) == (3, 1000)
    assert queue.refused["queue_full"] == 2


async def test_a_failed_batch_refuses_its_packets_and_recounts(
    conn: sqlite3.Connection,
) -> None:
    commits = GroupCommit(conn)
    queue = PacketQueue(commits)
    await queue.put(HOP, mid(1), b"kept")
    doomed = queue.put(HOP, mid(2), b"lost")
    commits.write("INSERT INTO no_such_table VALUES (?)", (1,))
    with pytest.raises(QueueError):
        await doomed
    assert commits.failures == 1
    assert queue.depth(HOP) == (1, 4)
    assert [r.message_id for r in queue.read(HOP, 0, 10)] == [mid(1)]


async def test_a_batch_waits_for_a_foreign_transaction_instead_of_joining_it(
    conn: sqlite3.Connection,
) -> None:
    commits = GroupCommit(conn, interval=0)
    queue = PacketQueue(commits)
    conn.execute("BEGIN")
    conn.execute("INSERT INTO meta VALUES ('k', 'v')")
    durable = queue.put(HOP, mid(1), b"x")
    await asyncio.sleep(0.01)
    assert not durable.done()
    conn.execute("ROLLBACK")  # the other module's outcome does not touch our rows
    await asyncio.wait_for(durable, 1)
    assert [r.message_id for r in queue.read(HOP, 0, 10)] == [mid(1)]


def test_retry_schedule_doubles_to_the_cap_with_bounded_jitter() -> None:
    policy = RetryPolicy(first=1.0, maximum=60.0, jitter=0.2)
    for attempts, base in [(1, 1), (2, 2), (3, 4), (6, 32), (7, 60), (50, 60)]:
        delays = [policy.delay(attempts) for _ in range(200)]
        assert all(base * 0.8 <= d <= base * 1.2 for d in delays)
        assert max(delays) - min(delays) > base * 0.1  # jitter is really there


async def test_outbox_window_retransmission_ack_and_link_restore(
    conn: sqlite3.Connection,
) -> None:
    commits = GroupCommit(conn, interval=0)
    queue = PacketQueue(commits)
    t, link = FakeTime(), Link()
    outbox = Outbox(
        queue,
        HOP,
        link.send,
        link_up=lambda: link.up,
        window=4,
        retry=RetryPolicy(first=1.0, maximum=8.0, jitter=0.0),
        clock=t.clock,
        monotonic=t.monotonic,
    )
    await asyncio.gather(*(queue.put(HOP, mid(i), mid(i)) for i in range(10)))

    assert outbox.pump() == 1.0
    assert link.sent == [mid(0), mid(1), mid(2), mid(3)]  # the window, in order
    assert outbox.in_flight == 4

    t.now += 0.5
    assert outbox.acked(mid(1))
    assert not outbox.acked(mid(1))  # a repeated ack is harmless
    outbox.pump()
    assert link.sent[-1] == mid(4)

    t.now += 0.5
    link.sent.clear()
    outbox.pump()
    assert sorted(link.sent) == [mid(0), mid(2), mid(3)]  # due: the first three, again
    assert outbox.counters.retransmitted == 3
    # mid(1)'s ack after 0.5 s was the first round trip: the hop's timeout is now 1.5 s
    # (0.5 + 4 x 0.25, RFC 6298), so mid(4), sent at 0.5 s, is due at 2 s; the others, sent
    # twice now, wait twice that.
    assert outbox.round_trip.learned() == 1.5
    t.now += 1.0
    link.sent.clear()
    outbox.pump()
    assert link.sent == [mid(4)]

    link.up = False
    t.now += 100
    assert outbox.pump() is None
    link.up = True
    link.sent.clear()
    outbox.link_restored()
    outbox.pump()
    assert sorted(link.sent) == [mid(0), mid(2), mid(3), mid(4)]

    for i in (0, 2, 3, 4):
        outbox.acked(mid(i))
    outbox.pump()
    assert outbox.in_flight == 4
    await commits.committed()
    assert queue.depth(HOP)[0] == 5
    assert outbox.counters.acked == 5
    assert outbox.counters.forwarded == 9


def test_round_trip_timer_learns_backs_off_and_recovers() -> None:
    timer = RoundTripTimer(floor=1.0, ceiling=60.0)
    assert timer.timeout() == 1.0  # nothing learned: the floor
    timer.sample(3.0)
    assert timer.learned() == 9.0  # first sample R: srtt R, rttvar R/2, timeout 3R
    for _ in range(40):
        timer.sample(3.0)
    assert timer.learned() == pytest.approx(4.5)  # a steady hop: 1.5 x, the variance faded
    for _ in range(40):
        timer.sample(0.01)
    assert timer.learned() == 1.0  # never below the floor

    timer.expired(now=100.0)
    assert timer.timeout() == 2.0
    timer.expired(now=101.0)  # within the timeout that just doubled: the same outage
    assert timer.timeout() == 2.0
    timer.expired(now=102.0)
    assert timer.timeout() == 4.0
    assert timer.learned() == 1.0  # copies sent again double from the learned value
    for step in range(20):
        timer.expired(now=200.0 + 100 * step)
    assert timer.timeout() == 60.0  # the ceiling
    timer.sample(0.5)
    assert timer.timeout() == 1.0  # a clean round trip ends the backing off


def steady_outbox(
    conn: sqlite3.Connection,
    t: FakeTime,
    link: Link,
    window: int = 64,
    redirect: Callable[[QueuedPacket], bool] | None = None,
) -> tuple[PacketQueue, Outbox]:
    """An outbox on fake time with the default schedule, without jitter."""
    queue = PacketQueue(GroupCommit(conn, interval=0))
    retry = RetryPolicy(first=1.0, maximum=60.0, jitter=0.0)
    outbox = Outbox(
        queue,
        HOP,
        link.send,
        redirect=redirect,
        window=window,
        retry=retry,
        clock=t.clock,
        monotonic=t.monotonic,
    )
    return queue, outbox


async def test_outbox_hands_a_packet_due_again_to_its_redirect(conn: sqlite3.Connection) -> None:
    t, link = FakeTime(), Link()
    taken: list[bytes] = []

    def redirect(packet: QueuedPacket) -> bool:
        if packet.data != b"moved":
            return False
        taken.append(packet.message_id)
        return True

    queue, outbox = steady_outbox(conn, t, link, window=2, redirect=redirect)
    for n, data in enumerate((b"moved", b"stays", b"next")):
        await queue.put(HOP, mid(n), data)
    outbox.pump()
    assert link.sent == [b"moved", b"stays"]
    assert not taken  # a first send is never offered
    t.now += 1.0
    link.sent.clear()
    outbox.pump()
    assert taken == [mid(0)]  # offered when due again, and gone from this hop
    assert link.sent == [b"stays", b"next"]  # its window slot went to the next packet
    assert outbox.counters.redirected == 1
    await queue.commits.committed()
    assert queue.depth(HOP)[0] == 2


async def test_outbox_over_a_slow_hop_stops_sending_everything_twice(
    conn: sqlite3.Connection,
) -> None:
    """A hop that acks 3 s after each first send, against a first timeout of 1 s: the outbox
    learns the round trip, and once it has, nothing is sent twice."""
    t, link = FakeTime(), Link()
    queue, outbox = steady_outbox(conn, t, link, window=4)
    await asyncio.gather(*(queue.put(HOP, mid(i), mid(i)) for i in range(60)))
    first_sent: dict[bytes, float] = {}
    sent_per_packet: dict[bytes, int] = {}
    for _ in range(2000):  # 200 s of 0.1 s steps; bounded
        outbox.pump()
        for data in link.sent:
            first_sent.setdefault(data, t.now)
            sent_per_packet[data] = sent_per_packet.get(data, 0) + 1
        link.sent.clear()
        for data, at in first_sent.items():
            if t.now - at >= 3.0:
                outbox.acked(data)
        if outbox.counters.acked == 60:
            break
        t.now += 0.1
    assert outbox.counters.acked == 60
    assert sent_per_packet[mid(0)] > 1  # the first ones were sent again: nothing was known
    assert all(sent_per_packet[mid(i)] == 1 for i in range(30, 60))
    assert outbox.round_trip.learned() >= 4.5  # 1.5 x the round trip


async def test_outbox_learns_nothing_from_a_copy_sent_twice_nor_backs_off_after_a_reconnect(
    conn: sqlite3.Connection,
) -> None:
    t, link = FakeTime(), Link()
    queue, outbox = steady_outbox(conn, t, link)
    await asyncio.gather(queue.put(HOP, mid(1), b"a"), queue.put(HOP, mid(2), b"b"))
    outbox.pump()
    outbox.link_restored()  # both due at once, and sent again, but no timer ran out
    outbox.pump()
    assert outbox.counters.retransmitted == 2
    assert outbox.round_trip.timeout() == 1.0
    t.now += 5.0
    outbox.acked(mid(1))  # sent twice: which send does this ack answer? (Karn's rule)
    assert outbox.round_trip.srtt is None
    outbox.pump()  # mid(2)'s timer ran out: now the hop backs off
    assert outbox.round_trip.timeout() == 2.0


async def test_outbox_drops_expired_packets_and_counts_them(conn: sqlite3.Connection) -> None:
    t, link = FakeTime(), Link()
    queue = PacketQueue(GroupCommit(conn, interval=0), clock=t.clock)
    outbox = Outbox(queue, HOP, link.send, max_age_ms=10_000, clock=t.clock, monotonic=t.monotonic)
    await queue.put(HOP, mid(1), b"old")
    outbox.pump()
    t.ms += 5_000
    await queue.put(HOP, mid(2), b"young")
    t.ms += 6_000
    t.now += 5
    link.sent.clear()
    outbox.pump()
    assert link.sent == [b"young"]
    assert outbox.counters.expired == 1
    assert outbox.in_flight == 1


async def test_outbox_run_sends_new_packets_as_they_commit(conn: sqlite3.Connection) -> None:
    queue = PacketQueue(GroupCommit(conn, interval=0.001))
    link = Link()
    outbox = Outbox(queue, HOP, link.send)
    task = asyncio.create_task(outbox.run())
    try:
        await queue.put(HOP, mid(1), b"a")
        async with asyncio.timeout(2):
            while link.sent != [b"a"]:  # noqa: ASYNC110 - polling a plain list
                await asyncio.sleep(0.001)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_outbox_task_survives_a_failing_read(
    conn: sqlite3.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    queue = PacketQueue(GroupCommit(conn, interval=0.001))
    link = Link()
    outbox = Outbox(queue, HOP, link.send)
    failing = [sqlite3.OperationalError("disk I/O error")]
    read = queue.read

    def flaky_read(hop: str, after_row: int, limit: int) -> list[QueuedPacket]:
        if failing:
            raise failing.pop()
        return read(hop, after_row, limit)

    queue.read = flaky_read  # type: ignore[method-assign]
    task = asyncio.create_task(outbox.run())
    try:
        await queue.put(HOP, mid(1), b"a")
        async with asyncio.timeout(3):
            while link.sent != [b"a"]:  # noqa: ASYNC110 - polling a plain list
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert "cannot read the queue" in caplog.text


async def test_persistent_dedup_survives_a_restart_and_stays_bounded(tmp_path: Path) -> None:
    t = FakeTime()
    commits = GroupCommit(open_store(tmp_path / "g.db"))
    dedup = PersistentDedup(commits, capacity=8, max_age_ms=60_000, clock=t.clock)
    assert dedup.add(mid(1))
    assert not dedup.add(mid(1))
    for i in range(2, 30):
        dedup.add(mid(i))
    await commits.committed()
    commits.connection.close()

    commits = GroupCommit(open_store(tmp_path / "g.db"))
    stored = commits.connection.execute("SELECT count(*) FROM seen_message").fetchone()[0]
    assert stored <= 8 + 8 // 4 + 1
    restarted = PersistentDedup(commits, capacity=8, max_age_ms=60_000, clock=t.clock)
    assert mid(29) in restarted
    assert mid(22) in restarted
    assert mid(2) not in restarted  # beyond capacity: forgotten
    assert len(restarted) == 8

    t.ms += 61_000
    later = PersistentDedup(commits, capacity=8, max_age_ms=60_000, clock=t.clock)
    assert mid(29) not in later  # older than max_age
    commits.connection.close()


def test_kill_9_loses_no_packet_reported_durable(tmp_path: Path) -> None:
    database = tmp_path / "g.db"
    open_store(database).close()  # migrate first so the writer starts writing at once
    writer = subprocess.Popen(
        [sys.executable, str(WRITER), str(database), HOP],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert writer.stdout is not None
    reported: list[bytes] = []
    try:
        while len(reported) < 3000:
            line = writer.stdout.readline()
            assert line, "the writer died by itself"
            reported.append(bytes.fromhex(line.decode().strip()))
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=10)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert writer.returncode == -signal.SIGKILL
    # Lines it wrote before dying are durable too.
    reported += [bytes.fromhex(line.decode().strip()) for line in writer.stdout if line.strip()]

    async def resume() -> list[bytes]:
        queue = PacketQueue(GroupCommit(open_store(database)))
        link = Link()
        outbox = Outbox(queue, HOP, link.send, window=100_000)
        outbox.pump()
        return link.sent

    resent = asyncio.run(resume())
    stored = {data[:16] for data in resent}
    assert len(resent) == len(stored)
    assert set(reported) <= stored
    assert len(stored) >= 3000
