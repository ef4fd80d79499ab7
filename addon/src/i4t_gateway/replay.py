"""Replay protection and de-duplication, in bounded memory (docs/PROTOCOL.md §8).

Two different questions, two objects:

* :class:`DedupCache` - "have I already handled this message id?" Relays and stores ask it so
  that a packet that arrives twice (two paths, a retransmission after a lost ack) is forwarded and
  delivered once. A duplicate is still acked, or the sender would retransmit it forever.
* :class:`ReplayGuard` - "is this packet fresh from its source?" End points ask it after the
  signature verified. Its timestamp must lie in [now - max_age, now + max_future] and its
  sequence number must be new within a per-source sliding window (the IPsec anti-replay window,
  RFC 4303 §3.4.3), so packets may arrive out of order, and late (store-and-forward holds them
  through outages, hence the long default max_age), but never twice.

Memory is bounded: both tables are LRU-ordered dicts with a capacity. Evicting a source's window
would let its old packets in again, so the guard remembers the newest timestamp any evicted
source had used (the *floor*) and refuses unknown sources at or below it. Sources that were idle
longer than max_age raise the floor only to a point that freshness refuses anyway, so the floor
costs nothing until more than ``max_sources`` sources are active within max_age.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
import time
from typing import Final

from .cose import PacketError, Reason
from .identity import Address

Clock = Callable[[], int]
"""Returns the current Unix time in milliseconds."""

DEFAULT_WINDOW: Final = 1024
DEFAULT_MAX_SOURCES: Final = 16_384
DEFAULT_MAX_AGE_MS: Final = 24 * 3600 * 1000
DEFAULT_MAX_FUTURE_MS: Final = 60 * 1000
DEFAULT_DEDUP_CAPACITY: Final = 65_536
SEQ_BOOT_SHIFT: Final = 20


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class DedupCache:
    """Recently seen message ids: a bounded LRU set with an optional age limit, O(1) per call."""

    def __init__(
        self,
        capacity: int = DEFAULT_DEDUP_CAPACITY,
        *,
        max_age_ms: int | None = None,
        clock: Clock = wall_clock_ms,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._max_age_ms = max_age_ms
        self._clock = clock
        self._seen: OrderedDict[bytes, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, message_id: object) -> bool:
        self._expire()
        return message_id in self._seen

    def add(self, message_id: bytes) -> bool:
        """Record ``message_id``; True if it is new, False if it is a duplicate."""
        now = self._clock()
        self._expire(now)
        if message_id in self._seen:
            self._seen.move_to_end(message_id)
            self._seen[message_id] = now
            return False
        self._seen[message_id] = now
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        return True

    def check(self, message_id: bytes) -> None:
        """Record ``message_id``; PacketError(DUPLICATE) if it was already there."""
        if not self.add(message_id):
            raise PacketError(Reason.DUPLICATE)

    def _expire(self, now: int | None = None) -> None:
        if self._max_age_ms is None:
            return
        horizon = (self._clock() if now is None else now) - self._max_age_ms
        # Entries are kept in last-seen order, so the expired ones are all at the front.
        while self._seen:
            oldest, seen_at = next(iter(self._seen.items()))
            if seen_at > horizon:
                return
            del self._seen[oldest]


@dataclass(slots=True)
class _Window:
    highest: int
    bitmap: int  # bit i set: sequence number (highest - i) was accepted
    newest_ts: int


class ReplayGuard:
    """Per-source freshness and sequence-window check with bounded memory."""

    def __init__(
        self,
        *,
        window: int = DEFAULT_WINDOW,
        max_sources: int = DEFAULT_MAX_SOURCES,
        max_age_ms: int = DEFAULT_MAX_AGE_MS,
        max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
        clock: Clock = wall_clock_ms,
    ) -> None:
        if window < 1 or max_sources < 1:
            raise ValueError("window and max_sources must be at least 1")
        self._window = window
        self._mask = (1 << window) - 1
        self._max_sources = max_sources
        self._max_age_ms = max_age_ms
        self._max_future_ms = max_future_ms
        self._clock = clock
        self._sources: OrderedDict[Address, _Window] = OrderedDict()
        self.floor_ts = -1

    def __len__(self) -> int:
        return len(self._sources)

    def check(self, source: Address, seq: int, ts_ms: int) -> None:
        """Raise PacketError (STALE, FUTURE, REPLAYED) if the packet must be refused; no change."""
        now = self._clock()
        if ts_ms < now - self._max_age_ms:
            raise PacketError(Reason.STALE, "timestamp older than max_age")
        if ts_ms > now + self._max_future_ms:
            raise PacketError(Reason.FUTURE, "timestamp ahead of the clock")
        state = self._sources.get(source)
        if state is None:
            if ts_ms <= self.floor_ts:
                raise PacketError(Reason.STALE, "source forgotten under load; timestamp too old")
            return
        if seq > state.highest:
            return
        offset = state.highest - seq
        if offset >= self._window:
            raise PacketError(Reason.STALE, "sequence number below the window")
        if state.bitmap >> offset & 1:
            raise PacketError(Reason.REPLAYED)

    def accept(self, source: Address, seq: int, ts_ms: int) -> None:
        """Record a packet that passed :meth:`check` (call once it is safely handled)."""
        state = self._sources.get(source)
        if state is None:
            self._sources[source] = _Window(seq, 1, ts_ms)
            self._evict()
            return
        self._sources.move_to_end(source)
        state.newest_ts = max(state.newest_ts, ts_ms)
        if seq > state.highest:
            shift = seq - state.highest
            state.bitmap = 1 if shift >= self._window else (state.bitmap << shift | 1) & self._mask
            state.highest = seq
        elif state.highest - seq < self._window:
            state.bitmap |= 1 << (state.highest - seq)

    def check_and_accept(self, source: Address, seq: int, ts_ms: int) -> None:
        self.check(source, seq, ts_ms)
        self.accept(source, seq, ts_ms)

    def _evict(self) -> None:
        while len(self._sources) > self._max_sources:
            _, evicted = self._sources.popitem(last=False)
            self.floor_ts = max(self.floor_ts, evicted.newest_ts)


class Sequencer:
    """Sequence numbers for one source that keep increasing across restarts without storage.

    Each start begins at (Unix seconds << 20), above anything sent before unless the previous run
    averaged more than a million packets a second; then it counts up by one, so consecutive
    packets are neighbours in the receiver's window. Pass ``last`` if a counter was persisted.
    """

    def __init__(self, clock: Clock = wall_clock_ms, *, last: int = -1) -> None:
        self._next = max(last + 1, (clock() // 1000) << SEQ_BOOT_SHIFT)

    def next(self) -> int:
        value = self._next
        self._next += 1
        return value
