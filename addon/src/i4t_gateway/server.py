"""The gateway process: identity, store, local broker and bus, the mesh core, wired and run."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
import contextlib
import json
import logging
import sqlite3
import time

from . import __version__, api
from .agents import AgentSettings
from .beacon import GATT_PACKET_IN_UUID, GATT_SERVICE_UUID
from .ble import BleCandidate, BleEndpoint, BleUpdate
from .ble_gatt import GattMessageError, GattRequests, GattResult
from .bus import LastWill, MqttBus, TlsFiles
from .core import BridgeHooks, GatewayCore
from .embedded_broker import EmbeddedBroker
from .endpoint import Inbound, Receiver
from .identity import Address, load_or_create_identity
from .lan_discovery import LanDiscovery, ZeroconfError
from .links import Forwarder, RouterLink
from .mqtt_devices import (
    DeviceEvent,
    DeviceEventKind,
    DeviceFleet,
    MqttDeviceDefinition,
    proxied_address,
)
from .peers import ANNOUNCE_LIFETIMES, PeerConfig, PeerNetwork, announce_packets
from .queue import ForwardError, GroupCommit, PacketQueue, PersistentDedup, QueueFullError
from .settings import Settings
from .store import WriteErrorLog, get_meta, open_store, set_meta
from .things import Thing, ThingKind
from .timeouts import TimeoutPolicy
from .tokens import token_expiry_ms
from .wire import Packet

_LOGGER = logging.getLogger(__name__)

KEY_FILE = "gateway.key"
DATABASE_FILE = "gateway.db"
ROLE = "gateway"
CORE_STATE_KEY = "core_state"
BLE_COUNTERS_KEY = "ble_counters"
HOUSEKEEPING_SECONDS = 1.0
SAVE_EVERY_SECONDS = 5.0
# What a request changed is saved at once, unless saving would then take more than this share
# of the time (thousands of things enrolled in a burst): then within a housekeeping tick.
REQUEST_SAVE_SHARE = 0.1
STATE_EVERY_SECONDS = 10.0


class GatewayServer:
    """One gateway: start() brings it up, stop() takes it down and says goodbye on the bus."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.identity = load_or_create_identity(settings.data_dir / KEY_FILE)
        self.gateway_id = self.identity.address.text
        self.topics = api.GatewayTopics(self.gateway_id)
        self.store = open_store(settings.data_dir / DATABASE_FILE)
        self.started_at = time.time()
        self.core = GatewayCore(
            self.identity,
            self._publish,
            policy=TimeoutPolicy(
                factor=settings.timeout_factor,
                floor=settings.timeout_floor,
                fallback=settings.timeout_fallback,
            ),
            agent_settings=AgentSettings(
                health_poll_seconds=settings.health_poll_seconds,
                refresh_seconds=settings.status_refresh_seconds,
                gossip_seconds=settings.gossip_seconds,
            ),
            saved=self._load_core_state(),
            now=self.started_at,
        )
        self._embedded: EmbeddedBroker | None = None
        if settings.uses_embedded_broker:
            self._embedded = EmbeddedBroker(settings.embedded_host, settings.embedded_port)
        self.bus = MqttBus(
            settings.local_broker(),
            client_id=f"i4t-{self.gateway_id}",
            will=LastWill(self.topics.availability, api.OFFLINE),
            on_connected=self._announce,
        )
        self.devices = DeviceFleet(self.bus.subscribe, self._on_device_event)
        self.ble = BleEndpoint(
            self.gateway_id,
            on_update=self._on_ble_update,
            on_candidate=self._on_ble_candidate,
            counters=self._load_json_meta(BLE_COUNTERS_KEY),
        )
        self.bus.subscribe(self.ble.topic, self.ble.handle_message, qos=0)
        self.gatt = GattRequests(self.gateway_id, self._publish_qos1)
        self.bus.subscribe(self.gatt.result_topic, self.gatt.handle_message, qos=1)
        self.commits = GroupCommit(self.store)
        self.queue = PacketQueue(self.commits)
        # One receiver for the router's and the LAN peers' packets: the same packet may come
        # both ways (a peer's queue moved to the router), and must be delivered once.
        self.link_receiver = Receiver(
            self.identity,
            keys=self.core.receiver.keys,
            guard=self.core.receiver.guard,
            dedup=PersistentDedup(self.commits),
        )
        self.forwarder = self._make_forwarder(settings)
        self.peers = self._make_peers(settings)
        self.discovery: LanDiscovery | None = None
        self.bridges = _Bridges(
            self.devices,
            self.ble,
            self.gatt,
            self.forwarder,
            self._announce_source,
            peers=self.peers,
        )
        self.core.devices = self.bridges
        self.bus.subscribe(api.THING_UP_FILTER, self._on_thing_packet, qos=1)
        self.bus.subscribe(self.topics.commands, self._on_request, qos=1)
        self._housekeeping: asyncio.Task[None] | None = None
        self._last_save = float("-inf")
        self._save_gap = 0.0  # how long to wait after a save to keep saves to their share
        self._request_unsaved = False
        self._write_errors = WriteErrorLog(
            _LOGGER, "enrolments, groups and learned intervals are kept in memory only"
        )
        self._background: set[asyncio.Task[None]] = set()
        self._announced: frozenset[Address] = frozenset()
        self._last_announce = float("-inf")

    @property
    def _token_expires(self) -> float | None:
        """Unix time the router token expires (for the integration's repair), if readable."""
        expires_ms = token_expiry_ms(self.settings.upstream_token or "")
        return None if expires_ms is None else expires_ms / 1000

    def _make_forwarder(self, settings: Settings) -> Forwarder | None:
        """The durable uplink to the regional router, when one is configured."""
        if not (settings.upstream_url and settings.upstream_token and settings.upstream_router):
            return None
        tls = TlsFiles(ca_file=settings.upstream_ca_file) if settings.upstream_ca_file else None
        link = RouterLink.from_url(
            settings.upstream_url,
            token=settings.upstream_token,
            router=Address.from_text(settings.upstream_router),
            tls_files=tls,
            mqtt5=settings.upstream_mqtt5,
        )
        return Forwarder(
            sender=self.core.sender,  # one sequencer per key, or receivers see replays
            receiver=self.link_receiver,
            link=link,
            queue=self.queue,
            deliver=self._deliver_from_link,
            serves=self.core.serves,
        )

    def _make_peers(self, settings: Settings) -> PeerNetwork | None:
        """LAN peering (peers.py), when the settings ask for it."""
        if not settings.lan_peers:
            return None
        return PeerNetwork(
            sender=self.core.sender,
            receiver=self.link_receiver,
            queue=self.queue,
            deliver=self._deliver_from_link,
            serves=self.core.serves,
            served=self.served_addresses,
            protected=self._protected,
            reroute=self._reroute_to_router,
            config=PeerConfig(
                port=settings.lan_port,
                grace=settings.lan_grace_seconds,
                announce_seconds=settings.announce_seconds,
                allowed=frozenset(Address.from_text(a) for a in settings.lan_allow),
            ),
        )

    def _protected(self, address: Address) -> bool:
        """Addresses no LAN peer may claim: this gateway's own, and its router."""
        router = self.settings.upstream_router
        return self.core.serves(address) or (router is not None and address.text == router)

    def _reroute_to_router(self, message_id: bytes, data: bytes) -> bool:
        """A packet queued for a LAN peer that left goes to the router instead."""
        if self.forwarder is None:
            return False
        try:
            self.queue.put(self.forwarder.hop, message_id, data)
        except QueueFullError:
            return False
        return True

    async def _deliver_from_link(self, inbound: Inbound) -> None:
        self.core.deliver_from_router(inbound)

    def _load_core_state(self) -> dict[str, object] | None:
        saved = get_meta(self.store, CORE_STATE_KEY)
        return None if saved is None else dict(json.loads(saved))

    def _load_json_meta(self, key: str) -> dict[str, int]:
        saved = get_meta(self.store, key)
        return {} if saved is None else dict(json.loads(saved))

    def save(self) -> None:
        """Write groups, things, learned intervals and BLE replay counters to the database.

        A write that fails (a full disk) is logged and tried again with the next save; the
        state stays in memory. Raising here would end housekeeping for good (the fault run
        found it: no more DEAD nodes, state or saves, even after space came back)."""
        started = time.monotonic()
        try:
            set_meta(self.store, CORE_STATE_KEY, json.dumps(self.core.export()))
            set_meta(self.store, BLE_COUNTERS_KEY, json.dumps(dict(self.ble.counters)))
        except sqlite3.Error as err:
            self.core.dirty = True  # export() cleared it, but nothing was saved
            self._write_errors.failed(err)
            return
        finally:
            self._last_save = time.monotonic()
            self._save_gap = (self._last_save - started) * (1 / REQUEST_SAVE_SHARE - 1)
        self._request_unsaved = False
        self._write_errors.succeeded()

    def _save_request_changes(self) -> None:
        """Save what a request changed (an enrolment, a group) before its reply leaves (the
        bus writes it after this callback), so that a confirmed change survives a kill -9 (the
        fault run lost enrolments confirmed less than 5 s before). In a burst of requests with
        thousands of things, at most REQUEST_SAVE_SHARE of the time goes to saving: the rest
        is saved with the next housekeeping tick, within a second."""
        if self._request_unsaved and time.monotonic() - self._last_save >= self._save_gap:
            self.save()

    def _on_ble_update(self, update: BleUpdate) -> None:
        thing = self.core.things.by_mac(update.mac)
        if thing is None:
            return
        readings = [(r.key, r.value, r.unit, r.device_class) for r in update.readings]
        self.core.heard(
            thing, update.time, status=update.status, readings=readings, rssi=update.rssi
        )

    def _on_ble_candidate(self, candidate: BleCandidate) -> None:
        self.core.heard_unenrolled_ble(
            candidate.mac,
            ThingKind(candidate.kind.value),
            candidate.time,
            rssi=candidate.rssi,
            hint=candidate.local_name,
        )

    def _publish_qos1(self, topic: str, payload: bytes) -> None:
        self.bus.publish(topic, payload, qos=1)

    def _publish(self, topic: str, payload: bytes, retain: bool) -> None:
        # Retained state lost while disconnected is republished on reconnect (_announce).
        self.bus.publish(topic, payload, qos=1, retain=retain)

    def _on_thing_packet(self, topic: str, payload: bytes, retained: bool) -> None:
        if not retained:  # a retained packet is stale by definition: replayed by the broker
            self.core.handle_thing_packet(topic, payload, time.time())

    def _on_device_event(self, event: DeviceEvent) -> None:
        """What an adopted MQTT device said, for the health engine and the readings."""
        address = proxied_address(self.identity.public_bytes, event.local_id)
        thing = self.core.things.get(address)
        if thing is None:
            return
        now = time.time()
        readings = [(r.key, r.value, r.unit, r.device_class) for r in event.readings]
        if event.kind is DeviceEventKind.OFFLINE:
            self.core.went_offline(thing)
        elif event.retained:
            self.core.record_only(thing, now, readings)  # maybe hours old: not a sign of life
        else:
            self.core.heard(thing, now, status=event.status, readings=readings)

    def _adopt_devices(self) -> None:
        for thing in self.core.things:
            if thing.mac is not None:
                self.core.devices.ble_enrolled(thing)
        for definition in self.core.adopted_definitions():
            self.devices.adopt(definition)
        now = time.time()
        for definition in self.settings.mqtt_devices:
            address = proxied_address(self.identity.public_bytes, definition.local_id)
            if self.core.things.get(address) is None:
                thing = self.core.things.enrol_mqtt(
                    definition.local_id, definition.to_json(), definition.name, now
                )
                self.devices.adopt(definition)
                _LOGGER.info("adopted MQTT device %s from the options", thing.name)

    def _on_request(self, topic: str, payload: bytes, retained: bool) -> None:
        if not retained:
            self.core.handle_request(topic, payload, time.time())
            self._request_unsaved = self._request_unsaved or self.core.dirty
            self._save_request_changes()

    async def start(self) -> None:
        """Start the embedded broker (if any) and the bus; does not wait for the broker."""
        set_meta(self.store, "gateway_id", self.gateway_id)
        self._adopt_devices()
        if self._embedded is not None:
            await self._embedded.start()
        await self.bus.start()
        if self.forwarder is not None:
            await self.forwarder.start()
        if self.peers is not None:
            port = await self.peers.start()
            await self._start_discovery(port)
        self._housekeeping = asyncio.create_task(self._keep_house(), name="housekeeping")
        _LOGGER.info("gateway %s started (version %s)", self.identity.address.short(), __version__)

    async def _announce(self) -> None:
        # Runs on every (re)connect: retained state must be present after a broker restart too.
        info = api.gateway_info(
            gateway_id=self.gateway_id,
            name=self.settings.name,
            version=__version__,
            role=ROLE,
            started_at=self.started_at,
        )
        self.bus.publish(self.topics.discovery, api.encode(info), qos=1, retain=True)
        self.bus.publish(self.topics.availability, api.ONLINE, qos=1, retain=True)
        self.core.publish_everything(time.time(), self._bridge_state())

    async def _keep_house(self) -> None:
        """Declare silent nodes DEAD on time, save what changed, refresh the gateway's state."""
        last_state = time.monotonic()
        while True:
            now = time.time()
            delay = self.core.next_deadline() - now
            await asyncio.sleep(min(max(delay, 0.0), HOUSEKEEPING_SECONDS))
            now = time.time()
            self.core.tick(now)
            self.gatt.expire(time.monotonic())
            elapsed = time.monotonic()
            self._announce_if_due(elapsed)
            if self.peers is not None:
                await self.peers.tick()
            self._save_request_changes()
            if self.core.dirty and elapsed - self._last_save >= SAVE_EVERY_SECONDS:
                self.save()
            if elapsed - last_state >= STATE_EVERY_SECONDS:
                if self.core.candidates_changed:
                    self.core.publish_candidates()
                self.core.publish_gateway_state(now, self._bridge_state())
                last_state = elapsed

    async def _start_discovery(self, port: int) -> None:
        """Advertise and browse by zeroconf; without multicast the gateway runs on, unpeered."""
        assert self.peers is not None
        discovery = LanDiscovery(
            self.identity.address, port, on_found=self.peers.found, on_lost=self._peer_lost
        )
        try:
            await discovery.start()
        except (OSError, ZeroconfError) as err:
            _LOGGER.warning("LAN peers not searched for: zeroconf cannot start (%s)", err)
            await discovery.stop()
            return
        self.discovery = discovery

    def _peer_lost(self, gateway: Address) -> None:
        if self.peers is not None:
            task = asyncio.get_running_loop().create_task(self.peers.lost(gateway))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def served_addresses(self) -> frozenset[Address]:
        """What the gateway announces to its router and its LAN peers: itself and the things
        it takes packets for (core.serves), proxied ones (BLE things, adopted MQTT devices)
        included."""
        things = (thing.address for thing in self.core.things if self.core.serves(thing.address))
        return frozenset([self.identity.address, *things])

    def _announce_source(self, source: Address) -> None:
        """Before a thing's first packet goes up, the announce that makes its address known:
        queued ahead of it in the same uplink, it reaches every router on the way first, so
        an answer to the packet always finds its way back."""
        if source not in self._announced and source != self.identity.address:
            self._announce_if_due(time.monotonic())

    def _announce_if_due(self, elapsed: float) -> None:
        """Announce every announce_seconds, and at once when the served addresses changed."""
        if self.forwarder is None or self.settings.upstream_router is None:
            return
        served = self.served_addresses()
        if served == self._announced and elapsed - self._last_announce < (
            self.settings.announce_seconds
        ):
            return
        self._announced, self._last_announce = served, elapsed
        self.announce(served)

    def announce(self, served: frozenset[Address]) -> None:
        """Signed ANNOUNCE packets (in chunks) to the regional router, through the uplink."""
        assert self.forwarder is not None
        assert self.settings.upstream_router is not None
        router = Address.from_text(self.settings.upstream_router)
        lifetime = ANNOUNCE_LIFETIMES * self.settings.announce_seconds
        for packet in announce_packets(self.core.sender, router, served, lifetime):
            try:
                self.forwarder.submit(packet, self.core.sender.seal(packet))
            except ForwardError as err:
                # The next round (announce_seconds) tries again.
                _LOGGER.warning("announce not queued for the router: %s", err)

    def _bridge_state(self) -> dict[str, object]:
        state: dict[str, object] = {
            "peers": 0 if self.peers is None else self.peers.peer_count,
            "ble": self.ble.diagnostics(),
            "gatt": {
                "pending": len(self.gatt),
                **self.bridges.gatt_results(),
                **{f"dropped_{reason}": n for reason, n in self.gatt.dropped.items()},
            },
            "mqtt_devices": {"adopted": len(self.devices), "dropped": dict(self.devices.dropped())},
        }
        if self.peers is not None:
            state["lan"] = self.peers.stats()
        if self.forwarder is not None:
            uplink = self.forwarder.stats()
            state["uplink"] = {
                **uplink.as_dict(),
                "connected": uplink.link_up,
                "router": self.settings.upstream_router,
                "token_expires": self._token_expires,
            }
        return state

    async def stop(self) -> None:
        """Save, mark the gateway offline, disconnect, stop the embedded broker, close the store."""
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
        if self.discovery is not None:
            await self.discovery.stop()
        if self.peers is not None:
            await self.peers.stop()
        for task in list(self._background):
            task.cancel()
        if self.forwarder is not None:
            await self.forwarder.stop()
        self.commits.flush()
        self.save()
        await self.bus.stop(goodbye=(self.topics.availability, api.OFFLINE))
        if self._embedded is not None:
            await self._embedded.stop()
        self.store.close()
        _LOGGER.info("gateway stopped")


