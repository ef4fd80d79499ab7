"""A gateway server in the test's event loop, on a real Mosquitto, with helpers to drive it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
import itertools
import json
from pathlib import Path
from typing import Any

from i4t_gateway import api
from i4t_gateway.endpoint import Sender
from i4t_gateway.identity import Address, Identity
from i4t_gateway.payloads import Data, NodeHealth, Payload, Reading
from i4t_gateway.server import GatewayServer
from i4t_gateway.settings import BrokerAddress, Settings
from i4t_gateway.wire import open_packet

from .api_schemas import assert_valid
from .brokers import Mosquitto
from .mqtt_probe import Probe

_request_ids = itertools.count(1)


def fast_settings(data_dir: Path, broker_url: str, **overrides: Any) -> Settings:
    """Timeouts short enough to watch nodes die within a test."""
    values: dict[str, Any] = {
        "timeout_factor": 2.0,
        "timeout_floor": 0.6,
        "timeout_fallback": 0.6,
        **overrides,
    }
    return Settings(data_dir=data_dir, broker=BrokerAddress.from_url(broker_url), **values)


def uplink_options(router_broker: Mosquitto, router: Identity) -> dict[str, Any]:
    """Settings that point a gateway's uplink at a TLS router broker and the router's key."""
    assert router_broker.tls is not None
    return {
        "upstream_url": f"mqtts://127.0.0.1:{router_broker.port}",
        "upstream_token": "token-for-tests",
        "upstream_router": router.address.text,
        "upstream_ca_file": router_broker.tls.ca_file,
    }


async def eventually(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 - the probe's thread changes it
            await asyncio.sleep(0.02)


@dataclass
class NativeThing:
    """An I4T-native Wi-Fi thing: its own key, signing its packets, on its own topics."""

    probe: Probe
    identity: Identity = field(default_factory=Identity.generate)

    def __post_init__(self) -> None:
        self.sender = Sender(self.identity)
        self.probe.client.subscribe(api.thing_down(self.address.text), 1)

    @property
    def address(self) -> Address:
        return self.identity.address

    def send(self, to: Address, payload: Payload) -> bytes:
        packet = self.sender.packet(to, payload)
        self.probe.client.publish(api.thing_up(self.address.text), self.sender.seal(packet), qos=1)
        return packet.message_id

    def report(
        self, gateway: Address, health: NodeHealth = NodeHealth.HEALTHY, **readings: float
    ) -> bytes:
        values = tuple(Reading(name, value, "°C") for name, value in readings.items()) or (
            Reading("temperature", 21.5, "°C"),
        )
        return self.send(gateway, Data(values, health))

    def received(self) -> list[bytes]:
        topic = api.thing_down(self.address.text)
        return [p for t, p, _ in self.probe.messages if t == topic]

    def payloads(self, kind: type[Payload]) -> list[Any]:
        """What the gateway sent this thing, of one payload type, as opened packets."""
        opened = [open_packet(raw, recipient=self.identity).packet for raw in self.received()]
        return [packet for packet in opened if isinstance(packet.payload, kind)]

    def acked(self, message_id: bytes) -> bool:
        for raw in self.received():
            packet = open_packet(raw).packet
            if packet.type.name == "ACK" and message_id in packet.payload.message_ids:  # type: ignore[union-attr]
                return True
        return False


async def start_harness(settings: Settings, broker_port: int) -> Harness:
    """Start a server and wait until it is online (requests sent earlier would be lost)."""
    probe = Probe(broker_port, "i4t/#")
    server = GatewayServer(settings)
    await server.start()
    await eventually(lambda: probe.last(server.topics.availability) == api.ONLINE)
    return Harness(server, probe)


class Harness:
    """The server, a probe on everything under i4t/, and request/response helpers."""

    def __init__(self, server: GatewayServer, probe: Probe) -> None:
        self.server = server
        self.probe = probe
        self.topics = server.topics

    async def stop(self) -> None:
        await self.server.stop()
        self.probe.close()
        self.validate_everything_published()

    def validate_everything_published(self) -> None:
        """Every message the gateway published on its API matches its schema (docs/API.md)."""
        base = self.topics.base
        schemas = [
            (f"{base}/state/gateway", "gateway_state"),
            (f"{base}/state/node/", "node_state"),
            (f"{base}/state/group/", "group_state"),
            (f"{base}/state/candidates", "candidates"),
            (f"{base}/event/node", "node_event"),
            (f"{base}/event/group", "group_event"),
            (f"{base}/reply/", "reply"),
            (f"{base}/ble/gatt/request", "ble_gatt_request"),
            (self.topics.discovery, "gateway_info"),
        ]
        checked = 0
        for topic, payload, _ in list(self.probe.messages):
            for prefix, schema in schemas:
                if topic.startswith(prefix) and payload:  # empty: retained state cleared
                    assert_valid(schema, payload)
                    checked += 1
        assert checked, "the gateway published nothing on its API"

    @property
    def gateway(self) -> Address:
        return self.server.identity.address

    def thing(self) -> NativeThing:
        return NativeThing(self.probe)

    async def request(self, command: str, /, **body: Any) -> dict[str, Any]:
        request_id = f"t{next(_request_ids)}"
        payload = json.dumps({"request_id": request_id, **body}).encode()
        self.probe.client.publish(f"{self.topics.base}/cmd/{command}", payload, qos=1)
        reply_topic = self.topics.reply(request_id)
        await eventually(lambda: self.probe.last(reply_topic) is not None)
        return assert_valid("reply", self.probe.last(reply_topic) or b"")

    async def enroll(self, thing: NativeThing, name: str) -> str:
        reply = await self.request(
            "enroll", kind="native", name=name, public_key=thing.identity.public_bytes.hex()
        )
        assert reply["ok"], reply
        address: str = reply["result"]["address"]
        return address

    def node(self, address: Address | str) -> dict[str, Any] | None:
        text = address if isinstance(address, str) else address.text
        raw = self.probe.last(self.topics.node_state(text))
        return assert_valid("node_state", raw) if raw else None

    def group(self, group_id: str) -> dict[str, Any] | None:
        raw = self.probe.last(self.topics.group_state(group_id))
        return assert_valid("group_state", raw) if raw else None

    def events(self, kind: str) -> list[dict[str, Any]]:
        topic = self.topics.node_event if kind == "node" else self.topics.group_event
        return [
            assert_valid(f"{kind}_event", payload)
            for t, payload, _ in self.probe.messages
            if t == topic
        ]

    async def node_status(
        self, thing: NativeThing, status: str | None, seconds: float = 10
    ) -> None:
        await eventually(lambda: (self.node(thing.address) or {}).get("status") == status, seconds)

    async def group_status(self, group_id: str, status: str, seconds: float = 10) -> None:
        await eventually(lambda: (self.group(group_id) or {}).get("status") == status, seconds)
