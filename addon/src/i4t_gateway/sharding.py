"""A consistent-hash ring over a region's router workers (docs/ROUTER.md, scale-out).

Each worker id is placed on a 64-bit ring at ``VIRTUAL_NODES`` points (SHA-256 of the id and
the point's number); a key (a gateway's address text) belongs to the first point at or after
its own hash, going round. Virtual nodes even out the shares (with 64 points per worker, two
workers split within a few per cent of half each), and when a worker joins or leaves only the
keys of its own points move: the others keep their owner, so a failover disturbs nobody else.
Every worker computes the same ring from the same member list, with no coordination.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
import hashlib
from typing import Final

VIRTUAL_NODES: Final = 64


def ring_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


class HashRing:
    """Who owns a key among ``members``; immutable (build a new ring when members change)."""

    def __init__(self, members: Iterable[str], virtual_nodes: int = VIRTUAL_NODES) -> None:
        if virtual_nodes < 1:
            raise ValueError("a worker needs at least one point on the ring")
        self.members: frozenset[str] = frozenset(members)
        points = sorted(
            (ring_hash(f"{member}#{index}"), member)
            for member in self.members
            for index in range(virtual_nodes)
        )
        self._hashes = [point for point, _ in points]
        self._owners = [member for _, member in points]

    def __bool__(self) -> bool:
        return bool(self.members)

    def owner(self, key: str) -> str | None:
        """The member owning ``key``; None on an empty ring."""
        if not self._hashes:
            return None
        index = bisect.bisect_left(self._hashes, ring_hash(key))
        return self._owners[index % len(self._owners)]
