"""The thing simulator against a real Mosquitto: signed packets, answers, BLE batches, control."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
import contextlib
import json
from pathlib import Path
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from i4t_gateway.ble import BleEndpoint, BleKind, BleUpdate
from i4t_gateway.endpoint import Sender
from i4t_gateway.health import NodeStatus
from i4t_gateway.identity import Address, Identity
from i4t_gateway.payloads import (
    Ack,
    Command,
    Data,
    HealthRequest,
    HealthResponse,
    NodeHealth,
    PacketType,
)
from i4t_gateway.settings import BrokerAddress
from i4t_gateway.sim_things import ThingState
from i4t_gateway.simulator import SimConfig, Simulator, SimulatorError, main, spread_states
from i4t_gateway.wire import open_packet

from .brokers import Mosquitto
from .mqtt_probe import Probe

GATEWAY = Identity.from_seed(bytes(range(0x40, 0x60)))
FAST = {"interval": 0.1, "batch_interval": 0.1, "jitter": 0.1}


class _Sim(Simulator):
    def __init__(self, config: SimConfig) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def started(self) -> None:
        self.ready.set()


@contextlib.contextmanager
def running(config: SimConfig) -> Iterator[_Sim]:
    sim = _Sim(config)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(sim.run())
        except BaseException as err:  # surfaced by the test below
            errors.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert sim.ready.wait(10), errors
        yield sim
    finally:
        sim.request_stop()
        thread.join(10)
        assert not thread.is_alive()
        assert not errors, errors


def _config(broker: Mosquitto, **kwargs: Any) -> SimConfig:
    fields: dict[str, Any] = {"gateway_id": GATEWAY.address.text, **FAST, **kwargs}
    return SimConfig(BrokerAddress("127.0.0.1", broker.port), **fields)


def _packets_from(probe: Probe, address: str) -> list[bytes]:
    topic = f"i4t/thing/{address}/up"
    return [payload for t, payload, _ in list(probe.messages) if t == topic]


def test_wifi_things_publish_verifiable_signed_data(mosquitto: Mosquitto) -> None:
    probe = Probe(mosquitto.port, "i4t/thing/+/up")
    try:
        with running(_config(mosquitto, wifi=2, ble=0, states={1: ThingState.BROKEN})) as sim:
            addresses = [t.address for t in sim.wifi]
            probe.wait_for(lambda: all(len(_packets_from(probe, a)) >= 3 for a in addresses))
    finally:
        probe.close()
    for address, broken in zip(addresses, (False, True), strict=True):
        for raw in _packets_from(probe, address):
            packet = open_packet(raw).packet
            assert packet.src == Address.from_text(address)
            assert packet.dst == GATEWAY.address
            assert packet.type is PacketType.DATA
            assert isinstance(packet.payload, Data)
            readings = {r.name: r.value for r in packet.payload.readings}
            assert packet.payload.health is (NodeHealth.BROKEN if broken else NodeHealth.HEALTHY)
            assert (readings["temperature"] is None) is broken
            assert isinstance(readings["humidity"], float)


def test_things_answer_health_requests_and_ack_commands(mosquitto: Mosquitto) -> None:
    probe = Probe(mosquitto.port, "i4t/thing/+/up")
    gateway = Sender(GATEWAY)
    try:
        with running(_config(mosquitto, wifi=1, ble=0, states={0: ThingState.BROKEN})) as sim:
            thing = sim.wifi[0]
            request = gateway.packet(thing.identity.address, HealthRequest())
            command = gateway.packet(thing.identity.address, Command("blink"))
            for packet in (request, command, command):  # the command twice: a lost ack
                probe.client.publish(thing.down, gateway.seal(packet), qos=1)

            def answers() -> list[Any]:
                opened = [open_packet(p).packet for p in _packets_from(probe, thing.address)]
                return [p for p in opened if p.type is not PacketType.DATA]

            probe.wait_for(lambda: len(answers()) >= 3)
            assert thing.commands == 1
    finally:
        probe.close()
    responses = [p for p in answers() if p.type is PacketType.HEALTH_RESPONSE]
    acks = [p for p in answers() if p.type is PacketType.ACK]
    assert len(responses) == 1
    response = responses[0].payload
    assert isinstance(response, HealthResponse)
    assert response.request_id == request.message_id
    assert response.health is NodeHealth.BROKEN
    assert len(acks) == 2
    assert all(isinstance(a.payload, Ack) for a in acks)
    assert all(a.payload.message_ids == (command.message_id,) for a in acks)  # type: ignore[union-attr]


def test_silencing_a_thing_over_the_control_topic_stops_its_traffic(
    mosquitto: Mosquitto,
) -> None:
    probe = Probe(mosquitto.port, "i4t/thing/+/up", "i4t/sim/+/event")
    try:
        with running(_config(mosquitto, wifi=2, ble=0)) as sim:
            quiet, talker = (t.address for t in sim.wifi)
            probe.wait_for(lambda: len(_packets_from(probe, quiet)) >= 2)
            control = json.dumps({"thing": quiet, "state": "silent"}).encode()
            probe.client.publish(sim.config.control_topic, control, qos=1)
            probe.wait_for(lambda: probe.last(sim.config.event_topic) is not None)
            event = json.loads(probe.last(sim.config.event_topic) or b"{}")
            assert event == {"things": [0], "state": "silent"}
            time.sleep(0.15)  # whatever was in flight when the command landed
            before, talking = len(_packets_from(probe, quiet)), len(_packets_from(probe, talker))
            probe.wait_for(lambda: len(_packets_from(probe, talker)) >= talking + 4)
            assert len(_packets_from(probe, quiet)) == before
            probe.client.publish(sim.config.control_topic, b"{broken json", qos=1)
            probe.client.publish(sim.config.control_topic, b'{"thing": 9, "state": "x"}', qos=1)
            probe.wait_for(lambda: sim.stats["control_refused"] >= 2)
    finally:
        probe.close()


def test_ble_batches_decode_through_the_endpoint(mosquitto: Mosquitto) -> None:
    topic = f"i4t/{GATEWAY.address.text}/ble/adverts"
    probe = Probe(mosquitto.port, topic)
    updates: list[BleUpdate] = []
    endpoint = BleEndpoint(GATEWAY.address.text, on_update=updates.append)
    try:
        with running(_config(mosquitto, wifi=0, ble=4, states={1: ThingState.BROKEN})) as sim:
            manifest = sim.manifest()
            for thing in manifest["things"]:
                key = thing.get("bindkey") or thing.get("beacon_key")
                endpoint.enroll(
                    thing["mac"], thing["kind"], None if key is None else bytes.fromhex(key)
                )
            probe.wait_for(lambda: len(probe.messages) >= 6)
            for message_topic, payload, retained in list(probe.messages):
                endpoint.handle_message(message_topic, payload, retained)
    finally:
        probe.close()
    heard = {u.mac: u for u in updates}
    macs = [t["mac"] for t in manifest["things"]]
    assert set(heard) == set(macs)
    assert {u.kind for u in updates} == {BleKind.BTHOME, BleKind.BEACON}
    assert heard[macs[1]].status is NodeStatus.BROKEN  # the encrypted BTHome one, problem on
    assert all(heard[m].status is NodeStatus.HEALTHY for m in (macs[0], macs[2], macs[3]))
    refused = {reason: n for reason, n in endpoint.dropped.items() if "duplicate" not in reason}
    assert refused == {}


def test_as_a_remote_scanner_it_introduces_itself_and_batches_on_its_topic(
    mosquitto: Mosquitto,
) -> None:
    probe = Probe(mosquitto.port, "i4t/#")
    try:
        with running(_config(mosquitto, wifi=0, ble=3, scanner_id="dev")) as sim:
            macs = {t["mac"] for t in sim.manifest()["things"]}
            probe.wait_for(lambda: len(_scanner_adverts(probe)) >= 3)
    finally:
        probe.close()
    later = Probe(mosquitto.port, "i4t/scanner/dev/info")  # sees it only if it was retained
    try:
        later.wait_for(lambda: bool(later.messages))
        assert json.loads(later.messages[0][1]) == {"api": 1, "name": "I4T simulator sim"}
    finally:
        later.close()
    # Same batch format as the gateway's BLE endpoint, and nothing goes to the endpoint itself.
    assert {a["address"] for a in _scanner_adverts(probe)} == macs
    assert not [t for t, _, _ in list(probe.messages) if t.endswith("/ble/adverts")]


def _scanner_adverts(probe: Probe) -> list[dict[str, Any]]:
    batches = [p for t, p, _ in list(probe.messages) if t == "i4t/scanner/dev/adverts"]
    return [advert for batch in batches for advert in json.loads(batch)["adverts"]]


def test_simulator_finds_the_gateway_from_its_announcement(mosquitto: Mosquitto) -> None:
    probe = Probe(mosquitto.port, "i4t/discovery/+")
    announcement = {"api": 1, "id": GATEWAY.address.text, "role": "gateway"}
    probe.client.publish(
        f"i4t/discovery/{GATEWAY.address.text}", json.dumps(announcement), qos=1, retain=True
    ).wait_for_publish(5)
    probe.close()
    config = SimConfig(BrokerAddress("127.0.0.1", mosquitto.port), wifi=1, ble=0, **FAST)
    with running(config) as sim:
        assert sim.gateway_id == GATEWAY.address.text


def test_same_seed_same_fleet() -> None:
    broker = BrokerAddress("127.0.0.1", 1)
    first = Simulator(SimConfig(broker, wifi=2, ble=3, seed=b"a")).manifest()
    again = Simulator(SimConfig(broker, wifi=2, ble=3, seed=b"a")).manifest()
    other = Simulator(SimConfig(broker, wifi=2, ble=3, seed=b"b")).manifest()
    assert first == again
    assert first["things"][0]["public_key"] != other["things"][0]["public_key"]
    kinds = [t.get("format", t["kind"]) for t in first["things"]]
    assert kinds == ["native", "native", "bthome", "bthome_encrypted", "beacon"]
    assert first["things"][2]["bindkey"] is None
    assert len(bytes.fromhex(first["things"][4]["beacon_key"])) == 16


def test_states_are_spread_over_both_kinds() -> None:
    states = spread_states(3, 2, broken=2, silent=1, flapping=1)
    assert states == {
        0: ThingState.BROKEN,
        3: ThingState.BROKEN,
        1: ThingState.SILENT,
        4: ThingState.FLAPPING,
    }
    with pytest.raises(SimulatorError):
        spread_states(1, 0, broken=2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"wifi": 1001},
        {"interval": 0.01},
        {"jitter": 1.0},
        {"sim_id": "a/b"},
        {"states": {9: "x"}},
        {"scanner_id": "a/b"},
    ],
)
def test_bad_configurations_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(SimulatorError):
        SimConfig(BrokerAddress("127.0.0.1", 1), **kwargs)


def test_flapping_alternates() -> None:
    sim = Simulator(SimConfig(BrokerAddress("127.0.0.1", 1), wifi=1, ble=0))
    thing = sim.wifi[0]
    assert sim.set_state(0, ThingState.FLAPPING) == [0]
    said = []
    for _ in range(4):
        said.append(thing.broken_now())
        thing.report(GATEWAY.address)
    assert said == [True, False, True, False]
    assert sim.set_state("all", ThingState.HEALTHY) == [0]
    assert sim.set_state(True, ThingState.HEALTHY) == []


def test_console_entry_point_prints_the_manifest(mosquitto: Mosquitto, tmp_path: Path) -> None:
    manifest_file = tmp_path / "manifest.json"
    command = [
        sys.executable,
        "-m",
        "i4t_gateway.simulator",
        "--broker",
        mosquitto.url,
        "--gateway-id",
        GATEWAY.address.text,
        "--wifi",
        "1",
        "--ble",
        "1",
        "--silent",
        "1",
        "--interval",
        "0.1",
        "--duration",
        "0.3",
        "--manifest",
        str(manifest_file),
    ]
    out = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)
    manifest = json.loads(out.stdout.splitlines()[0])
    assert manifest["gateway_id"] == GATEWAY.address.text
    assert [t["state"] for t in manifest["things"]] == ["silent", "healthy"]
    assert json.loads(manifest_file.read_text()) == manifest
    assert manifest_file.stat().st_mode & 0o077 == 0


def test_console_entry_point_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--gateway-id", "nope"]) == 2
    assert main(["--wifi", "1", "--broken", "3", "--ble", "0"]) == 2
    assert "i4t-simulator" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("payload", "applied"),
    [
        (b'{"thing": 0, "interval": 2}', True),
        (b'{"thing": "all", "state": "broken", "interval": 0.5}', True),
        (b'{"thing": 0, "interval": 0.001}', False),
        (b'{"thing": 0, "interval": true}', False),
        (b'{"thing": 0}', False),
        (b'{"thing": 7, "state": "broken"}', False),
        (b"[1]", False),
        (b"5", False),
        (b'{"thing": 0, "state": "broken", "pad": "' + b"x" * 1100 + b'"}', False),
    ],
)
def test_control_commands_change_state_and_interval(payload: bytes, applied: bool) -> None:
    sim = Simulator(SimConfig(BrokerAddress("127.0.0.1", 1), wifi=1, ble=1))
    sim.handle_control(sim.config.control_topic, payload, False)
    assert sim.stats["control_applied" if applied else "control_refused"] == 1
    if applied:
        assert sim.wifi[0].interval in (2.0, 0.5)
    else:
        assert sim.wifi[0].interval is None
        assert sim.wifi[0].state is ThingState.HEALTHY
