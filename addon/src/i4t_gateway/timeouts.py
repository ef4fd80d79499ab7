"""Learned node timeouts and the deadline queue that drives DEAD declarations.

Nothing here reads a clock: every function that needs the time takes ``now`` (seconds, in whatever
clock the caller uses consistently). The rules and numbers are specified in docs/HEALTH.md.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
import heapq
import math
from typing import Any, Protocol

HISTORY_SIZE = 16
"""How many reporting gaps a node remembers (habluetooth learns from 16 adverts, too)."""


@dataclass(frozen=True, slots=True)
class TimeoutPolicy:
    """How a node's timeout is derived from the gaps between its reports.

    ``fixed`` replaces learning altogether (used for per-class overrides).
    """

    factor: float = 3.0
    floor: float = 30.0
    ceiling: float = 86_400.0
    fallback: float = 900.0
    learn_after: int = HISTORY_SIZE
    fixed: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.floor <= self.ceiling:
            raise ValueError("need 0 < floor <= ceiling")
        if self.factor < 1:
            raise ValueError("factor below 1 would declare punctual nodes dead")
        if not 1 <= self.learn_after <= HISTORY_SIZE:
            raise ValueError(f"learn_after must be within 1..{HISTORY_SIZE}")
        if self.fallback <= 0 or (self.fixed is not None and self.fixed <= 0):
            raise ValueError("timeouts must be positive")

    def timeout_for(self, largest_gap: float | None, gaps_seen: int) -> float:
        """The timeout in seconds for a node whose largest remembered gap is ``largest_gap``."""
        if self.fixed is not None:
            return self.fixed
        learned = 0.0 if largest_gap is None else largest_gap * self.factor
        if gaps_seen < self.learn_after:
            # Still learning: never stricter than the fallback, so that a slow node is not
            # declared dead before we have seen how slow it is.
            return min(max(learned, self.fallback), self.ceiling)
        return min(max(learned, self.floor), self.ceiling)


class IntervalLearner:
    """The last HISTORY_SIZE gaps between a node's reports, in a fixed float32 ring."""

    __slots__ = ("_filled", "_gaps", "_largest", "_next", "last_heard")

    def __init__(self) -> None:
        self.last_heard: float | None = None
        # Allocated on the second report only: many nodes are heard once and never again.
        self._gaps: array[float] | None = None
        self._filled = 0
        self._next = 0
        # Kept up to date so that every report does not rescan the ring.
        self._largest: float | None = None

    @property
    def gaps_seen(self) -> int:
        """How many gaps are remembered (at most HISTORY_SIZE)."""
        return self._filled

    def largest_gap(self) -> float | None:
        """The largest remembered gap, or None before the second report."""
        return self._largest

    def gaps(self) -> list[float]:
        """The remembered gaps, oldest first."""
        if self._gaps is None:
            return []
        if self._filled < HISTORY_SIZE:
            return list(self._gaps[: self._filled])
        return list(self._gaps[self._next :]) + list(self._gaps[: self._next])

    def heard(self, now: float, gap_cap: float | None = None) -> None:
        """Record a report at ``now``; ``gap_cap`` bounds the gap (used after an outage)."""
        previous = self.last_heard
        if previous is not None and now > previous:
            gap = now - previous if gap_cap is None else min(now - previous, gap_cap)
            self._record(gap)
        if previous is None or now > previous:
            # A report stamped earlier than the last one (reordered delivery) teaches nothing.
            self.last_heard = now

    def _record(self, gap: float) -> None:
        gaps = self._gaps
        if gaps is None:
            gaps = self._gaps = array("f", bytes(4 * HISTORY_SIZE))
        index = self._next
        overwritten = gaps[index] if self._filled == HISTORY_SIZE else None
        gaps[index] = gap
        stored = gaps[index]  # rounded to float32, as every remembered gap is
        self._next = (index + 1) % HISTORY_SIZE
        self._filled = min(self._filled + 1, HISTORY_SIZE)
        largest = self._largest
        if largest is None or stored >= largest:
            self._largest = stored
        elif overwritten == largest:
            # The largest gap left the window: rescan (16 floats, and only now).
            self._largest = max(gaps)

    def export(self) -> list[float]:
        """The remembered gaps as a plain list (oldest first) for persistence."""
        return self.gaps()

    @classmethod
    def restore(cls, gaps: list[float]) -> IntervalLearner:
        """A learner that remembers ``gaps`` (the newest HISTORY_SIZE of them)."""
        learner = cls()
        for gap in gaps[-HISTORY_SIZE:]:
            if not (math.isfinite(gap) and gap > 0):
                raise ValueError(f"invalid gap {gap!r}")
            learner._record(gap)
        return learner


