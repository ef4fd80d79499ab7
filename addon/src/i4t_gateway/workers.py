"""Several router workers serving one region (docs/ROUTER.md, scale-out).

The workers share the region's identity (``router.key``: gateways know one router address),
its operator key and token book (``router.db`` in the region's folder), and the fabric: every
worker subscribes to every gateway's up topic. Each keeps its own durable state (queues, seen
ids, region table) in ``workers/<id>/router.db`` and takes only the packets of the gateways the
consistent-hash ring (sharding.py) gives it. Here:

* :class:`Membership`: who is alive, by heartbeats on ``i4t/r/workers/<id>`` over the fabric;
* :class:`WorkerLock`: an exclusive ``flock`` on the worker's folder for its whole life, which
  the kernel releases when the process dies however it dies (SIGKILL included): a peer that can
  take the lock knows the worker is gone, not just silent;
* :func:`adopt_queues`: a survivor moves a dead worker's undelivered packets into its own queues,
  which is what makes a kill lose nothing the dead worker had acked;
* :class:`ClockSequencer`: sequence numbers that follow the clock, so that acks signed with the
  shared key by different workers stay inside the gateways' replay windows.
"""

from __future__ import annotations

from collections.abc import Callable
import fcntl
import json
import logging
import os
from pathlib import Path
import re
import sqlite3
import time
from typing import Final

from .queue import PacketQueue, QueueFullError
from .replay import SEQ_BOOT_SHIFT, Clock, Sequencer, wall_clock_ms
from .sharding import HashRing
from .tokens import ROUTER_DATABASE_FILE

_LOGGER = logging.getLogger(__name__)

WORKERS_DIR: Final = "workers"
LOCK_FILE: Final = "worker.lock"
HEARTBEAT_TOPIC_PREFIX: Final = "i4t/r/workers"
HEARTBEAT_FILTER: Final = f"{HEARTBEAT_TOPIC_PREFIX}/+"
HEARTBEAT_SECONDS: Final = 0.5
DEAD_AFTER_SECONDS: Final = 3.0
"""A worker not heard for this long is out of the ring: six heartbeats, so that a few lost or
late under load (a busy worker's loop, a fabric catching up) change nothing."""
ADOPT_BATCH: Final = 1000
_WORKER_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")


def valid_worker_id(worker_id: str) -> bool:
    """A folder name and a topic level: letters, digits, ``-`` and ``_``, at most 32."""
    return _WORKER_ID.fullmatch(worker_id) is not None


def worker_dir(region_dir: Path, worker_id: str) -> Path:
    return region_dir / WORKERS_DIR / worker_id


class ClockSequencer(Sequencer):
    """Sequence numbers at least the clock in ``Sequencer``'s scale (ms << 20 / 1000).

    Workers share the router's key but not a counter. A plain Sequencer starts at its process's
    boot second and counts up, so two workers started minutes apart sign acks a gateway's window
    (1024 numbers) cannot hold together, and the later worker's acks would make the earlier one's
    stale for good. Following the clock (about a thousand numbers per millisecond to count
    through) keeps every worker's numbers near the same moving point; a failover therefore
    continues above what the dead worker used.
    """

    def __init__(self, clock: Clock = wall_clock_ms) -> None:
        super().__init__(clock)
        self._clock = clock

    def next(self) -> int:
        floor = (self._clock() << SEQ_BOOT_SHIFT) // 1000
        value = max(super().next(), floor)
        self._next = value + 1
        return value


class WorkerLock:
    """An exclusive lock on a worker's folder, held while the worker runs."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, *, wait: bool) -> bool:
        """Take the lock; without ``wait``, False at once when someone holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor releases the flock
            self._fd = None


class Membership:
    """The live workers, from their heartbeats; ``ring()`` changes only when they change."""

    def __init__(
        self,
        worker_id: str,
        *,
        dead_after: float = DEAD_AFTER_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.worker_id = worker_id
        self.dead_after = dead_after
        self._monotonic = monotonic
        self._heard: dict[str, float] = {}
        self._ring = HashRing([worker_id])
        self.dropped = 0

    def heartbeat(self) -> bytes:
        return json.dumps({"worker": self.worker_id, "at": time.time()}).encode()

    def on_heartbeat(self, topic: str, payload: bytes, retained: bool) -> None:
        worker_id = topic.removeprefix(HEARTBEAT_TOPIC_PREFIX + "/")
        if retained or not valid_worker_id(worker_id) or len(payload) > 256:
            self.dropped += 1  # malformed: counted, never trusted
            return
        self._heard[worker_id] = self._monotonic()

    def refresh(self) -> bool:
        """Recompute the members; True when the ring changed."""
        now = self._monotonic()
        alive = {w for w, heard in self._heard.items() if now - heard <= self.dead_after}
        alive.add(self.worker_id)
        if alive == self._ring.members:
            return False
        joined, left = alive - self._ring.members, self._ring.members - alive
        _LOGGER.info("router workers now %s (joined %s, left %s)", sorted(alive), joined, left)
        self._ring = HashRing(alive)
        return True

    def ring(self) -> HashRing:
        return self._ring

    def owns(self, key: str) -> bool:
        return self._ring.owner(key) == self.worker_id


def peer_ids(region_dir: Path, me: str) -> list[str]:
    """The other workers that ever ran in this region (each has a folder)."""
    folder = region_dir / WORKERS_DIR
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name != me)


async def adopt_queues(region_dir: Path, peer: str, queue: PacketQueue, hop_prefix: str) -> int:
    """Move a dead peer's queued packets for hops ``hop_prefix*`` into ``queue``.

    Only under the peer's lock (taken without waiting: a live peer keeps its queues). Rows are
    copied, then deleted from the peer's file only after our copies are committed: a crash in
    between leaves a packet in both, which costs a duplicate (the destination gateway drops it
    by message id), never a loss. Returns how many packets were taken; 0 if the peer lives.
    """
    lock = WorkerLock(worker_dir(region_dir, peer))
    if not lock.acquire(wait=False):
        return 0
    try:
        path = worker_dir(region_dir, peer) / ROUTER_DATABASE_FILE
        if not path.exists():
            return 0
        return await _move_rows(path, queue, hop_prefix)
    finally:
        lock.release()


async def _move_rows(path: Path, queue: PacketQueue, hop_prefix: str) -> int:
    conn = sqlite3.connect(path, timeout=10.0)
    moved = 0
    try:
        while True:
            rows = conn.execute(
                "SELECT id, hop, message_id, packet FROM hop_queue WHERE hop >= ? AND hop < ? "
                "ORDER BY id LIMIT ?",
                (hop_prefix, hop_prefix + "\uffff", ADOPT_BATCH),
            ).fetchall()
            if not rows:
                return moved
            taken = []
            for row_id, hop, message_id, data in rows:
                try:
                    queue.put(str(hop), bytes(message_id), bytes(data))
                except QueueFullError:
                    break  # the rest stays with the peer's file for the next round
                taken.append(int(row_id))
            await queue.commits.committed()  # ours durable (else QueueError) before theirs go
            conn.executemany("DELETE FROM hop_queue WHERE id = ?", [(i,) for i in taken])
            conn.commit()
            moved += len(taken)
            if len(taken) < len(rows):
                return moved
    finally:
        conn.close()
