"""LAN peers: two real gateways, each on its own Mosquitto, find each other by zeroconf and
exchange packets directly while the regional router is down (peers.py, lan_discovery.py).

zeroconf multicasts, so the scenarios run only inside a private network namespace that has
nothing but loopback: ``test_lan_peers_in_a_private_network`` starts this module again under
``unshare --net`` with I4T_LAN_NETNS=1, and only there do the ``inside`` tests run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
import os
from pathlib import Path
import re
import shutil
import subprocess
import sys

import pytest

from i4t_gateway.core import BridgeHooks, GatewayCore
from i4t_gateway.endpoint import Inbound, Receiver, Sender
from i4t_gateway.identity import Address, Identity
from i4t_gateway.lan_discovery import PeerEndpoint
from i4t_gateway.links import UPLINK_HOP
from i4t_gateway.payloads import Ack, Announce, Command, PacketType
from i4t_gateway.peers import FRAME_HEADER, MAX_FRAME, PeerConfig, PeerNetwork, frame, peer_hop
from i4t_gateway.queue import GroupCommit, PacketQueue, PersistentDedup
from i4t_gateway.server import GatewayServer
from i4t_gateway.store import open_store
from i4t_gateway.things import Thing, ThingKind
from i4t_gateway.wire import open_packet

from .brokers import Mosquitto, free_port, make_tls_certs
from .gateway_harness import (
    Harness,
    NativeThing,
    eventually,
    fast_settings,
    start_harness,
    uplink_options,
)
from .router_standin import RouterStandIn

IN_NETNS = os.environ.get("I4T_LAN_NETNS") == "1"
ROUTER = Identity.from_seed(bytes([31]) * 32)
FAR_AWAY = Identity.from_seed(bytes([32]) * 32)
ROGUE = Identity.from_seed(bytes([33]) * 32)
GRACE_SECONDS = 3.0
NETNS_SETUP = "ip link set lo up && ip link set lo multicast on && ip route add 224.0.0.0/4 dev lo"

inside = pytest.mark.skipif(
    not IN_NETNS,
    reason="zeroconf multicasts: runs only inside the private network namespace that "
    "test_lan_peers_in_a_private_network starts",
)


def test_lan_peers_in_a_private_network() -> None:
    """This module's ``inside`` tests, in a network namespace with only loopback."""
    if IN_NETNS:
        pytest.skip("this is the run inside the namespace")
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare and ip (util-linux, iproute2) for a private network")
    command = f"{NETNS_SETUP} && exec {sys.executable} -m pytest -p no:homeassistant " + (
        f"-p no:cacheprovider -q -x -k inside_ {__file__}"
    )
    result = subprocess.run(
        ["unshare", "--net", "sh", "-c", command],
        env={**os.environ, "I4T_LAN_NETNS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    if result.returncode != 0 and "Operation not permitted" in result.stderr[:500]:
        pytest.skip(f"no private network namespace here: {result.stderr.strip()[:200]}")
    print(output[-3000:])  # the inner summary, for the record
    assert result.returncode == 0, output[-6000:]
    passed = re.search(r"(\d+) passed", output)
    assert passed is not None, output[-3000:]
    assert int(passed.group(1)) == 3, output[-3000:]


# -- inside the namespace -------------------------------------------------------------------


class Pair:
    """Gateways A and B on their own brokers, both with an uplink to one (stopped) router."""

    def __init__(self, router_broker: Mosquitto) -> None:
        self.router_broker = router_broker
        self.brokers: dict[Address, Mosquitto] = {}
        self.running: list[Harness] = []

    async def start(self, tmp_path: Path, name: str) -> Harness:
        broker = Mosquitto(workdir=tmp_path / f"broker-{name}")
        broker.workdir.mkdir()
        broker.start()
        harness = await _gateway(tmp_path, name, broker, self.router_broker)
        self.brokers[harness.gateway] = broker
        self.running.append(harness)
        return harness

    async def stop(self, harness: Harness) -> None:
        self.running.remove(harness)
        await harness.stop()
        self.brokers[harness.gateway].stop()


async def _gateway(
    tmp_path: Path, name: str, broker: Mosquitto, router_broker: Mosquitto
) -> Harness:
    settings = fast_settings(
        tmp_path / f"data-{name}",
        broker.url,
        name=f"Gateway {name}",
        timeout_floor=30.0,
        timeout_fallback=30.0,
        lan_peers=True,
        lan_port=free_port(),  # fixed, so that a listener restarted in a test is found again
        lan_grace_seconds=GRACE_SECONDS,
        **uplink_options(router_broker, ROUTER),
    )
    return await start_harness(settings, broker.port)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Pair, Harness, Harness]]:
    # The router's broker is configured but not running: the region is down.
    router_broker = Mosquitto(workdir=tmp_path, tls=make_tls_certs(tmp_path / "certs"))
    pair = Pair(router_broker)
    try:
        a = await pair.start(tmp_path, "a")
        b = await pair.start(tmp_path, "b")
        await eventually(lambda: _peers(a) == 1 and _peers(b) == 1, seconds=20)
        yield pair, a, b
    finally:
        for harness in list(pair.running):
            await pair.stop(harness)
        router_broker.stop()


