"""The consistent-hash ring of router workers and the parts of workers.py that need no
fabric: shares, what moves when a worker leaves, heartbeats, the lock and the sequencer."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from i4t_gateway.identity import Identity
from i4t_gateway.replay import ReplayGuard
from i4t_gateway.sharding import HashRing
from i4t_gateway.workers import ClockSequencer, Membership, WorkerLock

KEYS = [Identity.from_seed(i.to_bytes(32, "big")).address.text for i in range(2000)]


def test_two_workers_split_the_gateways_about_evenly() -> None:
    ring = HashRing(["w1", "w2"])
    shares = Counter(ring.owner(key) for key in KEYS)
    assert set(shares) == {"w1", "w2"}
    assert 0.35 < shares["w1"] / len(KEYS) < 0.65


def test_only_the_leaving_workers_keys_move() -> None:
    three, two = HashRing(["w1", "w2", "w3"]), HashRing(["w1", "w2"])
    moved = [key for key in KEYS if three.owner(key) != two.owner(key)]
    assert moved
    assert all(three.owner(key) == "w3" for key in moved)
    assert HashRing([]).owner(KEYS[0]) is None
    assert HashRing(["w2", "w1"]).owner(KEYS[0]) == two.owner(KEYS[0])  # order-free


def test_membership_follows_heartbeats_and_drops_malformed_ones() -> None:
    clock = [100.0]
    members = Membership("w1", dead_after=2.0, monotonic=lambda: clock[0])
    members.on_heartbeat("i4t/r/workers/w2", b"{}", False)
    members.on_heartbeat("i4t/r/workers/../x", b"{}", False)
    members.on_heartbeat("i4t/r/workers/w3", b"x" * 1000, False)
    members.on_heartbeat("i4t/r/workers/w4", b"{}", True)  # retained: not a live worker
    assert members.refresh()
    assert members.ring().members == {"w1", "w2"}
    assert members.dropped == 3
    clock[0] += 2.5
    assert members.refresh()
    assert members.ring().members == {"w1"}
    assert all(members.owns(key) for key in KEYS[:10])


def test_a_worker_lock_is_exclusive_until_released(tmp_path: Path) -> None:
    first, second = WorkerLock(tmp_path), WorkerLock(tmp_path)
    assert first.acquire(wait=False)
    assert not second.acquire(wait=False)
    first.release()
    assert second.acquire(wait=False)
    second.release()


def test_workers_sequence_numbers_stay_in_one_replay_window() -> None:
    """Two workers started far apart sign with one key; a gateway's replay guard takes the acks
    of the one that is left after the other died (a boot-time counter would be refused)."""
    now = [1_700_000_000_000]
    early = ClockSequencer(lambda: now[0])  # started ten minutes before the other
    now[0] += 600_000
    late = ClockSequencer(lambda: now[0])
    guard = ReplayGuard(clock=lambda: now[0])
    source = Identity.from_seed(bytes(32)).address
    for _ in range(5000):  # the later worker acked a lot just now
        guard.accept(source, late.next(), now[0])
    now[0] += 5  # a few milliseconds later it died and the early one took over
    guard.check(source, early.next(), now[0])  # raises if refused
