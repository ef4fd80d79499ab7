"""The gateway server with an uplink: things' packets for elsewhere reach the regional router
durably, and what the router sends down reaches the thing (router stand-in over TLS)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from i4t_gateway.endpoint import Sender
from i4t_gateway.identity import Identity
from i4t_gateway.payloads import Command
from i4t_gateway.wire import open_packet

from .brokers import Mosquitto
from .gateway_harness import Harness, eventually, fast_settings, start_harness, uplink_options
from .router_standin import RouterStandIn

ROUTER = Identity.from_seed(bytes([21]) * 32)
FAR_AWAY = Identity.from_seed(bytes([22]) * 32)


@pytest.fixture
def standin(router_broker: Mosquitto) -> Iterator[RouterStandIn]:
    assert router_broker.tls is not None
    router = RouterStandIn(router_broker.port, router_broker.tls.ca_file, ROUTER)
    yield router
    router.close()


@pytest.fixture
async def harness(
    mosquitto: Mosquitto,
    router_broker: Mosquitto,
    tmp_path: Path,
) -> AsyncIterator[Harness]:
    assert router_broker.tls is not None
    settings = fast_settings(
        tmp_path / "data",
        mosquitto.url,
        timeout_floor=30.0,
        timeout_fallback=30.0,
        **uplink_options(router_broker, ROUTER),
    )
    gateway = await start_harness(settings, mosquitto.port)
    yield gateway
    await gateway.stop()


async def test_packets_for_elsewhere_go_up_and_come_down(
    harness: Harness, standin: RouterStandIn
) -> None:
    thing = harness.thing()
    await harness.enroll(thing, "Roaming sensor")
    message_id = thing.send(FAR_AWAY.address, Command("hello"))
    # Acked once durable in the gateway's queue; delivered to the router over TLS.
    await eventually(lambda: thing.acked(message_id), seconds=15)
    await eventually(lambda: message_id in standin.unique(), seconds=15)
    forwarded = harness.server.forwarder
    assert forwarded is not None
    await eventually(lambda: forwarded.stats().acked >= 1, seconds=15)

    # The router sends a packet down for the thing: it arrives, signature intact.
    far = Sender(FAR_AWAY)
    packet = far.packet(thing.address, Command("welcome"))
    standin.send_down(harness.gateway, far.seal(packet))
    await eventually(
        lambda: any(
            open_packet(r).packet.message_id == packet.message_id for r in thing.received()
        ),
        seconds=15,
    )
    # And a packet for an address the gateway does not serve is not flooded down.
    stray = far.packet(FAR_AWAY.address, Command("stray"))
    standin.send_down(harness.gateway, far.seal(stray))
    await eventually(lambda: forwarded.stats().dropped.get("unasked", 0) >= 1, seconds=15)


async def test_without_an_uplink_remote_packets_are_not_acked(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    gateway = await start_harness(fast_settings(tmp_path / "d", mosquitto.url), mosquitto.port)
    try:
        thing = gateway.thing()
        await gateway.enroll(thing, "Lonely")
        message_id = thing.send(FAR_AWAY.address, Command("hello"))
        await eventually(lambda: gateway.server.core.counters.no_route >= 1)
        assert not thing.acked(message_id)  # it keeps the packet and retries
        reply = await gateway.request("send", destination=FAR_AWAY.address.text, command="x")
        assert reply["error"]["code"] == "no_route"
        reply = await gateway.request("send", destination="some-name", command="x")
        assert reply["error"]["code"] == "no_route"  # names are resolved by a router
    finally:
        await gateway.stop()