def _peers(harness: Harness) -> int:
    peers = harness.server.peers
    return 0 if peers is None else peers.peer_count


async def _enrolled(harness: Harness) -> NativeThing:
    thing = harness.thing()
    await harness.enroll(thing, f"thing {thing.address.short()}")
    return thing


async def _things_known_to_each_other(a: Harness, b: Harness) -> tuple[NativeThing, NativeThing]:
    """A thing on each gateway, once each gateway routes the other's thing to the other
    (it learned the peer's announce)."""
    thing_a, thing_b = await _enrolled(a), await _enrolled(b)
    for knower, holder, thing in ((a, b, thing_b), (b, a, thing_a)):
        peers = knower.server.peers
        assert peers is not None
        await eventually(
            lambda: peers.table.gateway_for(thing.address) == holder.gateway.text,  # noqa: B023
            seconds=15,
        )
    return thing_a, thing_b


def _copies(thing: NativeThing, message_id: bytes, kind: PacketType) -> list[Address]:
    """Sources of what ``thing`` got with this message id (or acking it), of one type."""
    found = []
    for raw in thing.received():
        packet = open_packet(raw).packet
        if packet.type is not kind:
            continue
        if kind is PacketType.ACK:
            assert isinstance(packet.payload, Ack)
            if message_id in packet.payload.message_ids:
                found.append(packet.src)
        elif packet.message_id == message_id:
            found.append(packet.src)
    return found


@inside
async def test_inside_two_gateways_deliver_to_each_other_with_the_router_down(
    pair: tuple[Pair, Harness, Harness],
) -> None:
    _gateways, a, b = pair
    thing_a, thing_b = await _things_known_to_each_other(a, b)

    message_id = thing_a.send(thing_b.address, Command("hello"))
    await eventually(lambda: a.gateway in _copies(thing_a, message_id, PacketType.ACK))
    await eventually(lambda: _copies(thing_b, message_id, PacketType.COMMAND) != [])
    # B acked it to A (A's queue for B is empty); thing B's answer comes back the same way.
    await eventually(lambda: a.server.queue.depth(peer_hop(b.gateway)) == (0, 0))
    answer = thing_b.send(thing_a.address, Command("got it"))
    await eventually(lambda: b.gateway in _copies(thing_b, answer, PacketType.ACK))
    await eventually(lambda: _copies(thing_a, answer, PacketType.COMMAND) != [])

    assert _copies(thing_b, message_id, PacketType.COMMAND) == [thing_a.address]  # once
    a_peers, b_peers = a.server.peers, b.server.peers
    assert a_peers is not None
    assert b_peers is not None
    await eventually(lambda: b.server.queue.depth(peer_hop(a.gateway)) == (0, 0))
    assert a_peers.counters["forwarded"] >= 1
    assert b_peers.counters["delivered"] >= 1
    forwarder = a.server.forwarder
    assert forwarder is not None
    assert not forwarder.stats().link_up
    assert forwarder.stats().forwarded == 0
    assert a.server._bridge_state()["peers"] == 1


@inside
async def test_inside_queued_region_traffic_flows_once_when_the_router_returns(
    pair: tuple[Pair, Harness, Harness],
) -> None:
    gateways, a, b = pair
    thing_a, thing_b = await _things_known_to_each_other(a, b)
    far = thing_a.send(FAR_AWAY.address, Command("far"))  # another region: the router's
    await eventually(lambda: a.gateway in _copies(thing_a, far, PacketType.ACK))

    # B stops answering on the LAN (still advertised): a packet for its thing waits on B's
    # hop for the grace period, then moves to the router's queue.
    peers, b_peers = a.server.peers, b.server.peers
    assert peers is not None
    assert b_peers is not None
    await b_peers.stop()
    await eventually(lambda: peers.peer_count == 0)
    for_b = thing_a.send(thing_b.address, Command("while B is away"))
    await eventually(lambda: a.gateway in _copies(thing_a, for_b, PacketType.ACK))
    assert a.server.queue.depth(peer_hop(b.gateway))[0] == 1
    await eventually(lambda: peers.counters["fell_back"] == 1, seconds=GRACE_SECONDS + 10)
    assert a.server.queue.depth(peer_hop(b.gateway))[0] == 0
    assert a.server.queue.depth(UPLINK_HOP)[0] >= 3  # announce, far, for_b (and more)

    gateways.router_broker.start()
    assert gateways.router_broker.tls is not None
    standin = RouterStandIn(gateways.router_broker.port, gateways.router_broker.tls.ca_file, ROUTER)
    try:
        await eventually(lambda: {far, for_b} <= standin.unique(), seconds=45)
        await eventually(lambda: a.server.queue.depth(UPLINK_HOP) == (0, 0), seconds=30)
        delivered = list(standin.delivered)
        assert delivered.count(far) == 1
        assert delivered.count(for_b) == 1
    finally:
        standin.close()

    # B answers on the LAN again: A links to it and routes to it directly once more.
    await b_peers.start()
    await eventually(lambda: peers.peer_count == 1, seconds=20)
    forwarder = a.server.forwarder
    assert forwarder is not None
    up_before, lan_before = forwarder.stats().forwarded, peers.counters["forwarded"]
    again = thing_a.send(thing_b.address, Command("welcome back"))
    await eventually(lambda: _copies(thing_b, again, PacketType.COMMAND) != [])
    assert peers.counters["forwarded"] == lan_before + 1
    assert forwarder.stats().forwarded == up_before  # not through the router


