"""The sending and receiving halves of a node, wired the way docs/PROTOCOL.md §8 orders them.

:class:`Sender` numbers and signs a node's packets; :class:`Receiver` verifies, de-duplicates and
replay-checks what arrives, learns signer keys, and counts every refusal by reason. The gateway
server uses these rather than calling wire.py and replay.py step by step, so the order of checks
(signature before de-duplication, de-duplication before replay) cannot be got wrong.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from .cose import DEFAULT_LIMITS, Limits, PacketError, Reason
from .identity import Address, Identity
from .payloads import Payload
from .replay import Clock, DedupCache, ReplayGuard, Sequencer, wall_clock_ms
from .wire import (
    DEFAULT_HOP_LIMIT,
    Packet,
    Proxy,
    Received,
    ack,
    build,
    open_packet,
    seal_packet,
)

DEFAULT_KEY_CACHE: Final = 65_536


class KeyCache:
    """Public keys learned from verified packets, by address; bounded, least recently used out.

    Poisoning is impossible by construction: an address is the hash of its key, and only keys
    that matched their address are stored.
    """

    def __init__(self, capacity: int = DEFAULT_KEY_CACHE) -> None:
        self._capacity = capacity
        self._keys: OrderedDict[Address, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def get(self, address: Address) -> bytes | None:
        key = self._keys.get(address)
        if key is not None:
            self._keys.move_to_end(address)
        return key

    def learn(self, address: Address, key: bytes) -> None:
        if not address.matches_key(key):
            raise ValueError("the key does not belong to the address")
        self._keys[address] = key
        self._keys.move_to_end(address)
        if len(self._keys) > self._capacity:
            self._keys.popitem(last=False)


class Sender:
    """Builds and seals this node's packets with increasing sequence numbers."""

    def __init__(
        self,
        me: Identity,
        *,
        clock: Clock = wall_clock_ms,
        sequencer: Sequencer | None = None,
        include_key: bool = True,
    ) -> None:
        self.me = me
        self._clock = clock
        self._sequencer = Sequencer(clock) if sequencer is None else sequencer
        self._include_key = include_key

    def packet(
        self,
        dst: Address,
        payload: Payload,
        *,
        hop_max: int = DEFAULT_HOP_LIMIT,
        proxied_local_id: bytes | None = None,
    ) -> Packet:
        """A new packet from this node, or with ``proxied_local_id`` from a thing it speaks for."""
        src, proxy = self.me.address, None
        if proxied_local_id is not None:
            src = Address.for_proxied(self.me.public_bytes, proxied_local_id)
            proxy = Proxy(self.me.address, proxied_local_id)
        return build(
            src,
            dst,
            payload,
            seq=self._sequencer.next(),
            ts_ms=self._clock(),
            hop_max=hop_max,
            proxy=proxy,
        )

    def seal(self, packet: Packet, *, encrypt_to: bytes | None = None) -> bytes:
        return seal_packet(packet, self.me, encrypt_to=encrypt_to, include_key=self._include_key)

    def ack(self, to: Address, message_ids: Sequence[bytes]) -> bytes:
        packet = ack(self.me, to, message_ids, seq=self._sequencer.next(), ts_ms=self._clock())
        return seal_packet(packet, self.me, include_key=self._include_key)


@dataclass(frozen=True, slots=True)
class Inbound:
    """A verified packet and what to do with it.

    ``duplicate``: handled before; do not deliver or forward it, but ack it again if it came
    over a store-and-forward hop. ``for_me``: addressed to this node (or broadcast) and already
    replay-checked. Otherwise it is for someone else: store and forward
    ``received.forwarded()``. Either way call :meth:`Receiver.handled` once it is safely
    delivered or stored, then ack.
    """

    received: Received
    for_me: bool
    duplicate: bool

    @property
    def packet(self) -> Packet:
        return self.received.packet


class Receiver:
    """Verifies, de-duplicates and replay-checks incoming packets; counts refusals by reason."""

    def __init__(
        self,
        me: Identity,
        *,
        keys: KeyCache | None = None,
        dedup: DedupCache | None = None,
        guard: ReplayGuard | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.me = me
        # "is None", not "or": an empty cache has length 0 and is falsy.
        self.keys = KeyCache() if keys is None else keys
        self.dedup = DedupCache() if dedup is None else dedup
        self.guard = ReplayGuard() if guard is None else guard
        self.limits = limits
        self.dropped: Counter[Reason] = Counter()

    def receive(self, data: bytes) -> Inbound:
        """Raises PacketError (counted in ``dropped``) for anything that must be dropped."""
        try:
            return self._receive(data)
        except PacketError as err:
            self.dropped[err.reason] += 1
            raise

    def _receive(self, data: bytes) -> Inbound:
        received = open_packet(data, keys=self.keys.get, recipient=self.me, limits=self.limits)
        packet = received.packet
        self.keys.learn(packet.signer, received.signer_key)
        for_me = packet.dst == self.me.address or packet.dst.is_broadcast
        if packet.message_id in self.dedup:
            self.dropped[Reason.DUPLICATE] += 1
            return Inbound(received, for_me, duplicate=True)
        if for_me:
            self.guard.check(packet.src, packet.seq, packet.ts_ms)
        return Inbound(received, for_me, duplicate=False)

    def handled(self, inbound: Inbound) -> None:
        """Record a packet once it is safely delivered or stored for forwarding.

        Only then: a packet recorded before a crash lost it would have its retransmission
        taken for a duplicate, acked, and never delivered.
        """
        packet = inbound.packet
        self.dedup.add(packet.message_id)
        if inbound.for_me:
            self.guard.accept(packet.src, packet.seq, packet.ts_ms)