class Scheduled(Protocol):
    """Something with a deadline that a DeadlineQueue watches.

    ``key`` is unique among the queue's items; ``deadline`` is the true deadline (``math.inf``:
    none); ``queued`` belongs to the queue.
    """

    key: bytes
    deadline: float
    queued: float


class DeadlineQueue[T: Scheduled]:
    """A min-heap of deadlines with lazy deletion and lazy postponement.

    Moving a deadline later (the common case: a node reported again) costs nothing here; the old
    heap entry is found to be early when it surfaces and is pushed again at the true deadline.
    Moving it earlier pushes a second entry and leaves the first to be skipped. So a report is
    O(1) and ``pop_expired`` is O((expired + postponed) log n), where each item is postponed at
    most once per surfacing, not once per report.
    """

    __slots__ = ("_heap", "_live")

    def __init__(self) -> None:
        # Ties between equal deadlines are broken by the item's unique key, compared in C: no
        # counter object per entry, no Python-level comparison.
        self._heap: list[tuple[float, bytes, T]] = []
        self._live = 0

    def __len__(self) -> int:
        """How many items have a pending deadline entry."""
        return self._live

    @property
    def heap_size(self) -> int:
        """Entries in the heap, stale ones included (for tests and diagnostics)."""
        return len(self._heap)

    def schedule(self, item: T) -> None:
        """Make the queue honour ``item.deadline`` after it has been set."""
        if item.deadline >= item.queued:
            return
        if item.queued == math.inf:
            self._live += 1
        item.queued = item.deadline
        heapq.heappush(self._heap, (item.deadline, item.key, item))
        self._compact_if_sparse()

    def cancel(self, item: T) -> None:
        """Forget ``item``'s deadline; its heap entry is skipped when it surfaces."""
        item.deadline = math.inf
        if item.queued != math.inf:
            item.queued = math.inf
            self._live -= 1

    def pop_expired(self, now: float) -> list[T]:
        """Remove and return the items whose deadline is at or before ``now``, earliest first."""
        expired: list[T] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, item = heapq.heappop(heap)
            if when != item.queued:
                continue
            if item.deadline <= when:
                item.queued = math.inf
                self._live -= 1
                expired.append(item)
            else:
                # Postponed: back in at its true deadline, which may still be due this round,
                # so that items come out in deadline order.
                self._requeue(item)
        return expired

    def next_deadline(self) -> float | None:
        """The earliest true deadline, or None; it settles postponed entries on the way."""
        heap = self._heap
        while heap:
            when, _, item = heap[0]
            if when != item.queued:
                heapq.heappop(heap)
            elif item.deadline > when:
                heapq.heappop(heap)
                self._requeue(item)
            else:
                return when
        return None

    def _requeue(self, item: T) -> None:
        if item.deadline == math.inf:
            item.queued = math.inf
            self._live -= 1
            return
        item.queued = item.deadline
        heapq.heappush(self._heap, (item.deadline, item.key, item))

    def _compact_if_sparse(self) -> None:
        # Deadlines moved earlier (and cancellations) leave stale entries behind; rebuild when
        # they exceed half the live ones, so that the heap stays under 1.5 entries per item and
        # each rebuild, O(n), is paid for by the n/2 pushes before it.
        if len(self._heap) > self._live + self._live // 2 + 64:
            self._heap = [entry for entry in self._heap if entry[0] == entry[2].queued]
            heapq.heapify(self._heap)


def export_policy(policy: TimeoutPolicy) -> dict[str, Any]:
    """A TimeoutPolicy as a plain dict."""
    return {
        "factor": policy.factor,
        "floor": policy.floor,
        "ceiling": policy.ceiling,
        "fallback": policy.fallback,
        "learn_after": policy.learn_after,
        "fixed": policy.fixed,
    }


def restore_policy(data: dict[str, Any]) -> TimeoutPolicy:
    """The inverse of export_policy."""
    return TimeoutPolicy(
        factor=float(data["factor"]),
        floor=float(data["floor"]),
        ceiling=float(data["ceiling"]),
        fallback=float(data["fallback"]),
        learn_after=int(data["learn_after"]),
        fixed=None if data.get("fixed") is None else float(data["fixed"]),
    )
