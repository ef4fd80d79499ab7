"""Replay windows and de-duplication, with an injected clock."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st
import pytest

from i4t_gateway.cose import PacketError, Reason
from i4t_gateway.endpoint import KeyCache, Receiver, Sender
from i4t_gateway.identity import Address, Identity
from i4t_gateway.payloads import Ack, Announce, Data, Reading, StatusRequest
from i4t_gateway.replay import DedupCache, ReplayGuard, Sequencer

NOW = 1_763_700_000_000
A = Address.from_bytes(b"\x01" + bytes(16))
B = Address.from_bytes(b"\x01" + bytes(15) + b"\x01")


class Clock:
    def __init__(self, now: int = NOW) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def reason_of(guard: ReplayGuard, source: Address, seq: int, ts: int) -> Reason | None:
    try:
        guard.check_and_accept(source, seq, ts)
    except PacketError as err:
        return err.reason
    return None


def test_dedup_detects_duplicates_and_is_bounded() -> None:
    cache = DedupCache(capacity=3, clock=Clock())
    assert cache.add(b"a")
    assert not cache.add(b"a")
    for mid in (b"b", b"c", b"d"):
        assert cache.add(mid)
    assert len(cache) == 3
    assert b"a" not in cache  # evicted: the least recently seen
    with pytest.raises(PacketError) as caught:
        cache.check(b"d")
    assert caught.value.reason is Reason.DUPLICATE


def test_dedup_hit_refreshes_recency() -> None:
    cache = DedupCache(capacity=2, clock=Clock())
    cache.add(b"a")
    cache.add(b"b")
    cache.add(b"a")  # a duplicate keeps its id alive
    cache.add(b"c")
    assert b"a" in cache
    assert b"b" not in cache


def test_dedup_forgets_by_age() -> None:
    clock = Clock()
    cache = DedupCache(capacity=100, max_age_ms=1000, clock=clock)
    cache.add(b"a")
    clock.now += 500
    cache.add(b"b")
    clock.now += 600
    assert b"a" not in cache
    assert b"b" in cache
    assert cache.add(b"a")


def test_dedup_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        DedupCache(capacity=0)


def test_window_accepts_out_of_order_once() -> None:
    guard = ReplayGuard(window=8, clock=Clock())
    for seq in (5, 3, 7, 4, 6):
        assert reason_of(guard, A, seq, NOW) is None
    for seq in (3, 4, 5, 6, 7):
        assert reason_of(guard, A, seq, NOW) is Reason.REPLAYED
    assert reason_of(guard, A, 1, NOW) is None  # still inside the window (7 - 1 < 8)
    assert reason_of(guard, A, 20, NOW) is None
    assert reason_of(guard, A, 12, NOW) is Reason.STALE  # fell below the window
    assert reason_of(guard, A, 13, NOW) is None
    assert reason_of(guard, B, 3, NOW) is None  # windows are per source


def test_timestamps_outside_the_freshness_window_are_refused() -> None:
    clock = Clock()
    guard = ReplayGuard(max_age_ms=10_000, max_future_ms=1_000, clock=clock)
    assert reason_of(guard, A, 1, NOW - 10_001) is Reason.STALE
    assert reason_of(guard, A, 1, NOW + 1_001) is Reason.FUTURE
    assert reason_of(guard, A, 1, NOW - 10_000) is None
    assert reason_of(guard, A, 2, NOW + 1_000) is None


def test_check_does_not_record() -> None:
    guard = ReplayGuard(clock=Clock())
    guard.check(A, 1, NOW)
    guard.check(A, 1, NOW)
    guard.accept(A, 1, NOW)
    with pytest.raises(PacketError):
        guard.check(A, 1, NOW)


def test_eviction_raises_the_floor_so_old_packets_stay_out() -> None:
    clock = Clock()
    guard = ReplayGuard(max_sources=1, clock=clock)
    guard.check_and_accept(A, 10, NOW - 5)
    guard.check_and_accept(B, 1, NOW)  # A is evicted; its newest timestamp becomes the floor
    assert len(guard) == 1
    assert guard.floor_ts == NOW - 5
    assert reason_of(guard, A, 10, NOW - 5) is Reason.STALE  # the replay stays out
    assert reason_of(guard, A, 11, NOW - 4) is None  # new packets from A are fine


def test_evicting_idle_sources_costs_nothing() -> None:
    clock = Clock()
    guard = ReplayGuard(max_sources=1, max_age_ms=1000, clock=clock)
    guard.check_and_accept(A, 1, NOW)
    clock.now += 5000
    guard.check_and_accept(B, 1, clock.now)
    # The floor is below what freshness refuses anyway.
    assert guard.floor_ts < clock.now - 1000
    assert reason_of(guard, A, 1, clock.now - 10) is None


def test_sequencer_survives_restarts_without_storage() -> None:
    clock = Clock()
    first = Sequencer(clock)
    sent = [first.next() for _ in range(1000)]
    assert sent == list(range(sent[0], sent[0] + 1000))
    clock.now += 1000
    assert Sequencer(clock).next() > sent[-1]
    assert Sequencer(clock, last=2**62).next() == 2**62 + 1


@settings(max_examples=100)
@given(st.lists(st.integers(0, 100), max_size=60), st.integers(1, 40))
def test_window_never_accepts_a_sequence_number_twice(seqs: list[int], window: int) -> None:
    guard = ReplayGuard(window=window, clock=Clock())
    accepted: set[int] = set()
    highest = -1
    for seq in seqs:
        outcome = reason_of(guard, A, seq, NOW)
        if outcome is None:
            assert seq not in accepted
            accepted.add(seq)
            highest = max(highest, seq)
        elif seq not in accepted:
            # A new number is refused only if it is below the window.
            assert outcome is Reason.STALE
            assert highest - seq >= window


@settings(max_examples=100)
@given(st.lists(st.binary(min_size=1, max_size=2), max_size=100), st.integers(1, 10))
def test_dedup_matches_a_model(ids: list[bytes], capacity: int) -> None:
    cache = DedupCache(capacity=capacity, clock=Clock())
    model: list[bytes] = []
    for mid in ids:
        new = mid not in model
        assert cache.add(mid) is new
        if not new:
            model.remove(mid)
        model.append(mid)
        del model[:-capacity]
        assert len(cache) == len(model)


# --- the receive pipeline (endpoint.py) -------------------------------------------------------


def _nodes(clock: Clock) -> tuple[Sender, Receiver, Identity]:
    alice = Identity.from_seed(bytes(range(32)))
    bob = Identity.from_seed(bytes(range(32, 64)))
    receiver = Receiver(bob, dedup=DedupCache(clock=clock), guard=ReplayGuard(clock=clock))
    return Sender(alice, clock=clock), receiver, bob


def test_receiver_delivers_once_and_flags_duplicates_for_re_ack() -> None:
    clock = Clock()
    sender, receiver, bob = _nodes(clock)
    raw = sender.seal(sender.packet(bob.address, StatusRequest()))
    first = receiver.receive(raw)
    assert first.for_me
    assert not first.duplicate
    receiver.handled(first)
    again = receiver.receive(raw)
    assert again.duplicate
    assert receiver.dropped[Reason.DUPLICATE] == 1


def test_unhandled_packets_are_not_taken_for_duplicates() -> None:
    """A crash between receive and handled must not turn the retransmission into a drop."""
    clock = Clock()
    sender, receiver, bob = _nodes(clock)
    raw = sender.seal(sender.packet(bob.address, StatusRequest()))
    receiver.receive(raw)
    assert not receiver.receive(raw).duplicate


def test_receiver_refuses_replays_of_forgotten_message_ids() -> None:
    clock = Clock()
    sender, receiver, bob = _nodes(clock)
    receiver.dedup = DedupCache(capacity=1, clock=clock)
    old = sender.seal(sender.packet(bob.address, StatusRequest()))
    receiver.handled(receiver.receive(old))
    receiver.handled(receiver.receive(sender.seal(sender.packet(bob.address, StatusRequest()))))
    with pytest.raises(PacketError) as caught:
        receiver.receive(old)  # its id fell out of the de-dup cache; the window still has it
    assert caught.value.reason is Reason.REPLAYED
    assert receiver.dropped[Reason.REPLAYED] == 1


def test_receiver_learns_keys_so_later_packets_may_omit_them() -> None:
    clock = Clock()
    sender, receiver, bob = _nodes(clock)
    quiet = Sender(sender.me, clock=clock, include_key=False)
    with pytest.raises(PacketError):
        receiver.receive(quiet.seal(quiet.packet(bob.address, StatusRequest())))
    receiver.receive(
        sender.seal(sender.packet(Address.BROADCAST, Announce((sender.me.address,), NOW)))
    )
    assert receiver.keys.get(sender.me.address) == sender.me.public_bytes
    assert receiver.receive(quiet.seal(quiet.packet(bob.address, StatusRequest()))).for_me
    assert receiver.dropped[Reason.UNKNOWN_KEY] == 1


def test_receiver_forwards_what_is_not_for_it_without_replay_state() -> None:
    clock = Clock()
    sender, receiver, _ = _nodes(clock)
    other = Address.from_bytes(b"\x01" + bytes(range(16)))
    inbound = receiver.receive(sender.seal(sender.packet(other, StatusRequest(), hop_max=2)))
    assert not inbound.for_me
    receiver.handled(inbound)
    assert len(receiver.guard) == 0
    assert receiver.receive(inbound.received.forwarded()).duplicate


def test_sender_speaks_for_proxied_things_and_acks() -> None:
    clock = Clock()
    sender, receiver, bob = _nodes(clock)
    packet = sender.packet(bob.address, Data((Reading("t", 1),)), proxied_local_id=b"ble:01")
    inbound = receiver.receive(sender.seal(packet, encrypt_to=bob.public_bytes))
    assert inbound.packet == packet
    assert inbound.packet.src == Address.for_proxied(sender.me.public_bytes, b"ble:01")
    acked = receiver.receive(sender.ack(bob.address, [packet.message_id]))
    assert acked.packet.payload == Ack((packet.message_id,))


def test_key_cache_is_bounded_and_only_takes_matching_keys() -> None:
    cache = KeyCache(capacity=1)
    a, b = Identity.generate(), Identity.generate()
    cache.learn(a.address, a.public_bytes)
    cache.learn(b.address, b.public_bytes)
    assert cache.get(a.address) is None
    assert cache.get(b.address) == b.public_bytes
    with pytest.raises(ValueError, match="does not belong"):
        cache.learn(a.address, b.public_bytes)
