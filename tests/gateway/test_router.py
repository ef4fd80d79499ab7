"""The regional router end to end on loopback: gateways on their own Mosquittos, routers on
theirs, packets routed hop by hop with durable queues, names resolved through the hierarchy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
import os
from pathlib import Path
import time

import pytest

from i4t_gateway.identity import Address
from i4t_gateway.names import sign_name_record
from i4t_gateway.payloads import Command, Data, NameAnswer, NameQuery, NameRecordPayload, Reading
from i4t_gateway.router import KEY_FILE, RouterServer
from i4t_gateway.wire import open_packet

from .brokers import Mosquitto
from .gateway_harness import Harness, NativeThing, eventually, start_harness
from .router_harness import (
    RouterProcess,
    own_probe,
    start_gateway,
    start_router,
    upstream_for,
)


def received_ids(thing: NativeThing) -> list[bytes]:
    return [open_packet(raw).packet.message_id for raw in thing.received()]


def brokers(tmp_path: Path, count: int) -> list[Mosquitto]:
    started = []
    for _ in range(count):
        broker = Mosquitto(workdir=tmp_path)
        broker.start()
        started.append(broker)
    return started


@pytest.fixture
def five_brokers(tmp_path: Path) -> Iterator[list[Mosquitto]]:
    started = brokers(tmp_path, 5)
    yield started
    for broker in started:
        broker.stop()


def routes(router: RouterServer, thing: NativeThing, via: Address) -> Callable[[], bool]:
    return lambda: router.region.gateway_for(thing.address) == via.text


async def test_one_region_two_gateways(five_brokers: list[Mosquitto], tmp_path: Path) -> None:
    router_broker, local_a, local_b = five_brokers[:3]
    router = await start_router(tmp_path / "router", router_broker)
    gateways: list[Harness] = []
    try:
        for name, local in (("a", local_a), ("b", local_b)):
            gateways.append(
                await start_gateway(tmp_path / name, tmp_path / "router", router_broker, local)
            )
        gateway_a, gateway_b = gateways
        thing_a, thing_b = gateway_a.thing(), gateway_b.thing()
        await gateway_a.enroll(thing_a, "Switch A")
        await gateway_b.enroll(thing_b, "Lamp B")
        # Enrolment changed what each gateway serves: it announces at once.
        await eventually(routes(router, thing_a, gateway_a.gateway))
        await eventually(routes(router, thing_b, gateway_b.gateway))

        command = thing_a.send(thing_b.address, Command("toggle"))
        await eventually(lambda: thing_a.acked(command))  # durable at gateway A
        await eventually(lambda: command in received_ids(thing_b))
        # And back: the lamp answers the switch.
        answer = thing_b.send(thing_a.address, Data((Reading("on", True),)))
        await eventually(lambda: answer in received_ids(thing_a))
        # Every hop acked its neighbour: nothing waits in any queue.
        await eventually(lambda: not router.queue.hops())
        for gateway in gateways:
            forwarder = gateway.server.forwarder
            assert forwarder is not None
            await eventually(lambda f=forwarder: f.stats().queued == 0)  # type: ignore[misc]
        assert received_ids(thing_b).count(command) == 1
        assert router.dropped.get("source_elsewhere", 0) == 0
    finally:
        for gateway in gateways:
            await gateway.stop()
        await router.stop()


@dataclass
class Hierarchy:
    """A parent router, region A (an in-process router) and region B (the console script),
    one gateway in each region; every router and gateway on its own Mosquitto."""

    parent: RouterServer
    region_a: RouterServer
    region_b: RouterProcess
    gateway_a: Harness
    gateway_b: Harness


@pytest.fixture
async def hierarchy(five_brokers: list[Mosquitto], tmp_path: Path) -> AsyncIterator[Hierarchy]:
    parent_broker, broker_a, broker_b, local_a, local_b = five_brokers
    parent = await start_router(tmp_path / "parent", parent_broker)
    region_a = await start_router(
        tmp_path / "ra",
        broker_a,
        upstream_for(tmp_path / "ra" / KEY_FILE, tmp_path / "parent", parent_broker),
    )
    region_b = RouterProcess(
        tmp_path / "rb",
        broker_b,
        upstream_for(tmp_path / "rb" / KEY_FILE, tmp_path / "parent", parent_broker),
    )
    region_b.start()
    gateways: list[Harness] = []
    try:
        gateways.append(await start_gateway(tmp_path / "ga", tmp_path / "ra", broker_a, local_a))
        gateways.append(await start_gateway(tmp_path / "gb", tmp_path / "rb", broker_b, local_b))
        world = Hierarchy(parent, region_a, region_b, *gateways)
        yield world
        # The test may have replaced a gateway or router by a restarted one.
        gateways = [world.gateway_a, world.gateway_b]
        region_a = world.region_a
    finally:
        for gateway in gateways:
            await gateway.stop()
        region_b.stop()
        await region_a.stop()
        await parent.stop()


async def test_across_regions_names_and_a_killed_router(
    hierarchy: Hierarchy, five_brokers: list[Mosquitto]
) -> None:
    world = hierarchy
    parent, region_a, region_b = world.parent, world.region_a, world.region_b
    thing_a = world.gateway_a.thing()
    # The lamp has an MQTT connection of its own: it outlives its gateway's restart below.
    thing_b = NativeThing(own_probe(five_brokers[4]))
    await world.gateway_a.enroll(thing_a, "Switch A")
    await world.gateway_b.enroll(thing_b, "Lamp B")
    # Region B's router announced its region to the parent; region A's knows its own thing.
    await eventually(lambda: parent.region.gateway_for(thing_b.address) == region_b.address.text)
    await eventually(routes(region_a, thing_a, world.gateway_a.gateway))

    # Region A -> parent -> region B, and the answer back.
    command = thing_a.send(thing_b.address, Command("toggle"))
    await eventually(lambda: command in received_ids(thing_b), seconds=15)
    answer = thing_b.send(thing_a.address, Data((Reading("on", True),)))
    await eventually(lambda: answer in received_ids(thing_a), seconds=15)

    # A name registered in region B resolves from region A (through the parent), then from
    # region A's cache.
    record = sign_name_record(thing_b.identity, "lamp-b", seq=1, expires_ms=_in_an_hour())
    thing_b.send(region_b.address, NameRecordPayload(record))
    await eventually(lambda: parent.names.lookup("lamp-b") == record)
    query = thing_a.send(region_a.identity.address, NameQuery("lamp-b"))
    await eventually(lambda: _answer(thing_a, query) is not None, seconds=15)
    assert _answer(thing_a, query) == NameAnswer(query, record)
    asked_parent = parent.counters["name_queries"]
    again = thing_a.send(region_a.identity.address, NameQuery("lamp-b"))
    await eventually(lambda: _answer(thing_a, again) == NameAnswer(again, record))
    assert parent.counters["name_queries"] == asked_parent  # answered from region A's cache
    unknown = thing_a.send(region_a.identity.address, NameQuery("nobody-here"))
    await eventually(lambda: _answer(thing_a, unknown) == NameAnswer(unknown))

    # Gateway B goes away; packets for its lamp wait in region B's router, which is killed
    # (SIGKILL) and restarted, and then the gateway comes back: nothing is lost or doubled.
    gateway_b = world.gateway_b.gateway
    settings_b = world.gateway_b.server.settings
    await world.gateway_b.stop()
    sent = [thing_a.send(thing_b.address, Command("blink", {"n": n})) for n in range(BURST)]
    await eventually(lambda: region_b.queued_for(gateway_b) == BURST, seconds=20)
    region_b.kill()
    region_b.start()
    world.gateway_b = await start_harness(settings_b, five_brokers[4].port)
    try:
        await eventually(lambda: set(sent) <= set(received_ids(thing_b)), seconds=30)
        assert all(received_ids(thing_b).count(m) == 1 for m in sent)
        await eventually(lambda: region_b.queued_for(gateway_b) == 0, seconds=20)
    finally:
        thing_b.probe.close()


BURST = 20


def _in_an_hour() -> int:
    return int((time.time() + 3600) * 1000)


def _answer(thing: NativeThing, request: bytes) -> NameAnswer | None:
    for packet in thing.payloads(NameAnswer):
        if packet.payload.request_id == request:
            answer: NameAnswer = packet.payload
            return answer
    return None


SOAK_THINGS = 8
SOAK_PER_THING = 40  # within a thing's burst allowance at its gateway (links.RateLimit: 50)


@pytest.mark.skipif(not os.environ.get("I4T_SOAK"), reason="a longer run: set I4T_SOAK=1")
async def test_soak_across_regions_with_both_region_routers_restarted(
    hierarchy: Hierarchy, five_brokers: list[Mosquitto], tmp_path: Path
) -> None:
    """320 packets from eight things of region A to a thing of region B while region A's
    router is stopped and started and region B's is killed: each arrives exactly once."""
    world = hierarchy
    target = world.gateway_b.thing()
    await world.gateway_b.enroll(target, "Sink")
    senders = [world.gateway_a.thing() for _ in range(SOAK_THINGS)]
    for n, thing in enumerate(senders):
        await world.gateway_a.enroll(thing, f"Source {n}")
    await eventually(
        lambda: world.parent.region.gateway_for(target.address) is not None, seconds=15
    )
    await eventually(
        lambda: all(world.region_a.region.gateway_for(t.address) for t in senders), seconds=15
    )
    sent: list[bytes] = []
    for round_ in range(SOAK_PER_THING):
        sent += [t.send(target.address, Command("n", {"i": round_})) for t in senders]
        if round_ == 10:
            settings = world.region_a.settings
            await world.region_a.stop()
            world.region_a = RouterServer(settings, state_every=0.5)
            await world.region_a.start()
        if round_ == 25:
            world.region_b.kill()
            world.region_b.start()
        await asyncio.sleep(0.05)
    await eventually(lambda: set(sent) <= set(received_ids(target)), seconds=120)
    received = received_ids(target)
    assert all(received.count(m) == 1 for m in sent)


