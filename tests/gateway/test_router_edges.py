"""The router against a hand-driven gateway (a plain paho client with its own key) on a real
Mosquitto: admission and revocation, rate limits, the relay rule, duplicates, loops, spent hop
limits, stale packets, and the usage it publishes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
import json
from pathlib import Path
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
import pytest

from i4t_gateway.endpoint import Sender
from i4t_gateway.identity import Address, Identity
from i4t_gateway.links import down_topic, up_topic
from i4t_gateway.names import sign_name_record
from i4t_gateway.payloads import Ack, Announce, Command, NameRecordPayload
from i4t_gateway.replay import Sequencer, wall_clock_ms
from i4t_gateway.router import KEY_FILE, STATE_TOPIC, USAGE_TOPIC_PREFIX, RouterServer
from i4t_gateway.tokens import TokenLimits, open_token_book
from i4t_gateway.wire import open_packet, seal_packet

from .brokers import Mosquitto
from .gateway_harness import eventually
from .mqtt_probe import Probe
from .router_harness import issue, start_router, upstream_for


class HandGateway:
    """A gateway reduced to its uplink: publishes what the test gives it, records what comes
    down, and acks what the router sends it only when told to."""

    def __init__(self, port: int, seed: int) -> None:
        self.identity = Identity.from_seed(bytes([seed]) * 32)
        self.sender = Sender(self.identity)
        self.received: list[bytes] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, *_: c.subscribe(down_topic(self.address.text), 1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10)

    @property
    def address(self) -> Address:
        return self.identity.address

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.received.append(msg.payload)

    def publish(self, data: bytes) -> None:
        self.client.publish(up_topic(self.address.text), data, qos=1)

    def packets(self) -> list[object]:
        with self._lock:
            return [open_packet(raw).packet for raw in self.received]

    def acked(self) -> list[bytes]:
        return [
            message_id
            for packet in self.packets()
            if isinstance(packet.payload, Ack)  # type: ignore[attr-defined]
            for message_id in packet.payload.message_ids  # type: ignore[attr-defined]
        ]

    def delivered(self) -> list[bytes]:
        return [
            packet.message_id  # type: ignore[attr-defined]
            for packet in self.packets()
            if not isinstance(packet.payload, Ack)  # type: ignore[attr-defined]
        ]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def thing_packet(thing: Identity, to: Address, *, hop_limit: int | None = None) -> bytes:
    sender = Sender(thing)
    packet = sender.packet(to, Command("x"))
    return seal_packet(packet, thing, hop_limit=hop_limit)


async def repeat_until(action: Callable[[], None], condition: Callable[[], bool]) -> None:
    """Do ``action`` until ``condition`` holds: the router's subscription may still be on its
    way when the test starts publishing."""
    async with asyncio.timeout(10):
        while not condition():
            action()
            await asyncio.sleep(0.3)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    started = Mosquitto(workdir=tmp_path)
    started.start()
    yield started
    started.stop()


@pytest.fixture
async def router(broker: Mosquitto, tmp_path: Path) -> AsyncIterator[RouterServer]:
    started = await start_router(tmp_path / "router", broker)
    yield started
    await started.stop()


async def test_admission_relay_rule_loops_duplicates_and_hop_limits(
    router: RouterServer, broker: Mosquitto, tmp_path: Path
) -> None:
    gate, other = HandGateway(broker.port, 71), HandGateway(broker.port, 72)
    thing, far, stranger = (Identity.from_seed(bytes([n]) * 32) for n in (73, 74, 75))
    try:
        announce = gate.sender.packet(
            router.identity.address, Announce((gate.address, thing.address), 2**50)
        )
        data = gate.sender.seal(announce)
        await repeat_until(lambda: gate.publish(data), lambda: router.dropped["not_admitted"] >= 1)
        assert announce.message_id not in gate.acked()  # kept by the gateway, sent again

        issue(tmp_path / "router", gate.address)  # the command line, another connection
        issue(tmp_path / "router", other.address)
        gate.publish(data)
        await eventually(lambda: announce.message_id in gate.acked())
        assert router.region.gateway_for(thing.address) == gate.address.text

        other_announce = other.sender.packet(
            router.identity.address, Announce((other.address, far.address), 2**50)
        )
        other.publish(other.sender.seal(other_announce))
        await eventually(lambda: router.region.gateway_for(far.address) == other.address.text)

        # The gateway relays its thing's packet twice (a lost ack): forwarded once, acked twice.
        relayed = thing_packet(thing, far.address)
        gate.publish(relayed)
        gate.publish(relayed)
        relayed_id = open_packet(relayed).packet.message_id
        await eventually(lambda: gate.acked().count(relayed_id) == 2)
        await eventually(lambda: relayed_id in other.delivered())
        # The router retransmits until the other gateway acks.
        await eventually(lambda: other.delivered().count(relayed_id) >= 2, seconds=5)
        other.publish(other.sender.ack(router.identity.address, [relayed_id]))
        await eventually(lambda: not router.queue.hops())
        copies = other.delivered().count(relayed_id)

        # A gateway cannot relay for a thing another gateway announced: dropped, not acked.
        foreign = thing_packet(far, thing.address)
        gate.publish(foreign)
        await eventually(lambda: router.dropped["source_elsewhere"] >= 1)
        # A thing nobody announced yet (its gateway's announce still queued behind it) is
        # relayed: it signed the packet itself.
        unclaimed = thing_packet(stranger, far.address)
        gate.publish(unclaimed)
        unclaimed_id = open_packet(unclaimed).packet.message_id
        await eventually(lambda: unclaimed_id in other.delivered())
        other.publish(other.sender.ack(router.identity.address, [unclaimed_id]))
        # A packet for an address its own gateway announced would go back there: refused (and
        # acked, so that it is not sent again); so are a spent hop limit and no route at all.
        back = thing_packet(thing, thing.address)
        gate.publish(back)
        await eventually(lambda: router.dropped["loop"] >= 1)
        spent = thing_packet(thing, far.address, hop_limit=0)
        gate.publish(spent)
        await eventually(lambda: router.dropped["hop_limit"] >= 1)
        nowhere = thing_packet(thing, stranger.address)
        gate.publish(nowhere)
        await eventually(lambda: router.dropped["no_route"] >= 1)
        for refused in (back, spent, nowhere):
            message_id = open_packet(refused).packet.message_id
            await eventually(lambda m=message_id: m in gate.acked())  # type: ignore[misc]
        assert open_packet(foreign).packet.message_id not in gate.acked()
        assert other.delivered().count(relayed_id) == copies  # nothing else reached it
        assert set(other.delivered()) == {relayed_id, unclaimed_id}

        # A packet for the router queued before the gateway restarted, arriving after newer
        # ones: refused by the replay window, acked so that it leaves the gateway's queue.
        old_sender = Sender(gate.identity, sequencer=Sequencer(lambda: wall_clock_ms() - 60_000))
        stale = old_sender.packet(router.identity.address, Announce((gate.address,), 2**50))
        gate.publish(old_sender.seal(stale))
        await eventually(lambda: stale.message_id in gate.acked())
        assert router.dropped["stale"] >= 1

        # Revoked: within the token reload, the gateway is refused.
        book, _ = open_token_book(tmp_path / "router")
        admission = book.admission(gate.address)
        assert admission is not None
        assert book.revoke(admission.token_id)
        await eventually(lambda: router.tokens.admission(gate.address) is None, seconds=5)
        after = thing_packet(thing, far.address)
        before = router.dropped["not_admitted"]
        gate.publish(after)
        await eventually(lambda: router.dropped["not_admitted"] > before)
    finally:
        gate.close()
        other.close()


async def test_a_packet_for_a_thing_that_moved_follows_it_to_its_new_gateway(
    router: RouterServer, broker: Mosquitto, tmp_path: Path
) -> None:
    old, new, sender = (HandGateway(broker.port, seed) for seed in (81, 82, 83))
    thing = Identity.from_seed(bytes([84]) * 32)
    try:
        for gateway in (old, new, sender):
            issue(tmp_path / "router", gateway.address)
        # The old gateway holds the thing for a moment only; its claim then lapses.
        brief = old.sender.packet(
            router.identity.address,
            Announce((old.address, thing.address), wall_clock_ms() + 1500),
        )
        await repeat_until(
            lambda: old.publish(old.sender.seal(brief)),
            lambda: router.region.gateway_for(thing.address) == old.address.text,
        )
        packet = sender.sender.packet(thing.address, Command("x"))
        sender.publish(sender.sender.seal(packet))
        await eventually(lambda: packet.message_id in old.delivered())  # and never acked there
        await eventually(lambda: router.region.gateway_for(thing.address) is None, seconds=5)
        assert router.counters["redirected"] == 0  # nobody else holds it: the old one may again

        moved = new.sender.packet(
            router.identity.address, Announce((new.address, thing.address), 2**50)
        )
        new.publish(new.sender.seal(moved))
        await eventually(lambda: router.region.gateway_for(thing.address) == new.address.text)
        # At the old gateway's next retransmission the packet goes to the new holder instead.
        await eventually(lambda: packet.message_id in new.delivered(), seconds=10)
        assert router.counters["redirected"] == 1
        new.publish(new.sender.ack(router.identity.address, [packet.message_id]))
        await eventually(lambda: not router.queue.hops())  # nothing left for either gateway
        copies_at_old = old.delivered().count(packet.message_id)
        await asyncio.sleep(2.5)  # past another retransmission: the old gateway gets no more
        assert old.delivered().count(packet.message_id) == copies_at_old
    finally:
        for gateway in (old, new, sender):
            gateway.close()


async def test_rate_limits_and_usage(
    router: RouterServer, broker: Mosquitto, tmp_path: Path
) -> None:
    gate = HandGateway(broker.port, 81)
    probe = Probe(broker.port, f"{USAGE_TOPIC_PREFIX}/#", STATE_TOPIC)
    try:
        issue(tmp_path / "router", gate.address, TokenLimits(packets_per_second=5))
        thing = Identity.from_seed(bytes([82]) * 32)
        announce = gate.sender.seal(
            gate.sender.packet(router.identity.address, Announce((thing.address,), 2**50))
        )
        await repeat_until(
            lambda: gate.publish(announce),
            lambda: router.region.gateway_for(thing.address) is not None,
        )
        for _ in range(20):
            gate.publish(thing_packet(thing, thing.address))
        await eventually(lambda: router.dropped["over_limit"] >= 10)
        usage_topic = f"{USAGE_TOPIC_PREFIX}/{gate.address.text}"

        def usage() -> dict[str, object]:
            raw = probe.last(usage_topic)
            return {} if raw is None else dict(json.loads(raw))

        await eventually(lambda: usage().get("dropped_over_limit", 0) >= 10)
        report = usage()
        assert report["admitted"] is True
        assert report["things"] == 1
        assert report["packets_in"] >= 5
        assert report["limits"] == TokenLimits(packets_per_second=5).as_dict()
        state = json.loads(probe.last(STATE_TOPIC) or b"{}")
        assert state["router"] == router.identity.address.text
        assert state["things"] == 1
    finally:
        probe.close()
        gate.close()


async def test_names_are_registered_with_a_new_parent(broker: Mosquitto, tmp_path: Path) -> None:
    """A router that had no parent (or another one) registers its region's names with the
    parent it is given, once."""
    parent_broker = Mosquitto(workdir=tmp_path)
    parent_broker.start()
    child_dir = tmp_path / "child"
    child = await start_router(child_dir, broker)
    gate = HandGateway(broker.port, 91)
    owner = Identity.from_seed(bytes([92]) * 32)
    record = sign_name_record(owner, "cellar", seq=1, expires_ms=wall_clock_ms() + 3_600_000)
    parent: RouterServer | None = None
    try:
        issue(child_dir, gate.address)
        packet = gate.sender.packet(child.identity.address, NameRecordPayload(record))
        data = gate.sender.seal(packet)
        await repeat_until(
            lambda: gate.publish(data), lambda: child.names.lookup("cellar") is not None
        )
        await child.stop()
        parent = await start_router(tmp_path / "parent", parent_broker)
        child = await start_router(
            child_dir,
            broker,
            upstream_for(child_dir / KEY_FILE, tmp_path / "parent", parent_broker),
        )
        await eventually(lambda: parent is not None and parent.names.lookup("cellar") == record)
    finally:
        gate.close()
        await child.stop()
        if parent is not None:
            await parent.stop()
        parent_broker.stop()
