"""The gateway as status agent: polling, status refresh, seed and member gossip, tx feeds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from i4t_gateway.agents import MemoryLedger, wire_group_id
from i4t_gateway.payloads import (
    HealthRequest,
    HealthResponse,
    Member,
    MemberGossip,
    NodeHealth,
    SeedGossip,
    StatusRequest,
    StatusResponse,
    TxFeedRequest,
    TxFeedUpdate,
)

from .brokers import Mosquitto
from .gateway_harness import Harness, NativeThing, eventually, fast_settings, start_harness


@pytest.fixture
async def harness(mosquitto: Mosquitto, tmp_path: Path) -> AsyncIterator[Harness]:
    settings = fast_settings(
        tmp_path / "data",
        mosquitto.url,
        timeout_floor=5.0,
        timeout_fallback=5.0,
        health_poll_seconds=0.3,
        status_refresh_seconds=0.3,
        gossip_seconds=0.3,
    )
    gateway = await start_harness(settings, mosquitto.port)
    yield gateway
    await gateway.stop()


async def group_of(harness: Harness, members: list[tuple[NativeThing, dict[str, str]]]) -> str:
    for index, (thing, _) in enumerate(members):
        await harness.enroll(thing, f"member {index}")
    reply = await harness.request(
        "group_create",
        name="Agents",
        members=[{"address": thing.address.text, **extra} for thing, extra in members],
    )
    assert reply["ok"], reply
    group_id: str = reply["result"]["group_id"]
    return group_id


async def test_members_are_polled_and_answers_count_as_heard(harness: Harness) -> None:
    thing = harness.thing()
    await group_of(harness, [(thing, {})])
    await eventually(lambda: len(thing.payloads(HealthRequest)) >= 1)
    await eventually(lambda: len(thing.payloads(StatusRequest)) >= 1)
    request = thing.payloads(HealthRequest)[0]
    thing.send(harness.gateway, HealthResponse(request.message_id, NodeHealth.BROKEN))
    await harness.node_status(thing, "broken")


async def test_status_refresh_lists_the_group_and_new_members(harness: Harness) -> None:
    first, second = harness.thing(), harness.thing()
    await group_of(harness, [(first, {}), (second, {})])
    message_id = first.send(harness.gateway, StatusRequest(0))

    def answer() -> StatusResponse | None:
        for packet in first.payloads(StatusResponse):
            if packet.payload.request_id == message_id:
                return packet.payload  # type: ignore[no-any-return]
        return None

    await eventually(lambda: answer() is not None)
    response = answer()
    assert response is not None
    assert set(response.addresses) == {first.address, second.address}
    assert set(response.members_added) == {first.address, second.address}
    # Asking again from the cursor it was given: nobody new.
    again = first.send(harness.gateway, StatusRequest(response.cursor))
    await eventually(
        lambda: any(p.payload.request_id == again for p in first.payloads(StatusResponse))
    )
    latest = next(
        p.payload for p in first.payloads(StatusResponse) if p.payload.request_id == again
    )
    assert latest.members_added == ()


async def test_seeds_are_gossiped_to_the_group(harness: Harness) -> None:
    seed, worker = harness.thing(), harness.thing()
    group_id = await group_of(harness, [(seed, {"role": "seed"}), (worker, {})])
    await eventually(lambda: len(worker.payloads(SeedGossip)) >= 1)
    gossip = worker.payloads(SeedGossip)[0].payload
    assert gossip.group == wire_group_id(harness.server.identity.public_bytes, group_id)
    assert [s.address for s in gossip.seeds] == [seed.address]


async def test_member_gossip_declares_a_groupmate_dead(harness: Harness) -> None:
    watcher, watched = harness.thing(), harness.thing()
    group_id = await group_of(harness, [(watcher, {}), (watched, {})])
    watched.report(harness.gateway)
    await harness.node_status(watched, "healthy")
    wire_id = wire_group_id(harness.server.identity.public_bytes, group_id)
    # Gossip naming another group is ignored...
    watcher.send(
        harness.gateway,
        MemberGossip(bytes(16), 1, (Member(watched.address, NodeHealth.DEAD, 0),)),
    )
    # ...gossip about its own group is taken at its word.
    watcher.send(
        harness.gateway, MemberGossip(wire_id, 2, (Member(watched.address, NodeHealth.DEAD, 0),))
    )
    await harness.node_status(watched, "dead")
    watched.report(harness.gateway)
    await harness.node_status(watched, "healthy")


async def test_payment_nodes_get_their_transaction_feed(harness: Harness) -> None:
    payer, sensor = harness.thing(), harness.thing()
    await group_of(harness, [(payer, {"class": "payment"}), (sensor, {})])
    ledger = harness.server.core.agents.ledger
    assert isinstance(ledger, MemoryLedger)
    for index in range(5):
        ledger.append(f"tx{index}".encode())
    request = payer.send(harness.gateway, TxFeedRequest(2))
    await eventually(lambda: len(payer.payloads(TxFeedUpdate)) == 1)
    update = payer.payloads(TxFeedUpdate)[0].payload
    assert update.request_id == request
    assert (update.since, update.until) == (2, 5)
    assert update.transactions == (b"tx2", b"tx3", b"tx4")
    # A sensor asking for a feed gets nothing.
    asked = sensor.send(harness.gateway, TxFeedRequest(0))
    await eventually(lambda: sensor.acked(asked))  # acked only after it was handled
    assert sensor.payloads(TxFeedUpdate) == []
