"""LAN peers: gateways on one network exchange packets directly, without the regional router.

How they find each other is lan_discovery.py (zeroconf). The link between two gateways is plain
TCP carrying sealed I4T packets, each after a 4-byte big-endian length (docs/PROTOCOL.md §16, LAN
peers). The LAN is not trusted, so the link adds no trust of its own: every frame is a signed
packet, checked like any other.

Each gateway runs one listener and, for every peer it found, one outgoing connection:

* on its outgoing connection it first sends its signed ANNOUNCE (addressed to that peer) of the
  addresses it serves, then the packets queued for that peer (the queue hop ``peer:<gateway>``,
  drained by a :class:`queue.Outbox`: in-flight window, retransmission until the peer's signed
  ack), and renews the announce every announce interval and whenever what it serves changes;
* on its listener it binds each accepted connection to the gateway whose announce came first
  (signed by that gateway itself, not as a proxy), records that gateway's claims in a
  :class:`registry.RegionTable` (no claim on this gateway's own addresses or its router, none on
  an address another peer holds), delivers the packets for what it serves once they are durable
  in the de-duplication record, and acks them on the same connection.

Routing order (the server's bridges): local things, then the peer that announced the
destination, then the regional router. A peer that is gone (zeroconf says so, or its link is
down for longer than the grace period) gets no new packets, and what was queued for it moves to
the router's queue, so nothing waits on a gateway that left.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
import contextlib
from dataclasses import dataclass
import logging
import struct
import time
from typing import Final

from .cose import DEFAULT_LIMITS, PacketError
from .endpoint import Inbound, Receiver, Sender
from .identity import Address
from .lan_discovery import PeerEndpoint
from .links import Deliver, Serves
from .payloads import MAX_ACKS, MAX_ANNOUNCED, Ack, Announce, PacketType
from .queue import GroupCommit, Outbox, PacketQueue, QueueError, RetryPolicy
from .registry import RegionTable
from .wire import Packet

_LOGGER = logging.getLogger(__name__)

PEER_HOP_PREFIX: Final = "peer:"
FRAME_HEADER: Final = struct.Struct(">I")
MAX_FRAME: Final = DEFAULT_LIMITS.max_size
CONNECT_TIMEOUT_SECONDS: Final = 5.0
RECONNECT_FIRST_SECONDS: Final = 0.5
RECONNECT_MAX_SECONDS: Final = 10.0
MAX_INBOUND_CONNECTIONS: Final = 64
ANNOUNCE_LIFETIMES: Final = 3
"""An announce holds three intervals (to the router and to peers): one lost changes nothing."""
MOVE_BATCH: Final = 256
DEFAULT_GRACE_SECONDS: Final = 60.0
PEER_RETRY: Final = RetryPolicy(first=0.5, maximum=10.0)
"""A peer is one LAN hop away: retransmit sooner, and give up waiting sooner, than uplink."""


class FrameError(Exception):
    """The stream is not in the peer framing (too long a frame): the connection is closed."""


def peer_hop(gateway: Address) -> str:
    """The queue's name for the next hop "this LAN peer"."""
    return PEER_HOP_PREFIX + gateway.text


def frame(data: bytes) -> bytes:
    return FRAME_HEADER.pack(len(data)) + data


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    """The next frame's bytes; IncompleteReadError at the end of the stream."""
    (size,) = FRAME_HEADER.unpack(await reader.readexactly(FRAME_HEADER.size))
    if size > MAX_FRAME:
        raise FrameError(f"frame of {size} bytes")
    return await reader.readexactly(size)


def announce_packets(
    sender: Sender, to: Address, served: frozenset[Address], lifetime: float
) -> list[Packet]:
    """ANNOUNCE packets from ``sender`` to ``to`` of ``served``, in order and in chunks of
    MAX_ANNOUNCED, valid for ``lifetime`` seconds from now."""
    expires_ms = int((time.time() + lifetime) * 1000)
    ordered = sorted(served, key=lambda address: address.bytes)
    return [
        sender.packet(to, Announce(tuple(ordered[start : start + MAX_ANNOUNCED]), expires_ms))
        for start in range(0, len(ordered), MAX_ANNOUNCED)
    ]


