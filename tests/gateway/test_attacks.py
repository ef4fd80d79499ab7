"""Attacks on a real gateway through every door it has (issue 7, item 5; BRIEF, security).

Each test attacks a GatewayServer on a real Mosquitto (and, for the uplink, a router's broker
over TLS with the router stand-in), then checks three things:

* **rejected and counted**: the attack changes nothing it should not, and the gateway counts it
  by reason (``packets.dropped``, ``dropped_invalid`` with the reasons of PROTOCOL.md §11, the
  BLE endpoint's ``dropped``, the uplink's ``dropped``);
* **nothing crashes**: afterwards the gateway still answers a request on its API;
* **nothing is lost**: a legitimate packet sent right after the attack is handled (acked,
  delivered, its readings shown).

The last test runs the console script as a process at ``--log-level info`` through enrolment,
traffic, attacks and a GATT request, and checks its log for identifying data (ARCHITECTURE.md,
Logs).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
import json
import logging
import os
from pathlib import Path
import secrets
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from i4t_gateway import api
from i4t_gateway.beacon import BEACON_UUID, BeaconFrame, encode_frame
from i4t_gateway.ble import Advert
from i4t_gateway.ble_bthome import BTHOME_UUID, encode_encrypted, encode_plain
from i4t_gateway.endpoint import Sender
from i4t_gateway.identity import Address, Identity, load_or_create_identity
from i4t_gateway.mqtt_devices import tasmota_sensor
from i4t_gateway.payloads import Ack, Command, Data, Reading
from i4t_gateway.replay import wall_clock_ms
from i4t_gateway.server import KEY_FILE
from i4t_gateway.settings import Settings
from i4t_gateway.wire import build, open_packet, seal_packet

from .api_schemas import assert_valid
from .brokers import Mosquitto
from .forgery import (
    ADDRESS_PATTERN,
    MAC_PATTERN,
    deeply_nested,
    flip_bit,
    flip_signature_bit,
    impersonate,
    indefinite_envelope,
    non_canonical_hop_limit,
    oversized,
    random_blobs,
    resign,
)
from .gateway_harness import (
    Harness,
    NativeThing,
    eventually,
    fast_settings,
    start_harness,
    uplink_options,
)
from .mqtt_probe import Probe
from .router_standin import RouterStandIn

ROUTER = Identity.from_seed(bytes([41]) * 32)
FAR_AWAY = Identity.from_seed(bytes([42]) * 32)
MALLORY = Identity.from_seed(bytes([43]) * 32)
BEACON_MAC = "E8:51:6B:EA:37:DF"
BEACON_KEY = bytes.fromhex("8a" * 16)
BTHOME_MAC = "A4:C1:38:12:34:56"
BINDKEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
DAY_MS = 24 * 3600 * 1000


# -- fixtures and helpers ----------------------------------------------------------------------


def _settings(tmp_path: Path, broker: Mosquitto, **overrides: Any) -> Settings:
    # Timeouts long enough that no node dies of silence during an attack.
    return fast_settings(
        tmp_path / "data", broker.url, timeout_floor=30.0, timeout_fallback=30.0, **overrides
    )


@pytest.fixture
async def harness(mosquitto: Mosquitto, tmp_path: Path) -> AsyncIterator[Harness]:
    gateway = await start_harness(_settings(tmp_path, mosquitto), mosquitto.port)
    yield gateway
    await gateway.stop()


def publish(harness: Harness, topic: str, payload: bytes) -> None:
    harness.probe.client.publish(topic, payload, qos=1)


def publish_up(harness: Harness, address: Address | str, payload: bytes) -> None:
    """Publish bytes on a thing's up topic, as anyone on the broker can."""
    text = address if isinstance(address, str) else address.text
    publish(harness, api.thing_up(text), payload)


def invalid(harness: Harness) -> Counter[str]:
    """The decoder's refusals by PROTOCOL.md reason (``dropped_invalid`` in the state)."""
    return Counter({str(k): v for k, v in harness.server.core.receiver.dropped.items()})


def dropped(harness: Harness) -> Counter[str]:
    """The gateway's other refusals (``packets.dropped`` in the state)."""
    return Counter(harness.server.core.counters.dropped)


def acks_of(thing: NativeThing, message_id: bytes) -> int:
    """How many ack packets the thing got for one of its packets."""
    count = 0
    for raw in thing.received():
        payload = open_packet(raw).packet.payload
        if isinstance(payload, Ack):
            count += payload.message_ids.count(message_id)
    return count


def copies_of(thing: NativeThing, message_id: bytes) -> int:
    """How many copies of a packet were delivered to the thing."""
    return sum(open_packet(raw).packet.message_id == message_id for raw in thing.received())


async def settled(
    condition: Callable[[], bool], show: Callable[[], object], seconds: float = 10.0
) -> None:
    """Wait for counters to reach what the attack should have caused; on timeout, say what
    they are."""
    try:
        await eventually(condition, seconds)
    except TimeoutError:
        pytest.fail(f"counters not as expected after {seconds} s: {show()}")


async def published_state(harness: Harness) -> dict[str, Any]:
    """The gateway state the server publishes after answering a request (a fresh one)."""
    before = len(harness.probe.messages)
    reply = await harness.request("configure")
    assert reply["ok"], reply
    topic = harness.topics.gateway_state
    await eventually(lambda: any(t == topic for t, _, _ in harness.probe.messages[before:]))
    return assert_valid("gateway_state", harness.probe.last(topic) or b"")


async def still_serving(harness: Harness, thing: NativeThing, value: float) -> None:
    """Nothing crashed and nothing is lost: the API answers, and a legitimate report sent
    right after the attack is acked and its reading shown."""
    reply = await harness.request("configure")
    assert reply["ok"], reply
    message_id = thing.report(harness.gateway, temperature=value)
    await eventually(lambda: thing.acked(message_id))
    await eventually(lambda: reading(harness, thing.address, "temperature") == value)


def reading(harness: Harness, address: Address | str, name: str) -> object:
    node = harness.node(address) or {}
    return node.get("readings", {}).get(name, {}).get("value")


async def enrolled(harness: Harness, name: str) -> NativeThing:
    thing = harness.thing()
    await harness.enroll(thing, name)
    return thing


def temperature(value: float) -> Data:
    return Data((Reading("temperature", value, "°C"),))


