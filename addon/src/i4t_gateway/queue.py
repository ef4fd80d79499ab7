"""Durable store-and-forward: packets wait in SQLite until the next I4T hop acks them.

A broker's PUBACK proves nothing (amqtt loses acknowledged QoS 1 messages, Mosquitto drops
past ``max_queued_messages``), so a packet leaves :class:`PacketQueue` only when the next hop
sends an ack packet naming its message id (docs/PROTOCOL.md §8.5). docs/QUEUE.md explains the
design; in short:

* :class:`GroupCommit` batches the writes of every caller into one transaction, committed a few
  milliseconds after the first write or as soon as enough rows are waiting. A caller that needs
  durability (before acking the hop it received from) awaits :meth:`GroupCommit.committed`.
* :class:`PacketQueue` keeps the packets of every next hop in one table, bounded in rows and
  bytes per hop. When a hop's queue is full, new packets are refused
  (:class:`QueueFullError`, which the local sender can surface); a stored packet is never
  dropped to make room.
* :class:`Outbox` sends one hop's packets over any transport: an in-flight window, and per
  packet retransmission with exponential backoff and jitter until the ack arrives, starting
  from a timeout learned from the hop's round trips (:class:`RoundTripTimer`).
* :class:`PersistentDedup` is the receiver's de-duplication set (``replay.DedupCache``) backed
  by a table, so a packet retransmitted across a restart is acked again but delivered once.

Everything runs on the asyncio loop thread that owns the connection; nothing here locks.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
import logging
import random
import sqlite3
import time
from typing import Final

from .replay import DEFAULT_DEDUP_CAPACITY, DEFAULT_MAX_AGE_MS, Clock, DedupCache, wall_clock_ms
from .store import WriteErrorLog

_LOGGER = logging.getLogger(__name__)

DEFAULT_COMMIT_INTERVAL: Final = 0.002
"""Seconds a write may wait for company before its transaction commits."""
DEFAULT_COMMIT_ROWS: Final = 256
"""A transaction commits at once when this many rows are waiting."""
DEFAULT_MAX_ROWS: Final = 100_000
DEFAULT_MAX_BYTES: Final = 64 * 1024 * 1024
DEFAULT_WINDOW: Final = 64
DEFAULT_RETRY_FIRST: Final = 1.0
DEFAULT_RETRY_MAX: Final = 60.0
DEFAULT_RETRY_JITTER: Final = 0.2
DEFAULT_QUEUE_MAX_AGE_MS: Final = DEFAULT_MAX_AGE_MS
"""Older packets are dropped (and counted): every end point refuses them as stale anyway."""
_SEEN_PRUNE_SLACK: Final = 4  # prune the seen table when it holds capacity * (1 + 1/4) rows
_BUSY_RETRY_SECONDS: Final = 0.001
_SEND_RETRY_SECONDS: Final = 0.05  # the transport refused a send although the link looked up
_MIN_WAIT_SECONDS: Final = 0.002
_READ_RETRY_SECONDS: Final = 1.0

_INSERT_PACKET: Final = (
    "INSERT INTO hop_queue (hop, message_id, packet, enqueued_ms) VALUES (?, ?, ?, ?)"
)
_DELETE_PACKET: Final = "DELETE FROM hop_queue WHERE id = ?"
_INSERT_SEEN: Final = "INSERT OR REPLACE INTO seen_message (message_id, seen_ms) VALUES (?, ?)"


class QueueError(RuntimeError):
    """The database refused a write; what it carried is not durable."""


class ForwardError(Exception):
    """A packet was not accepted for forwarding; ``reason`` is the counter label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class QueueFullError(ForwardError):
    """The next hop's queue is at its row or byte limit: the sender should retry later."""

    def __init__(self, hop: str) -> None:
        super().__init__("queue_full", f"the queue towards {hop} is full")


# -- group commit ----------------------------------------------------------------------------


CommitListener = Callable[[bool], None]
"""Called on the loop thread after each flush: True if it committed, False if rolled back."""