Reroute = Callable[[bytes, bytes], bool]
"""Queue (message id, sealed data) for the regional router; False when there is none."""


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """``port`` 0: any free port (zeroconf tells the peers which). ``grace`` seconds a peer may
    be unreachable before its queue moves to the router."""

    host: str = "0.0.0.0"  # noqa: S104 - the peers are on the LAN, not on this host
    port: int = 0
    grace: float = DEFAULT_GRACE_SECONDS
    announce_seconds: float = 300.0
    retry: RetryPolicy = PEER_RETRY
    allowed: frozenset[Address] = frozenset()
    """The gateways this one peers with; empty: any gateway on the LAN. Every packet is
    checked either way; the list decides whose claims of addresses count, which matters on a
    LAN shared with others (a house of flats, a hackerspace): whoever peers may claim a thing
    nobody on the LAN holds yet and draw its traffic away from the router."""


class _PeerLink:
    """The outgoing side towards one peer: connect, announce, drain its queue, take its acks."""

    def __init__(
        self, network: PeerNetwork, endpoint: PeerEndpoint, *, given_up: bool = False
    ) -> None:
        self.network = network
        self.endpoint = endpoint
        self.hop = peer_hop(endpoint.gateway)
        self.outbox = Outbox(
            network.queue,
            self.hop,
            self._send,
            link_up=lambda: self._writer is not None,
            retry=network.config.retry,
        )
        self._writer: asyncio.StreamWriter | None = None
        self.down_since: float | None = time.monotonic()
        # Unreachable past the grace once already: routed to again only once it connects.
        self.given_up = given_up
        self.announced: frozenset[Address] = frozenset()
        self.announced_at = float("-inf")
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def connected(self) -> bool:
        return self._writer is not None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        name = self.endpoint.gateway.short()
        self._tasks = [
            loop.create_task(self._connect_forever(), name=f"peer-link-{name}"),
            loop.create_task(self.outbox.run(), name=f"peer-outbox-{name}"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._close()

    def _send(self, data: bytes) -> bool:
        if self._writer is None or self._writer.is_closing():
            return False
        self._writer.write(frame(data))
        return True

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self.down_since = time.monotonic()
            self.network.counters["disconnects"] += 1

    async def _connect_forever(self) -> None:
        delay = RECONNECT_FIRST_SECONDS
        while True:
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                    reader, writer = await asyncio.open_connection(
                        self.endpoint.host, self.endpoint.port
                    )
            except (OSError, TimeoutError) as err:
                _LOGGER.debug("peer %s unreachable: %s", self.endpoint.gateway.short(), err)
            else:
                delay = RECONNECT_FIRST_SECONDS
                await self._run_connection(reader, writer)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    async def _run_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._writer = writer
        self.down_since = None
        self.given_up = False
        self.network.counters["connects"] += 1
        self.announce(self.network.served())  # first: the peer binds the connection to it
        self.outbox.link_restored()
        try:
            while True:
                self._on_frame(await read_frame(reader))
        except (OSError, asyncio.IncompleteReadError, FrameError):
            pass
        finally:
            self._close()

    def announce(self, served: frozenset[Address]) -> None:
        """Signed announces of ``served`` (chunked), addressed to this peer."""
        network = self.network
        lifetime = ANNOUNCE_LIFETIMES * network.config.announce_seconds
        for packet in announce_packets(network.sender, self.endpoint.gateway, served, lifetime):
            if not self._send(network.sender.seal(packet)):
                return
        self.announced, self.announced_at = served, time.monotonic()

    def _on_frame(self, data: bytes) -> None:
        """Only acks come back on an outgoing connection, and only the peer's own."""
        network = self.network
        inbound = network.verify(data)
        if inbound is None:
            return
        packet = inbound.packet
        if packet.type is not PacketType.ACK or not inbound.for_me:
            network.dropped["not_an_ack"] += 1
            return
        if packet.src != self.endpoint.gateway:
            network.dropped["ack_not_from_peer"] += 1
            return
        network.receiver.guard.accept(packet.src, packet.seq, packet.ts_ms)
        network.counters["acks_received"] += 1
        assert isinstance(packet.payload, Ack)
        for message_id in packet.payload.message_ids:
            self.outbox.acked(message_id)


class PeerNetwork:
    """This gateway's LAN peering: the listener, the links to found peers, their claims."""

    def __init__(
        self,
        *,
        sender: Sender,
        receiver: Receiver,
        queue: PacketQueue,
        deliver: Deliver,
        serves: Serves,
        served: Callable[[], frozenset[Address]],
        protected: Callable[[Address], bool],
        reroute: Reroute,
        config: PeerConfig,
    ) -> None:
        self.sender = sender
        self.receiver = receiver
        self.queue = queue
        self.deliver = deliver
        self.serves = serves
        self.served = served
        self.protected = protected
        self.reroute = reroute
        self.config = config
        self.table = RegionTable(queue.commits)
        self.counters: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self._links: dict[Address, _PeerLink] = {}
        self._server: asyncio.Server | None = None
        self.port: int | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def me(self) -> Address:
        return self.sender.me.address

    @property
    def commits(self) -> GroupCommit:
        return self.queue.commits

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> int:
        """Listen for peers; returns the port (for zeroconf)."""
        self._server = await asyncio.start_server(
            self._accept, self.config.host, self.config.port, limit=MAX_FRAME + FRAME_HEADER.size
        )
        port: int = self._server.sockets[0].getsockname()[1]
        self.port = port
        return port

    async def stop(self) -> None:
        for link in list(self._links.values()):
            await link.stop()
        self._links.clear()
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # -- peers coming and going --------------------------------------------------------------

    def allows(self, gateway: Address) -> bool:
        return not self.config.allowed or gateway in self.config.allowed

    def found(self, endpoint: PeerEndpoint) -> None:
        """zeroconf resolved a peer: link to it (again, or at its new place)."""
        if not self.allows(endpoint.gateway):
            self.dropped["peer_not_allowed"] += 1
            return
        link = self._links.get(endpoint.gateway)
        if link is not None and link.endpoint == endpoint:
            return
        if link is not None:
            link.endpoint = endpoint  # the next connection attempt goes to the new place
            return
        link = self._links[endpoint.gateway] = _PeerLink(self, endpoint)
        link.start()
        _LOGGER.info("LAN peer %s found", endpoint.gateway.short())

    async def lost(self, gateway: Address) -> None:
        """zeroconf says the peer left: what waits for it goes to the router."""
        link = self._links.pop(gateway, None)
        if link is not None:
            await self._fall_back(link)

    async def tick(self) -> None:
        """Renew announces, and give up on peers unreachable for longer than the grace."""
        served = self.served()
        now = time.monotonic()
        for link in list(self._links.values()):
            if link.connected and (
                served != link.announced or now - link.announced_at >= self.config.announce_seconds
            ):
                link.announce(served)
            if (
                not link.given_up
                and link.down_since is not None
                and now - link.down_since > self.config.grace
            ):
                await self._give_up(link)

    async def _give_up(self, link: _PeerLink) -> None:
        """Its queue goes to the router; a fresh link (a fresh outbox: the old one's in-flight
        rows are gone) keeps trying, and the peer is routed to again once it answers."""
        await self._fall_back(link)
        revived = self._links[link.endpoint.gateway] = _PeerLink(self, link.endpoint, given_up=True)
        revived.start()

    async def _fall_back(self, link: _PeerLink) -> None:
        await link.stop()
        moved = self._move_to_router(link.hop)
        self.counters["fell_back"] += moved
        _LOGGER.info("LAN peer %s gone; %d queued packets go to the router", link.hop, moved)

    def _move_to_router(self, hop: str) -> int:
        """Requeue the peer's packets for the router; without a router they stay, for the
        peer's return. Inserted before deleted (one batch): a crash in between duplicates,
        and receivers de-duplicate; it never loses."""
        moved, cursor = 0, 0
        while batch := self.queue.read(hop, cursor, MOVE_BATCH):
            for packet in batch:
                cursor = packet.row_id
                if not self.reroute(packet.message_id, packet.data):
                    return moved
                self.queue.remove(packet)
                moved += 1
        return moved

    # -- routing -----------------------------------------------------------------------------

    def route(self, packet: Packet, data: bytes) -> asyncio.Future[None] | None:
        """Queue ``data`` for the peer that announced the destination; None if none did (or
        it is gone). Raises queue.QueueFullError when that peer's queue is full."""
        holder = self.table.gateway_for(packet.dst)
        if holder is None:
            return None
        link = self._links.get(Address.from_text(holder))
        if link is None or link.given_up:
            return None
        self.counters["forwarded"] += 1
        return self.queue.put(link.hop, packet.message_id, data)

    # -- the listener ------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self._connections) >= MAX_INBOUND_CONNECTIONS or task is None:
            self.dropped["too_many_connections"] += 1
            writer.close()
            return
        self._connections.add(task)
        try:
            await _Session(self, writer).run(reader)
        except (OSError, asyncio.IncompleteReadError, FrameError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    def verify(self, data: bytes) -> Inbound | None:
        """The verified packet in a frame, or None (counted by the decoder's reason)."""
        try:
            return self.receiver.receive(data)
        except PacketError as err:
            self.dropped[str(err.reason)] += 1
            return None

    def on_announce(self, bound: Address | None, inbound: Inbound) -> Address | None:
        """A peer's announce on its connection; returns the gateway the connection is bound to."""
        packet = inbound.packet
        assert isinstance(packet.payload, Announce)
        if packet.proxy is not None or packet.src == self.me:
            self.dropped["announce_not_own"] += 1
            return bound
        if bound is not None and packet.src != bound:
            self.dropped["announce_other_peer"] += 1
            return bound
        if not self.allows(packet.src):
            self.dropped["peer_not_allowed"] += 1  # its connection stays unbound: taken nothing
            return bound
        result = self.table.announce(
            packet.src,
            packet.payload.addresses,
            packet.payload.expires_ms,
            protected=self.protected,
        )
        self.counters["announces"] += 1
        for reason, count in result.refused.items():
            self.dropped[f"announce_{reason}"] += count
        self.receiver.handled(inbound)
        return packet.src

    # -- state -------------------------------------------------------------------------------

    @property
    def peer_count(self) -> int:
        """Peers this gateway has a working link to now."""
        return sum(1 for link in self._links.values() if link.connected)

    def stats(self) -> dict[str, object]:
        """JSON-ready, for the gateway's state topic."""
        peers = []
        for gateway, link in sorted(self._links.items(), key=lambda item: item[0].text):
            rows, _ = self.queue.depth(link.hop)
            peers.append(
                {
                    "gateway": gateway.text,
                    "connected": link.connected,
                    "addresses": self.table.count(gateway.text),
                    "queued": rows,
                    "in_flight": link.outbox.in_flight,
                }
            )
        return {
            "peers": peers,
            "counters": dict(sorted(self.counters.items())),
            "dropped": dict(sorted(self.dropped.items())),
        }


class _Session:
    """One accepted connection: bound to a peer by its first announce, then its packets."""

    def __init__(self, network: PeerNetwork, writer: asyncio.StreamWriter) -> None:
        self.network = network
        self.writer = writer
        self.peer: Address | None = None
        self._acks: list[bytes] = []

    async def run(self, reader: asyncio.StreamReader) -> None:
        while True:
            await self._take(await read_frame(reader))
            await self._send_acks()

    async def _take(self, data: bytes) -> None:
        network = self.network
        network.counters["received"] += 1
        inbound = network.verify(data)
        if inbound is None:
            return
        packet = inbound.packet
        if packet.type is PacketType.ANNOUNCE and inbound.for_me and not inbound.duplicate:
            self.peer = network.on_announce(self.peer, inbound)
        elif self.peer is None:
            network.dropped["before_announce"] += 1
        elif packet.type is PacketType.ACK and inbound.for_me:
            network.dropped["unexpected_ack"] += 1  # hop acks come on the outgoing connection
        elif inbound.duplicate or packet.message_id in network.receiver.dedup:
            network.counters["duplicates"] += 1
            self._acks.append(packet.message_id)
        elif not network.serves(packet.dst):
            network.dropped["unasked"] += 1  # not acked: the peer's queue keeps it
        else:
            await self._deliver(inbound)

    async def _deliver(self, inbound: Inbound) -> None:
        network = self.network
        try:
            await network.deliver(inbound)
        except PacketError as err:
            network.dropped[str(err.reason)] += 1  # never deliverable: acked, not sent again
        except Exception:
            _LOGGER.exception("a packet from a LAN peer could not be delivered")
            network.dropped["deliver_failed"] += 1
            return
        else:
            network.counters["delivered"] += 1
        network.receiver.handled(inbound)
        self._acks.append(inbound.packet.message_id)

    async def _send_acks(self) -> None:
        message_ids, self._acks = self._acks, []
        if not message_ids or self.peer is None:
            return
        try:
            await self.network.commits.committed()  # the seen records first, then the acks
        except QueueError:
            return  # not acked: the peer sends them again
        for start in range(0, len(message_ids), MAX_ACKS):
            ack = self.network.sender.ack(self.peer, message_ids[start : start + MAX_ACKS])
            self.writer.write(frame(ack))
            self.network.counters["acks_sent"] += 1
        with contextlib.suppress(OSError):
            await self.writer.drain()