# -- native things: signatures, replays, size, CBOR, ACLs, topics -------------------------------


async def test_forged_and_tampered_packets_are_refused_and_counted(harness: Harness) -> None:
    alice = await enrolled(harness, "Alice")
    first = alice.report(harness.gateway, temperature=20.0)
    await eventually(lambda: alice.acked(first))  # the gateway has learned alice's key

    # Mallory signs packets that claim alice as their source.
    forged = impersonate(alice.address, MALLORY, harness.gateway, temperature(99.0))
    publish_up(harness, alice.address, forged)  # mallory's key in it: it is not alice's
    publish_up(harness, alice.address, resign(forged, MALLORY, key=None))  # alice's key: no match
    stranger = Identity.generate().address  # never seen: no key to check it with
    publish_up(harness, stranger, resign(forged, MALLORY, key=None, src=stranger.bytes))

    # Alice's own packet with one bit flipped: in a signed field, and in the signature.
    packet = alice.sender.packet(harness.gateway, temperature(21.0))
    honest = alice.sender.seal(packet)
    publish_up(harness, alice.address, flip_bit(honest, packet.message_id))
    publish_up(harness, alice.address, flip_bit(honest, packet.src.bytes[1:], bit=3))  # signer
    publish_up(harness, alice.address, flip_signature_bit(honest))

    expected = {"key_mismatch": 2, "bad_signature": 3, "unknown_key": 1}
    await settled(lambda: invalid(harness) >= Counter(expected), lambda: invalid(harness))
    assert reading(harness, alice.address, "temperature") == 20.0
    assert acks_of(alice, packet.message_id) == 0
    # The untampered original is not taken for a duplicate of its forged copies.
    publish_up(harness, alice.address, honest)
    await eventually(lambda: alice.acked(packet.message_id))
    await eventually(lambda: reading(harness, alice.address, "temperature") == 21.0)

    await still_serving(harness, alice, 22.0)
    state = await published_state(harness)
    assert Counter(state["dropped_invalid"]) >= Counter(expected)
    assert harness.node(stranger) is None


async def test_replays_are_acked_again_but_never_handled_twice(harness: Harness) -> None:
    alice, bob = await enrolled(harness, "Alice"), await enrolled(harness, "Bob")
    reply = await harness.request(
        "group_create",
        name="Pair",
        members=[{"address": alice.address.text}, {"address": bob.address.text}],
    )
    assert reply["ok"], reply

    # The same packet again after it was handled: acked again (the first ack may have been
    # lost), not delivered again.
    packet = alice.sender.packet(bob.address, Command("open", {"valve": 1}))
    data = alice.sender.seal(packet)
    publish_up(harness, alice.address, data)
    await eventually(lambda: copies_of(bob, packet.message_id) == 1)
    await eventually(lambda: acks_of(alice, packet.message_id) == 1)
    for _ in range(3):
        publish_up(harness, alice.address, data)
    await eventually(lambda: acks_of(alice, packet.message_id) == 4)
    assert copies_of(bob, packet.message_id) == 1
    assert harness.server.core.counters.delivered_local == 1
    assert invalid(harness)["duplicate"] == 3

    # An old sequence number under a new message id (signed by alice's own key, as a thing
    # whose counter went back would send it): refused as replayed.
    report = alice.sender.packet(harness.gateway, temperature(18.0))
    publish_up(harness, alice.address, alice.sender.seal(report))
    await eventually(lambda: alice.acked(report.message_id))
    now = wall_clock_ms()
    replayed = build(alice.address, harness.gateway, temperature(-40.0), seq=report.seq, ts_ms=now)
    # Timestamps out of the freshness window, with fresh sequence numbers.
    stale = build(
        alice.address, harness.gateway, temperature(-41.0), seq=report.seq + 10, ts_ms=now - DAY_MS
    )
    future = build(
        alice.address, harness.gateway, temperature(-42.0), seq=report.seq + 20, ts_ms=now + 600_000
    )
    for forged in (replayed, stale, future):
        publish_up(harness, alice.address, seal_packet(forged, alice.identity))
    expected = {"replayed": 1, "stale": 1, "future": 1}
    await settled(lambda: invalid(harness) >= Counter(expected), lambda: invalid(harness))
    assert not any(alice.acked(p.message_id) for p in (replayed, stale, future))
    assert reading(harness, alice.address, "temperature") == 18.0

    await still_serving(harness, alice, 19.0)
    state = await published_state(harness)
    assert Counter(state["dropped_invalid"]) >= Counter({**expected, "duplicate": 3})


async def test_oversized_packets_are_refused_unread(harness: Harness) -> None:
    alice = await enrolled(harness, "Alice")
    for size in (16 * 1024 + 1, 1024 * 1024):
        publish_up(harness, alice.address, oversized(size))
    await settled(lambda: invalid(harness)["too_large"] == 2, lambda: invalid(harness))
    await still_serving(harness, alice, 23.5)
    assert (await published_state(harness))["dropped_invalid"]["too_large"] == 2


