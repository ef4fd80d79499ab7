"""The uplink to a regional router: MQTT 5 over TLS, durable forwarding, hop-by-hop acks.

:class:`Forwarder` owns one broker connection to the router (an :class:`bus.MqttBus` in MQTT 5
mode) and:

* drains the uplink hop of the :class:`queue.PacketQueue` over it (QoS 1 publishes on the up
  topic, an in-flight window, retransmission with backoff until the router's ack packet arrives:
  a PUBACK proves nothing, see docs/QUEUE.md);
* verifies every packet on the down topic with the gateway's :class:`endpoint.Receiver`; acks
  from the router release queued packets; other packets are accepted only if they are for this
  gateway or an address it serves (unasked traffic is dropped and counted), handed to the
  server's ``deliver`` callback, recorded as seen (persistently, with
  :class:`queue.PersistentDedup`), and acked once that record is committed. Duplicates are
  acked again but not delivered again;
* limits, per source address, what the gateway sends up (token buckets);
* counts all of it for the gateway's state topic (:meth:`Forwarder.stats`).

Topics and credentials are in docs/ROUTER.md.
"""

from __future__ import annotations

import asyncio
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
import contextlib
from dataclasses import dataclass, field
import logging
import time
from typing import Final

from .bus import BACKOFF_MAX_SECONDS, MqttBus, TlsFiles
from .cose import PacketError, Reason
from .endpoint import Inbound, Receiver, Sender
from .identity import Address
from .payloads import MAX_ACKS, Ack, PacketType
from .queue import (
    DEFAULT_WINDOW,
    ForwardError,
    Outbox,
    PacketQueue,
    QueueError,
    QueueFullError,
    RetryPolicy,
)
from .settings import BrokerAddress
from .wire import Packet, peek

_LOGGER = logging.getLogger(__name__)

UP_TOPIC_PREFIX: Final = "i4t/r/up"
DOWN_TOPIC_PREFIX: Final = "i4t/r/down"
GATEWAY_CLIENT_ID_PREFIX: Final = "i4t-gw-"
UPLINK_HOP: Final = "uplink"
"""The queue's name for the next hop "the regional router", whichever router is configured."""
DEFAULT_ROUTER_PORT: Final = 8883
DEFAULT_RATE_PER_SECOND: Final = 10.0
DEFAULT_BURST: Final = 50.0
DEFAULT_RATE_SOURCES: Final = 16_384
DEFAULT_INBOUND_BACKLOG: Final = 1024
ACK_QOS: Final = 0
"""Acks go at QoS 0 both ways. An ack is idempotent and a lost one costs only a retransmission
(acked again as a duplicate), so the broker's own acknowledgement buys nothing; and a fabric
that stores every QoS 1 message (NATS's MQTT, through JetStream) does half the work per packet."""
NEVER_ACCEPTED: Final = frozenset({Reason.REPLAYED, Reason.STALE})
"""Refusals of an authentic packet (raised after its signature checked out) that no
retransmission can change; a FUTURE timestamp may become acceptable, so it is not acked."""


def gateway_client_id(gateway_id: str) -> str:
    """The MQTT client id a gateway uses on its router's broker (docs/ROUTER.md)."""
    return f"{GATEWAY_CLIENT_ID_PREFIX}{gateway_id}"


def up_topic(gateway_id: str) -> str:
    """Where a gateway publishes to its router: packets going up and its acks."""
    return f"{UP_TOPIC_PREFIX}/{gateway_id}"


def down_topic(gateway_id: str) -> str:
    """Where a router publishes to one gateway: packets for it, and the router's acks."""
    return f"{DOWN_TOPIC_PREFIX}/{gateway_id}"


@dataclass(frozen=True, slots=True)
class RouterLink:
    """How to reach the regional router and who it is.

    ``router`` is the router's I4T address: acks are accepted only when it signed them, and
    the gateway's acks are addressed to it. The ``token`` travels as the MQTT password, the
    gateway's address text as the user name. ``tls_files`` None trusts the system's CAs.
    """

    host: str
    token: str
    router: Address
    port: int = DEFAULT_ROUTER_PORT
    tls: bool = True
    tls_files: TlsFiles | None = None
    # MQTT 5 (Mosquitto); False speaks 3.1.1, all NATS's MQTT listener knows.
    mqtt5: bool = True

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        token: str,
        router: Address,
        tls_files: TlsFiles | None = None,
        mqtt5: bool = True,
    ) -> RouterLink:
        """``mqtts://host[:port]`` (port 8883 by default); ``mqtt://`` only for a router on
        the same host or in a test. Raises settings.SettingsError for a bad URL."""
        broker = BrokerAddress.from_url(url)
        return cls(
            broker.host,
            token,
            router,
            port=broker.port,
            tls=broker.tls,
            tls_files=tls_files,
            mqtt5=mqtt5,
        )