@inside
async def test_inside_forged_announces_and_packets_are_dropped_and_counted(
    pair: tuple[Pair, Harness, Harness],
) -> None:
    _gateways, a, b = pair
    thing_a, thing_b = await _things_known_to_each_other(a, b)
    peers = a.server.peers
    assert peers is not None
    assert peers.port is not None
    rogue = Sender(ROGUE)

    _, writer = await asyncio.open_connection("127.0.0.1", peers.port)
    # Before any announce, a (valid) packet binds nothing and is not taken.
    stray = Sender(Identity.generate())
    writer.write(frame(stray.seal(stray.packet(thing_a.address, Command("early")))))
    # A forged announce: the rogue's, one byte of its signature changed.
    forged = bytearray(rogue.seal(rogue.packet(a.gateway, Announce((ROGUE.address,), 2**40))))
    forged[-5] ^= 0x01
    writer.write(frame(bytes(forged)))
    # A real announce by the rogue, claiming B's thing and A's own thing.
    claims = Announce((ROGUE.address, thing_b.address, thing_a.address), 2**41)
    writer.write(frame(rogue.seal(rogue.packet(a.gateway, claims))))
    # A forged packet: thing B's, with a byte of the command changed.
    tampered = bytearray(thing_b.sender.seal(thing_b.sender.packet(thing_a.address, Command("x"))))
    tampered[len(tampered) // 2] ^= 0x01
    writer.write(frame(bytes(tampered)))
    await writer.drain()

    await eventually(lambda: peers.counters["received"] >= 4)
    await eventually(lambda: sum(peers.dropped.values()) >= 4)
    assert peers.dropped["before_announce"] == 1
    assert peers.dropped["announce_claimed"] == 1
    assert peers.dropped["announce_protected"] == 1
    invalid = {
        reason: count
        for reason, count in peers.dropped.items()
        if not reason.startswith(("announce_", "before_"))
    }
    assert sum(invalid.values()) == 2, peers.dropped  # the two forgeries, by reason
    assert peers.table.gateway_for(thing_b.address) == b.gateway.text  # still B's
    assert peers.table.gateway_for(thing_a.address) is None
    writer.close()

    # A stream that is not in the framing (a frame past the packet limit) is cut off.
    reader, writer = await asyncio.open_connection("127.0.0.1", peers.port)
    writer.write(FRAME_HEADER.pack(MAX_FRAME + 1) + bytes(64))
    await writer.drain()
    async with asyncio.timeout(10):
        assert await reader.read() == b""  # closed by A
    writer.close()

    # And A still delivers to B's thing through B.
    message_id = thing_a.send(thing_b.address, Command("after the rogue"))
    await eventually(lambda: _copies(thing_b, message_id, PacketType.COMMAND) != [])
    state = a.server._bridge_state()
    assert state["lan"]["dropped"]["announce_claimed"] == 1  # type: ignore[index]


# -- announcing proxied things (no network needed) --------------------------------------------


async def test_announce_includes_proxied_things(tmp_path: Path) -> None:
    router = Identity.generate()
    settings = fast_settings(
        tmp_path / "data",
        "mqtt://127.0.0.1:9",  # never started: announce() only queues
        upstream_url="mqtts://127.0.0.1:9",
        upstream_token="token",
        upstream_router=router.address.text,
    )
    server = GatewayServer(settings)
    try:
        things = server.core.things
        ble = things.enrol_ble(ThingKind.BTHOME, "AA:BB:CC:DD:EE:01", None, "Sensor", 0.0)
        beacon = things.enrol_ble(ThingKind.BEACON, "AA:BB:CC:DD:EE:02", "00" * 16, "Tag", 0.0)
        mqtt = things.enrol_mqtt("plug", {"id": "plug"}, "Plug", 0.0)
        proxied = {ble.address, beacon.address, mqtt.address}
        assert proxied <= server.served_addresses()

        server.announce(server.served_addresses())
        server.commits.flush()
        rows = server.queue.read(UPLINK_HOP, 0, 10)
        announced: set[Address] = set()
        for row in rows:
            packet = open_packet(row.data).packet
            assert packet.dst == router.address
            assert packet.src == server.identity.address
            assert isinstance(packet.payload, Announce)
            announced.update(packet.payload.addresses)
        assert announced == proxied | {server.identity.address}
    finally:
        server.store.close()


class _GattWrites(BridgeHooks):
    """The BLE bridge's side of a GATT write, recorded (the integration performs it)."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, bytes]] = []

    def gatt_write(self, thing: Thing, data: bytes) -> str | None:
        assert thing.mac is not None
        self.writes.append((thing.mac, data))
        return None


def test_packets_for_proxied_things_are_taken_by_kind() -> None:
    """Announced proxied things get their packets: an I4T beacon by a GATT write; BTHome
    sensors and MQTT devices take none, so theirs are refused for good (not left unasked)."""
    gatt = _GattWrites()
    gateway = Identity.generate()
    core = GatewayCore(gateway, lambda topic, payload, retain: None, device_hooks=gatt)
    beacon = core.things.enrol_ble(ThingKind.BEACON, "AA:BB:CC:DD:EE:03", "11" * 16, "Tag", 0.0)
    sensor = core.things.enrol_ble(ThingKind.BTHOME, "AA:BB:CC:DD:EE:04", None, "Sensor", 0.0)
    plug = core.things.enrol_mqtt("plug", {"id": "plug"}, "Plug", 0.0)
    assert all(core.serves(thing.address) for thing in (beacon, sensor, plug))

    far = Sender(FAR_AWAY)
    receiver = Receiver(gateway)
    for thing in (beacon, sensor, plug):
        sealed = far.seal(far.packet(thing.address, Command("blink")))
        core.deliver_from_router(receiver.receive(sealed))

    assert [mac for mac, _ in gatt.writes] == ["AA:BB:CC:DD:EE:03"]
    written = open_packet(gatt.writes[0][1]).packet
    assert written.src == FAR_AWAY.address
    assert written.dst == beacon.address  # the signed packet itself, hop limit one lower
    assert core.counters.delivered_down == 1
    assert core.counters.dropped["takes_no_packets"] == 2


# -- the allow-list (no multicast: found() is called as zeroconf would, frames over loopback) --


async def test_only_allowed_gateways_are_linked_to_or_bound(tmp_path: Path) -> None:
    me, friend, stranger = Identity.generate(), Identity.generate(), Identity.generate()
    commits = GroupCommit(open_store(tmp_path / "gateway.db"))

    async def deliver(inbound: Inbound) -> None:
        return None

    network = PeerNetwork(
        sender=Sender(me),
        receiver=Receiver(me, dedup=PersistentDedup(commits)),
        queue=PacketQueue(commits),
        deliver=deliver,
        serves=lambda address: address == me.address,
        served=lambda: frozenset({me.address}),
        protected=lambda address: address == me.address,
        reroute=lambda message_id, data: False,
        config=PeerConfig(host="127.0.0.1", allowed=frozenset({friend.address})),
    )
    port = await network.start()
    try:
        network.found(PeerEndpoint(stranger.address, "127.0.0.1", free_port()))
        assert network.stats()["peers"] == []  # no link to a gateway outside the list
        assert network.dropped["peer_not_allowed"] == 1

        claimed = Identity.generate().address  # a thing of mine that is away, say
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        intruder = Sender(stranger)
        claims = Announce((stranger.address, claimed), 2**41)
        writer.write(frame(intruder.seal(intruder.packet(me.address, claims))))
        # Its connection stays unbound, so what it sends next is not taken either.
        writer.write(frame(intruder.seal(intruder.packet(me.address, Command("x")))))
        await writer.drain()
        await eventually(lambda: network.dropped["before_announce"] == 1)
        assert network.dropped["peer_not_allowed"] == 2
        assert network.table.gateway_for(claimed) is None
        writer.close()

        _, writer = await asyncio.open_connection("127.0.0.1", port)
        ally = Sender(friend)
        writer.write(frame(ally.seal(ally.packet(me.address, Announce((friend.address,), 2**41)))))
        await writer.drain()
        await eventually(lambda: network.table.gateway_for(friend.address) == friend.address.text)
        writer.close()
    finally:
        await network.stop()
