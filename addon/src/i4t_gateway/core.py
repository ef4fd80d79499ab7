"""The gateway's mesh core: things, node groups, health and the local API, without any I/O.

The server feeds it what arrives (packets from native things, API requests, the clock) and
it answers through one ``publish`` callable; so it is tested without a broker. It is the
configuration, status and address agent of its node groups: it creates and edits them on
request, runs the health engine over them and publishes their state and status events.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
import dataclasses
from dataclasses import dataclass, field
import logging
import secrets
import time
from typing import Any, Final

from . import api
from .acl import AccessPolicy
from .agents import AgentSettings, StatusAgent
from .commands import (
    COMMAND_NAMES,
    ApiError,
    Configure,
    Enroll,
    GroupCreate,
    GroupDelete,
    GroupUpdate,
    MemberSpec,
    Mute,
    Remove,
    Request,
    RequestError,
    Send,
    parse_request,
    reply_error,
    reply_ok,
)
from .cose import PacketError
from .endpoint import Inbound, Receiver, Sender
from .groups import (
    ConfigError,
    ConfigRequest,
    CreateGroup,
    DeleteGroup,
    Group,
    GroupRegistry,
    Member,
    Quorum,
    RemoveMember,
    ReplaceGroup,
)
from .health import (
    GroupStatusChanged,
    HealthEngine,
    NodeStatus,
    NodeStatusChanged,
    StatusEvent,
)
from .identity import Address, AddressError, Identity
from .mqtt_devices import (
    DefinitionError,
    MqttDeviceDefinition,
    definition_for_enrolment,
    definition_from_json,
)
from .names import verify_name_record
from .payloads import (
    Command,
    Data,
    HealthResponse,
    NameAnswer,
    NameQuery,
    NodeHealth,
    PacketType,
    Payload,
)
from .things import EnrolmentError, Thing, ThingKind, Things
from .timeouts import TimeoutPolicy
from .wire import Packet

_LOGGER = logging.getLogger(__name__)

Publish = Callable[[str, bytes, bool], None]

CANDIDATES_MIN_INTERVAL: Final = 1.0
"""Seconds between candidate-list publishes caused by strangers. Each new candidate republishes
the whole list (up to 256 entries, tens of KB): without a bound, a stream of packets or adverts
from new addresses would turn each small message into a large retained publish."""
UNANSWERABLE_LOG_INTERVAL: Final = 60.0
"""Seconds between warnings about unanswerable requests; the others are counted and logged at
debug level, so that a client publishing garbage in a loop cannot flood the log."""
"""publish(topic, payload, retain)"""


class BridgeHooks:
    """What the server's bridges do when things are enrolled or removed (it owns the bus)."""

    def adopt(self, definition: MqttDeviceDefinition) -> None:
        """Start reading an MQTT device's topics."""

    def release(self, local_id: str) -> None:
        """Stop reading an MQTT device's topics."""

    def ble_enrolled(self, thing: Thing) -> None:
        """Start decoding a BLE thing's adverts."""

    def ble_removed(self, thing: Thing) -> None:
        """Stop decoding a BLE thing's adverts (it becomes a candidate again when heard)."""

    def gatt_write(self, thing: Thing, data: bytes) -> str | None:
        """Have the integration write ``data`` into a BLE thing's packet-in characteristic;
        None when requested, else why not."""
        return "no_ble_bridge"

    @property
    def router(self) -> Address | None:
        """The regional router's address, when there is an uplink."""
        return None

    def forward_up(self, packet: Packet, data: bytes, stored: Callable[[], None]) -> str | None:
        """Queue ``data`` for the regional router; call ``stored`` once it is durable.

        Returns None when queued, else why not ("no_uplink", "queue_full", "rate_limited").
        """
        return "no_uplink"


_REPORTED: dict[NodeHealth, NodeStatus] = {
    NodeHealth.HEALTHY: NodeStatus.HEALTHY,
    NodeHealth.BROKEN: NodeStatus.BROKEN,
}


NAME_QUERY_TIMEOUT = 15.0
"""Seconds a request to send to a name waits for the router's answer."""


@dataclass(frozen=True, slots=True)
class _NameQuery:
    name: str
    request_id: str
    command: Send
    asked: float


