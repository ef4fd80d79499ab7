"""The regional router: the gateway package in router role (``i4t-gateway --role router``).

It serves the gateways connected to its broker (docs/ROUTER.md):

* every message on ``i4t/r/up/<gateway>`` is admitted (the gateway holds a valid token,
  tokens.py), held to the token's rates (usage.py), verified (endpoint.Receiver) and checked
  against the topic: the gateway must be the packet's signer (itself, or the proxy of its
  thing), or the packet's source (a native thing, signing itself) must not belong to another
  gateway of the region;
* packets for the router itself are announces (registry.RegionTable), name records, name queries
  and the answers to queries it forwarded up (registry.NameRegistry); acks release what it sent;
* anything else is routed: an address announced in the region goes down to its gateway on
  ``i4t/r/down/<gateway>`` through a durable queue (queue.Outbox: retransmitted until that
  gateway acks), anything else goes up to the parent router through links.Forwarder, the same
  durable uplink a gateway uses; what the parent sends down is routed the same way;
* a packet is acked to the hop it came from once it is stored (the seen record and the queued
  copy committed together), duplicates are acked again and not forwarded again, a packet is
  never sent back to the hop it came from, and the hop limit falls by one per router.

Any tier is this same software: a router's parent is just another router that admitted it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
import contextlib
from dataclasses import dataclass, field
import functools
import json
import logging
import sqlite3
import time
from typing import Any, Final

from . import __version__
from .bus import MqttBus, TlsFiles
from .cose import PacketError, Reason
from .dynsec import DynsecAdmin
from .endpoint import Inbound, Receiver, Sender
from .identity import Address, AddressError, load_or_create_identity
from .links import ACK_QOS, UP_TOPIC_PREFIX, Forwarder, RateLimit, RouterLink, down_topic
from .names import is_valid_name
from .payloads import (
    MAX_ACKS,
    MAX_ANNOUNCED,
    Ack,
    Announce,
    NameAnswer,
    NameQuery,
    NameRecordPayload,
    PacketType,
    Payload,
)
from .provisioning import ADMIN_CLIENT_PREFIX, BrokerProvisioning, admin_address
from .queue import (
    ForwardError,
    GroupCommit,
    Outbox,
    PacketQueue,
    PersistentDedup,
    QueuedPacket,
    QueueError,
    QueueFullError,
)
from .registry import NameRefusedError, NameRegistry, RegionTable
from .settings import Settings
from .store import get_meta, set_meta
from .tokens import OPERATOR_KEY_FILE, Admission, TokenBook, open_router_store
from .usage import Accounting, CostModel
from .wire import Packet, peek
from .workers import (
    DEAD_AFTER_SECONDS,
    HEARTBEAT_FILTER,
    HEARTBEAT_SECONDS,
    HEARTBEAT_TOPIC_PREFIX,
    ClockSequencer,
    Membership,
    WorkerLock,
    adopt_queues,
    peer_ids,
    valid_worker_id,
    worker_dir,
)

_LOGGER = logging.getLogger(__name__)

KEY_FILE: Final = "router.key"
ROLE: Final = "router"
UP_FILTER: Final = f"{UP_TOPIC_PREFIX}/+"
USAGE_TOPIC_PREFIX: Final = "i4t/r/usage"
STATE_TOPIC: Final = "i4t/r/state"
DOWN_HOP_PREFIX: Final = "down:"
"""Queue hop names of the gateways: ``down:<gateway id>`` (the parent's is links.UPLINK_HOP)."""
PARENT: Final = "parent"
"""Where a packet came from (or goes to) when that is the parent router."""
USAGE_KEY: Final = "router_usage"
NAMES_PARENT_KEY: Final = "router_names_registered_with"
ANNOUNCE_LIFETIMES: Final = 3
"""An announce holds for this many announce intervals, so one lost announce changes nothing."""
SESSION_GAP_FACTOR: Final = 1.5
MAX_PENDING_QUERIES: Final = 10_000
MAX_ASKERS_PER_QUERY: Final = 256
QUERY_TIMEOUT_SECONDS: Final = 60.0
HOUSEKEEPING_SECONDS: Final = 1.0
TOKEN_RELOAD_SECONDS: Final = 2.0
UNKNOWN_RELOAD_SECONDS: Final = 0.25
SAVE_EVERY_SECONDS: Final = 5.0
ADOPT_EVERY_SECONDS: Final = 1.0
OBSERVED_TYPES: Final = frozenset({PacketType.ANNOUNCE, PacketType.NAME_RECORD})
"""What a worker takes from gateways it does not own: the region's table and names are every
worker's (it must route to any gateway), the rest is the owner's."""
# What the router forwards up is limited per gateway already (usage.py); the uplink's per-source
# buckets only guard against a gateway that relays for a misbehaving thing.
PARENT_RATE_LIMIT: Final = RateLimit(rate=1000.0, burst=5000.0)


class _RefusedError(Exception):
    """A packet that can never be delivered: counted, and acked so that it is not sent again."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class _PendingQuery:
    name: str
    since: float
    askers: list[tuple[Address, bytes]] = field(default_factory=list)


class RouterServer:
    """One router: start() brings it up, stop() takes it down; state on its own broker."""

    def __init__(self, settings: Settings, *, state_every: float = 10.0) -> None:
        self.settings = settings
        self.state_every = state_every
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.identity = load_or_create_identity(settings.data_dir / KEY_FILE)
        self.router_id = self.identity.address.text
        operator = load_or_create_identity(settings.data_dir / OPERATOR_KEY_FILE)
        self.worker_id = settings.worker_id
        self.worker_lock: WorkerLock | None = None
        self.membership: Membership | None = None
        self.token_store = open_router_store(settings.data_dir)  # the region's, shared
        if self.worker_id is None:
            self.store = self.token_store
            self.sender = Sender(self.identity)
        else:
            self.store, self.membership = self._open_worker(settings, self.worker_id)
            self.sender = Sender(self.identity, sequencer=ClockSequencer())
        self.commits = GroupCommit(self.store)
        self.queue = PacketQueue(self.commits)
        self.receiver = Receiver(self.identity, dedup=PersistentDedup(self.commits))
        self.tokens = TokenBook(self.token_store, operator.public_bytes)
        self.region = RegionTable(self.commits)
        self.names = NameRegistry(self.commits)
        self.accounting = Accounting(session_gap=settings.announce_seconds * SESSION_GAP_FACTOR)
        self._restore_usage()
        self.costs = CostModel(settings.monthly_cost, settings.currency)
        self.counters: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        worker_suffix = "" if self.worker_id is None else f"-{self.worker_id}"
        self.bus = MqttBus(
            settings.local_broker(),
            client_id=f"i4t-router-{self.router_id}{worker_suffix}",
            on_connected=self._on_connected,
            tcp_nodelay=True,
        )
        self.bus.subscribe(UP_FILTER, self._on_up, qos=1)
        if self.membership is not None:
            self.bus.subscribe(HEARTBEAT_FILTER, self.membership.on_heartbeat, qos=0)
        self._owns_from = float("inf")  # a worker takes nothing until it has heard its peers
        self.parent_address: Address | None = None
        self.parent = self._make_parent(settings)
        self.provisioning = self._make_provisioning(settings)
        self._outboxes: dict[str, Outbox] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._running = False
        self._stopping = False
        self._pending_acks: dict[str, list[bytes]] = {}
        self._ack_scheduled = False
        self._background: set[asyncio.Task[None]] = set()
        self._queries: dict[bytes, _PendingQuery] = {}
        self._query_by_name: dict[str, bytes] = {}
        self._announced: set[Address] = set()
        self._announced_version = -1
        self._last_announce = float("-inf")
        self._last_token_reload = float("-inf")

    def _open_worker(
        self, settings: Settings, worker_id: str
    ) -> tuple[sqlite3.Connection, Membership]:
        """This worker's own store, under its lock (waits while a peer adopts its queues)."""
        if not valid_worker_id(worker_id):
            raise ValueError(f"a worker id is 1-32 letters, digits, - or _: {worker_id!r}")
        if settings.upstream_url:
            # Every worker would log in to the parent as the same gateway (one client id).
            raise ValueError("a region served by several workers has no parent router yet")
        directory = worker_dir(settings.data_dir, worker_id)
        self.worker_lock = WorkerLock(directory)
        if not self.worker_lock.acquire(wait=False):
            raise RuntimeError(f"worker {worker_id} runs already (or a peer is adopting it)")
        return open_router_store(directory), Membership(worker_id)

    def _make_parent(self, settings: Settings) -> Forwarder | None:
        """The durable uplink to the parent router, when one is configured."""
        if not (settings.upstream_url and settings.upstream_token and settings.upstream_router):
            return None
        self.parent_address = Address.from_text(settings.upstream_router)
        tls = TlsFiles(ca_file=settings.upstream_ca_file) if settings.upstream_ca_file else None
        link = RouterLink.from_url(
            settings.upstream_url,
            token=settings.upstream_token,
            router=self.parent_address,
            tls_files=tls,
        )
        # One de-duplication set for both directions: a packet seen from a gateway and again
        # from the parent (or the other way round) is forwarded once.
        receiver = Receiver(
            self.identity,
            keys=self.receiver.keys,
            guard=self.receiver.guard,
            dedup=self.receiver.dedup,
        )
        return Forwarder(
            sender=self.sender,
            receiver=receiver,
            link=link,
            queue=self.queue,
            deliver=self._deliver_from_parent,
            serves=lambda address: self.region.gateway_for(address) is not None,
            rate_limit=PARENT_RATE_LIMIT,
        )

    def _make_provisioning(self, settings: Settings) -> BrokerProvisioning | None:
        """Gateway access on the broker from the token book, when the admin is configured."""
        login = admin_address(settings)
        if login is None:
            return None
        client_id = ADMIN_CLIENT_PREFIX + self.router_id[:20]
        return BrokerProvisioning(DynsecAdmin(login, client_id=client_id), self.tokens)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        set_meta(self.store, "router_id", self.router_id)
        for hop in self.queue.hops():
            if hop.startswith(DOWN_HOP_PREFIX):
                self._outbox(hop.removeprefix(DOWN_HOP_PREFIX))
        if self.provisioning is not None:
            # Before the router's own session: under the default deny its client must exist.
            await self.provisioning.start(self.settings.local_broker())
        await self.bus.start()
        if self.parent is not None:
            await self.parent.start()
            self._register_names_upward()
        self._running = True
        for gateway, outbox in self._outboxes.items():
            self._run_outbox(gateway, outbox)
        self._tasks["housekeeping"] = asyncio.create_task(self._keep_house(), name="router-house")
        if self.membership is not None:
            self._owns_from = time.monotonic() + DEAD_AFTER_SECONDS
            self._tasks["worker"] = asyncio.create_task(self._run_worker(), name="router-worker")
        _LOGGER.info("router %s started (version %s)", self.identity.address.short(), __version__)

    async def stop(self) -> None:
        self._running = False
        self._stopping = True  # what arrives from now on is not taken (nor acked)
        tasks = [*self._tasks.values(), *self._background]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        if self.parent is not None:
            await self.parent.stop()
        self.commits.flush()
        self._save_usage()
        if self.provisioning is not None:
            await self.provisioning.stop()
        await self.bus.stop()
        self.store.close()
        if self.token_store is not self.store:
            self.token_store.close()
        if self.worker_lock is not None:
            self.worker_lock.release()  # last: a peer may adopt what is left from now on
        _LOGGER.info("router stopped")

    def _run_outbox(self, gateway: str, outbox: Outbox) -> None:
        self._tasks[DOWN_HOP_PREFIX + gateway] = asyncio.create_task(
            outbox.run(), name=f"router-down-{gateway[:12]}"
        )

    async def _on_connected(self) -> None:
        for outbox in self._outboxes.values():
            outbox.link_restored()
        self._publish_state(time.time())

    # -- from the gateways -------------------------------------------------------------------

    def _on_up(self, topic: str, payload: bytes, retained: bool) -> None:
        if self._stopping:
            return
        gateway = self._sender_of(topic, retained)
        if gateway is None:
            return
        gateway_id = topic.rsplit("/", 1)[-1]
        if not self._owns(gateway_id):
            self._observe(gateway_id, gateway, payload)
            return
        if not self._may_take(gateway_id, gateway, payload):
            return
        try:
            inbound = self.receiver.receive(payload)
        except PacketError as err:
            self.dropped[str(err.reason)] += 1
            self._settle_old(gateway_id, payload, err)
            return
        if inbound.packet.type is PacketType.ACK:
            self._on_ack(gateway_id, gateway, inbound)
        elif not self._may_relay(gateway_id, gateway, inbound.packet):
            self.dropped["source_elsewhere"] += 1  # not acked: sent again once the claim lapses
        else:
            self._take(gateway_id, inbound)

    def _may_take(self, gateway_id: str, gateway: Address, payload: bytes) -> bool:
        """Admission and rate limits (refused: not acked, so sent again later), and a copy of a
        packet taken already, acked again at once."""
        admission = self._admission(gateway)
        if admission is None:
            self.dropped["not_admitted"] += 1  # not acked: admitted later, it is sent again
            return False
        if not self.accounting.allow_in(gateway_id, admission, len(payload), time.time()):
            self.dropped["over_limit"] += 1  # not acked: the gateway's queue holds it
            return False
        return not self._taken_before(gateway_id, payload)

    def _taken_before(self, gateway_id: str, payload: bytes) -> bool:
        """A retransmission of a packet already taken: acked again without verifying it.

        Under load a gateway's retransmissions can outnumber its new packets (its timer fires
        before the ack it waits for gets through a busy fabric), and verifying each copy would
        make the backlog worse. Skipping the signature is safe: the ack goes only to the
        gateway whose topic the copy came on, and tells it to stop sending an id this router
        has stored; a gateway sending someone else's id only stops its own copy.
        """
        try:
            packet = peek(payload)
        except PacketError:
            return False  # receive() counts it
        if packet.type is PacketType.ACK or packet.message_id not in self.receiver.dedup:
            return False
        self.counters["received"] += 1
        self.counters["duplicates"] += 1
        self._ack_later(gateway_id, packet.message_id)
        return True

    def _sender_of(self, topic: str, retained: bool) -> Address | None:
        """The gateway an up topic names; None (counted) for a retained message or a topic
        that names no address."""
        if retained:  # replayed by the broker, not sent now
            self.dropped["retained"] += 1
            return None
        try:
            return Address.from_text(topic.rsplit("/", 1)[-1])
        except AddressError:
            self.dropped["bad_topic"] += 1
            return None

    def _owns(self, gateway_id: str) -> bool:
        """Whether this router takes the gateway's packets: always, unless it is one worker of
        several, then when the ring gives it the gateway."""
        if self.membership is None:
            return True
        return time.monotonic() >= self._owns_from and self.membership.owns(gateway_id)

    def _observe(self, gateway_id: str, gateway: Address, payload: bytes) -> None:
        """A packet from a gateway another worker owns: nothing is acked or forwarded here,
        but acks release what this worker sent that gateway, and announces and name records
        keep this worker's table and names whole. Peeked first: the rest costs nothing."""
        try:
            kind = peek(payload).type
        except PacketError:
            self.counters["observed_invalid"] += 1
            return
        outbox = self._outboxes.get(gateway_id)
        # An ack matters here only while this worker has packets out to that gateway.
        releases = outbox is not None and outbox.in_flight > 0
        wanted = kind in OBSERVED_TYPES or (kind is PacketType.ACK and releases)
        if not wanted:
            return
        try:
            inbound = self.receiver.receive(payload)
        except PacketError:
            self.counters["observed_invalid"] += 1
            return
        if kind is PacketType.ACK:
            self._on_ack(gateway_id, gateway, inbound)
        elif inbound.for_me and not inbound.duplicate:
            with contextlib.suppress(_RefusedError):  # the owner counts refusals
                self._consume(gateway_id, inbound)
            self.counters["observed"] += 1

    def _settle_old(self, gateway_id: str, payload: bytes, err: PacketError) -> None:
        """Ack an authentic packet for the router that the replay window refuses: one queued
        before the gateway restarted reaches us after its newer ones. It can never be taken,
        and unacked it would hold a slot of the gateway's window until it expires (24 h)."""
        if err.reason in (Reason.STALE, Reason.REPLAYED):  # both only after the signature
            packet = peek(payload)
            if packet.type is not PacketType.ACK:  # acks are never acked
                self._ack_later(gateway_id, packet.message_id)

    def _admission(self, gateway: Address) -> Admission | None:
        admission = self.tokens.admission(gateway)
        now = time.monotonic()
        if admission is None and now - self._last_token_reload >= UNKNOWN_RELOAD_SECONDS:
            # A token may have been issued a moment ago by the command line (another process).
            self._last_token_reload = now
            self.tokens.reload()
            admission = self.tokens.admission(gateway)
        return admission

    def _may_relay(self, gateway_id: str, gateway: Address, packet: Packet) -> bool:
        """A gateway speaks for itself and its proxied things; it relays a native thing's own
        signed packets unless another gateway of the region holds that thing's address.

        Not "only what it announced": a gateway (or child router) queues its things' packets
        in order with its announces, and a router that left packets of not yet announced
        sources unacked would let them fill the sender's window ahead of the announce that
        makes them acceptable, stalling that uplink for good.
        """
        if packet.signer == gateway:
            return True
        holder = self.region.gateway_for(packet.src)
        return holder is None or holder == gateway_id

    def _on_ack(self, gateway_id: str, gateway: Address, inbound: Inbound) -> None:
        packet = inbound.packet
        if packet.dst != self.identity.address or packet.src != gateway:
            self.dropped["ack_not_for_us"] += 1
            return
        self.receiver.guard.accept(packet.src, packet.seq, packet.ts_ms)
        self.counters["acks_received"] += 1
        outbox = self._outboxes.get(gateway_id)
        if outbox is not None and isinstance(packet.payload, Ack):
            for message_id in packet.payload.message_ids:
                outbox.acked(message_id)

    def _take(self, came_from: str, inbound: Inbound) -> None:
        """Route or consume a verified packet, then ack it once that is durable."""
        message_id = inbound.packet.message_id
        self.counters["received"] += 1
        if inbound.duplicate or message_id in self.receiver.dedup:
            self.counters["duplicates"] += 1
            self._ack_later(came_from, message_id)
            return
        try:
            self._route(came_from, inbound)
        except ForwardError as err:
            self.dropped[err.reason] += 1  # not now (a full queue): not acked, sent again
            return
        except PacketError as err:
            self.dropped[str(err.reason)] += 1
        except _RefusedError as err:
            self.dropped[err.reason] += 1
        self.receiver.handled(inbound)
        self._ack_later(came_from, message_id)

    def _ack_later(self, gateway_id: str, message_id: bytes) -> None:
        self._pending_acks.setdefault(gateway_id, []).append(message_id)
        if not self._ack_scheduled:
            self._ack_scheduled = True
            self._spawn(self._send_acks())

    def _spawn(self, work: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _send_acks(self) -> None:
        # Taken before waiting: everything these ids wrote is in the batch committed() covers;
        # ids that arrive meanwhile wait for the next round.
        self._ack_scheduled = False
        pending, self._pending_acks = self._pending_acks, {}
        try:
            await self.commits.committed()
        except QueueError:
            return  # not durable, so not acked: the gateways send them again
        for gateway_id, message_ids in pending.items():
            gateway = Address.from_text(gateway_id)
            for start in range(0, len(message_ids), MAX_ACKS):
                ack = self.sender.ack(gateway, message_ids[start : start + MAX_ACKS])
                if self.bus.publish(down_topic(gateway_id), ack, qos=ACK_QOS):
                    self.counters["acks_sent"] += 1
                    self.accounting.of(gateway_id).bytes_out += len(ack)

    # -- routing -----------------------------------------------------------------------------

    def _route(self, came_from: str, inbound: Inbound) -> None:
        packet = inbound.packet
        if inbound.for_me:
            self._consume(came_from, inbound)
            return
        if packet.dst.is_broadcast:
            raise _RefusedError("broadcast")  # a router floods nothing
        hop = self._next_hop(packet.dst)
        if hop is None:
            raise _RefusedError("no_route")
        if hop == came_from:
            raise _RefusedError("loop")
        self._forward(hop, packet, inbound.received.forwarded())

    def _next_hop(self, destination: Address) -> str | None:
        """The gateway that announced ``destination``, else the parent (None: no parent)."""
        gateway = self.region.gateway_for(destination)
        if gateway is not None:
            return gateway
        return PARENT if self.parent is not None else None

    def _forward(self, hop: str, packet: Packet, data: bytes) -> None:
        """Queue ``data`` durably for ``hop``; ForwardError if it cannot be taken now."""
        if hop == PARENT:
            assert self.parent is not None
            self.parent.submit(packet, data)
            self.counters["forwarded_up"] += 1
        else:
            self._queue_down(hop, packet.message_id, data)
            self.counters["forwarded_down"] += 1

    def _queue_down(self, gateway_id: str, message_id: bytes, data: bytes) -> None:
        """Queue ``data`` durably for a gateway of the region, whose outbox then sends it;
        QueueFullError when that gateway's queue is full."""
        self.queue.put(DOWN_HOP_PREFIX + gateway_id, message_id, data)
        self._outbox(gateway_id)

    def _outbox(self, gateway_id: str) -> Outbox:
        outbox = self._outboxes.get(gateway_id)
        if outbox is None:
            gateway = Address.from_text(gateway_id)
            outbox = Outbox(
                self.queue,
                DOWN_HOP_PREFIX + gateway_id,
                functools.partial(self._send_down, gateway_id, gateway),
                link_up=lambda: self.bus.connected,
                redirect=functools.partial(self._redirect, gateway_id),
            )
            self._outboxes[gateway_id] = outbox
            if self._running:
                self._run_outbox(gateway_id, outbox)
        return outbox

    def _redirect(self, gateway_id: str, queued: QueuedPacket) -> bool:
        """A packet still unacked by a gateway that no longer holds its destination (the thing
        moved to another gateway of the region, whose claim replaced the lapsed one): queued
        for the new holder instead. The old gateway drops it as ``unasked`` and never acks it,
        so without this it would hold a slot of that gateway's window until it expired."""
        try:
            destination = peek(queued.data).dst
        except PacketError:
            return False
        holder = self.region.gateway_for(destination)
        if holder is None or holder == gateway_id:
            return False  # nobody else holds it (yet): the old gateway may announce it again
        try:
            self._queue_down(holder, queued.message_id, queued.data)
        except QueueFullError:
            return False
        self.counters["redirected"] += 1
        return True

    def _send_down(self, gateway_id: str, gateway: Address, data: bytes) -> bool:
        admission = self.tokens.admission(gateway)
        if not self.accounting.allow_out(gateway_id, admission, len(data), time.time()):
            return False  # over its bytes-out rate: the outbox tries again shortly
        return self.bus.publish(down_topic(gateway_id), data, qos=1)

    async def _deliver_from_parent(self, inbound: Inbound) -> None:
        """A packet from the parent router (links.Forwarder acks it once this returns)."""
        self.counters["from_parent"] += 1
        try:
            if inbound.for_me:
                self._consume(PARENT, inbound)
                return
            hop = self.region.gateway_for(inbound.packet.dst)
            if hop is None:
                raise _RefusedError("no_route")  # the claim lapsed since the check
            self._forward(hop, inbound.packet, inbound.received.forwarded())
        except _RefusedError as err:
            self.dropped[err.reason] += 1

    def _send_own(self, destination: Address, payload: Payload) -> Packet:
        """A packet from the router itself, routed like any other."""
        packet = self.sender.packet(destination, payload)
        hop = self._next_hop(destination)
        if hop is None:
            self.dropped["own_no_route"] += 1
            return packet
        try:
            self._forward(hop, packet, self.sender.seal(packet))
        except ForwardError as err:
            self.dropped[f"own_{err.reason}"] += 1
        return packet

    # -- packets for the router itself -------------------------------------------------------

    def _consume(self, came_from: str, inbound: Inbound) -> None:
        packet = inbound.packet
        payload = packet.payload
        if isinstance(payload, Announce):
            self._on_announce(came_from, packet, payload)
        elif isinstance(payload, NameRecordPayload):
            self._on_name_record(came_from, payload)
        elif isinstance(payload, NameQuery):
            self._on_name_query(came_from, packet, payload)
        elif isinstance(payload, NameAnswer):
            self._on_name_answer(came_from, payload)
        else:
            raise _RefusedError("unsupported_type")

    def _on_announce(self, came_from: str, packet: Packet, payload: Announce) -> None:
        # Only a gateway's own announce over its own topic counts (registry.py, trust rule).
        if came_from == PARENT or packet.proxy is not None or packet.src.text != came_from:
            raise _RefusedError("announce_not_own")
        result = self.region.announce(
            packet.src, payload.addresses, payload.expires_ms, protected=self._protected
        )
        self.counters["announces"] += 1
        for reason, count in result.refused.items():
            self.dropped[f"announce_{reason}"] += count
        if self.parent_address is not None and self.region.version != self._announced_version:
            # Upward at once, ahead of the packets from these addresses that follow this
            # announce in the gateway's queue: routers above learn an address before its
            # first packet, so answers always find their way back.
            self._announce_up(time.time(), everything=False)

    def _protected(self, address: Address) -> bool:
        """Addresses no gateway may claim: this router, its parent, admitted gateways."""
        return (
            address in (self.identity.address, self.parent_address)
            or self.tokens.admission(address) is not None
        )

    def _on_name_record(self, came_from: str, payload: NameRecordPayload) -> None:
        if came_from == PARENT:
            raise _RefusedError("name_from_parent")  # names are registered from below
        try:
            _, changed = self.names.register(payload.record)
        except NameRefusedError as err:
            raise _RefusedError(err.reason) from None
        if changed:
            self.counters["names_registered"] += 1
            if self.parent_address is not None:
                # Registered up the tree too, so that other regions resolve it (ROUTER.md).
                self._send_own(self.parent_address, NameRecordPayload(payload.record))

    def _register_names_upward(self) -> None:
        """Once per parent (a new one, or the first): register the region's names with it."""
        assert self.parent_address is not None
        if get_meta(self.store, NAMES_PARENT_KEY) == self.parent_address.text:
            return
        for record in self.names.records():
            self._send_own(self.parent_address, NameRecordPayload(record))
        set_meta(self.store, NAMES_PARENT_KEY, self.parent_address.text)

    def _on_name_query(self, came_from: str, packet: Packet, payload: NameQuery) -> None:
        name = payload.name
        self.counters["name_queries"] += 1
        record = self.names.lookup(name) if is_valid_name(name) else None
        if (
            record is not None
            or self.parent_address is None
            or came_from == PARENT
            or not is_valid_name(name)
        ):
            self._send_own(packet.src, NameAnswer(packet.message_id, record))
            return
        self._ask_parent(name, packet.src, packet.message_id)

    def _ask_parent(self, name: str, asker: Address, request_id: bytes) -> None:
        assert self.parent_address is not None
        pending_id = self._query_by_name.get(name)
        if pending_id is None:
            if len(self._queries) >= MAX_PENDING_QUERIES:
                raise _RefusedError("too_many_queries")
            query = self._send_own(self.parent_address, NameQuery(name))
            pending_id = query.message_id
            self._queries[pending_id] = _PendingQuery(name, time.monotonic())
            self._query_by_name[name] = pending_id
        askers = self._queries[pending_id].askers
        if len(askers) >= MAX_ASKERS_PER_QUERY:
            raise _RefusedError("too_many_askers")
        askers.append((asker, request_id))

    def _on_name_answer(self, came_from: str, payload: NameAnswer) -> None:
        pending = self._queries.pop(payload.request_id, None) if came_from == PARENT else None
        if pending is None:
            raise _RefusedError("unexpected_answer")
        self._query_by_name.pop(pending.name, None)
        record = None
        if payload.record is not None:
            cached = self.names.cache(payload.record)
            if cached is not None and cached.name == pending.name:
                record = payload.record
        for asker, request_id in pending.askers:
            self._send_own(asker, NameAnswer(request_id, record))

    def _expire_queries(self, now: float) -> None:
        for query_id, pending in list(self._queries.items()):
            if now - pending.since > QUERY_TIMEOUT_SECONDS:
                del self._queries[query_id]
                self._query_by_name.pop(pending.name, None)
                self.dropped["query_timeout"] += 1

    # -- announcing the region upward ---------------------------------------------------------

    def _announce_up(self, now: float, *, everything: bool) -> None:
        """The region's addresses (and the router's own) to the parent, in chunks; with
        ``everything`` False only those not announced yet (the rest lapse or are renewed by
        the next full round)."""
        assert self.parent_address is not None
        addresses = {self.identity.address, *self.region.addresses()}
        fresh = addresses if everything else addresses - self._announced
        expires_ms = int((now + ANNOUNCE_LIFETIMES * self.settings.announce_seconds) * 1000)
        ordered = sorted(fresh, key=lambda address: address.bytes)
        for start in range(0, len(ordered), MAX_ANNOUNCED):
            chunk = tuple(ordered[start : start + MAX_ANNOUNCED])
            self._send_own(self.parent_address, Announce(chunk, expires_ms))
        self._announced = addresses
        self._announced_version = self.region.version

    def _maybe_announce(self, now: float) -> None:
        if self.parent_address is None:
            return
        if now - self._last_announce >= self.settings.announce_seconds:
            self._last_announce = now
            self._announce_up(now, everything=True)
        elif self.region.version != self._announced_version:
            self._announce_up(now, everything=False)

    # -- several workers in one region ---------------------------------------------------------

    async def _run_worker(self) -> None:
        """Heartbeats, the ring, and the queues of workers that died."""
        assert self.membership is not None
        assert self.worker_id is not None
        topic = f"{HEARTBEAT_TOPIC_PREFIX}/{self.worker_id}"
        last_adopt = float("-inf")
        while True:
            self.bus.publish(topic, self.membership.heartbeat(), qos=0)
            self.membership.refresh()
            now = time.monotonic()
            if now - last_adopt >= ADOPT_EVERY_SECONDS and now >= self._owns_from:
                last_adopt = now
                await self._adopt_dead_peers()
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def _adopt_dead_peers(self) -> None:
        assert self.membership is not None
        assert self.worker_id is not None
        alive = self.membership.ring().members
        for peer in peer_ids(self.settings.data_dir, self.worker_id):
            if peer in alive:
                continue
            try:
                moved = await adopt_queues(
                    self.settings.data_dir, peer, self.queue, DOWN_HOP_PREFIX
                )
            except (QueueError, sqlite3.Error) as err:
                self.dropped["adopt_failed"] += 1
                _LOGGER.warning("adopting worker %s's queues failed: %s", peer, err)
                continue
            if moved:
                self.counters["adopted"] += moved
                _LOGGER.warning("took %d queued packets of dead worker %s", moved, peer)
                for hop in self.queue.hops():
                    if hop.startswith(DOWN_HOP_PREFIX):
                        self._outbox(hop.removeprefix(DOWN_HOP_PREFIX))

    # -- housekeeping, state and usage ---------------------------------------------------------

    async def _keep_house(self) -> None:
        last_tokens = last_save = last_state = time.monotonic()
        while True:
            now = time.time()
            self._maybe_announce(now)
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            ticks = time.monotonic()
            if ticks - last_tokens >= TOKEN_RELOAD_SECONDS:
                self.tokens.reload()  # issued or revoked by the command line meanwhile
                last_tokens = ticks
                if self.provisioning is not None:
                    self._spawn(self.provisioning.sync())  # the broker follows the book
            self.region.expire()
            self._expire_queries(ticks)
            if ticks - last_save >= SAVE_EVERY_SECONDS:
                self._save_usage()
                last_save = ticks
            if ticks - last_state >= self.state_every:
                self._publish_state(time.time())
                last_state = ticks

    def _restore_usage(self) -> None:
        saved = get_meta(self.store, USAGE_KEY)
        if saved is not None:
            self.accounting.restore(dict(json.loads(saved)))

    def _save_usage(self) -> None:
        set_meta(self.store, USAGE_KEY, json.dumps(self.accounting.export()))

    def things_of(self, gateway_id: str) -> int:
        """Addresses a gateway serves besides itself: its things (or, for a child router,
        its region)."""
        held = self.region.count(gateway_id)
        own = self.region.gateway_for(Address.from_text(gateway_id)) == gateway_id
        return max(0, held - 1) if own else held

    def usage_report(self, gateway_id: str, now: float) -> dict[str, Any]:
        """What ``i4t/r/usage/<gateway>`` carries (docs/ROUTER.md, accounting)."""
        things = self.things_of(gateway_id)
        per_thing = self.costs.per_thing_month(self.region_things())
        admission = self.tokens.admission(Address.from_text(gateway_id))
        return {
            "gateway": gateway_id,
            **self.accounting.of(gateway_id).export(),
            "admitted": admission is not None,
            "limits": None if admission is None else admission.limits.as_dict(),
            "things": things,
            "cost_per_thing_month": per_thing,
            "monthly_share": None if per_thing is None else round(per_thing * things, 6),
            "currency": self.costs.currency,
            "at": round(now, 3),
        }

    def region_things(self) -> int:
        return sum(self.things_of(gateway) for gateway in self.region.gateways())

    def state(self, now: float) -> dict[str, Any]:
        things = self.region_things()
        return {
            "router": self.router_id,
            "role": ROLE,
            "version": __version__,
            "parent": None if self.parent_address is None else self.parent_address.text,
            "uplink": None if self.parent is None else self.parent.stats().as_dict(),
            "gateways": len(self.region.gateways()),
            "addresses": len(self.region),
            "names": len(self.names),
            "things": things,
            "monthly_cost": self.costs.monthly_cost,
            "cost_per_thing_month": self.costs.per_thing_month(things),
            "currency": self.costs.currency,
            "queued_down": {hop: self.queue.depth(hop)[0] for hop in self.queue.hops()},
            "packets": dict(self.counters),
            "dropped": dict(sorted(self.dropped.items())),
            "dropped_invalid": {str(r): n for r, n in sorted(self.receiver.dropped.items())},
            "provisioning": None
            if self.provisioning is None
            else dict(sorted(self.provisioning.counters.items())),
            "worker": self.worker_id,
            "workers": None if self.membership is None else sorted(self.membership.ring().members),
            "at": round(now, 3),
        }

    def _publish_state(self, now: float) -> None:
        topic = STATE_TOPIC if self.worker_id is None else f"{STATE_TOPIC}/{self.worker_id}"
        self.bus.publish(topic, json.dumps(self.state(now)).encode(), qos=1, retain=True)
        for gateway_id in list(self.accounting.usage):
            report = json.dumps(self.usage_report(gateway_id, now)).encode()
            self.bus.publish(f"{USAGE_TOPIC_PREFIX}/{gateway_id}", report, qos=1, retain=True)


async def run_router_until_stopped(router: RouterServer, stop: asyncio.Event) -> None:
    """Start the router, wait for the stop event, stop the router."""
    await router.start()
    try:
        await stop.wait()
    finally:
        await router.stop()
