"""The shortcuts the benchmarks led to (docs/PERFORMANCE.md) keep the behaviour they replace:
the bus's remembered topic matches, a verified packet's kept envelope, an address's text made
once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
import pytest

from i4t_gateway.bus import MqttBus
from i4t_gateway.cose import PacketError, Reason
from i4t_gateway.endpoint import Sender
from i4t_gateway.identity import Address, Identity
from i4t_gateway.payloads import Command
from i4t_gateway.settings import BrokerAddress
from i4t_gateway.wire import forward, open_packet

from .brokers import Mosquitto

ALICE = Identity.from_seed(bytes([41]) * 32)
BOB = Identity.from_seed(bytes([42]) * 32)


async def wait_until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 - paho's callbacks change it on this loop
            await asyncio.sleep(0.01)


def publish(port: int, topic: str, payload: bytes) -> None:
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.publish(topic, payload, qos=1).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


async def until_heard(port: int, topic: str, heard: list[bytes]) -> None:
    """Publish until a handler hears it: the broker confirms a subscription in its own time."""
    for _ in range(100):
        await asyncio.to_thread(publish, port, topic, b"probe")
        await asyncio.sleep(0.05)
        if heard:
            return
    raise TimeoutError(f"nothing heard on {topic}")


async def test_a_subscription_added_later_gets_topics_already_seen(mosquitto: Mosquitto) -> None:
    bus = MqttBus(BrokerAddress.from_url(mosquitto.url), client_id="hot-path")
    wide: list[bytes] = []
    narrow: list[bytes] = []
    bus.subscribe("bench/+", lambda topic, payload, retained: wide.append(payload))
    await bus.start()
    try:
        await bus.wait_connected()
        await until_heard(mosquitto.port, "bench/one", wide)
        # The bus has remembered who matches bench/one; a new filter must still be asked.
        bus.subscribe("bench/one", lambda topic, payload, retained: narrow.append(payload))
        await until_heard(mosquitto.port, "bench/one", narrow)
        wide.clear()
        publish(mosquitto.port, "bench/one", b"again")
        publish(mosquitto.port, "bench/two", b"other")
        await wait_until(lambda: len(wide) == 2 and narrow[-1] == b"again")
        assert wide == [b"again", b"other"]
    finally:
        await bus.stop()


def test_forwarding_an_opened_packet_equals_forwarding_its_bytes() -> None:
    sender = Sender(ALICE)
    packet = sender.packet(BOB.address, Command("hello"))
    raw = sender.seal(packet)
    opened = open_packet(raw)
    assert opened.forwarded() == forward(raw)
    # Down to a spent hop limit through kept envelopes: refused as forward() refuses it.
    hops = raw
    for _ in range(opened.hop_limit):
        hops = open_packet(hops).forwarded()
    assert open_packet(hops).packet == packet
    with pytest.raises(PacketError) as caught:
        open_packet(hops).forwarded()
    assert caught.value.reason is Reason.HOP_LIMIT


def test_an_address_keeps_its_text_and_compares_by_its_bytes() -> None:
    address = ALICE.address
    text = address.text
    again = Address.from_text(text)
    fresh = Address.from_bytes(address.bytes)  # its text not made yet
    assert address.text is text
    assert again == fresh == address
    assert hash(again) == hash(fresh) == hash(address)
    assert {address: 1}[fresh] == 1
    assert fresh.text == text
    assert BOB.address != address
    assert BOB.address.text != text