class GroupCommit:
    """Many writes, one transaction: SQLite pays its per-transaction cost once per batch.

    Writes are buffered in memory and run in one ``BEGIN ... COMMIT`` when the batch is
    ``max_rows`` long or ``interval`` seconds after its first write, whichever comes first. No
    transaction is ever left open across an await, so other modules can share the connection.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        interval: float = DEFAULT_COMMIT_INTERVAL,
        max_rows: int = DEFAULT_COMMIT_ROWS,
    ) -> None:
        if max_rows < 1 or interval < 0:
            raise ValueError("max_rows must be at least 1 and interval not negative")
        self.connection = conn
        self._interval = interval
        self._max_rows = max_rows
        self._runs: list[tuple[str, list[Sequence[object]]]] = []
        self._rows = 0
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._listeners: list[CommitListener] = []
        self.commits = 0
        self.rows_committed = 0
        self.failures = 0
        self._last_batch_failed = False
        self._write_errors = WriteErrorLog(
            _LOGGER, "packets and acks are not stored; the things and routers send them again"
        )

    @property
    def pending(self) -> int:
        """Rows written but not yet committed."""
        return self._rows

    def add_listener(self, listener: CommitListener) -> None:
        self._listeners.append(listener)

    def write(self, sql: str, params: Sequence[object]) -> None:
        """Buffer one statement; it commits with the current batch."""
        if not self._rows:
            self._last_batch_failed = False  # a new batch: what failed before was reported
        runs = self._runs
        if runs and runs[-1][0] == sql:
            runs[-1][1].append(params)
        else:
            runs.append((sql, [params]))
        self._rows += 1
        if self._rows >= self._max_rows:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # used outside a loop (scripts, shutdown): no one to wait for
                self.flush()
                return
            self._timer = loop.call_later(self._interval, self.flush)

    def committed(self) -> asyncio.Future[None]:
        """Resolves once everything written so far is committed (QueueError if it was not)."""
        loop = asyncio.get_running_loop()
        if not self._rows:
            done: asyncio.Future[None] = loop.create_future()
            if self._last_batch_failed:
                # The write just made filled the batch and ran it at once (max_rows), and it
                # failed: resolving this as committed acked packets that were never stored
                # (the full-disk fault run lost one that way under load).
                done.set_exception(QueueError("the batch was rolled back"))
            else:
                done.set_result(None)
            return done
        if self._waiter is None:
            self._waiter = loop.create_future()
        return self._waiter

    def flush(self) -> None:
        """Commit the current batch now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._runs:
            return
        if self.connection.in_transaction:
            # Someone else's transaction is open on the shared connection; joining it would
            # make our rows depend on its outcome. Try again in a moment.
            self._retry_later()
            return
        runs, rows, waiter = self._runs, self._rows, self._waiter
        self._runs, self._rows, self._waiter = [], 0, None
        ok = self._execute(runs)
        self._last_batch_failed = not ok
        if ok:
            self.commits += 1
            self.rows_committed += rows
        for listener in self._listeners:
            listener(ok)
        if waiter is not None and not waiter.done():
            if ok:
                waiter.set_result(None)
            else:
                waiter.set_exception(QueueError("the batch was rolled back"))

    def _execute(self, runs: list[tuple[str, list[Sequence[object]]]]) -> bool:
        conn = self.connection
        try:
            conn.execute("BEGIN")
            for sql, params in runs:
                conn.executemany(sql, params)
            conn.execute("COMMIT")
        except sqlite3.Error as err:
            self.failures += 1
            self._write_errors.failed(err)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return False
        self._write_errors.succeeded()
        return True

    def _retry_later(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise QueueError("a foreign transaction is open on the connection") from None
        self._timer = loop.call_later(_BUSY_RETRY_SECONDS, self.flush)


# -- the queue -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueuedPacket:
    """One stored packet: its row (enqueue order), next hop, message id and sealed bytes."""

    row_id: int
    hop: str
    message_id: bytes
    data: bytes
    enqueued_ms: int


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """Per-hop bounds; past either one new packets are refused (:class:`QueueFullError`)."""

    max_rows: int = DEFAULT_MAX_ROWS
    max_bytes: int = DEFAULT_MAX_BYTES


@dataclass(slots=True)
class _Depth:
    rows: int = 0
    bytes: int = 0


HopListener = Callable[[], None]


class PacketQueue:
    """The packets of every next hop, in enqueue order, until their hop acks them."""

    def __init__(
        self,
        commits: GroupCommit,
        *,
        limits: QueueLimits | None = None,
        clock: Clock = wall_clock_ms,
    ) -> None:
        self._commits = commits
        self._conn = commits.connection
        self.limits = QueueLimits() if limits is None else limits
        self._clock = clock
        self._depth: dict[str, _Depth] = {}
        self._unflushed_hops: set[str] = set()
        self._listeners: dict[str, list[HopListener]] = {}
        self.refused: Counter[str] = Counter()
        self._load_depths()
        commits.add_listener(self._on_flush)

    def _load_depths(self) -> None:
        rows = self._conn.execute(
            "SELECT hop, count(*), coalesce(sum(length(packet)), 0) FROM hop_queue GROUP BY hop"
        )
        self._depth = {str(hop): _Depth(int(n), int(size)) for hop, n, size in rows}

    @property
    def commits(self) -> GroupCommit:
        """The group commit this queue writes through (await its ``committed()`` before acking)."""
        return self._commits

    def on_committed(self, hop: str, listener: HopListener) -> None:
        """Call ``listener`` whenever new packets for ``hop`` became durable (and readable)."""
        self._listeners.setdefault(hop, []).append(listener)

    def put(self, hop: str, message_id: bytes, data: bytes) -> asyncio.Future[None]:
        """Queue a sealed packet for ``hop``; the future resolves once it is durable.

        Raises :class:`QueueFullError` when the hop is at its limit. No lookup checks whether
        the message id is queued already (receivers de-duplicate before they forward, and an
        index on random ids would make every commit several times dearer); a second copy is
        dropped by the outbox when it meets the first.
        """
        depth = self._depth.setdefault(hop, _Depth())
        if depth.rows >= self.limits.max_rows or depth.bytes + len(data) > self.limits.max_bytes:
            self.refused["queue_full"] += 1
            raise QueueFullError(hop)
        depth.rows += 1
        depth.bytes += len(data)
        self._unflushed_hops.add(hop)
        self._commits.write(_INSERT_PACKET, (hop, message_id, data, self._clock()))
        return self._commits.committed()

    def remove(self, packet: QueuedPacket) -> None:
        """Forget a packet its hop acked (or that expired); the delete commits with the batch."""
        depth = self._depth.get(packet.hop)
        if depth is not None:
            depth.rows = max(0, depth.rows - 1)
            depth.bytes = max(0, depth.bytes - len(packet.data))
        self._commits.write(_DELETE_PACKET, (packet.row_id,))

    def read(self, hop: str, after_row: int, limit: int) -> list[QueuedPacket]:
        """Up to ``limit`` durable packets for ``hop`` with a row id above ``after_row``."""
        rows = self._conn.execute(
            "SELECT id, message_id, packet, enqueued_ms FROM hop_queue "
            "WHERE hop = ? AND id > ? ORDER BY id LIMIT ?",
            (hop, after_row, limit),
        )
        return [QueuedPacket(int(r), hop, bytes(m), bytes(p), int(t)) for r, m, p, t in rows]

    def depth(self, hop: str) -> tuple[int, int]:
        """Rows and bytes queued for ``hop`` (including writes not yet committed)."""
        depth = self._depth.get(hop)
        return (0, 0) if depth is None else (depth.rows, depth.bytes)

    def hops(self) -> list[str]:
        return [hop for hop, depth in self._depth.items() if depth.rows]

    def _on_flush(self, committed: bool) -> None:
        hops = self._unflushed_hops
        self._unflushed_hops = set()
        if not committed:
            # Count again from what the file holds. Rolled-back inserts are gone (their callers
            # got QueueError); rolled-back deletes leave acked rows behind, sent again after the
            # next restart and then acked as duplicates.
            self._load_depths()
            return
        for hop in hops:
            for listener in self._listeners.get(hop, ()):
                listener()


# -- retransmission --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff per packet: first, 2*first, 4*first ... capped, each with jitter.

    The defaults give 1, 2, 4, 8, 16, 32, 60, 60 ... seconds, each scaled by a random factor in
    [0.8, 1.2] so that packets sent together do not retransmit together forever.
    """

    first: float = DEFAULT_RETRY_FIRST
    maximum: float = DEFAULT_RETRY_MAX
    jitter: float = DEFAULT_RETRY_JITTER

    def delay(self, attempts: int, first: float | None = None) -> float:
        """Seconds to wait for an ack after the ``attempts``-th send (1 = the first send);
        ``first`` replaces the policy's first delay (a hop's learned timeout)."""
        start = self.first if first is None else first
        base = min(start * (1 << min(max(attempts - 1, 0), 32)), self.maximum)
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)  # noqa: S311 - jitter


_MAX_BACKOFF: Final = 64
_RTT_GAIN: Final = 0.125  # RFC 6298: alpha 1/8, beta 1/4, K 4
_RTTVAR_GAIN: Final = 0.25
_RTTVAR_FACTOR: Final = 4.0
_MIN_MARGIN: Final = 0.5
"""The timeout is at least 1.5 x the smoothed round trip: on a steady hop the variance fades
to nothing, and a timeout at the average would send every slower than average packet twice."""


@dataclass(slots=True)
class RoundTripTimer:
    """A hop's retransmission timeout, learned from its acks (RFC 6298, with Karn's rule).

    A fixed first timeout sends every packet twice over a hop slower than that timeout (a busy
    fabric, a congested uplink), and the copies slow the hop further until it carries little
    else. So the first wait follows the smoothed round trip of packets acked after their only
    send, never below ``floor``; and since a hop on which every packet is sent twice yields no
    such sample, each timeout that fires doubles the wait (once per period) until one arrives.
    """

    floor: float
    ceiling: float
    srtt: float | None = None
    rttvar: float = 0.0
    backoff: int = 1
    _backed_off_at: float = float("-inf")

    def learned(self) -> float:
        """The hop's timeout from its round trips, without backing off."""
        if self.srtt is None:
            return self.floor
        margin = max(_RTTVAR_FACTOR * self.rttvar, _MIN_MARGIN * self.srtt)
        return min(max(self.floor, self.srtt + margin), self.ceiling)

    def timeout(self) -> float:
        """Seconds to wait for the ack of a packet's first send. A copy sent again doubles its
        own wait from :meth:`learned` (``RetryPolicy``); the backing off here is only there
        to let a first send be acked before its timer runs out."""
        return min(self.learned() * self.backoff, self.ceiling)

    def sample(self, seconds: float) -> None:
        """The round trip of a packet acked after one send."""
        if self.srtt is None:
            self.srtt, self.rttvar = seconds, seconds / 2
        else:
            self.rttvar += _RTTVAR_GAIN * (abs(self.srtt - seconds) - self.rttvar)
            self.srtt += _RTT_GAIN * (seconds - self.srtt)
        self.backoff = 1

    def expired(self, now: float) -> None:
        """A packet's wait ran out: back off, at most once per timeout."""
        if now - self._backed_off_at >= self.timeout():
            self._backed_off_at = now
            self.backoff = min(self.backoff * 2, _MAX_BACKOFF)