class RateLimitedError(ForwardError):
    """A source sent more than its rate allows; the packet was not queued."""

    def __init__(self, source: Address) -> None:
        super().__init__("rate_limited", f"{source.short()} is over its rate limit")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket per source address: ``rate`` packets a second on average, bursts of up
    to ``burst``; at most ``max_sources`` buckets are kept (least recently used out)."""

    rate: float = DEFAULT_RATE_PER_SECOND
    burst: float = DEFAULT_BURST
    max_sources: int = DEFAULT_RATE_SOURCES


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class SourceRateLimiter:
    """Token buckets by source address, in bounded memory."""

    def __init__(self, limit: RateLimit, monotonic: Callable[[], float] = time.monotonic) -> None:
        if limit.rate <= 0 or limit.burst < 1 or limit.max_sources < 1:
            raise ValueError("rate must be positive, burst and max_sources at least 1")
        self.limit = limit
        self._monotonic = monotonic
        self._buckets: OrderedDict[Address, _Bucket] = OrderedDict()

    def allow(self, source: Address) -> bool:
        """Take one token from ``source``'s bucket; False if it is empty."""
        now = self._monotonic()
        bucket = self._buckets.get(source)
        if bucket is None:
            # A forgotten source comes back with a full bucket: eviction only ever forgives.
            bucket = self._buckets[source] = _Bucket(self.limit.burst, now)
            if len(self._buckets) > self.limit.max_sources:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(source)
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(self.limit.burst, bucket.tokens + elapsed * self.limit.rate)
            bucket.updated = now
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True


Deliver = Callable[[Inbound], Awaitable[None]]
"""Store or handle a verified packet from upstream. Return once it is safe (then it is acked);
raise PacketError to refuse it for good (acked, counted, never retried), any other exception
to refuse it for now (not acked: the router sends it again)."""

Serves = Callable[[Address], bool]
"""Whether this gateway serves a destination (its things, groups, ...)."""


@dataclass(slots=True)
class LinkCounters:
    link_ups: int = 0
    link_downs: int = 0
    received: int = 0
    delivered: int = 0
    duplicates: int = 0
    acks_received: int = 0
    acks_sent: int = 0


@dataclass(frozen=True, slots=True)
class UplinkStats:
    """What the uplink did since start; ``as_dict()`` is JSON-ready for the state topic.

    ``queued``/``queued_bytes``: waiting in the store for the router's ack (including
    ``in_flight``, sent and not yet acked). ``forwarded``: first sends; ``retransmitted``:
    further sends; ``acked``: released by the router's acks; ``expired``: dropped unacked after
    the queue's max age. ``received``: messages on the down topic; ``delivered``: packets handed
    to the server; ``duplicates``: copies acked again but not delivered. ``refused``: packets
    not accepted for forwarding, by reason (``queue_full``, ``rate_limited``, ``store_failed``:
    the database could not be written); ``dropped``:
    packets from the router dropped, by reason (PROTOCOL §11 reasons, ``unasked``,
    ``ack_not_from_router``, ``ack_not_for_us``, ``inbound_backlog``, ``deliver_failed``,
    ``retained``).
    """

    link_up: bool
    link_ups: int
    link_downs: int
    queued: int
    queued_bytes: int
    in_flight: int
    forwarded: int
    retransmitted: int
    acked: int
    expired: int
    received: int
    delivered: int
    duplicates: int
    acks_received: int
    acks_sent: int
    refused: dict[str, int]
    dropped: dict[str, int]

    def as_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass
class Forwarder:
    """The gateway's uplink: start(), submit() packets, stop(); stats() for the state topic."""

    sender: Sender
    receiver: Receiver
    link: RouterLink
    queue: PacketQueue
    deliver: Deliver
    serves: Serves
    window: int = DEFAULT_WINDOW
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    rate_limit: RateLimit = field(default_factory=RateLimit)
    hop: str = UPLINK_HOP
    inbound_backlog: int = DEFAULT_INBOUND_BACKLOG
    max_backoff: float = BACKOFF_MAX_SECONDS
    counters: LinkCounters = field(default_factory=LinkCounters, init=False)
    refused: Counter[str] = field(default_factory=Counter, init=False)
    dropped: Counter[str] = field(default_factory=Counter, init=False)
    gateway_id: str = field(init=False)
    up: str = field(init=False)
    down: str = field(init=False)
    bus: MqttBus = field(init=False)
    outbox: Outbox = field(init=False)
    _limiter: SourceRateLimiter = field(init=False)
    _inbound: asyncio.Queue[Inbound | bytes] = field(init=False)
    """Packets to deliver, and the message ids of refused ones that are only to be acked."""
    _pending_acks: list[bytes] = field(default_factory=list, init=False)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        me = self.sender.me.address
        self.gateway_id = me.text
        self.up = up_topic(self.gateway_id)
        self.down = down_topic(self.gateway_id)
        broker = BrokerAddress(
            host=self.link.host,
            port=self.link.port,
            tls=self.link.tls,
            username=self.gateway_id,
            password=self.link.token,
        )
        self.bus = MqttBus(
            broker,
            client_id=gateway_client_id(self.gateway_id),
            on_connected=self._link_up,
            on_disconnected=self._link_down,
            mqtt5=self.link.mqtt5,
            tls_files=self.link.tls_files,
            tcp_nodelay=True,
            max_backoff=self.max_backoff,
            max_inflight=self.window,
        )
        self.outbox = Outbox(
            self.queue,
            self.hop,
            self._publish,
            link_up=lambda: self.bus.connected,
            window=self.window,
            retry=self.retry,
        )
        self._limiter = SourceRateLimiter(self.rate_limit)
        self._inbound = asyncio.Queue(self.inbound_backlog)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect in the background and start draining the queue; returns at once."""
        self.bus.subscribe(self.down, self._on_down, qos=1)
        await self.bus.start()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self.outbox.run(), name="uplink-outbox"),
            loop.create_task(self._handle_inbound(), name="uplink-inbound"),
        ]

    async def stop(self) -> None:
        """Disconnect; queued packets stay in the store for the next start."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.bus.stop()

    # -- going up ----------------------------------------------------------------------------

    def submit(self, packet: Packet, data: bytes) -> asyncio.Future[None]:
        """Queue sealed ``data`` (of ``packet``) for the router; resolves once durable.

        Raises :class:`RateLimitedError` or :class:`queue.QueueFullError` (both
        :class:`queue.ForwardError` with a ``reason``) when the packet is refused; nothing is
        stored then, and the caller can tell its sender. The gateway's own packets are not
        rate-limited: the limits are there against things that misbehave, and the gateway's
        own traffic (answers, announcements) is bounded by its code.
        """
        own = packet.src == self.sender.me.address
        if not own and not self._limiter.allow(packet.src):
            self.refused["rate_limited"] += 1
            raise RateLimitedError(packet.src)
        try:
            durable = self.queue.put(self.hop, packet.message_id, data)
        except QueueFullError:
            self.refused["queue_full"] += 1
            raise
        durable.add_done_callback(self._count_unstored)
        return durable

    def _count_unstored(self, durable: asyncio.Future[None]) -> None:
        # The database refused the batch (a full disk): not stored, so not acked to its sender.
        if not durable.cancelled() and durable.exception() is not None:
            self.refused["store_failed"] += 1

    def _publish(self, data: bytes) -> bool:
        return self.bus.publish(self.up, data, qos=1)

    async def _link_up(self) -> None:
        self.counters.link_ups += 1
        self.outbox.link_restored()

    def _link_down(self) -> None:
        self.counters.link_downs += 1

    # -- coming down -------------------------------------------------------------------------

    def _on_down(self, topic: str, payload: bytes, retained: bool) -> None:
        if retained:  # a stale copy kept by the broker, not something the router just sent
            self.dropped["retained"] += 1
            return
        self.counters.received += 1
        try:
            inbound = self.receiver.receive(payload)
        except PacketError as err:
            self.dropped[err.reason] += 1
            if err.reason in NEVER_ACCEPTED:
                self._ack_refused(payload)
            return
        if inbound.packet.type is PacketType.ACK:
            self._on_ack(inbound)
        elif not self._wanted(inbound.packet):
            self.dropped["unasked"] += 1
        else:
            try:
                self._inbound.put_nowait(inbound)
            except asyncio.QueueFull:
                self.dropped["inbound_backlog"] += 1  # not acked: the router sends it again

    def _ack_refused(self, payload: bytes) -> None:
        """Ack an authentic packet that the replay window refuses: it will never be accepted,
        and unacked the router would send it again until it expires (a day)."""
        packet = peek(payload)
        if packet.type is PacketType.ACK:
            return  # acks are not acked, and the router does not resend them
        # When the backlog is full the router sends it again, and it is acked then.
        with contextlib.suppress(asyncio.QueueFull):
            self._inbound.put_nowait(packet.message_id)

    def _wanted(self, packet: Packet) -> bool:
        return packet.dst == self.sender.me.address or self.serves(packet.dst)

    def _on_ack(self, inbound: Inbound) -> None:
        packet = inbound.packet
        if packet.dst != self.sender.me.address:
            self.dropped["ack_not_for_us"] += 1
            return
        if packet.src != self.link.router:
            self.dropped["ack_not_from_router"] += 1
            return
        # Acks are idempotent, so they skip the persistent de-dup; only the replay window
        # learns them.
        self.receiver.guard.accept(packet.src, packet.seq, packet.ts_ms)
        self.counters.acks_received += 1
        assert isinstance(packet.payload, Ack)
        for message_id in packet.payload.message_ids:
            self.outbox.acked(message_id)

    async def _handle_inbound(self) -> None:
        while True:
            inbound = await self._inbound.get()
            if isinstance(inbound, bytes):
                self._pending_acks.append(inbound)  # a refused packet's message id
            else:
                await self._handle_one(inbound)
            if self._inbound.empty() or len(self._pending_acks) >= MAX_ACKS:
                await self._send_acks()

    async def _handle_one(self, inbound: Inbound) -> None:
        message_id = inbound.packet.message_id
        # Checked again here: a retransmission may have arrived while the first copy waited.
        if inbound.duplicate or message_id in self.receiver.dedup:
            self.counters.duplicates += 1
            self._pending_acks.append(message_id)
            return
        try:
            await self.deliver(inbound)
        except PacketError as err:
            self.dropped[err.reason] += 1  # never deliverable: ack so it is not sent again
        except Exception:
            _LOGGER.exception("the server could not take a packet from the router")
            self.dropped["deliver_failed"] += 1
            return
        else:
            self.counters.delivered += 1
        self.receiver.handled(inbound)
        self._pending_acks.append(message_id)

    async def _send_acks(self) -> None:
        message_ids, self._pending_acks = self._pending_acks, []
        if not message_ids:
            return
        try:
            # The seen records (and whatever deliver stored) must be durable before the router
            # may forget the packets.
            await self.queue.commits.committed()
        except QueueError:
            return  # not acked: the router sends them again
        for start in range(0, len(message_ids), MAX_ACKS):
            chunk = message_ids[start : start + MAX_ACKS]
            ack = self.sender.ack(self.link.router, chunk)
            if self.bus.publish(self.up, ack, qos=ACK_QOS):
                self.counters.acks_sent += 1

    # -- state -------------------------------------------------------------------------------

    def stats(self) -> UplinkStats:
        """A snapshot of the counters, for the gateway's state topic."""
        rows, size = self.queue.depth(self.hop)
        sent = self.outbox.counters
        return UplinkStats(
            link_up=self.bus.connected,
            link_ups=self.counters.link_ups,
            link_downs=self.counters.link_downs,
            queued=rows,
            queued_bytes=size,
            in_flight=self.outbox.in_flight,
            forwarded=sent.forwarded,
            retransmitted=sent.retransmitted,
            acked=sent.acked,
            expired=sent.expired,
            received=self.counters.received,
            delivered=self.counters.delivered,
            duplicates=self.counters.duplicates,
            acks_received=self.counters.acks_received,
            acks_sent=self.counters.acks_sent,
            refused=dict(self.refused),
            dropped=dict(self.dropped),
        )