class _Bridges(BridgeHooks):
    """Enrolment and removal on the API start and stop the bridges' work for a thing;
    packets for elsewhere go to the uplink."""

    def __init__(
        self,
        fleet: DeviceFleet,
        ble: BleEndpoint,
        gatt: GattRequests,
        uplink: Forwarder | None,
        before_forward: Callable[[Address], None] = lambda source: None,
        *,
        peers: PeerNetwork | None = None,
    ) -> None:
        self._fleet = fleet
        self._ble = ble
        self._gatt = gatt
        self._uplink = uplink
        self._before_forward = before_forward
        self._peers = peers
        self._gatt_results: Counter[str] = Counter()

    @property
    def router(self) -> Address | None:
        return None if self._uplink is None else self._uplink.link.router

    def gatt_write(self, thing: Thing, data: bytes) -> str | None:
        assert thing.mac is not None
        try:
            self._gatt.submit(
                thing.mac,
                GATT_SERVICE_UUID,
                GATT_PACKET_IN_UUID,
                data,
                now=time.monotonic(),
                on_result=self._count_gatt_result,
            )
        except (GattMessageError, OverflowError) as err:
            _LOGGER.warning("GATT write not requested: %s", err)
            return "gatt_refused"
        return None

    def _count_gatt_result(self, result: GattResult) -> None:
        self._gatt_results["ok" if result.ok else str(result.error)] += 1

    def gatt_results(self) -> dict[str, int]:
        return dict(self._gatt_results)

    def forward_up(self, packet: Packet, data: bytes, stored: Callable[[], None]) -> str | None:
        """To the LAN peer that announced the destination, else to the regional router."""
        try:
            durable = None if self._peers is None else self._peers.route(packet, data)
            if durable is None:
                if self._uplink is None:
                    return "no_uplink"
                self._before_forward(packet.src)
                durable = self._uplink.submit(packet, data)
        except ForwardError as err:
            return err.reason
        durable.add_done_callback(lambda done: stored() if done.exception() is None else None)
        return None

    def adopt(self, definition: MqttDeviceDefinition) -> None:
        self._fleet.adopt(definition)

    def release(self, local_id: str) -> None:
        self._fleet.release(local_id)

    def ble_enrolled(self, thing: Thing) -> None:
        assert thing.mac is not None
        key = None if thing.secret is None else bytes.fromhex(thing.secret)
        self._ble.enroll(thing.mac, thing.kind.value, key)

    def ble_removed(self, thing: Thing) -> None:
        assert thing.mac is not None
        self._ble.forget(thing.mac)


async def run_until_stopped(server: GatewayServer, stop: asyncio.Event) -> None:
    """Start the server, wait for the stop event, stop the server."""
    await server.start()
    try:
        await stop.wait()
    finally:
        await server.stop()
