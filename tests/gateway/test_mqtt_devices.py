"""Adopted MQTT devices: definitions, value paths, faults, templates, and real device traffic."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from functools import cache
import json
from pathlib import Path
import sys
import textwrap
from typing import Any

from jsonschema import Draft202012Validator
import pytest

from i4t_gateway.bus import MqttBus
from i4t_gateway.health import NodeStatus
from i4t_gateway.identity import Address, AddressSuite, Identity
from i4t_gateway.mqtt_devices import (
    MISSING,
    Availability,
    DefinitionError,
    DeviceAdapter,
    DeviceEvent,
    DeviceEventKind,
    DeviceFleet,
    DeviceTemplateOptions,
    EsphomeSensor,
    FaultRule,
    MqttDeviceDefinition,
    PayloadFormat,
    StateTopic,
    ValuePath,
    ValueSpec,
    ValueType,
    definition_for_enrolment,
    definition_from_json,
    definition_from_template,
    definitions_from_json,
    esphome_sensor,
    proxied_address,
    proxy_for,
    shelly_gen2,
    tasmota_sensor,
)
from i4t_gateway.settings import BrokerAddress
from i4t_gateway.things import Things

from .api_schemas import validator
from .brokers import Mosquitto
from .mqtt_probe import Probe

# Payloads shaped like the real devices' (Tasmota 14, ESPHome 2025, Shelly Plus 1PM Gen2).
TASMOTA_ENERGY = (
    b'{"Time":"2026-11-21T08:00:00","ENERGY":{"TotalStartTime":"2026-01-01T00:00:00",'
    b'"Total":12.345,"Yesterday":0.5,"Today":0.2,"Power":118,"ApparentPower":130,'
    b'"ReactivePower":54,"Factor":0.91,"Voltage":231,"Current":0.564}}'
)
TASMOTA_AM2301 = b'{"Time":"2026-11-21T08:00:00","AM2301":{"Temperature":21.4,"Humidity":48.0,"DewPoint":10.1},"TempUnit":"C"}'  # noqa: E501
SHELLY_SWITCH = {
    "id": 0,
    "source": "init",
    "output": True,
    "apower": 41.2,
    "voltage": 229.8,
    "freq": 50.0,
    "current": 0.215,
    "aenergy": {"total": 1520.33, "by_minute": [0.0, 0.0, 0.0], "minute_ts": 1795248000},
    "temperature": {"tC": 44.1, "tF": 111.4},
}


@cache
def device_schema() -> Draft202012Validator:
    return validator("mqtt_device")


def collecting_adapter(
    definition: MqttDeviceDefinition,
) -> tuple[DeviceAdapter, list[DeviceEvent]]:
    events: list[DeviceEvent] = []
    return DeviceAdapter(definition, events.append), events


# -- value paths ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "segments"),
    [
        ("ENERGY.Power", ("ENERGY", "Power")),
        ("$.temperature", ("temperature",)),
        ("$", ()),
        ("$.sensors[1].tC", ("sensors", 1, "tC")),
        ("switch:0.apower", ("switch:0", "apower")),
        ("[2].v", (2, "v")),
        ("$[0]", (0,)),
    ],
)
def test_value_paths_parse(text: str, segments: tuple[object, ...]) -> None:
    assert ValuePath.parse(text).segments == segments
    assert PATH_SCHEMA.is_valid(text)


PATH_SCHEMA = Draft202012Validator(
    {"$ref": "#/$defs/path", "$defs": validator("mqtt_device").schema["$defs"]}
)


@pytest.mark.parametrize(
    "text",
    [
        ".a",
        "a..b",
        "a.b()",
        "__import__('os')",
        "a[-1]",
        "a b",
        "$.a.",
        "a[x]",
        "a[0]b",
        "$temperature",
        "",
    ],
)
def test_anything_but_keys_and_indexes_is_refused(text: str) -> None:
    with pytest.raises(DefinitionError):
        ValuePath.parse(text)
    assert not PATH_SCHEMA.is_valid(text)


def test_paths_deeper_than_eight_are_refused() -> None:
    with pytest.raises(DefinitionError):
        ValuePath.parse(".".join("abcdefghi"))


def test_extract_follows_keys_and_indexes_and_says_missing() -> None:
    document = {"a": {"b": [10, {"c": None}]}}
    assert ValuePath.parse("a.b[0]").extract(document) == 10
    assert ValuePath.parse("a.b[1].c").extract(document) is None
    assert ValuePath.parse("a.b[2]").extract(document) is MISSING
    assert ValuePath.parse("a.x").extract(document) is MISSING
    assert ValuePath.parse("a.b.c").extract(document) is MISSING
    assert ValuePath.parse("a[0]").extract(document) is MISSING
    assert ValuePath.parse("$").extract(document) == document


# -- definitions ---------------------------------------------------------------------------------


def all_templates() -> list[MqttDeviceDefinition]:
    return [
        tasmota_sensor("plug", topic="kitchen_plug"),
        tasmota_sensor("climate", topic="bedroom", sensor="AM2301", name="Bedroom"),
        esphome_sensor(
            "esp",
            prefix="livingroom",
            sensors=[
                EsphomeSensor("temperature", "°C", "temperature", -40, 85),
                EsphomeSensor("motion", component="binary_sensor"),
            ],
        ),
        shelly_gen2("shelly", device_id="shellyplus1pm-a8032ab12345"),
        shelly_gen2("ht", device_id="shellyhtg3-1", components=["temperature:0", "humidity:0"]),
    ]


@pytest.mark.parametrize("definition", all_templates(), ids=lambda d: d.local_id)
def test_templates_round_trip_through_the_schema(definition: MqttDeviceDefinition) -> None:
    document = json.loads(json.dumps(definition.to_json()))
    device_schema().validate(document)
    assert definition_from_json(document) == definition


def test_a_hand_written_definition_with_every_field() -> None:
    document = {
        "id": "boiler",
        "name": "Boiler",
        "model": "custom",
        "availability": {"topic": "boiler/lwt", "online": "up", "offline": "down"},
        "states": [
            {
                "topic": "boiler/state",
                "values": [
                    {"key": "flow_temp", "path": "$.flow.t", "unit": "°C", "min": 5, "max": 95},
                    {"key": "energy", "path": "meter.wh", "scale": 0.001, "unit": "kWh"},
                    {"key": "mode", "path": "mode", "type": "text"},
                ],
                "faults": [
                    {"reason": "burner lockout", "path": "status", "equals": ["LOCKOUT", 7]},
                    {"reason": "error list", "path": "errors"},
                ],
            },
            {
                "topic": "boiler/pump",
                "format": "raw",
                "values": [{"key": "pump", "type": "bool"}],
            },
        ],
    }
    device_schema().validate(document)
    definition = definition_from_json(document)
    assert definition.availability == Availability("boiler/lwt", "up", "down")
    assert definition.topics() == ["boiler/state", "boiler/pump", "boiler/lwt"]
    assert definition_from_json(definition.to_json()) == definition


BAD_DEFINITIONS: list[tuple[str, dict[str, Any]]] = [
    ("upper-case id", {"id": "Kitchen", "name": "x", "states": [{"topic": "t", "values": []}]}),
    ("no states", {"id": "k", "name": "x", "states": []}),
    ("unknown field", {"id": "k", "name": "x", "states": [], "eval": "1"}),
    (
        "wildcard topic",
        {"id": "k", "name": "x", "states": [{"topic": "a/+/b", "values": [{"key": "v"}]}]},
    ),
    (
        "the gateway's own topics",
        {
            "id": "k",
            "name": "x",
            "states": [{"topic": "i4t/thing/x/up", "format": "raw", "values": [{"key": "v"}]}],
        },
    ),
    (
        "json value without path",
        {"id": "k", "name": "x", "states": [{"topic": "a", "values": [{"key": "v"}]}]},
    ),
    (
        "bad value type",
        {
            "id": "k",
            "name": "x",
            "states": [{"topic": "a", "values": [{"key": "v", "path": "v", "type": "date"}]}],
        },
    ),
    (
        "scale is a text",
        {
            "id": "k",
            "name": "x",
            "states": [{"topic": "a", "values": [{"key": "v", "path": "v", "scale": "2"}]}],
        },
    ),
    (
        "fault equals an object",
        {
            "id": "k",
            "name": "x",
            "states": [
                {"topic": "a", "values": [], "faults": [{"reason": "r", "equals": [{"a": 1}]}]}
            ],
        },
    ),
]


@pytest.mark.parametrize(("why", "document"), BAD_DEFINITIONS, ids=[b[0] for b in BAD_DEFINITIONS])
def test_bad_definitions_are_refused_by_code_and_schema(why: str, document: dict[str, Any]) -> None:
    with pytest.raises(DefinitionError):
        definition_from_json(document)
    # Rules across fields, or about the gateway's namespace, are the code's alone.
    if why not in ("json value without path", "the gateway's own topics"):
        assert not device_schema().is_valid(document)


@pytest.mark.parametrize(
    "build",
    [
        lambda: MqttDeviceDefinition("k", " ", (StateTopic("t", (ValueSpec("v"),), "raw"),)),  # type: ignore[arg-type]
        lambda: MqttDeviceDefinition(
            "k",
            "n",
            (StateTopic("t", (ValueSpec("v"),), PayloadFormat.RAW),),
            Availability("t"),
        ),
        lambda: MqttDeviceDefinition(
            "k",
            "n",
            (
                StateTopic(
                    "t",
                    (ValueSpec("v", ValuePath.parse("a"), minimum=2, maximum=1),),
                ),
            ),
        ),
        lambda: MqttDeviceDefinition(
            "k",
            "n",
            (
                StateTopic("t", (ValueSpec("v", ValuePath.parse("a")),)),
                StateTopic("u", (ValueSpec("v", ValuePath.parse("b")),)),
            ),
        ),
        lambda: MqttDeviceDefinition(
            "k",
            "n",
            (StateTopic("t", (ValueSpec("v"),), PayloadFormat.RAW),),
            Availability("a", "x", "x"),
        ),
        lambda: MqttDeviceDefinition("k", "n", (StateTopic("t", ()),)),
    ],
    ids=["blank name", "topic twice", "min above max", "key twice", "same payloads", "empty"],
)
def test_inconsistent_definitions_are_refused(build: Callable[[], object]) -> None:
    with pytest.raises(DefinitionError):
        build()


def test_definition_lists_need_unique_ids() -> None:
    one = tasmota_sensor("a", topic="x").to_json()
    assert len(definitions_from_json([one, tasmota_sensor("b", topic="y").to_json()])) == 2
    with pytest.raises(DefinitionError, match="more than once"):
        definitions_from_json([one, one])


def test_templates_from_add_on_options() -> None:
    climate = definition_from_template(
        DeviceTemplateOptions("c", "tasmota", "bedroom", sensors=("AM2301.Temperature",))
    )
    assert [v.key for s in climate.states for v in s.values] == ["am2301_temperature"]
    energy = definition_from_template(DeviceTemplateOptions("e", "tasmota", "plug"))
    assert [v.key for s in energy.states for v in s.values] == [
        "power",
        "voltage",
        "current",
        "total",
    ]
    esp = definition_from_template(
        DeviceTemplateOptions("esp", "esphome", "node1", sensors=("wifi_signal", "t"))
    )
    assert esp.topics() == [
        "node1/sensor/wifi_signal/state",
        "node1/sensor/t/state",
        "node1/status",
    ]
    shelly = definition_from_template(DeviceTemplateOptions("s", "shelly_gen2", "shelly1"))
    assert shelly.topics() == ["shelly1/status/switch:0", "shelly1/online"]
    for bad in (
        DeviceTemplateOptions("x", "zigbee", "t"),
        DeviceTemplateOptions("x", "shelly_gen2", "t", sensors=("light:0",)),
        DeviceTemplateOptions("x", "tasmota", "t", sensors=("A.Temperature", "B.Humidity")),
    ):
        with pytest.raises(DefinitionError):
            definition_from_template(bad)


def test_definitions_for_enrolment_take_id_and_name_from_the_command() -> None:
    device = tasmota_sensor("plug", topic="plug").to_json()
    del device["id"], device["name"]
    definition = definition_for_enrolment("kitchen", "Kitchen plug", device)
    assert (definition.local_id, definition.name) == ("kitchen", "Kitchen plug")
    same = definition_for_enrolment("kitchen", "Kitchen plug", definition.to_json())
    assert same == definition
    with pytest.raises(DefinitionError, match="differs"):
        definition_for_enrolment("other", "Kitchen plug", definition.to_json())
    with pytest.raises(DefinitionError):
        definition_for_enrolment("kitchen", "Kitchen plug", [])  # type: ignore[arg-type]


# -- proxy identity ------------------------------------------------------------------------------


def test_proxied_address_is_bound_to_the_gateway_and_namespaced() -> None:
    gateway = Identity.from_seed(bytes(range(32)))
    other = Identity.from_seed(bytes(32))
    address = proxied_address(gateway.public_key, "kitchen-plug")
    assert address.suite is AddressSuite.PROXIED_SHA256_128
    assert address == proxied_address(gateway.public_bytes, "kitchen-plug")
    assert address != proxied_address(other.public_key, "kitchen-plug")
    assert address != proxied_address(gateway.public_key, "kitchen-plug2")
    # An MQTT device never shares an address with a thing proxied under the bare local id.
    assert address != Address.for_proxied(gateway.public_key, b"kitchen-plug")
    proxy = proxy_for(gateway, "kitchen-plug")
    assert proxy.gateway == gateway.address
    assert Address.for_proxied(gateway.public_key, proxy.local_id) == address
    with pytest.raises(DefinitionError):
        proxied_address(gateway.public_key, "x" * 60)


def test_the_thing_registry_gives_adopted_devices_the_same_address() -> None:
    gateway = Identity.from_seed(bytes(range(32)))
    things = Things(gateway.public_bytes)
    thing = things.enrol_mqtt("kitchen-plug", {}, "Kitchen plug", now=0.0)
    assert thing.address == proxied_address(gateway.public_key, "kitchen-plug")


def test_online_carries_the_last_reported_status() -> None:
    adapter, events = collecting_adapter(shelly_gen2("s", device_id="sh"))
    adapter.handle("sh/online", b"true", True)
    adapter.handle(
        "sh/status/switch:0", json.dumps({**SHELLY_SWITCH, "errors": ["x"]}).encode(), False
    )
    adapter.handle("sh/online", b"false", False)
    adapter.handle("sh/online", b"true", False)
    assert [(e.kind.value, e.status) for e in events] == [
        ("online", NodeStatus.HEALTHY),
        ("state", NodeStatus.BROKEN),
        ("offline", None),
        ("online", NodeStatus.BROKEN),
    ]


# -- the adapter on messages -----------------------------------------------------------------------


def test_tasmota_energy_readings() -> None:
    adapter, events = collecting_adapter(tasmota_sensor("plug", topic="plug"))
    adapter.handle("tele/plug/SENSOR", TASMOTA_ENERGY, False)
    (event,) = events
    assert event.kind is DeviceEventKind.STATE
    assert event.status is NodeStatus.HEALTHY
    readings = {r.key: (r.value, r.unit, r.device_class) for r in event.readings}
    assert readings == {
        "power": (118.0, "W", "power"),
        "voltage": (231.0, "V", "voltage"),
        "current": (0.564, "A", "current"),
        "total": (12.345, "kWh", "energy"),
    }


def test_out_of_range_keeps_the_value_but_reports_broken() -> None:
    adapter, events = collecting_adapter(tasmota_sensor("t", topic="t", sensor="AM2301"))
    adapter.handle("tele/t/SENSOR", TASMOTA_AM2301.replace(b"48.0", b"130.0"), False)
    assert events[-1].status is NodeStatus.BROKEN
    assert events[-1].faults == ("am2301_humidity: out of range",)
    assert adapter.last_readings["am2301_humidity"].value == 130.0
    adapter.handle("tele/t/SENSOR", TASMOTA_AM2301, False)
    assert events[-1].status is NodeStatus.HEALTHY
    assert adapter.status is NodeStatus.HEALTHY


def test_a_sensor_missing_from_the_payload_is_a_fault_not_silence() -> None:
    adapter, events = collecting_adapter(tasmota_sensor("t", topic="t", sensor="DS18B20"))
    adapter.handle("tele/t/SENSOR", b'{"Time":"2026-11-21T08:00:00","TempUnit":"C"}', False)
    assert events[-1].status is NodeStatus.BROKEN
    assert events[-1].readings == ()


def test_scale_and_raw_text_and_bool_values() -> None:
    definition = MqttDeviceDefinition(
        "m",
        "meter",
        (
            StateTopic("m/wh", (ValueSpec("energy", scale=0.001, unit="kWh"),), PayloadFormat.RAW),
            StateTopic("m/relay", (ValueSpec("relay", type=ValueType.BOOL),), PayloadFormat.RAW),
            StateTopic(
                "m/info",
                (ValueSpec("fw", ValuePath.parse("fw"), type=ValueType.TEXT),),
            ),
        ),
    )
    adapter, events = collecting_adapter(definition)
    adapter.handle("m/wh", b" 12500 \n", False)
    adapter.handle("m/relay", b"ON", False)
    adapter.handle("m/info", b'{"fw": 14.2}', True)
    assert [e.readings[0].value for e in events] == [12.5, True, "14.2"]
    assert events[-1].retained


def test_fault_rules_match_values_exactly() -> None:
    definition = MqttDeviceDefinition(
        "b",
        "boiler",
        (
            StateTopic(
                "b/s",
                (ValueSpec("t", ValuePath.parse("t")),),
                faults=(FaultRule("lockout", ValuePath.parse("code"), equals=(7, "LOCK")),),
            ),
        ),
    )
    adapter, events = collecting_adapter(definition)
    for code, broken in [(7, True), ("LOCK", True), (True, False), (1, False), (None, False)]:
        adapter.handle("b/s", json.dumps({"t": 50, "code": code}).encode(), False)
        assert (events[-1].status is NodeStatus.BROKEN) is broken, code


def test_faults_clear_per_topic() -> None:
    adapter, events = collecting_adapter(
        shelly_gen2("s", device_id="sh", components=["switch:0", "switch:1"])
    )
    adapter.handle(
        "sh/status/switch:0", json.dumps({**SHELLY_SWITCH, "errors": ["overtemp"]}).encode(), False
    )
    adapter.handle("sh/status/switch:1", json.dumps(SHELLY_SWITCH).encode(), False)
    assert events[-1].status is NodeStatus.BROKEN  # switch:0 still reports its fault
    assert events[-1].faults == ("switch:0: errors",)
    adapter.handle(
        "sh/status/switch:0", json.dumps({**SHELLY_SWITCH, "errors": []}).encode(), False
    )
    assert events[-1].status is NodeStatus.HEALTHY


MALFORMED = [
    ("tele/p/SENSOR", b"\xff\xfe", "not_utf8"),
    ("tele/p/SENSOR", b"{not json", "not_json"),
    ("tele/p/SENSOR", b'{"ENERGY":{"Power":NaN}}', "not_json"),
    ("tele/p/SENSOR", b"[" * 100_000, "too_large"),
    ("tele/p/SENSOR", b"[" * 30_000 + b"]" * 30_000, "not_json"),  # too deep
    ("tele/p/SENSOR", b"42", "not_object"),
    ("tele/p/SENSOR", b'{"ENERGY":{"Power":"lots"}}', "bad_value"),
    ("tele/p/SENSOR", b'{"ENERGY":{"Power":true}}', "bad_value"),
    ("tele/p/SENSOR", b'{"ENERGY":{"Power":[1]}}', "bad_value"),
    ("tele/p/SENSOR", b'{"ENERGY":{"Power":"1e999"}}', "bad_value"),
    ("tele/p/LWT", b"Maybe", "unknown_availability"),
    ("tele/p/STATE", b"{}", "unknown_topic"),
]


@pytest.mark.parametrize(
    ("topic", "payload", "reason"), MALFORMED, ids=[m[2] + str(i) for i, m in enumerate(MALFORMED)]
)
def test_malformed_messages_are_dropped_and_counted(
    topic: str, payload: bytes, reason: str
) -> None:
    adapter, events = collecting_adapter(tasmota_sensor("p", topic="p"))
    adapter.handle(topic, payload, False)
    assert events == []
    assert adapter.dropped == {reason: 1}


def test_esphome_nan_means_broken_and_bad_bools_are_dropped() -> None:
    adapter, events = collecting_adapter(
        esphome_sensor(
            "e",
            prefix="n",
            sensors=[EsphomeSensor("t", "°C"), EsphomeSensor("door", component="binary_sensor")],
        )
    )
    adapter.handle("n/sensor/t/state", b"nan", False)
    assert events[-1].status is NodeStatus.BROKEN
    adapter.handle("n/binary_sensor/door/state", b"MAYBE", False)
    assert adapter.dropped == {"bad_value": 1}


# -- the fleet -----------------------------------------------------------------------------------


def test_the_fleet_routes_topics_to_their_current_owner() -> None:
    subscriptions: dict[str, Callable[[str, bytes, bool], None]] = {}
    events: list[DeviceEvent] = []
    fleet = DeviceFleet(subscriptions.__setitem__, events.append)
    fleet.adopt(tasmota_sensor("plug", topic="plug"))
    with pytest.raises(DefinitionError, match="already belongs to device plug"):
        fleet.adopt(tasmota_sensor("other", topic="plug"))
    assert sorted(subscriptions) == ["tele/plug/LWT", "tele/plug/SENSOR"]
    subscriptions["tele/plug/LWT"]("tele/plug/LWT", b"Online", False)
    assert [e.local_id for e in events] == ["plug"]

    assert fleet.release("plug")
    assert not fleet.release("plug")
    subscriptions["tele/plug/LWT"]("tele/plug/LWT", b"Online", False)
    assert len(events) == 1
    assert fleet.dropped() == {"released": 1}

    # The topic is free again; adopting it does not subscribe twice.
    fleet.adopt(tasmota_sensor("other", topic="plug"))
    subscriptions["tele/plug/SENSOR"]("tele/plug/SENSOR", b"junk", False)
    assert fleet.dropped() == {"released": 1, "not_json": 1}
    assert "other" in fleet
    assert len(fleet) == 1
    # A new definition for the same id replaces the old one.
    adapter = fleet.adopt(tasmota_sensor("other", topic="plug", sensor="AM2301"))
    assert fleet.get("other") is adapter
    assert len(subscriptions) == 2


# -- real devices' traffic through a real Mosquitto ------------------------------------------------


@pytest.fixture
def publisher(mosquitto: Mosquitto) -> Iterator[Callable[[str, bytes, bool], None]]:
    probe = Probe(mosquitto.port, "probe/unused")

    def publish(topic: str, payload: bytes, retain: bool = False) -> None:
        probe.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    yield publish
    probe.close()


async def wait_until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 - paho's callbacks change it on this loop
            await asyncio.sleep(0.01)


async def adopted(
    mosquitto: Mosquitto, definition: MqttDeviceDefinition
) -> tuple[MqttBus, DeviceAdapter, list[DeviceEvent]]:
    # Through a fleet on the gateway's own bus, as the server wires it.
    bus = MqttBus(BrokerAddress.from_url(mosquitto.url), client_id=f"gw-{definition.local_id}")
    events: list[DeviceEvent] = []
    fleet = DeviceFleet(bus.subscribe, events.append)
    adapter = fleet.adopt(definition)
    await bus.start()
    return bus, adapter, events


def kinds(events: list[DeviceEvent]) -> list[str]:
    return [e.status.value if e.kind is DeviceEventKind.STATE else e.kind.value for e in events]


async def test_tasmota_device_over_mosquitto(
    mosquitto: Mosquitto, publisher: Callable[..., None]
) -> None:
    # Tasmota publishes its LWT retained, so a gateway that starts later still learns it.
    publisher("tele/bedroom/LWT", b"Online", True)
    bus, adapter, events = await adopted(
        mosquitto, tasmota_sensor("climate", topic="bedroom", sensor="AM2301")
    )
    try:
        await wait_until(lambda: len(events) == 1)
        assert events[0].kind is DeviceEventKind.ONLINE
        assert events[0].retained
        publisher("tele/bedroom/SENSOR", TASMOTA_AM2301)
        publisher("tele/bedroom/SENSOR", b"garbage")
        publisher("tele/bedroom/LWT", b"Offline", True)
        await wait_until(lambda: len(events) == 3)
        assert kinds(events) == ["online", "healthy", "offline"]
        assert {r.key: r.value for r in events[1].readings} == {
            "am2301_temperature": 21.4,
            "am2301_humidity": 48.0,
        }
        assert adapter.dropped == {"not_json": 1}
    finally:
        await bus.stop()


async def test_esphome_node_over_mosquitto(
    mosquitto: Mosquitto, publisher: Callable[..., None]
) -> None:
    publisher("garden/status", b"online", True)
    definition = esphome_sensor(
        "garden",
        prefix="garden",
        sensors=[EsphomeSensor("soil_moisture", "%", "moisture", 0, 100)],
    )
    bus, _, events = await adopted(mosquitto, definition)
    try:
        await wait_until(lambda: len(events) == 1)
        for payload in (b"41.5", b"nan", b"42.0", b"180.0"):
            publisher("garden/sensor/soil_moisture/state", payload)
        publisher("garden/status", b"offline", True)
        await wait_until(lambda: len(events) == 6)
        assert kinds(events) == ["online", "healthy", "broken", "healthy", "broken", "offline"]
        assert events[3].readings[0].value == 42.0
    finally:
        await bus.stop()


async def test_shelly_gen2_over_mosquitto(
    mosquitto: Mosquitto, publisher: Callable[..., None]
) -> None:
    device = "shellyplus1pm-a8032ab12345"
    publisher(f"{device}/online", b"true", True)
    bus, _, events = await adopted(mosquitto, shelly_gen2("pump", device_id=device))
    try:
        await wait_until(lambda: len(events) == 1)
        publisher(f"{device}/status/switch:0", json.dumps(SHELLY_SWITCH).encode())
        overheated = {**SHELLY_SWITCH, "output": False, "errors": ["overtemp"]}
        publisher(f"{device}/status/switch:0", json.dumps(overheated).encode())
        publisher(f"{device}/online", b"false", True)
        await wait_until(lambda: len(events) == 4)
        assert kinds(events) == ["online", "healthy", "broken", "offline"]
        readings = {r.key: r.value for r in events[1].readings}
        assert readings["switch_0_output"] is True
        assert readings["switch_0_apower"] == 41.2
        assert readings["switch_0_aenergy_total"] == 1520.33
        assert readings["switch_0_temperature_t_c"] == 44.1
        assert events[2].faults == ("switch:0: errors",)
    finally:
        await bus.stop()


async def test_the_brokers_last_will_reports_offline(mosquitto: Mosquitto, tmp_path: Path) -> None:
    # A stand-in Tasmota in its own process, killed without a goodbye: the broker publishes
    # its will (tele/<topic>/LWT Offline), which the adapter reports as an explicit offline.
    script = textwrap.dedent(
        f"""
        import time, paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        c.will_set("tele/dev/LWT", b"Offline", qos=1, retain=True)
        c.connect("127.0.0.1", {mosquitto.port})
        c.loop_start()
        c.publish("tele/dev/LWT", b"Online", qos=1, retain=True).wait_for_publish(5)
        print("up", flush=True)
        time.sleep(60)
        """
    )
    device = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE
    )
    bus, _, events = await adopted(mosquitto, tasmota_sensor("dev", topic="dev"))
    try:
        assert device.stdout is not None
        assert await device.stdout.readline() == b"up\n"
        await wait_until(lambda: [e.kind for e in events] == [DeviceEventKind.ONLINE])
        device.kill()
        await device.wait()
        await wait_until(lambda: events[-1].kind is DeviceEventKind.OFFLINE)
        assert not events[-1].retained
    finally:
        if device.returncode is None:
            device.kill()
            await device.wait()
        await bus.stop()
