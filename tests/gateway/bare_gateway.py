"""A gateway reduced to its real durable uplink (links.Forwarder) and a thing behind it.

For router tests that need many packets through a region quickly and a precise count of what
reached the destination thing: the gateway announces itself and its thing to the router, its
thing's packets go up through the Forwarder, and what comes down for the thing is recorded.
The Forwarder's persistent de-duplication (by message id) is the gateway's own: what it
delivers to the thing is what a real gateway would.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
import time

from i4t_gateway.endpoint import Inbound, Receiver, Sender
from i4t_gateway.identity import Address, Identity
from i4t_gateway.links import Forwarder, RateLimit, RouterLink
from i4t_gateway.payloads import Announce, Data, Reading
from i4t_gateway.queue import GroupCommit, PacketQueue, PersistentDedup, RetryPolicy
from i4t_gateway.store import open_store

ANNOUNCE_SECONDS = 3600


@dataclass
class BareGateway:
    """One gateway and one native thing behind it, on a router broker at ``port``."""

    data_dir: Path
    port: int
    token: str
    router: Address
    mqtt5: bool = True
    identity: Identity = field(default_factory=Identity.generate)
    thing: Identity = field(default_factory=Identity.generate)
    delivered: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.commits = GroupCommit(open_store(self.data_dir / "gateway.db"))
        self.sender = Sender(self.identity)
        self.thing_sender = Sender(self.thing)
        self.forwarder = Forwarder(
            sender=self.sender,
            receiver=Receiver(self.identity, dedup=PersistentDedup(self.commits)),
            link=RouterLink(
                "127.0.0.1", self.token, self.router, port=self.port, tls=False, mqtt5=self.mqtt5
            ),
            queue=PacketQueue(self.commits),
            deliver=self._deliver,
            serves=lambda address: address == self.thing.address,
            # Capped lower than a real gateway's (1 s doubling to 60 s) to keep tests short, but
            # backing off: a retransmission storm would swamp a slow fabric.
            retry=RetryPolicy(first=1.0, maximum=16.0),
            rate_limit=RateLimit(rate=1e6, burst=1e6),
            max_backoff=0.5,
        )

    @property
    def address(self) -> Address:
        return self.identity.address

    async def _deliver(self, inbound: Inbound) -> None:
        if inbound.packet.dst == self.thing.address:
            self.delivered.append(inbound.packet.message_id)

    async def start(self) -> None:
        await self.forwarder.start()
        expires_ms = int((time.time() + ANNOUNCE_SECONDS) * 1000)
        announce = self.sender.packet(
            self.router, Announce((self.address, self.thing.address), expires_ms)
        )
        await self.forwarder.submit(announce, self.sender.seal(announce))

    async def send(self, to: Address, count: int) -> list[bytes]:
        """``count`` packets from the thing to ``to``, queued durably; their message ids."""
        packets = [self.thing_sender.packet(to, Data((Reading("n", n),))) for n in range(count)]
        # Submitted together, as a gateway's things send: the store commits them in batches.
        await asyncio.gather(
            *(self.forwarder.submit(packet, self.thing_sender.seal(packet)) for packet in packets)
        )
        return [packet.message_id for packet in packets]

    def queued(self) -> int:
        return self.forwarder.stats().queued

    async def stop(self) -> None:
        await self.forwarder.stop()
        self.commits.flush()
        self.commits.connection.close()