async def test_send_to_a_name_resolved_by_the_router(
    five_brokers: list[Mosquitto], tmp_path: Path
) -> None:
    router_broker, local_a, local_b = five_brokers[:3]
    router = await start_router(tmp_path / "router", router_broker)
    gateways: list[Harness] = []
    try:
        for name, local in (("a", local_a), ("b", local_b)):
            gateways.append(
                await start_gateway(tmp_path / name, tmp_path / "router", router_broker, local)
            )
        gateway_a, gateway_b = gateways
        lamp = gateway_b.thing()
        await gateway_b.enroll(lamp, "Lamp B")
        await eventually(routes(router, lamp, gateway_b.gateway))
        record = sign_name_record(lamp.identity, "porch-lamp", seq=1, expires_ms=_in_an_hour())
        lamp.send(router.identity.address, NameRecordPayload(record))
        await eventually(lambda: router.names.lookup("porch-lamp") == record)

        reply = await gateway_a.request("send", destination="porch-lamp", command="on")
        assert reply["ok"], reply
        assert reply["result"]["address"] == lamp.address.text

        def commands() -> list[Command]:
            return [p.payload for p in lamp.payloads(Command) if p.src == gateway_a.gateway]

        await eventually(lambda: commands() == [Command("on")], seconds=15)
        # The second time the name comes from gateway A's cache: no new query.
        asked = router.counters["name_queries"]
        reply = await gateway_a.request("send", destination="porch-lamp", command="off")
        assert reply["ok"], reply
        await eventually(lambda: commands() == [Command("on"), Command("off")], seconds=15)
        assert router.counters["name_queries"] == asked
        # A name nobody holds.
        reply = await gateway_a.request("send", destination="nobody-here", command="on")
        assert reply["error"]["code"] == "not_found"
    finally:
        for gateway in gateways:
            await gateway.stop()
        await router.stop()