async def test_malformed_cbor_is_refused_by_reason(harness: Harness) -> None:
    alice = await enrolled(harness, "Alice")
    honest = alice.sender.seal(alice.sender.packet(harness.gateway, temperature(30.0)))
    blobs = random_blobs(200)
    deterministic = [
        *(honest[:cut] for cut in (1, 2, 10, len(honest) // 2, len(honest) - 1)),  # truncated
        honest + b"\x00",  # trailing bytes
        deeply_nested(64),
        non_canonical_hop_limit(honest),
        indefinite_envelope(honest),
        b"\xd9\xd9\xf7" + honest,  # a tag other than COSE_Sign1's
    ]
    before = sum(invalid(harness).values())
    for blob in [*blobs, *deterministic]:
        publish_up(harness, alice.address, blob)
    sent = len(blobs) + len(deterministic)
    await settled(lambda: sum(invalid(harness).values()) - before == sent, lambda: invalid(harness))
    counts = invalid(harness)
    assert counts["too_deep"] == 1
    assert counts["non_canonical"] >= 1
    assert counts["unsupported_cbor"] >= 2
    assert counts["malformed"] >= 6
    assert reading(harness, alice.address, "temperature") is None
    assert harness.server.core.counters.received == 0

    # The well-formed packet all of them were cut from is accepted.
    publish_up(harness, alice.address, honest)
    await eventually(lambda: reading(harness, alice.address, "temperature") == 30.0)
    await still_serving(harness, alice, 31.0)
    state = await published_state(harness)
    assert sum(state["dropped_invalid"].values()) == sent


async def test_things_of_different_groups_cannot_reach_each_other(harness: Harness) -> None:
    alice, bob, carol, dave, eve = [
        await enrolled(harness, name) for name in ("Alice", "Bob", "Carol", "Dave", "Eve")
    ]
    for name, members in (("A", (alice, bob)), ("B", (carol, dave))):
        reply = await harness.request(
            "group_create", name=name, members=[{"address": t.address.text} for t in members]
        )
        assert reply["ok"], reply

    attempts = [(carol, alice), (alice, carol), (dave, bob), (eve, alice)]  # eve: in no group
    refused = [(src, dst, src.send(dst.address, Command("open"))) for src, dst in attempts]
    # Refused for good, so acked: the things stop retrying.
    await eventually(lambda: all(src.acked(message_id) for src, _, message_id in refused))
    await settled(lambda: dropped(harness)["acl"] == len(attempts), lambda: dropped(harness))
    for _, dst, message_id in refused:
        assert copies_of(dst, message_id) == 0
    assert harness.server.core.counters.delivered_local == 0

    # Within a group, traffic flows.
    message_id = alice.send(bob.address, Command("open"))
    await eventually(lambda: copies_of(bob, message_id) == 1)
    await still_serving(harness, carol, 12.0)
    state = await published_state(harness)
    assert state["packets"]["dropped"]["acl"] == len(attempts)


async def test_packets_on_a_foreign_topic_are_refused(harness: Harness) -> None:
    alice, bob = await enrolled(harness, "Alice"), await enrolled(harness, "Bob")
    packet = alice.sender.packet(harness.gateway, temperature(50.0))
    data = alice.sender.seal(packet)
    publish_up(harness, bob.address, data)  # alice's signed packet on bob's topic
    publish_up(harness, Identity.generate().address, data)  # on a stranger's topic
    publish_up(harness, "not-an-address", data)
    await settled(lambda: dropped(harness)["topic_mismatch"] == 3, lambda: dropped(harness))
    assert harness.node(bob.address)["status"] is None  # type: ignore[index]
    assert reading(harness, alice.address, "temperature") is None
    assert not alice.acked(packet.message_id)
    # Published where it belongs, the same packet is handled: nothing was recorded against it.
    publish_up(harness, alice.address, data)
    await eventually(lambda: alice.acked(packet.message_id))
    await still_serving(harness, bob, 5.0)
    assert (await published_state(harness))["packets"]["dropped"]["topic_mismatch"] == 3


async def test_a_crowd_of_strangers_cannot_grow_or_flood_the_candidate_list(
    harness: Harness,
) -> None:
    alice = await enrolled(harness, "Alice")
    topic = harness.topics.candidates
    before = len(harness.probe.messages)
    strangers = 300
    for seed in range(strangers):
        stranger = Sender(Identity.from_seed(seed.to_bytes(32, "big")))
        packet = stranger.packet(harness.gateway, temperature(1.0))
        publish_up(harness, stranger.me.address, stranger.seal(packet))
    limit = harness.server.core.things.max_candidates
    adverts = [
        advert(f"C0:00:00:00:00:{i:02X}", BTHOME_UUID, encode_plain({"battery": 1}))
        for i in range(limit)
    ]
    publish(harness, harness.server.ble.topic, batch(*adverts))
    started = time.monotonic()
    await settled(
        lambda: (
            dropped(harness)["not_enrolled"] == strangers
            and harness.server.ble.stats["candidates"] == len(adverts)
        ),
        lambda: (dropped(harness), harness.server.ble.stats),
    )
    assert len(harness.server.core.things.candidates()) == limit

    # The newest stranger shows within a couple of seconds; the list is not republished for
    # each of the 556 (each copy is up to 256 entries): at most about once a second.
    def newest_listed() -> bool:
        raw = harness.probe.last(topic)
        return raw is not None and adverts[-1]["address"].encode() in raw

    await eventually(newest_listed, seconds=5)
    publishes = [p for t, p, _ in harness.probe.messages[before:] if t == topic]
    assert len(publishes) <= 3 + (time.monotonic() - started), len(publishes)
    assert len(assert_valid("candidates", publishes[-1])["candidates"]) == limit
    await still_serving(harness, alice, 6.0)
    assert (await published_state(harness))["candidates"] == limit


def test_new_candidates_are_published_at_most_once_a_second() -> None:
    from i4t_gateway.core import CANDIDATES_MIN_INTERVAL, GatewayCore  # noqa: PLC0415
    from i4t_gateway.things import ThingKind  # noqa: PLC0415

    clock = [100.0]
    published: list[str] = []
    core = GatewayCore(
        Identity.from_seed(bytes([45]) * 32),
        lambda topic, payload, retain: published.append(topic),
        monotonic=lambda: clock[0],
    )

    def candidates() -> int:
        return published.count(core.topics.candidates)

    for i in range(10):  # an advert's time is the sender's word: not the rate limit's clock
        core.heard_unenrolled_ble(
            f"C0:00:00:00:01:{i:02X}", ThingKind.BTHOME, 1e12, rssi=-60, hint=None
        )
    assert candidates() == 1
    core.tick(1e12)
    assert candidates() == 1  # the rest waits for the interval
    clock[0] += CANDIDATES_MIN_INTERVAL
    core.tick(1e12)
    assert candidates() == 2  # and comes in one publish
    clock[0] += CANDIDATES_MIN_INTERVAL
    core.tick(1e12)
    assert candidates() == 2  # nothing pending, nothing published
    core.heard_unenrolled_ble("C0:00:00:00:02:00", ThingKind.BTHOME, 0.0, rssi=-60, hint=None)
    assert candidates() == 3  # a quiet gateway shows a new candidate at once


async def test_hostile_requests_get_errors_or_are_counted(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="i4t_gateway")
    alice = await enrolled(harness, "Alice")
    enroll = f"{harness.topics.base}/cmd/enroll"
    unanswerable = [
        b"{not json",
        b"\xff\xfe\x00garbage",
        b"[]",
        b'"just a string"',
        b'{"request_id": "bad id!", "kind": "native"}',
        b"[" * 60_000,  # nesting that exhausts a recursive JSON parser
    ]
    for payload in unanswerable:
        publish(harness, enroll, payload)
    huge = json.dumps({"request_id": "huge", "kind": "native", "name": "x" * 70_000}).encode()
    publish(harness, enroll, huge)
    await settled(
        lambda: (
            dropped(harness)["request_malformed"] == len(unanswerable)
            and dropped(harness)["request_too_large"] == 1
        ),
        lambda: dropped(harness),
    )
    assert harness.probe.last(harness.topics.reply("huge")) is None
    # Counted each; logged once (a client publishing garbage in a loop cannot flood the log).
    warnings = [r for r in caplog.records if "unanswerable request" in r.getMessage()]
    assert len(warnings) == 1, warnings

    # With a usable request id, a clear error comes back.
    reply = await harness.request("enroll", kind={"native": [1, 2]}, name=5)
    assert reply["error"]["code"] == "invalid", reply
    reply = await harness.request("reboot")
    assert reply["error"]["code"] == "unknown_command", reply
    reply = await harness.request("send", destination="i4t" + "a" * 40, command="x")
    assert reply["error"]["code"] == "invalid", reply

    await still_serving(harness, alice, 7.0)
    state = await published_state(harness)
    assert state["packets"]["dropped"]["request_malformed"] == len(unanswerable)
    assert state["nodes"] == 1


# -- BLE and adopted MQTT devices ---------------------------------------------------------------


def beacon(counter: int, value: float) -> bytes:
    frame = BeaconFrame(counter, readings=(("temperature", value),))
    return encode_frame(frame, BEACON_MAC, BEACON_KEY)


def advert(mac: str, uuid: str, data: bytes, **fields: Any) -> dict[str, Any]:
    item = Advert(mac, -60, time.time(), "attack-proxy", {uuid: data}, {}).to_json()
    return {**item, **fields}


def batch(*items: dict[str, Any]) -> bytes:
    return json.dumps({"api": 1, "adverts": list(items)}).encode()


async def test_hostile_ble_batches_are_dropped_and_counted(harness: Harness) -> None:
    alice = await enrolled(harness, "Alice")
    reply = await harness.request(
        "enroll", kind="beacon", name="Valve", mac=BEACON_MAC, key=BEACON_KEY.hex()
    )
    valve = reply["result"]["address"]
    reply = await harness.request(
        "enroll", kind="bthome", name="Fridge", mac=BTHOME_MAC, bindkey=BINDKEY.hex()
    )
    fridge = reply["result"]["address"]
    topic = harness.server.ble.topic
    ble = harness.server.ble

    def ble_dropped() -> Counter[str]:
        counts = ble.diagnostics()["dropped"]
        assert isinstance(counts, dict)
        return Counter(counts)

    def sealed(counter: int, value: float) -> bytes:
        values = {"temperature": value}
        return encode_encrypted(values, mac=BTHOME_MAC, bindkey=BINDKEY, counter=counter)

    publish(harness, topic, batch(advert(BEACON_MAC, BEACON_UUID, beacon(1000, 21.5))))
    publish(harness, topic, batch(advert(BTHOME_MAC, BTHOME_UUID, sealed(500, 4.5))))
    await eventually(lambda: reading(harness, valve, "temperature") == 21.5)
    await eventually(lambda: reading(harness, fridge, "temperature") == 4.5)

    # Whole batches that break the contract.
    good = advert(BEACON_MAC, BEACON_UUID, beacon(1001, 22.0))
    for payload in (
        b"{not json",
        b"\xff\xfe",
        b"[" * 200_000,
        b"[]",
        b'{"api": 2, "adverts": []}',
        b'{"api": 1, "adverts": {}}',
        b'{"api": 1, "adverts": [' + b" " * (256 * 1024) + b"]}",
        batch(*[{}] * 513),
    ):
        publish(harness, topic, payload)
    # One batch with bad adverts and one good one: the bad ones go, the good one is used.
    bad_adverts = [
        {**good, "address": "not a mac"},
        {**good, "rssi": 999},
        {key: value for key, value in good.items() if key != "time"},
        {**good, "service_data": {BEACON_UUID: "zz"}},
        {**good, "service_data": {BEACON_UUID: "00" * 256}},
        "an advert is an object",
    ]
    publish(harness, topic, json.dumps({"api": 1, "adverts": [*bad_adverts, good]}).encode())
    await eventually(lambda: reading(harness, valve, "temperature") == 22.0)

    # Forged, tampered, replayed and downgraded adverts of the enrolled things.
    tampered = bytearray(beacon(1002, 99.0))
    tampered[-1] ^= 1
    publish(harness, topic, batch(advert(BEACON_MAC, BEACON_UUID, bytes(tampered))))
    forged = encode_frame(
        BeaconFrame(1003, readings=(("temperature", 99.0),)), BEACON_MAC, b"k" * 16
    )
    publish(harness, topic, batch(advert(BEACON_MAC, BEACON_UUID, forged)))
    publish(harness, topic, batch(advert(BEACON_MAC, BEACON_UUID, beacon(1000, 21.5))))  # replay
    fridge_tampered = bytearray(sealed(501, 99.0))
    fridge_tampered[1] ^= 1
    publish(harness, topic, batch(advert(BTHOME_MAC, BTHOME_UUID, bytes(fridge_tampered))))
    publish(harness, topic, batch(advert(BTHOME_MAC, BTHOME_UUID, sealed(400, 99.0))))  # old
    plain = encode_plain({"packet_id": 7, "temperature": 99.0})
    publish(harness, topic, batch(advert(BTHOME_MAC, BTHOME_UUID, plain)))  # downgrade

    expected = {
        "batch_malformed_json": 3,
        "batch_bad": 3,
        "batch_too_large": 1,
        "batch_too_many_adverts": 1,
        "advert_bad": len(bad_adverts),
        "beacon_bad_tag": 2,
        "beacon_replayed": 1,
        "bthome_decrypt_failed": 1,
        "bthome_replayed": 1,
        "bthome_plaintext_with_bindkey": 1,
    }
    await settled(lambda: ble_dropped() >= Counter(expected), ble_dropped)
    assert reading(harness, valve, "temperature") == 22.0  # no forged value got through
    assert reading(harness, fridge, "temperature") == 4.5

    # Hostile GATT results from someone on the broker: counted, nothing pending ends.
    result_topic = harness.server.gatt.result_topic
    for payload in (b"{", b'{"api": 1, "id": "x", "ok": true}', b"[" * 100_000):
        publish(harness, result_topic, payload)
    unknown = json.dumps({"api": 1, "id": "ab" * 16, "ok": True}).encode()
    publish(harness, result_topic, unknown)
    gatt = harness.server.gatt.dropped
    await settled(
        lambda: gatt["gatt_result_malformed"] == 3 and gatt["gatt_result_unknown_id"] == 1,
        lambda: gatt,
    )

    # Nothing lost: the things' next genuine adverts are taken.
    publish(harness, topic, batch(advert(BEACON_MAC, BEACON_UUID, beacon(1004, 23.0))))
    publish(harness, topic, batch(advert(BTHOME_MAC, BTHOME_UUID, sealed(502, 5.0))))
    await eventually(lambda: reading(harness, valve, "temperature") == 23.0)
    await eventually(lambda: reading(harness, fridge, "temperature") == 5.0)
    assert (harness.node(valve) or {})["status"] == "healthy"
    await still_serving(harness, alice, 8.0)


async def test_forged_beacons_can_show_broken_but_never_inject_values(harness: Harness) -> None:
    reply = await harness.request(
        "enroll", kind="beacon", name="Valve", mac=BEACON_MAC, key=BEACON_KEY.hex()
    )
    valve = reply["result"]["address"]
    topic = harness.server.ble.topic
    publish(harness, topic, batch(advert(BEACON_MAC, BEACON_UUID, beacon(10, 21.5))))
    await eventually(lambda: (harness.node(valve) or {}).get("status") == "healthy")
    for counter in (11, 12, 13):  # three in a row fail authentication
        forged = encode_frame(
            BeaconFrame(counter, readings=(("temperature", 99.0),)), BEACON_MAC, b"m" * 16
        )
        publish(harness, topic, batch(advert(BEACON_MAC, BEACON_UUID, forged)))
    await eventually(lambda: (harness.node(valve) or {}).get("status") == "broken")
    assert reading(harness, valve, "temperature") == 21.5
    publish(harness, topic, batch(advert(BEACON_MAC, BEACON_UUID, beacon(14, 22.5))))
    await eventually(lambda: (harness.node(valve) or {}).get("status") == "healthy")
    assert reading(harness, valve, "temperature") == 22.5


async def test_hostile_mqtt_device_payloads_are_dropped_and_counted(harness: Harness) -> None:
    definition = tasmota_sensor("plug-1", topic="plug_1", sensor="AM2301", name="Attic plug")
    reply = await harness.request(
        "enroll", kind="mqtt", id="plug-1", name="Attic plug", device=definition.to_json()
    )
    assert reply["ok"], reply
    plug = reply["result"]["address"]
    sensor, lwt = "tele/plug_1/SENSOR", "tele/plug_1/LWT"
    publish(harness, sensor, json.dumps({"AM2301": {"Temperature": 18.5}}).encode())
    await eventually(lambda: reading(harness, plug, "am2301_temperature") == 18.5)

    for payload in (
        b"\xff\xfe\xfd",  # not UTF-8
        b"{",  # not JSON
        b'{"AM2301": {"Temperature": NaN}}',  # not JSON either
        b"[" * 60_000,  # nesting bomb
        b"42",  # not an object
        json.dumps({"AM2301": {"Temperature": "x" * 70_000}}).encode(),  # over 64 KiB
        json.dumps({"AM2301": {"Temperature": {"nested": True}}}).encode(),  # wrong type
    ):
        publish(harness, sensor, payload)
    publish(harness, lwt, b"Maybe")
    expected = {
        "not_utf8": 1,
        "not_json": 3,
        "not_object": 1,
        "too_large": 1,
        "bad_value": 1,
        "unknown_availability": 1,
    }
    await settled(
        lambda: harness.server.devices.dropped() >= Counter(expected),
        harness.server.devices.dropped,
    )
    assert reading(harness, plug, "am2301_temperature") == 18.5
    assert (harness.node(plug) or {})["status"] == "healthy"

    publish(harness, sensor, json.dumps({"AM2301": {"Temperature": 19.0}}).encode())
    await eventually(lambda: reading(harness, plug, "am2301_temperature") == 19.0)
    reply = await harness.request("configure")
    assert reply["ok"], reply


# -- the uplink: a fake router on the down topic ------------------------------------------------


@pytest.fixture
def standin(router_broker: Mosquitto) -> Iterator[RouterStandIn]:
    assert router_broker.tls is not None
    router = RouterStandIn(router_broker.port, router_broker.tls.ca_file, ROUTER)
    yield router
    router.close()


@pytest.fixture
async def uplinked(
    mosquitto: Mosquitto, router_broker: Mosquitto, tmp_path: Path
) -> AsyncIterator[Harness]:
    assert router_broker.tls is not None
    settings = _settings(
        tmp_path,
        mosquitto,
        **uplink_options(router_broker, ROUTER),
    )
    gateway = await start_harness(settings, mosquitto.port)
    yield gateway
    await gateway.stop()


async def test_hostile_router_traffic_is_refused_and_loses_nothing(
    standin: RouterStandIn, uplinked: Harness
) -> None:
    harness = uplinked
    forwarder = harness.server.forwarder
    assert forwarder is not None
    gateway = harness.gateway
    alice = await enrolled(harness, "Alice")

    # A packet for elsewhere is queued; the router has it but does not ack it yet.
    standin.acking = False
    message_id = alice.send(FAR_AWAY.address, Command("hello"))
    await eventually(lambda: alice.acked(message_id))  # durable in the gateway's queue
    await eventually(lambda: message_id in standin.unique())
    # (The gateway's own announcements may be queued too: only counts of acks are compared.)
    acked_before = forwarder.stats().acked

    mallory = Sender(MALLORY)
    # An ack signed by a key that is not the router's, for the queued packet.
    standin.send_down(gateway, mallory.ack(gateway, [message_id]))
    # The same ack claiming to come from the router, signed by mallory.
    standin.send_down(
        gateway, resign(mallory.ack(gateway, [message_id]), MALLORY, src=ROUTER.address.bytes)
    )
    # Router-signed acks for packets never sent, and one addressed to another gateway.
    standin.ack_down(gateway, [os.urandom(16), os.urandom(16)])
    standin.ack_down(gateway, [message_id], to=FAR_AWAY.address)
    # Traffic for addresses the gateway does not serve.
    far = Sender(FAR_AWAY)
    for destination in (FAR_AWAY.address, MALLORY.address, Identity.generate().address):
        standin.send_down(gateway, far.seal(far.packet(destination, Command("flood"))))
    # Garbage and oversized bytes.
    for blob in (*random_blobs(20, seed=3), oversized(20_000)):
        standin.send_down(gateway, blob)

    def uplink_dropped() -> Counter[str]:
        return Counter(forwarder.stats().dropped)

    expected = {"ack_not_from_router": 1, "key_mismatch": 1, "ack_not_for_us": 1, "unasked": 3}
    await settled(lambda: uplink_dropped() >= Counter(expected), uplink_dropped)
    await settled(
        lambda: forwarder.outbox.counters.unknown_acks == 2, lambda: forwarder.outbox.counters
    )
    await settled(
        lambda: sum(uplink_dropped().values()) == sum(expected.values()) + 21, uplink_dropped
    )
    assert uplink_dropped()["too_large"] == 1
    assert forwarder.stats().acked == acked_before  # no forged ack released a packet
    assert forwarder.stats().delivered == 0

    # A packet the router really sends down, twice (a replay): delivered once, acked twice.
    welcome = far.packet(alice.address, Command("welcome"))
    data = far.seal(welcome)
    standin.send_down(gateway, data)
    standin.send_down(gateway, data)
    await eventually(lambda: standin.acked_by_gateway.count(welcome.message_id) == 2)
    assert copies_of(alice, welcome.message_id) == 1
    assert forwarder.stats().duplicates == 1

    # The router's genuine ack releases the queued packet: nothing was lost.
    queued = forwarder.stats().queued
    standin.ack_down(gateway, [message_id])
    await eventually(lambda: forwarder.stats().acked == acked_before + 1)
    assert forwarder.stats().queued == queued - 1
    await still_serving(harness, alice, 9.0)
    # The state published after a request keeps its uplink and BLE parts (it is retained: a
    # state without them would show the uplink as unknown until the next refresh).
    state = await published_state(harness)
    assert state["uplink"]["router"] == ROUTER.address.text
    assert "dropped" in state["ble"]


async def test_a_flooding_thing_is_rate_limited_and_others_still_get_through(
    standin: RouterStandIn, uplinked: Harness
) -> None:
    harness = uplinked
    forwarder = harness.server.forwarder
    assert forwarder is not None
    flooder, quiet = await enrolled(harness, "Flooder"), await enrolled(harness, "Quiet")
    burst = int(forwarder.rate_limit.burst)
    sent = [flooder.send(FAR_AWAY.address, Command("spam", {"i": i})) for i in range(burst + 30)]
    await settled(
        lambda: forwarder.stats().refused.get("rate_limited", 0) >= 20,
        lambda: forwarder.stats().refused,
    )

    # Each packet is either queued and acked, or refused and not acked: the thing keeps it
    # and retries later, so nothing is lost.
    def acked() -> int:
        return sum(flooder.acked(m) for m in sent)

    await settled(
        lambda: acked() + dropped(harness)["rate_limited"] == len(sent),
        lambda: (acked(), dropped(harness)),
    )
    assert burst <= acked() < len(sent)
    # The limit is per source: another thing is not starved by the flood.
    message_id = quiet.send(FAR_AWAY.address, Command("hello"))
    await eventually(lambda: quiet.acked(message_id))
    await eventually(lambda: message_id in standin.unique())
    state = await published_state(harness)
    assert state["packets"]["dropped"]["rate_limited"] == len(sent) - acked()


# -- tokens: a gateway with an expired or over-limit token at a real router --------------------

TOKENS_REASON = "the router role (i4t_gateway.tokens, i4t_gateway.router) is not in the tree"


@pytest.fixture
def region(tmp_path: Path) -> Iterator[tuple[Mosquitto, Mosquitto]]:
    """The router's broker and the gateway's local broker (plain Mosquittos on loopback)."""
    started = [Mosquitto(workdir=tmp_path), Mosquitto(workdir=tmp_path)]
    for broker in started:
        broker.start()
    yield started[0], started[1]
    for broker in started:
        broker.stop()


async def _gateway_with_token(
    tmp_path: Path, router_broker: Mosquitto, local: Mosquitto, router: Address, token: str
) -> Harness:
    settings = _settings(
        tmp_path,
        local,
        upstream_url=router_broker.url,
        upstream_router=router.text,
        upstream_token=token,
    )
    return await start_harness(settings, local.port)


def _gateway_address(tmp_path: Path) -> Address:
    """The address of the gateway the test will start (its key is made now)."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    return load_or_create_identity(data_dir / KEY_FILE).address


async def test_expired_token_is_refused_and_loses_nothing(
    region: tuple[Mosquitto, Mosquitto], tmp_path: Path
) -> None:
    tokens = pytest.importorskip("i4t_gateway.tokens", reason=TOKENS_REASON)
    pytest.importorskip("i4t_gateway.router", reason=TOKENS_REASON)
    from .router_harness import issue, start_router  # noqa: PLC0415

    router_broker, local = region
    router_dir = tmp_path / "router"
    router = await start_router(router_dir, router_broker)
    gateway_address = _gateway_address(tmp_path)
    book, operator = tokens.open_token_book(router_dir)
    expired = book.issue(operator, gateway_address, 50 / 86_400_000, tokens.TokenLimits())
    await asyncio.sleep(0.1)  # 50 ms of validity are over
    # Presented to the broker's provisioning (dynsec.py admits with the password): refused.
    with pytest.raises(tokens.TokenError, match="expired"):
        book.admit(expired)

    harness = await _gateway_with_token(
        tmp_path, router_broker, local, router.identity.address, expired
    )
    try:
        forwarder = harness.server.forwarder
        assert forwarder is not None
        alice = await enrolled(harness, "Alice")
        message_id = alice.send(FAR_AWAY.address, Command("hello"))
        await eventually(lambda: alice.acked(message_id))  # durable in the gateway's queue
        await settled(lambda: router.dropped["not_admitted"] >= 1, lambda: router.dropped)
        assert message_id not in router.receiver.dedup
        assert router.counters["received"] == 0
        assert forwarder.stats().queued >= 1  # not acked by the router: kept, sent again

        # The operator issues a valid token: the gateway's next retransmission gets in.
        issue(router_dir, gateway_address)
        await eventually(lambda: message_id in router.receiver.dedup, seconds=10)
        await eventually(lambda: forwarder.stats().queued == 0, seconds=10)
        await still_serving(harness, alice, 11.0)
    finally:
        await harness.stop()
        await router.stop()


async def test_over_limit_token_is_held_back_and_loses_nothing(
    region: tuple[Mosquitto, Mosquitto], tmp_path: Path
) -> None:
    tokens = pytest.importorskip("i4t_gateway.tokens", reason=TOKENS_REASON)
    pytest.importorskip("i4t_gateway.router", reason=TOKENS_REASON)
    from .router_harness import issue, start_router  # noqa: PLC0415

    router_broker, local = region
    router_dir = tmp_path / "router"
    router = await start_router(router_dir, router_broker)
    gateway_address = _gateway_address(tmp_path)
    limits = tokens.TokenLimits(packets_per_second=4)  # a bucket of 4 packets
    token = issue(router_dir, gateway_address, limits)
    harness = await _gateway_with_token(
        tmp_path, router_broker, local, router.identity.address, token
    )
    try:
        forwarder = harness.server.forwarder
        assert forwarder is not None
        alice = await enrolled(harness, "Alice")
        sent = [alice.send(FAR_AWAY.address, Command("n", {"i": i})) for i in range(5)]
        await eventually(lambda: all(alice.acked(m) for m in sent))  # queued at the gateway
        # Over the token's packets per second: dropped before verification, counted, not acked.
        await settled(lambda: router.dropped["over_limit"] >= 1, lambda: router.dropped)
        # Back-pressure, not loss: the gateway retransmits until every packet got in, once.
        await eventually(lambda: all(m in router.receiver.dedup for m in sent), seconds=15)
        await eventually(lambda: forwarder.stats().queued == 0, seconds=10)
        assert router.counters["duplicates"] == 0
        await still_serving(harness, alice, 12.0)
    finally:
        await harness.stop()
        await router.stop()


# -- no identifying data in the log at the default level ----------------------------------------


def _wait(condition: Callable[[], bool], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.02)


class _Client:
    """The local API of a gateway process, driven synchronously through a probe."""

    def __init__(self, probe: Probe, gateway_id: str) -> None:
        self.probe = probe
        self.base = f"i4t/{gateway_id}"
        self._ids = 0

    def request(self, command: str, /, **body: object) -> dict[str, Any]:
        self._ids += 1
        request_id = f"log{self._ids}"
        payload = json.dumps({"request_id": request_id, **body}).encode()
        self.probe.client.publish(f"{self.base}/cmd/{command}", payload, qos=1)
        topic = f"{self.base}/reply/{request_id}"
        _wait(lambda: self.probe.last(topic) is not None)
        reply: dict[str, Any] = json.loads(self.probe.last(topic) or b"{}")
        return reply


def test_no_identifying_data_in_the_log_at_info(
    mosquitto: Mosquitto, router_broker: Mosquitto, standin: RouterStandIn, tmp_path: Path
) -> None:
    assert router_broker.tls is not None
    token = "tok-" + secrets.token_hex(16)
    data_dir = tmp_path / "gw"
    log_file = tmp_path / "gateway.log"
    probe = Probe(mosquitto.port, "i4t/#")
    with log_file.open("wb") as sink:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "i4t_gateway",
                "--broker", mosquitto.url, "--data-dir", str(data_dir),
                "--log-level", "info",
                "--upstream", f"mqtts://127.0.0.1:{router_broker.port}",
                "--upstream-router", ROUTER.address.text,
                "--upstream-ca", str(router_broker.tls.ca_file),
            ],
            env={**os.environ, "I4T_UPSTREAM_TOKEN": token},
            stdout=sink,
            stderr=sink,
        )  # fmt: skip
    things: list[NativeThing] = []
    try:
        _wait(lambda: any(t.startswith(api.DISCOVERY_PREFIX + "/") for t, _, _ in probe.messages))
        gateway_id = next(
            t.rsplit("/", 1)[1] for t, _, _ in probe.messages if t.startswith(api.DISCOVERY_PREFIX)
        )
        gateway = Address.from_text(gateway_id)
        client = _Client(probe, gateway_id)
        _wait(lambda: probe.last(f"{client.base}/availability") == api.ONLINE)
        _run_scenario(client, probe, gateway, things, standin)
        assert process.poll() is None, "the gateway process died during the attacks"
        _check_published_counters(client)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        probe.close()
    assert process.returncode == 0
    log = log_file.read_text(encoding="utf-8", errors="replace")
    assert "started" in log, log
    assert "unanswerable request on an unknown command" in log, log
    secrets_in_log = _identifying(log, gateway_id, things, token, data_dir)
    assert not secrets_in_log, f"identifying data in the log: {secrets_in_log}\n{log}"


def _run_scenario(
    client: _Client,
    probe: Probe,
    gateway: Address,
    things: list[NativeThing],
    standin: RouterStandIn,
) -> None:
    """Enrolment, reports, BLE, an MQTT device, an uplink packet, attacks and a GATT request."""
    base = client.base
    for name in ("Alice", "Bob"):
        thing = NativeThing(probe)
        reply = client.request(
            "enroll", kind="native", name=name, public_key=thing.identity.public_bytes.hex()
        )
        assert reply["ok"], reply
        things.append(thing)
    alice, bob = things
    for kind, mac, key_field, key in (
        ("beacon", BEACON_MAC, "key", BEACON_KEY),
        ("bthome", BTHOME_MAC, "bindkey", BINDKEY),
    ):
        reply = client.request("enroll", kind=kind, name=kind, mac=mac, **{key_field: key.hex()})
        assert reply["ok"], reply
    device = tasmota_sensor("plug-1", topic="plug_1", sensor="AM2301", name="Plug")
    reply = client.request("enroll", kind="mqtt", id="plug-1", name="Plug", device=device.to_json())
    assert reply["ok"], reply
    reply = client.request(
        "group_create",
        name="Pair",
        members=[{"address": alice.address.text}, {"address": bob.address.text}],
    )
    assert reply["ok"], reply

    # Traffic: reports, a local packet, a packet for the router, adverts, a device state.
    acked = [alice.report(gateway), bob.report(gateway), alice.send(bob.address, Command("x"))]
    acked.append(alice.send(FAR_AWAY.address, Command("up")))
    adverts_topic = f"{base}/ble/adverts"
    send = probe.client.publish
    send(adverts_topic, batch(advert(BEACON_MAC, BEACON_UUID, beacon(100, 20.0))), qos=1)
    sealed = encode_encrypted({"temperature": 3.0}, mac=BTHOME_MAC, bindkey=BINDKEY, counter=9)
    send(adverts_topic, batch(advert(BTHOME_MAC, BTHOME_UUID, sealed)), qos=1)
    candidate = advert("C0:FF:EE:00:00:01", BTHOME_UUID, encode_plain({"temperature": 1.0}))
    send(adverts_topic, batch(candidate), qos=1)
    send("tele/plug_1/SENSOR", json.dumps({"AM2301": {"Temperature": 18.0}}), qos=1)

    # Attacks through every door.
    mallory = NativeThing(probe, MALLORY)
    forged = impersonate(alice.address, MALLORY, gateway, temperature(99.0))
    for blob in (forged, *random_blobs(30, seed=11), oversized(20_000)):
        send(api.thing_up(alice.address.text), blob, qos=1)
    send(
        api.thing_up(bob.address.text),
        alice.sender.seal(alice.sender.packet(gateway, temperature(1.0))),
        qos=1,
    )
    mallory.report(gateway)  # an unenrolled thing: a candidate
    # Hostile command names first: the first unanswerable request is the one logged.
    send(f"{base}/cmd/{BEACON_MAC}", b"{", qos=1)
    send(f"{base}/cmd/{alice.address.text}", b"{", qos=1)
    for payload in (b"{not json", b"[" * 60_000, b"x" * 70_000):
        send(f"{base}/cmd/enroll", payload, qos=1)
    tampered = bytearray(beacon(101, 99.0))
    tampered[-1] ^= 1
    for _ in range(3):
        send(adverts_topic, batch(advert(BEACON_MAC, BEACON_UUID, bytes(tampered))), qos=1)
    send(adverts_topic, b"[" * 200_000, qos=1)
    send("tele/plug_1/SENSOR", b"\xff", qos=1)
    send(f"{base}/ble/gatt/result", b'{"api": 1, "id": "' + b"ab" * 16 + b'", "ok": true}', qos=1)
    far = Sender(FAR_AWAY)
    standin.send_down(gateway, far.seal(far.packet(MALLORY.address, Command("flood"))))
    standin.send_down(gateway, Sender(MALLORY).ack(gateway, [os.urandom(16)]))
    standin.send_down(gateway, b"\xd2\x84garbage")

    # A GATT write to the beacon thing: the request goes to the integration's topic.
    beacon_address = next(
        t.rsplit("/", 1)[1]
        for t, payload, _ in probe.messages
        if t.startswith(f"{base}/state/node/") and payload and b'"kind":"beacon"' in payload
    )
    reply = client.request("send", destination=beacon_address, command="open")
    assert reply["ok"], reply
    _wait(lambda: probe.last(f"{base}/ble/gatt/request") is not None)
    request = json.loads(probe.last(f"{base}/ble/gatt/request") or b"{}")
    result = {"api": 1, "id": request["id"], "ok": False, "error": "not_found",
              "detail": f"{BEACON_MAC} not in range"}  # fmt: skip
    send(f"{base}/ble/gatt/result", json.dumps(result), qos=1)

    # Still serving, nothing lost.
    sender = {acked[0]: alice, acked[1]: bob, acked[2]: alice, acked[3]: alice}
    _wait(lambda: all(sender[m].acked(m) for m in acked))
    assert client.request("configure")["ok"]
    last = alice.report(gateway)
    _wait(lambda: alice.acked(last))


def _check_published_counters(client: _Client) -> None:
    """The attacks show in the state the process publishes after a request, each counted under
    its reason. (Its BLE and uplink parts come with the 10 s refresh; the in-process tests
    above check the same counters, ``BleEndpoint.diagnostics`` and ``Forwarder.stats``.)"""
    probe, topic = client.probe, f"{client.base}/state/gateway"
    before = len(probe.messages)
    assert client.request("configure")["ok"]
    _wait(lambda: any(t == topic for t, _, _ in probe.messages[before:]))
    state = assert_valid("gateway_state", probe.last(topic) or b"")
    packets = state["packets"]["dropped"]
    assert packets["topic_mismatch"] == 1
    assert packets["request_malformed"] == 4
    assert packets["request_too_large"] == 1
    assert packets["not_enrolled"] >= 1
    assert state["dropped_invalid"]["key_mismatch"] == 1
    assert state["dropped_invalid"]["too_large"] == 1
    assert sum(state["dropped_invalid"].values()) >= 32


def _identifying(
    log: str, gateway_id: str, things: list[NativeThing], token: str, data_dir: Path
) -> list[str]:
    """Every piece of identifying data found in the log (ARCHITECTURE.md, Logs)."""
    found = [m.group(0) for m in ADDRESS_PATTERN.finditer(log)]
    found += [m.group(0) for m in MAC_PATTERN.finditer(log)]
    needles = {gateway_id: "gateway address", token: "token"}
    for thing in things:
        needles[thing.address.text] = "thing address"
        needles[thing.identity.public_bytes.hex()] = "public key"
    for secret in (BEACON_KEY, BINDKEY):
        needles[secret.hex()] = "BLE key"
    for mac in (BEACON_MAC, BTHOME_MAC, "C0:FF:EE:00:00:01"):
        needles[mac.replace(":", "")] = "MAC"
    key_lines = (data_dir / "gateway.key").read_text().splitlines()[1:-1]
    needles.update({line: "gateway private key" for line in key_lines if line})
    lowered = log.lower()
    found += [f"{what}: {needle}" for needle, what in needles.items() if needle.lower() in lowered]
    return found


def test_the_log_check_finds_what_it_looks_for() -> None:
    """So that a passing log test means something."""
    thing_key = Identity.from_seed(bytes([44]) * 32)
    assert ADDRESS_PATTERN.search(f"x {thing_key.address.text} y")
    assert not ADDRESS_PATTERN.search(f"gateway {thing_key.address.short()} started")
    assert MAC_PATTERN.search("from e8:51:6b:ea:37:df")
    assert MAC_PATTERN.search("from E8-51-6B-EA-37-DF")
    assert not MAC_PATTERN.search("12:30:45 INFO")