@dataclass(slots=True)
class _InFlight:
    packet: QueuedPacket
    attempts: int = 0
    due: float = 0.0
    sent_at: float = 0.0
    forced: bool = False  # due now because the link came back, not because its wait ran out


@dataclass(slots=True)
class OutboxCounters:
    forwarded: int = 0
    retransmitted: int = 0
    acked: int = 0
    expired: int = 0
    duplicates: int = 0
    unknown_acks: int = 0
    send_failures: int = 0
    redirected: int = 0


Send = Callable[[bytes], bool]
"""Hands bytes to the transport; False when it cannot take them now (link down)."""
Redirect = Callable[["QueuedPacket"], bool]
"""Offered a packet about to be sent again: True when it was queued for another hop instead
(this hop then forgets it), False to keep trying this hop."""


@dataclass
class Outbox:
    """One next hop's sending side: a window of packets in flight, retransmitted until acked.

    ``send`` is the transport; ``link_up`` tells whether it is worth trying. Packets go out in
    enqueue order, at most ``window`` unacked at a time, so a slow link is not flooded; each is
    sent again after ``retry.delay(attempts)`` without an ack, and at once when the link comes
    back. Run :meth:`run` as a task, or call :meth:`pump` yourself.
    """

    queue: PacketQueue
    hop: str
    send: Send
    link_up: Callable[[], bool] = lambda: True
    redirect: Redirect | None = None
    window: int = DEFAULT_WINDOW
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_age_ms: int = DEFAULT_QUEUE_MAX_AGE_MS
    clock: Clock = wall_clock_ms
    monotonic: Callable[[], float] = time.monotonic
    counters: OutboxCounters = field(default_factory=OutboxCounters, init=False)
    round_trip: RoundTripTimer = field(init=False)
    _in_flight: dict[bytes, _InFlight] = field(default_factory=dict, init=False)
    _cursor: int = field(default=0, init=False)
    _maybe_more: bool = field(default=True, init=False)
    _wake: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError("the window must be at least 1")
        self.round_trip = RoundTripTimer(self.retry.first, self.retry.maximum)
        self.queue.on_committed(self.hop, self._on_new_packets)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def _on_new_packets(self) -> None:
        self._maybe_more = True
        self._wake.set()

    def link_restored(self) -> None:
        """Everything in flight may have been lost with the link: send it again now."""
        now = self.monotonic()
        for entry in self._in_flight.values():
            entry.due = now
            entry.forced = True
        self._wake.set()

    def acked(self, message_id: bytes) -> bool:
        """The hop stored ``message_id``: forget it. False if it was not in flight."""
        entry = self._in_flight.pop(message_id, None)
        if entry is None:
            self.counters.unknown_acks += 1
            return False
        self.counters.acked += 1
        if entry.attempts == 1:  # Karn: the ack of a copy sent twice times neither send
            self.round_trip.sample(self.monotonic() - entry.sent_at)
        self.queue.remove(entry.packet)
        self._wake.set()  # a window slot is free
        return True

    def pump(self) -> float | None:
        """Send what is due now; the seconds until the next packet is due, or None if idle."""
        if not self.link_up():
            return None
        now = self.monotonic()
        if self._send_due(now):
            self._fill_window(now)
        return self._next_due(now)

    def _send_due(self, now: float) -> bool:
        for message_id, entry in list(self._in_flight.items()):
            if entry.due > now:
                continue
            if self._expired(entry.packet):
                del self._in_flight[message_id]
                self._expire(entry.packet)
                continue
            if entry.attempts and self.redirect is not None and self.redirect(entry.packet):
                del self._in_flight[message_id]
                self.counters.redirected += 1
                self.queue.remove(entry.packet)
                self._wake.set()  # its slot in the window is free
                continue
            if entry.attempts and not entry.forced:
                self.round_trip.expired(now)
            if not self._transmit(entry, now):
                return False
        return True

    def _fill_window(self, now: float) -> None:
        while self._maybe_more and len(self._in_flight) < self.window:
            room = self.window - len(self._in_flight)
            batch = self.queue.read(self.hop, self._cursor, room)
            if len(batch) < room:
                self._maybe_more = False
            for packet in batch:
                self._cursor = packet.row_id
                if self._expired(packet):
                    self._expire(packet)
                    continue
                if packet.message_id in self._in_flight:  # queued twice: one copy is enough
                    self.counters.duplicates += 1
                    self.queue.remove(packet)
                    continue
                entry = _InFlight(packet)
                self._in_flight[packet.message_id] = entry
                if not self._transmit(entry, now):
                    return
            if not batch:
                return

    def _transmit(self, entry: _InFlight, now: float) -> bool:
        if not self.send(entry.packet.data):
            self.counters.send_failures += 1
            entry.due = now + _SEND_RETRY_SECONDS
            entry.forced = True  # due again because the transport refused it, not a timeout
            return False
        if entry.attempts:
            self.counters.retransmitted += 1
        else:
            self.counters.forwarded += 1
        entry.attempts += 1
        entry.sent_at = now
        entry.forced = False
        first = self.round_trip.timeout() if entry.attempts == 1 else self.round_trip.learned()
        entry.due = now + self.retry.delay(entry.attempts, first)
        return True

    def _expired(self, packet: QueuedPacket) -> bool:
        return packet.enqueued_ms < self.clock() - self.max_age_ms

    def _expire(self, packet: QueuedPacket) -> None:
        self.counters.expired += 1
        self.queue.remove(packet)

    def _next_due(self, now: float) -> float | None:
        if not self._in_flight:
            return None
        return max(_MIN_WAIT_SECONDS, min(entry.due for entry in self._in_flight.values()) - now)

    async def run(self) -> None:
        """Pump whenever something changed or a retransmission is due; runs until cancelled."""
        while True:
            self._wake.clear()
            try:
                delay: float | None = self.pump()
            except sqlite3.Error:
                # A failing disk must not end the task: the queue resumes when it recovers.
                _LOGGER.exception("cannot read the queue towards %s", self.hop)
                delay = _READ_RETRY_SECONDS
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass


# -- persistent de-duplication ---------------------------------------------------------------


class PersistentDedup(DedupCache):
    """``replay.DedupCache`` whose ids survive a restart in the ``seen_message`` table.

    Lookups stay in memory. Each new id is written through the group commit, so it becomes
    durable in the same transaction as whatever the handler stored for the packet; ack only after
    :meth:`GroupCommit.committed`. The table is pruned to the same capacity and age as the cache.
    """

    def __init__(
        self,
        commits: GroupCommit,
        capacity: int = DEFAULT_DEDUP_CAPACITY,
        *,
        max_age_ms: int = DEFAULT_MAX_AGE_MS,
        clock: Clock = wall_clock_ms,
    ) -> None:
        super().__init__(capacity, max_age_ms=max_age_ms, clock=clock)
        self._commits = commits
        self._stored_capacity = capacity
        self._stored_max_age_ms = max_age_ms
        self._stored_clock = clock
        self._stored = self._load()

    def _load(self) -> int:
        horizon = self._stored_clock() - self._stored_max_age_ms
        rows = self._commits.connection.execute(
            "SELECT message_id, seen_ms FROM seen_message WHERE seen_ms > ? "
            "ORDER BY seen_ms DESC LIMIT ?",
            (horizon, self._stored_capacity),
        ).fetchall()
        # Oldest first, with the times they were seen, so that age expiry carries on unchanged.
        for message_id, seen_ms in reversed(rows):
            self._seen[bytes(message_id)] = int(seen_ms)
        return int(
            self._commits.connection.execute("SELECT count(*) FROM seen_message").fetchone()[0]
        )

    def add(self, message_id: bytes) -> bool:
        new = super().add(message_id)
        if new:
            self._commits.write(_INSERT_SEEN, (message_id, self._stored_clock()))
            self._stored += 1
            if self._stored > self._stored_capacity + self._stored_capacity // _SEEN_PRUNE_SLACK:
                self._prune()
        return new

    def _prune(self) -> None:
        horizon = self._stored_clock() - self._stored_max_age_ms
        self._commits.write("DELETE FROM seen_message WHERE seen_ms <= ?", (horizon,))
        self._commits.write(
            "DELETE FROM seen_message WHERE message_id IN (SELECT message_id FROM seen_message "
            "ORDER BY seen_ms DESC LIMIT -1 OFFSET ?)",
            (self._stored_capacity,),
        )
        self._stored = self._stored_capacity