@dataclass
class Counters:
    """What the gateway counts; published in its state."""

    received: int = 0
    delivered_local: int = 0
    acked: int = 0
    forwarded_up: int = 0
    delivered_down: int = 0
    no_route: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    def export(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "delivered_local": self.delivered_local,
            "acked": self.acked,
            "forwarded_up": self.forwarded_up,
            "delivered_down": self.delivered_down,
            "no_route": self.no_route,
            "dropped": dict(sorted(self.dropped.items())),
        }


class GatewayCore:
    """Everything the gateway knows and decides; the server does the I/O around it."""

    def __init__(
        self,
        identity: Identity,
        publish: Publish,
        *,
        policy: TimeoutPolicy | None = None,
        agent_settings: AgentSettings | None = None,
        device_hooks: BridgeHooks | None = None,
        saved: dict[str, Any] | None = None,
        now: float = 0.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.identity = identity
        self.topics = api.GatewayTopics(identity.address.text)
        self._publish = publish
        self.things = Things(identity.public_bytes)
        self.group_names: dict[str, str] = {}
        self.counters = Counters()
        self.devices = device_hooks or BridgeHooks()
        self._factor_override: float | None = None
        self._names: dict[str, tuple[Address, float]] = {}  # resolved names, until they expire
        self._name_queries: dict[bytes, _NameQuery] = {}
        self.candidates_changed = False
        # New candidates: published at once, or at most every CANDIDATES_MIN_INTERVAL (by this
        # clock: an advert's own time is the sender's word) with the rest in tick().
        self._monotonic = monotonic
        self._new_candidates_at = float("-inf")
        self._new_candidates_pending = False
        self._unanswerable_logged_at = float("-inf")
        self._bridge_parts: dict[str, Any] = {}
        self.sender = Sender(identity)
        self.receiver = Receiver(identity)
        self._muted_nodes: set[bytes] = set()
        self._shown_status: dict[bytes, NodeStatus | None] = {}
        # Groups whose state changed during the call under way; published once at its end.
        self._dirty_groups: set[str] = set()
        self.dirty = False  # something worth saving changed since the last export()
        if saved:
            self.things.restore(saved["things"])
            self.group_names = dict(saved["group_names"])
            self.registry = GroupRegistry.restore(saved["groups"])
            self.acl = AccessPolicy.restore(self.registry, saved["acl"])
            self.health = HealthEngine.restore(
                self.registry, saved["health"], now, policy=policy, on_event=self._on_event
            )
            self._muted_nodes = {k for k in self.health.nodes() if self.health.node_view(k).muted}
            self._factor_override = saved.get("timeout_factor")
            if self._factor_override is not None:  # set over the API: wins over the command line
                self.health.set_policy(
                    dataclasses.replace(self.health.policy, factor=float(self._factor_override))
                )
        else:
            self.registry = GroupRegistry()
            self.acl = AccessPolicy(self.registry)
            self.health = HealthEngine(self.registry, policy=policy, on_event=self._on_event)
        self._agent = self.registry.config_agent(self._authorize)
        self.agents = StatusAgent(
            identity.public_bytes,
            self.registry,
            self.health,
            self._is_native,
            self._send_packet,
            settings=agent_settings,
        )

    def _is_native(self, address: Address) -> bool:
        thing = self.things.get(address)
        return thing is not None and thing.kind is ThingKind.NATIVE

    def _send_packet(self, to: Address, payload: Payload) -> None:
        """A packet from the gateway to one of its native things."""
        packet = self.sender.packet(to, payload)
        self._publish(api.thing_down(to.text), self.sender.seal(packet), False)

    def _authorize(self, request: ConfigRequest) -> bool:
        # The local API is the configuration agent's UI: requests from it carry the gateway's
        # own key. Group configuration from elsewhere (signed group_config packets from an
        # administrator key) is not accepted yet.
        return request.requester == self.identity.public_bytes

    # -- persistence ---------------------------------------------------------------------

    def export(self) -> dict[str, Any]:
        """Everything that must survive a restart, as JSON-compatible data."""
        self.dirty = False
        return {
            "things": self.things.export(),
            "group_names": dict(self.group_names),
            "groups": self.registry.export(),
            "acl": self.acl.export(),
            "health": self.health.export(),
            "timeout_factor": self._factor_override,
        }

    # -- publishing ----------------------------------------------------------------------

    def _send_json(self, topic: str, payload: dict[str, Any], *, retain: bool) -> None:
        self._publish(topic, api.encode(payload), retain)

    def publish_everything(self, now: float, extra: dict[str, Any] | None = None) -> None:
        """All retained state, e.g. after (re)connecting to a broker that may have lost it."""
        for thing in self.things:
            self._publish_node(thing)
        for group in self.registry.groups():
            self._publish_group(group.group_id)
        self.publish_candidates()
        self.publish_gateway_state(now, extra)

    def publish_gateway_state(self, now: float, extra: dict[str, Any] | None = None) -> None:
        """The gateway's state; ``extra`` is the server's bridge parts (BLE, GATT, uplink).

        Without ``extra`` (after a request) the last parts given are repeated: the state is
        retained, and leaving them out would make clients see the uplink as unknown until the
        next refresh.
        """
        if extra is not None:
            self._bridge_parts = dict(extra)
        state: dict[str, Any] = {
            "nodes": len(self.things),
            "groups": len(self.registry.groups()),
            "candidates": len(self.things.candidates()),
            "packets": self.counters.export(),
            "dropped_invalid": {
                str(reason): count for reason, count in sorted(self.receiver.dropped.items())
            },
            "at": round(now, 3),
        }
        state.update(self._bridge_parts)
        self._send_json(self.topics.gateway_state, state, retain=True)

    def publish_candidates(self) -> None:
        self.candidates_changed = False
        self._new_candidates_pending = False
        candidates = [c.export() for c in self.things.candidates()]
        self._send_json(self.topics.candidates, {"candidates": candidates}, retain=True)

    def _publish_node(self, thing: Thing) -> None:
        self._send_json(
            self.topics.node_state(thing.address.text), self._node_state(thing), retain=True
        )
        self._shown_status[thing.key] = self.health.node_status(thing.key)

    def _node_state(self, thing: Thing) -> dict[str, Any]:
        key = thing.key
        member = self.registry.membership(key)
        view = self.health.node_view(key) if self.health.node_status(key) is not None else None
        readings = self.things.readings.get(thing.address, {})
        return {
            "address": thing.address.text,
            "name": thing.name,
            "kind": thing.kind.value,
            "mac": thing.mac,
            "status": None if view is None else view.status.value,
            "muted": bool(view and view.muted),
            "group_id": None if member is None else member.group_id,
            "node_id": None if member is None else member.node_id,
            "role": None if member is None else member.role.value,
            "class": None if member is None else member.node_class.value,
            "last_seen": None
            if view is None or view.last_heard is None
            else round(view.last_heard, 3),
            "interval": None
            if view is None or view.largest_gap is None
            else round(view.largest_gap, 3),
            "timeout": None if view is None else round(view.timeout, 3),
            "rssi": self.things.rssi.get(thing.address),
            "readings": {name: reading.export() for name, reading in sorted(readings.items())},
        }

    def _publish_group(self, group_id: str) -> None:
        group = self.registry.group(group_id)
        if group is None:
            self._publish(self.topics.group_state(group_id), api.CLEARED, True)
            return
        view = self.health.group_view(group_id)
        state = {
            "group_id": group_id,
            "name": self.group_names.get(group_id, group_id),
            "status": view.status.value,
            "response": view.response.value,
            "healthy": view.healthy,
            "broken": view.broken,
            "dead": view.dead,
            "members": [_member_state(member) for member in _members(group)],
            "quorum": group.quorum.export(),
            "quorum_size": view.quorum,
            "muted": view.muted,
        }
        self._send_json(self.topics.group_state(group_id), state, retain=True)

    def _on_event(self, event: StatusEvent) -> None:
        if isinstance(event, NodeStatusChanged):
            self._on_node_event(event)
        else:
            self._on_group_event(event)

    def _on_node_event(self, event: NodeStatusChanged) -> None:
        address = Address.from_bytes(event.key)
        thing = self.things.get(address)
        if thing is None:
            return
        member = self.registry.membership(event.key)
        self._send_json(
            self.topics.node_event,
            {
                "address": address.text,
                "name": thing.name,
                "group_id": None if member is None else member.group_id,
                "old": None if event.old is None else event.old.value,
                "new": event.new.value,
            },
            retain=False,
        )
        self._publish_node(thing)
        self._republish_group_of(event.key)

    def _on_group_event(self, event: GroupStatusChanged) -> None:
        self._send_json(
            self.topics.group_event,
            {
                "group_id": event.group_id,
                "name": self.group_names.get(event.group_id, event.group_id),
                "old": None if event.old is None else event.old.value,
                "new": None if event.new is None else event.new.value,
            },
            retain=False,
        )
        self._dirty_groups.add(event.group_id)

    # -- the clock -----------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Declare silent nodes DEAD and end due temporary memberships; call at next_deadline()."""
        self._dirty_groups.update(member.group_id for member in self._expiring(now))
        self.health.expire(now)
        self.agents.tick(now)
        self._expire_name_queries(now)
        self._show_quiet_changes()
        self._flush_groups()
        if self._new_candidates_pending:
            self._new_candidate()

    def next_deadline(self) -> float:
        health = self.health.next_deadline()
        agents = self.agents.next_due()
        return agents if health is None else min(health, agents)

    def _expiring(self, now: float) -> list[Member]:
        return [
            member
            for group in self.registry.groups()
            for member in group
            if member.expires_at is not None and member.expires_at <= now
        ]

    def _show_quiet_changes(self) -> None:
        # Muted nodes raise no events, but what they show must stay true.
        for key in self._muted_nodes:
            thing = self.things.get(Address.from_bytes(key))
            if thing is not None and self._shown_status.get(key) != self.health.node_status(key):
                self._publish_node(thing)
                self._republish_group_of(key)

    def _republish_group_of(self, key: bytes) -> None:
        member = self.registry.membership(key)
        if member is not None:
            self._dirty_groups.add(member.group_id)

    def _flush_groups(self) -> None:
        dirty, self._dirty_groups = self._dirty_groups, set()
        for group_id in sorted(dirty):
            self._publish_group(group_id)

    # -- readings and health from any bridge -----------------------------------------------

    def heard(
        self,
        thing: Thing,
        now: float,
        *,
        status: NodeStatus | None = None,
        readings: Sequence[tuple[str, Any, str | None, str | None]] = (),
        rssi: int | None = None,
    ) -> None:
        """A thing was heard: with what it says of itself (or None: unchanged) and readings."""
        for name, value, unit, device_class in readings:
            self.things.record(
                thing.address, name, value, unit=unit, device_class=device_class, now=now
            )
        if rssi is not None:
            self.things.rssi[thing.address] = rssi
        if status is None:
            current = self.health.node_status(thing.key)
            status = current if current in (NodeStatus.HEALTHY, NodeStatus.BROKEN) else None
        self.health.report(thing.key, status or NodeStatus.HEALTHY, now)
        self._publish_node(thing)
        self._republish_group_of(thing.key)
        self._flush_groups()
        self.dirty = True

    def record_only(
        self, thing: Thing, now: float, readings: Sequence[tuple[str, Any, str | None, str | None]]
    ) -> None:
        """Readings of uncertain age (a broker's retained message): shown, not taken as life."""
        for name, value, unit, device_class in readings:
            self.things.record(
                thing.address, name, value, unit=unit, device_class=device_class, now=now
            )
        self._publish_node(thing)

    def went_offline(self, thing: Thing) -> None:
        """A bridge knows the thing is gone (its MQTT last will): DEAD now, not at its timeout."""
        if self.health.node_status(thing.key) is None:
            return
        self.health.declare_dead(thing.key)
        self._publish_node(thing)
        self._republish_group_of(thing.key)
        self._flush_groups()

    def heard_unenrolled_ble(
        self, mac: str, kind: ThingKind, now: float, *, rssi: int, hint: str | None
    ) -> None:
        """A BLE advert in a known format from a thing that is not enrolled."""
        if self.things.heard_unenrolled(mac, kind, now, rssi=rssi, hint=hint):
            self._new_candidate()
        else:
            self.candidates_changed = True  # published with the next gateway state

    def adopted_definitions(self) -> list[MqttDeviceDefinition]:
        """The definitions of the enrolled MQTT devices, to adopt at start."""
        return [
            definition_from_json(thing.device)
            for thing in self.things
            if thing.kind is ThingKind.MQTT and thing.device is not None
        ]

    # -- native Wi-Fi things ---------------------------------------------------------------

    def handle_thing_packet(self, topic: str, data: bytes, now: float) -> None:
        """A signed packet a native thing published on ``i4t/thing/<address>/up``."""
        try:
            inbound = self.receiver.receive(data)
        except PacketError:
            return  # counted by reason in receiver.dropped
        packet = inbound.packet
        if topic != api.thing_up(packet.src.text):
            # Signed, but published on another thing's topic: refuse rather than guess.
            self.counters.dropped["topic_mismatch"] += 1
            return
        thing = self.things.get(packet.src)
        if thing is None or thing.kind is not ThingKind.NATIVE:
            self._heard_unenrolled_native(inbound, now)
            return
        self.counters.received += 1
        if inbound.duplicate:
            self._ack(packet.src, packet.message_id)  # our ack was lost: ack again
            return
        if inbound.for_me:
            self._consume(thing, inbound, now)
        elif not self._route_local(inbound):
            self._route_up(inbound)
            return
        self._done(inbound)

    def _done(self, inbound: Inbound) -> None:
        """The packet is delivered or stored: remember it (de-dup) and ack it to its thing."""
        self.receiver.handled(inbound)
        self._ack(inbound.packet.src, inbound.packet.message_id)

    def _route_up(self, inbound: Inbound) -> None:
        """Anything not for this hub goes to the regional router, acked once durable there."""
        try:
            data = inbound.received.forwarded()
        except PacketError:
            self.counters.dropped["hop_limit"] += 1
            self._done(inbound)  # refused for good: ack so that the thing stops retrying
            return
        refused = self.devices.forward_up(inbound.packet, data, lambda: self._stored(inbound))
        if refused is not None:
            # Not stored anywhere, so not acked: the thing keeps it and retries later.
            self.counters.no_route += 1
            self.counters.dropped[refused] += 1

    def _stored(self, inbound: Inbound) -> None:
        self.counters.forwarded_up += 1
        self._done(inbound)

    def _heard_unenrolled_native(self, inbound: Inbound, now: float) -> None:
        packet = inbound.packet
        self.counters.dropped["not_enrolled"] += 1
        if packet.proxy is not None:
            return  # another gateway's proxied thing: not ours to enrol
        if self.things.heard_unenrolled(
            packet.src.text,
            ThingKind.NATIVE,
            now,
            public_key=inbound.received.signer_key,
        ):
            self._new_candidate()

    def _new_candidate(self) -> None:
        """Publish the list now, unless it was published for a new candidate less than
        CANDIDATES_MIN_INTERVAL ago: then tick() publishes it when that interval is over."""
        if self._monotonic() - self._new_candidates_at >= CANDIDATES_MIN_INTERVAL:
            self.publish_candidates()
            self._new_candidates_at = self._monotonic()
        else:
            self._new_candidates_pending = True

    def _consume(self, thing: Thing, inbound: Inbound, now: float) -> None:
        payload = inbound.packet.payload
        if isinstance(payload, Data):
            readings = [(r.name, r.value, r.unit, None) for r in payload.readings]
            # PROTOCOL.md: a data packet without a health field says "healthy".
            health = payload.health or NodeHealth.HEALTHY
            self.heard(thing, now, status=_REPORTED[health], readings=readings)
        elif isinstance(payload, HealthResponse) and payload.subject is None:
            self.heard(thing, now, status=_REPORTED.get(payload.health))
        elif inbound.packet.type is PacketType.ACK:
            self.counters.acked += 1
            self.heard(thing, now)
        else:
            if not self.agents.handle(inbound.packet):
                self.counters.dropped["unsupported_type"] += 1
            self.heard(thing, now)

    def _route_local(self, inbound: Inbound) -> bool:
        """Deliver to another thing of this hub: traffic between local things stays local."""
        packet = inbound.packet
        target = self.things.get(packet.dst)
        if target is None or target.kind is not ThingKind.NATIVE:
            return False
        if not self.acl.may_send(packet.src.bytes, packet.dst.bytes):
            self.counters.dropped["acl"] += 1
            return True  # refused for good: ack so that the thing stops retrying
        try:
            forwarded = inbound.received.forwarded()
        except PacketError:
            self.counters.dropped["hop_limit"] += 1
            return True
        self._publish(api.thing_down(packet.dst.text), forwarded, False)
        self.counters.delivered_local += 1
        return True

    def _ack(self, to: Address, message_id: bytes) -> None:
        self._publish(api.thing_down(to.text), self.sender.ack(to, [message_id]), False)

    # -- requests on the local API ---------------------------------------------------------

    def handle_request(self, topic: str, payload: bytes, now: float) -> None:
        """A request on ``<base>/cmd/<command>``; the reply goes to ``<base>/reply/<id>``."""
        command = topic.rsplit("/", 1)[-1]
        try:
            request = parse_request(command, payload)
        except RequestError as err:
            self._reply(err.request_id, reply_error(err.request_id, err))
            return
        except ApiError as err:
            self.counters.dropped[f"request_{err.code}"] += 1
            # The topic level is whatever the publisher chose (an address, a MAC, control
            # characters): only a known command name goes into the log.
            shown = command if command in COMMAND_NAMES else "an unknown command"
            level = logging.DEBUG
            if self._monotonic() - self._unanswerable_logged_at >= UNANSWERABLE_LOG_INTERVAL:
                self._unanswerable_logged_at = self._monotonic()
                level = logging.WARNING
            _LOGGER.log(level, "unanswerable request on %s: %s", shown, err.message)
            return
        try:
            result = self._execute(request, now)
        except ApiError as err:
            self._reply(request.request_id, reply_error(request.request_id, err))
            return
        if result is None:
            return  # answered later (a name being resolved)
        self.dirty = True
        self._flush_groups()
        self._reply(request.request_id, reply_ok(request.request_id, result))
        self.publish_gateway_state(now)

    def _reply(self, request_id: str, body: dict[str, Any]) -> None:
        self._send_json(self.topics.reply(request_id), body, retain=False)

    def _execute(self, request: Request, now: float) -> dict[str, Any] | None:
        command = request.command
        if isinstance(command, Enroll):
            return self._enroll(command, now)
        if isinstance(command, Send) and isinstance(command.destination, str):
            return self._send_to_name(request.request_id, command, now)
        handlers: dict[type, Callable[[Any], dict[str, Any]]] = {
            Remove: self._remove,
            GroupCreate: self._group_create,
            GroupUpdate: self._group_update,
            GroupDelete: self._group_delete,
            Mute: self._mute,
            Send: self._send,
            Configure: self._configure_gateway,
        }
        return handlers[type(command)](command)

    def _enroll(self, command: Enroll, now: float) -> dict[str, Any]:
        try:
            if command.kind is ThingKind.NATIVE:
                assert command.public_key is not None
                thing = self.things.enrol_native(command.public_key, command.name, now)
            elif command.kind is ThingKind.MQTT:
                assert command.local_id is not None
                assert command.device is not None
                definition = definition_for_enrolment(
                    command.local_id, command.name, command.device
                )
                thing = self.things.enrol_mqtt(
                    command.local_id, definition.to_json(), command.name, now
                )
                self.devices.adopt(definition)
            else:
                assert command.mac is not None
                thing = self.things.enrol_ble(
                    command.kind, command.mac, command.secret, command.name, now
                )
                self.devices.ble_enrolled(thing)
        except (EnrolmentError, DefinitionError) as err:
            raise ApiError("invalid", str(err)) from err
        self._publish_node(thing)
        self.publish_candidates()
        return {"address": thing.address.text}

    def _remove(self, command: Remove) -> dict[str, Any]:
        address = command.address
        thing = self.things.get(address)
        if thing is None:
            raise ApiError("not_found", "no such enrolled thing")
        member = self.registry.membership(thing.key)
        if member is not None:
            self._configure(RemoveMember(member.group_id, member.node_id))
            self._publish_group(member.group_id)
        if self.health.node_status(thing.key) is not None:
            self.health.forget(thing.key)
        self._muted_nodes.discard(thing.key)
        self._shown_status.pop(thing.key, None)
        self.things.remove(address)
        if thing.kind is ThingKind.MQTT and thing.device is not None:
            self.devices.release(str(thing.device["id"]))
        elif thing.mac is not None:
            self.devices.ble_removed(thing)
        self._publish(self.topics.node_state(address.text), api.CLEARED, True)
        return {}

    def _members(self, group_id: str, specs: tuple[MemberSpec, ...]) -> tuple[Member, ...]:
        members = []
        for spec in specs:
            if self.things.get(spec.address) is None:
                raise ApiError("not_enrolled", f"{spec.address.text} is not enrolled")
            members.append(
                Member(
                    group_id=group_id,
                    node_id=spec.node_id or spec.address.text,
                    key=spec.address.bytes,
                    role=spec.role,
                    node_class=spec.node_class,
                    expires_at=spec.expires_at,
                )
            )
        return tuple(members)

    def _group_create(self, command: GroupCreate) -> dict[str, Any]:
        group_id = command.group_id or secrets.token_hex(6)
        if self.registry.group(group_id) is not None:
            raise ApiError("conflict", f"group {group_id} exists already")
        members = self._members(group_id, command.members)
        self._configure(CreateGroup(group_id, command.quorum, members))
        self.group_names[group_id] = command.name
        self._after_membership_change(group_id, members)
        return {"group_id": group_id}

    def _group_update(self, command: GroupUpdate) -> dict[str, Any]:
        group = self._group(command.group_id)
        before = tuple(group)
        members = (
            before if command.members is None else self._members(command.group_id, command.members)
        )
        quorum: Quorum = command.quorum or group.quorum
        self._configure(ReplaceGroup(group.group_id, quorum, members, group.version + 1))
        if command.name is not None:
            self.group_names[group.group_id] = command.name
        self._after_membership_change(group.group_id, before + members)
        return {"group_id": group.group_id}

    def _group_delete(self, command: GroupDelete) -> dict[str, Any]:
        group_id = command.group_id
        members = tuple(self._group(group_id))
        self._configure(DeleteGroup(group_id))
        self.group_names.pop(group_id, None)
        self._publish_group(group_id)
        self._after_membership_change(None, members)
        return {}

    def _group(self, group_id: str) -> Group:
        group = self.registry.group(group_id)
        if group is None:
            raise ApiError("not_found", f"no group {group_id}")
        return group

    def _after_membership_change(self, group_id: str | None, members: tuple[Member, ...]) -> None:
        if group_id is not None:
            self._publish_group(group_id)
        for member in members:
            thing = self.things.get(Address.from_bytes(member.key))
            if thing is not None:
                self._publish_node(thing)

    def _configure(self, operation: Any) -> None:
        try:
            self._agent.submit(ConfigRequest(self.identity.public_bytes, operation))
        except (ConfigError, ValueError) as err:
            raise ApiError("conflict", str(err)) from err

    def _mute(self, command: Mute) -> dict[str, Any]:
        if command.target == "group":
            self._group(command.ident)
            self.health.mute_group(command.ident, command.muted)
            self._publish_group(command.ident)
            return {}
        try:
            address = Address.from_text(command.ident)
        except AddressError as err:
            raise ApiError("invalid", f"id: not an I4T address ({err})") from err
        thing = self.things.get(address)
        if thing is None:
            raise ApiError("not_found", "no such enrolled thing")
        if self.health.node_status(thing.key) is None:
            raise ApiError("not_heard", "this thing has not been heard yet; mute it once it has")
        self.health.mute_node(thing.key, command.muted)
        if command.muted:
            self._muted_nodes.add(thing.key)
        else:
            self._muted_nodes.discard(thing.key)
        self._publish_node(thing)
        return {}

    def _configure_gateway(self, command: Configure) -> dict[str, Any]:
        if command.timeout_factor is not None:
            self._factor_override = command.timeout_factor
            self.health.set_policy(
                dataclasses.replace(self.health.policy, factor=command.timeout_factor)
            )
        return {"timeout_factor": self.health.policy.factor}

    def _send_to_name(self, request_id: str, command: Send, now: float) -> dict[str, Any] | None:
        """Send to a name: from the cache, or after the regional router resolved it."""
        name = str(command.destination)
        cached = self._names.get(name)
        if cached is not None and cached[1] > now:
            return {
                **self._send(dataclasses.replace(command, destination=cached[0])),
                "address": cached[0].text,
            }
        router = self.devices.router
        if router is None:
            raise ApiError("no_route", "names are resolved by a regional router, and none is set")
        query = self.sender.packet(router, NameQuery(name))
        refused = self.devices.forward_up(query, self.sender.seal(query), lambda: None)
        if refused is not None:
            raise ApiError("no_route", f"the name cannot be asked for ({refused})")
        self._name_queries[query.message_id] = _NameQuery(name, request_id, command, now)
        return None

    def _on_name_answer(self, answer: NameAnswer, now: float) -> None:
        query = self._name_queries.pop(answer.request_id, None)
        if query is None:
            self.counters.dropped["unasked_name_answer"] += 1
            return
        try:
            if answer.record is None:
                raise ApiError("not_found", f"no router knows the name {query.name}")
            try:
                record = verify_name_record(answer.record, now_ms=int(now * 1000))
            except PacketError as err:
                raise ApiError("not_found", f"the router's answer is not valid ({err})") from err
            if record.name != query.name:
                raise ApiError("not_found", "the router answered for another name")
            self._names[query.name] = (record.address, record.expires_ms / 1000)
            sent = self._send(dataclasses.replace(query.command, destination=record.address))
        except ApiError as err:
            self._reply(query.request_id, reply_error(query.request_id, err))
            return
        self._reply(
            query.request_id, reply_ok(query.request_id, {**sent, "address": record.address.text})
        )

    def _expire_name_queries(self, now: float) -> None:
        for message_id, query in list(self._name_queries.items()):
            if now - query.asked > NAME_QUERY_TIMEOUT:
                del self._name_queries[message_id]
                error = ApiError("no_route", f"no answer for the name {query.name} in time")
                self._reply(query.request_id, reply_error(query.request_id, error))

    def _send(self, command: Send) -> dict[str, Any]:
        assert isinstance(command.destination, Address)
        target = self.things.get(command.destination)
        packet = self.sender.packet(command.destination, Command(command.command, command.args))
        data = self.sender.seal(packet)
        if target is not None and target.kind is ThingKind.NATIVE:
            self._publish(api.thing_down(command.destination.text), data, False)
        elif target is not None and target.kind is ThingKind.BEACON:
            if (refused := self.devices.gatt_write(target, data)) is not None:
                raise ApiError("no_route", f"the BLE thing cannot be reached ({refused})")
        elif target is not None:
            raise ApiError("no_route", "BTHome sensors and MQTT devices take no commands")
        elif (refused := self.devices.forward_up(packet, data, lambda: None)) is not None:
            raise ApiError("no_route", f"not a thing of this gateway, and no uplink ({refused})")
        return {"message_id": packet.message_id.hex()}

    def deliver_from_router(self, inbound: Inbound) -> None:
        """A packet from the router or a LAN peer for one of this gateway's things (a native
        one gets it on its down topic, an I4T beacon by a GATT write), or for the gateway
        itself (an answer to its name query)."""
        if inbound.packet.dst == self.identity.address:
            if isinstance(inbound.packet.payload, NameAnswer):
                self._on_name_answer(inbound.packet.payload, time.time())
            else:
                self.counters.dropped["unsupported_type"] += 1
            return
        target = self.things.get(inbound.packet.dst)
        if target is None:
            self.counters.dropped["unasked"] += 1
            return
        try:
            data = inbound.received.forwarded()
        except PacketError:
            self.counters.dropped["hop_limit"] += 1
            return
        if target.kind is ThingKind.NATIVE:
            self._publish(api.thing_down(target.address.text), data, False)
        elif target.kind is ThingKind.BEACON:
            if (refused := self.devices.gatt_write(target, data)) is not None:
                self.counters.dropped[refused] += 1
                return
        else:
            # BTHome sensors and MQTT devices take no packets: refused for good (acked), so
            # that the sender's hop stops retrying.
            self.counters.dropped["takes_no_packets"] += 1
            return
        self.counters.delivered_down += 1

    def serves(self, address: Address) -> bool:
        """Whether packets for ``address`` belong here: the gateway and every enrolled thing,
        native or proxied (a BLE thing, an adopted MQTT device: the gateway signs for them, so
        answers to them come here)."""
        return address == self.identity.address or self.things.get(address) is not None


def _members(group: Group) -> list[Member]:
    return sorted(group, key=lambda member: member.node_id)


def _member_state(member: Member) -> dict[str, Any]:
    return {
        "node_id": member.node_id,
        "address": Address.from_bytes(member.key).text,
        "role": member.role.value,
        "class": member.node_class.value,
        "expires_at": member.expires_at,
    }
