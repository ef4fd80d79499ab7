"""The BLE bridge: adverts from HA's bluetooth stack to the gateway, GATT writes back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
import json
import logging
import time
from typing import Any
from unittest.mock import patch

from bleak.backends.device import BLEDevice
from bleak.exc import BleakError
import bleak_retry_connector
from bleak_retry_connector import (
    BleakConnectionError,
    BleakOutOfConnectionSlotsError,
)
from habluetooth.usage import HaBleakClientWithServiceCache
from homeassistant.components import bluetooth
from homeassistant.core import HomeAssistant
from homeassistant.util import dt as dt_util
import pytest
from pytest_homeassistant_custom_component.common import (
    MockConfigEntry,
    async_fire_mqtt_message,
    async_fire_time_changed,
)

from custom_components.i4t import ble_bridge
from custom_components.i4t.ble_bridge import (
    AdvertForwarder,
    advert_json,
    encode_batches,
    gatt_result,
    parse_gatt_request,
)
from custom_components.i4t.const import DOMAIN

from .ble_helpers import (
    BEACON_UUID,
    BTHOME_UUID,
    GATEWAY_ID,
    ROOT,
    Collected,
    bluetooth_stack,  # noqa: F401 - fixture
    collect,
    inject,
    no_bluetooth_discovery,  # noqa: F401 - fixture
    schema_validator,
    service_info,
)
from .conftest import RetainedBroker

ADVERTS_TOPIC = f"i4t/{GATEWAY_ID}/ble/adverts"
REQUEST_TOPIC = f"i4t/{GATEWAY_ID}/ble/gatt/request"
RESULT_TOPIC = f"i4t/{GATEWAY_ID}/ble/gatt/result"
BTHOME_MAC = "A4:C1:38:00:00:01"
BEACON_MAC = "C0:FF:EE:00:00:02"
OTHER_MAC = "11:22:33:44:55:66"
THING_MAC = "D0:00:00:00:00:07"
SERVICE = "7e570001-0000-4000-8000-00805f9b34fb"
CHARACTERISTIC = "7e570002-0000-4000-8000-00805f9b34fb"

ADVERTS_SCHEMA = schema_validator("ble_adverts")
REQUEST_SCHEMA = schema_validator("ble_gatt_request")
RESULT_SCHEMA = schema_validator("ble_gatt_result")

# HA's bluetooth (mocked adapter) before MQTT and the bridge.
pytestmark = pytest.mark.usefixtures("bluetooth_stack")

type StartBridge = Callable[..., Awaitable[Callable[[], None]]]


@pytest.fixture
async def start_bridge(hass: HomeAssistant, broker: RetainedBroker) -> AsyncIterator[StartBridge]:
    """Start the bridge of a gateway entry with the given options; undone at the end."""
    undos: list[Callable[[], None]] = []

    async def start(**options: Any) -> Callable[[], None]:
        entry = MockConfigEntry(domain=DOMAIN, unique_id=GATEWAY_ID, options=options)
        entry.add_to_hass(hass)
        undo = await ble_bridge.async_setup_ble_bridge(hass, entry, GATEWAY_ID)
        undos.append(undo)
        return undo

    yield start
    for undo in undos:
        undo()
    await hass.async_block_till_done(wait_background_tasks=True)


@pytest.fixture
async def adverts(hass: HomeAssistant, broker: RetainedBroker) -> AsyncIterator[Collected]:
    async with collect(hass, ADVERTS_TOPIC) as collected:
        yield collected


@pytest.fixture
async def results(hass: HomeAssistant, broker: RetainedBroker) -> AsyncIterator[Collected]:
    async with collect(hass, RESULT_TOPIC) as collected:
        yield collected


def bthome(rssi: int = -60, packet: int = 1, **kwargs: Any) -> Any:
    data = bytes([0x40, 0x00, packet, 0x02, 0xCA, 0x09])  # packet id, 25.06 °C
    return service_info(
        BTHOME_MAC, service_data={BTHOME_UUID: data}, name="ATC_000001", rssi=rssi, **kwargs
    )


async def flush(hass: HomeAssistant, seconds: float = 1.0) -> None:
    async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=seconds))
    await hass.async_block_till_done(wait_background_tasks=True)


def batch_adverts(collected: Collected) -> list[dict[str, Any]]:
    """Every advert of every batch received, each batch checked against the schema."""
    out: list[dict[str, Any]] = []
    for message in collected.messages:
        assert message.retain is False
        batch = json.loads(message.payload)
        ADVERTS_SCHEMA.validate(batch)
        out += batch["adverts"]
    return out


async def test_matched_adverts_are_batched_in_the_schema_format(
    hass: HomeAssistant, start_bridge: StartBridge, adverts: Collected
) -> None:
    await start_bridge()
    before = time.time()
    inject(hass, bthome())
    inject(
        hass,
        service_info(
            BEACON_MAC,
            service_data={BEACON_UUID: bytes(range(20))},
            manufacturer_data={0xFFFF: b"\x01\x02", 76: b"\x02\x15"},
            rssi=-140,
            source="esphome-proxy-kitchen",
        ),
    )
    # A phone and a BLE thing of another vendor: no match.
    inject(hass, service_info(OTHER_MAC, manufacturer_data={0x0499: b"\x05" * 8}, rssi=-50))
    inject(
        hass,
        service_info(
            "22:33:44:55:66:77", service_data={"0000181a-0000-1000-8000-00805f9b34fb": b"\x01"}
        ),
    )
    await hass.async_block_till_done()
    assert adverts.messages == []  # nothing until the batch timer fires

    await flush(hass)
    assert len(adverts.messages) == 1
    sent = {a["address"]: a for a in batch_adverts(adverts)}
    assert set(sent) == {BTHOME_MAC, BEACON_MAC}
    thermometer = sent[BTHOME_MAC]
    assert thermometer["service_data"] == {BTHOME_UUID: "4000010" + "2ca09"}
    assert thermometer["local_name"] == "ATC_000001"
    assert thermometer["rssi"] == -60
    assert thermometer["source"] == "00:00:00:00:00:01"
    assert "manufacturer_data" not in thermometer
    assert before - 1 <= thermometer["time"] <= time.time() + 1
    beacon = sent[BEACON_MAC]
    assert beacon["manufacturer_data"] == {"65535": "0102", "76": "0215"}
    assert beacon["service_data"] == {BEACON_UUID: bytes(range(20)).hex()}
    assert beacon["rssi"] == -127  # clamped to the schema's range
    assert beacon["source"] == "esphome-proxy-kitchen"
    assert "local_name" not in beacon  # HA names it by its address: no local name

    # New data from a forwarded thing makes a new batch; nothing is sent twice.
    adverts.clear()
    inject(hass, bthome(packet=2))
    await flush(hass)
    assert [a["service_data"][BTHOME_UUID][4:6] for a in batch_adverts(adverts)] == ["02"]


async def test_same_advert_twice_in_a_window_is_sent_once(
    hass: HomeAssistant, start_bridge: StartBridge, adverts: Collected
) -> None:
    await start_bridge()
    # Service data of both formats matches both callbacks: the second call is coalesced.
    both = {BTHOME_UUID: b"\x40\x00\x07", BEACON_UUID: b"\x01" * 8}
    inject(hass, service_info(BTHOME_MAC, service_data=both))
    await flush(hass)
    assert len(batch_adverts(adverts)) == 1


async def test_unchanged_adverts_are_refreshed_for_liveness(
    hass: HomeAssistant, start_bridge: StartBridge, adverts: Collected
) -> None:
    await start_bridge()
    inject(hass, bthome(rssi=-70))
    await flush(hass)
    assert len(batch_adverts(adverts)) == 1
    adverts.clear()

    # HA does not call callbacks for an advert whose data did not change ...
    inject(hass, bthome(rssi=-65, at=bluetooth.MONOTONIC_TIME() + 0.1))
    await flush(hass)
    assert adverts.messages == []
    # ... so the refresh forwards what HA heard since, once.
    await flush(hass, ble_bridge.REFRESH_SECONDS + 1)
    await flush(hass)
    assert [a["rssi"] for a in batch_adverts(adverts)] == [-65]
    adverts.clear()
    await flush(hass, 2 * ble_bridge.REFRESH_SECONDS + 2)
    await flush(hass)
    assert adverts.messages == []


async def test_bridge_switched_off_forwards_nothing_and_refuses_gatt(
    hass: HomeAssistant, start_bridge: StartBridge, adverts: Collected, results: Collected
) -> None:
    await start_bridge(ble_bridge=False)
    inject(hass, bthome())
    await flush(hass)
    await flush(hass, ble_bridge.REFRESH_SECONDS + 1)
    assert adverts.messages == []

    async_fire_mqtt_message(hass, REQUEST_TOPIC, request_payload())
    await hass.async_block_till_done(wait_background_tasks=True)
    assert results.json() == [
        {
            "api": 1,
            "id": "ab" * 16,
            "ok": False,
            "error": "not_allowed",
            "detail": "BLE bridge is off",
        }
    ]


async def test_undo_stops_everything(
    hass: HomeAssistant, start_bridge: StartBridge, adverts: Collected, results: Collected
) -> None:
    undo = await start_bridge()
    inject(hass, bthome())
    undo()  # with an advert waiting: it is dropped with the timer
    await flush(hass)
    inject(hass, bthome(packet=9))
    async_fire_mqtt_message(hass, REQUEST_TOPIC, request_payload())
    await flush(hass)
    await flush(hass, ble_bridge.REFRESH_SECONDS + 1)
    assert adverts.messages == []
    assert results.messages == []
    undo()  # twice is harmless


async def test_full_buffer_drops_oldest_and_full_batch_goes_at_once(
    hass: HomeAssistant, start_bridge: StartBridge, adverts: Collected
) -> None:
    with patch.object(ble_bridge, "MAX_PENDING", 3), patch.object(ble_bridge, "BATCH_ADVERTS", 3):
        undo = await start_bridge()
        bridge = undo.__self__  # type: ignore[attr-defined]
        for i in range(3):
            inject(hass, service_info(f"A4:C1:38:00:01:0{i}", service_data={BTHOME_UUID: b"\x40"}))
        # The third advert filled a batch: sent without waiting for the timer.
        await hass.async_block_till_done(wait_background_tasks=True)
        assert len(batch_adverts(adverts)) == 3
        adverts.clear()

        # Five adverts within one loop iteration: the two oldest are dropped.
        forwarder: AdvertForwarder = bridge.forwarder
        for i in range(5):
            forwarder.async_on_advert(
                service_info(f"A4:C1:38:00:02:0{i}", service_data={BTHOME_UUID: b"\x40"}),
                bluetooth.BluetoothChange.ADVERTISEMENT,
            )
        await flush(hass)
        assert [a["address"][-1] for a in batch_adverts(adverts)] == ["2", "3", "4"]
        assert forwarder.stats.dropped_full == 2
        diagnostics = bridge.diagnostics()
        assert diagnostics["forwarding"] is True
        assert diagnostics["dropped_full"] == 2
        assert diagnostics["remote_scanners"]["scanners"] == {}


async def test_batches_in_flight_are_bounded(
    hass: HomeAssistant,
    start_bridge: StartBridge,
    adverts: Collected,
) -> None:
    with (
        patch.object(ble_bridge, "BATCH_ADVERTS", 1),
        patch.object(ble_bridge, "MAX_TRACKED", 4),
    ):
        undo = await start_bridge()
        forwarder: AdvertForwarder = undo.__self__.forwarder  # type: ignore[attr-defined]
        for i in range(10):
            forwarder.async_on_advert(
                service_info(f"A4:C1:38:00:03:0{i}", service_data={BTHOME_UUID: b"\x40"}),
                bluetooth.BluetoothChange.ADVERTISEMENT,
            )
        await hass.async_block_till_done(wait_background_tasks=True)
        # One flush made ten one-advert batches; eight may be in flight at once.
        assert len(adverts.messages) == ble_bridge.MAX_PUBLISHING
        assert forwarder.stats.batches_dropped == 2
        assert forwarder.stats.forwarded == 8
        # Only the newest addresses are kept for the liveness refresh.
        assert len(forwarder._tracked) == 4


def test_advert_json_keeps_within_the_schema() -> None:
    many = {f"0000{i:04x}-0000-1000-8000-00805f9b34fb": bytes([i]) for i in range(12)}
    many[BTHOME_UUID] = b"\x00" * 300  # too long: left out
    companies = dict.fromkeys(range(10), b"\x01")
    advert = (BTHOME_MAC, 40, 100.0, "s" * 80, "n" * 300, many, companies)
    document = advert_json(advert, 1_700_000_000.0)
    ADVERTS_SCHEMA.validate({"api": 1, "adverts": [document]})
    assert document["rssi"] == 20
    assert document["time"] == 1_700_000_100.0
    assert len(document["source"]) == 64
    assert len(document["local_name"]) == 248
    assert len(document["service_data"]) == 8
    assert BTHOME_UUID not in document["service_data"]
    assert len(document["manufacturer_data"]) == 8

    few = (
        BTHOME_MAC,
        -50,
        1.0,
        "hci0",
        BTHOME_MAC,
        {BTHOME_UUID: b"\x00" * 256},
        {1: b"\x00" * 256},
    )
    document = advert_json(few, 0.0)
    assert document["service_data"] == {}
    assert document["manufacturer_data"] == {}


def test_large_batches_are_split_below_the_size_limit() -> None:
    big = {f"0000{i:04x}-0000-1000-8000-00805f9b34fb": b"\xaa" * 255 for i in range(8)}
    adverts = [
        advert_json((BTHOME_MAC, -50, 1.0, "hci0", BTHOME_MAC, big, {}), 0.0) for _ in range(600)
    ]
    batches = encode_batches(adverts)
    assert len(batches) > 2  # 512 such adverts are about 2.2 MB
    assert sum(count for _, count in batches) == 600
    for payload, count in batches:
        assert len(payload) <= ble_bridge.MAX_BATCH_BYTES
        assert len(json.loads(payload)["adverts"]) == count
        ADVERTS_SCHEMA.validate(json.loads(payload))


# -- GATT ------------------------------------------------------------------------------------


def request_payload(request_id: str = "ab" * 16, address: str = THING_MAC, **overrides: Any) -> str:
    document = {
        "api": 1,
        "id": request_id,
        "address": address,
        "service": SERVICE,
        "characteristic": CHARACTERISTIC,
        "data": "0102ff",
        "response": True,
        "timeout": 10,
        **overrides,
    }
    REQUEST_SCHEMA.validate(document)
    return json.dumps(document)


class FakeCharacteristic:
    uuid = CHARACTERISTIC


class FakeService:
    def __init__(self, characteristics: list[str]) -> None:
        self.characteristics = characteristics

    def get_characteristic(self, uuid: str) -> FakeCharacteristic | None:
        return FakeCharacteristic() if uuid in self.characteristics else None


class FakeServices:
    def __init__(self, services: dict[str, list[str]]) -> None:
        self.services = services

    def get_service(self, uuid: str) -> FakeService | None:
        found = self.services.get(uuid)
        return None if found is None else FakeService(found)


class FakeClient:
    """Stands in for a connected BleakClientWithServiceCache: no BLE device here."""

    def __init__(
        self,
        services: dict[str, list[str]] | None = None,
        write_error: Exception | None = None,
        disconnect_error: Exception | None = None,
    ) -> None:
        self.services = FakeServices({SERVICE: [CHARACTERISTIC]} if services is None else services)
        self.writes: list[tuple[str, bytes, bool]] = []
        self.disconnected = False
        self._write_error = write_error
        self._disconnect_error = disconnect_error

    async def write_gatt_char(self, char: FakeCharacteristic, data: bytes, response: bool) -> None:
        if self._write_error is not None:
            raise self._write_error
        self.writes.append((char.uuid, data, response))

    async def disconnect(self) -> bool:
        self.disconnected = True
        if self._disconnect_error is not None:
            raise self._disconnect_error
        return True


def connectable_thing(hass: HomeAssistant) -> None:
    inject(
        hass, service_info(THING_MAC, name="I4T thing", service_uuids=[SERVICE], connectable=True)
    )


async def test_gatt_write_to_unknown_device_is_not_found(
    hass: HomeAssistant, start_bridge: StartBridge, results: Collected
) -> None:
    await start_bridge()
    async_fire_mqtt_message(hass, REQUEST_TOPIC, request_payload())
    await hass.async_block_till_done(wait_background_tasks=True)
    [result] = results.json()
    RESULT_SCHEMA.validate(result)
    assert result == {
        "api": 1,
        "id": "ab" * 16,
        "ok": False,
        "error": "not_found",
        "detail": "not heard by any Bluetooth adapter or proxy",
    }


async def test_gatt_write_to_device_heard_only_passively_is_not_connectable(
    hass: HomeAssistant, start_bridge: StartBridge, results: Collected
) -> None:
    await start_bridge()
    inject(hass, service_info(THING_MAC, service_uuids=[SERVICE], connectable=False))
    async_fire_mqtt_message(hass, REQUEST_TOPIC, request_payload())
    await hass.async_block_till_done(wait_background_tasks=True)
    [result] = results.json()
    RESULT_SCHEMA.validate(result)
    assert result["error"] == "not_connectable"


async def test_gatt_write_succeeds_and_disconnects(
    hass: HomeAssistant, start_bridge: StartBridge, results: Collected
) -> None:
    await start_bridge()
    connectable_thing(hass)
    client = FakeClient()
    with patch.object(ble_bridge, "establish_connection", return_value=client) as connect:
        async_fire_mqtt_message(hass, REQUEST_TOPIC, request_payload(response=False))
        await hass.async_block_till_done(wait_background_tasks=True)
    [result] = results.json()
    RESULT_SCHEMA.validate(result)
    assert result == {"api": 1, "id": "ab" * 16, "ok": True}
    assert client.writes == [(CHARACTERISTIC, b"\x01\x02\xff", False)]
    assert client.disconnected
    # Connected the HA way: the service-caching client, three attempts, and a callback that
    # resolves the best adapter or proxy again for each attempt.
    (client_class, device, name), kwargs = connect.call_args
    # HA's wrapper of it, which picks the best local adapter or ESPHome proxy.
    assert client_class is bleak_retry_connector.BleakClientWithServiceCache
    assert client_class is HaBleakClientWithServiceCache
    assert isinstance(device, BLEDevice)
    assert device.address == THING_MAC
    assert name == "I4T thing"
    assert kwargs["max_attempts"] == 3
    assert kwargs["ble_device_callback"]().address == THING_MAC


@pytest.mark.parametrize(
    ("client", "connect_error", "error", "detail"),
    [
        (FakeClient(services={}), None, "service_not_found", SERVICE),
        (FakeClient(services={SERVICE: []}), None, "characteristic_not_found", CHARACTERISTIC),
        (FakeClient(write_error=BleakError("gone")), None, "write_failed", "BleakError"),
        (
            FakeClient(disconnect_error=BleakError("gone")),
            None,
            None,
            None,
        ),
        (None, BleakConnectionError("refused"), "connect_failed", "BleakConnectionError"),
        (None, KeyError("org.bluez.GattService1"), "connect_failed", "KeyError"),
        (FakeClient(write_error=RuntimeError("surprise")), None, "write_failed", "RuntimeError"),
        (None, BleakOutOfConnectionSlotsError("full"), "busy", "no free connection slot"),
    ],
)
async def test_gatt_failures_become_error_results(
    hass: HomeAssistant,
    start_bridge: StartBridge,
    results: Collected,
    caplog: pytest.LogCaptureFixture,
    client: FakeClient | None,
    connect_error: Exception | None,
    error: str | None,
    detail: str | None,
) -> None:
    await start_bridge()
    connectable_thing(hass)
    with patch.object(
        ble_bridge, "establish_connection", return_value=client, side_effect=connect_error
    ):
        async_fire_mqtt_message(hass, REQUEST_TOPIC, request_payload())
        await hass.async_block_till_done(wait_background_tasks=True)
    [result] = results.json()
    RESULT_SCHEMA.validate(result)
    assert result.get("error") == error
    assert result.get("detail") == detail
    if client is not None:
        assert client.disconnected
    # Nothing in HA's log above debug level.
    assert [r.message for r in caplog.records if r.levelno >= logging.INFO] == []


async def test_gatt_write_that_hangs_times_out(
    hass: HomeAssistant, start_bridge: StartBridge, results: Collected
) -> None:
    await start_bridge()
    connectable_thing(hass)

    async def never(*_args: Any, **_kwargs: Any) -> None:
        await asyncio.Event().wait()

    with patch.object(ble_bridge, "establish_connection", side_effect=never):
        async_fire_mqtt_message(hass, REQUEST_TOPIC, request_payload(timeout=2))
        await hass.async_block_till_done()
        assert results.messages == []
        await flush(hass, 3)
    [result] = results.json()
    RESULT_SCHEMA.validate(result)
    assert result["error"] == "timeout"


async def test_gatt_requests_to_one_device_run_one_after_another(
    hass: HomeAssistant, start_bridge: StartBridge, results: Collected
) -> None:
    await start_bridge()
    connectable_thing(hass)
    release = asyncio.Event()
    connected: list[str] = []

    async def connect(*_args: Any, **_kwargs: Any) -> FakeClient:
        connected.append("connect")
        await release.wait()
        return FakeClient()

    with patch.object(ble_bridge, "establish_connection", side_effect=connect):
        async_fire_mqtt_message(hass, REQUEST_TOPIC, request_payload("01" * 16))
        async_fire_mqtt_message(hass, REQUEST_TOPIC, request_payload("02" * 16))
        # A QoS 1 duplicate of a request under way is not carried out twice.
        async_fire_mqtt_message(hass, REQUEST_TOPIC, request_payload("01" * 16))
        await hass.async_block_till_done()
        assert connected == ["connect"]
        release.set()
        await hass.async_block_till_done(wait_background_tasks=True)
    assert connected == ["connect", "connect"]
    assert [(r["id"], r["ok"]) for r in results.json()] == [("01" * 16, True), ("02" * 16, True)]


async def test_too_many_gatt_requests_are_busy(
    hass: HomeAssistant, start_bridge: StartBridge, results: Collected
) -> None:
    await start_bridge()
    connectable_thing(hass)
    release = asyncio.Event()

    async def connect(*_args: Any, **_kwargs: Any) -> FakeClient:
        await release.wait()
        return FakeClient()

    with (
        patch.object(ble_bridge, "MAX_GATT_TASKS", 1),
        patch.object(ble_bridge, "establish_connection", side_effect=connect),
    ):
        async_fire_mqtt_message(hass, REQUEST_TOPIC, request_payload("01" * 16))
        async_fire_mqtt_message(hass, REQUEST_TOPIC, request_payload("02" * 16))
        await hass.async_block_till_done()
        release.set()
        await hass.async_block_till_done(wait_background_tasks=True)
    assert [(r["id"], r.get("error")) for r in results.json()] == [
        ("02" * 16, "busy"),
        ("01" * 16, None),
    ]


async def test_malformed_gatt_requests(
    hass: HomeAssistant, start_bridge: StartBridge, results: Collected
) -> None:
    await start_bridge()
    bad = [
        json.dumps({"api": 2, "id": "01" * 16}),
        request_payload("02" * 16).replace(THING_MAC, THING_MAC.lower()),
        request_payload("03" * 16).replace(SERVICE, "fe95"),
        request_payload("04" * 16).replace('"0102ff"', '"0102F"'),
        request_payload("05" * 16).replace('"response": true', '"response": 1'),
        request_payload("06" * 16).replace('"timeout": 10', '"timeout": 61'),
        request_payload("07" * 16).replace('"timeout": 10', '"timeout": true'),
    ]
    for payload in bad:
        async_fire_mqtt_message(hass, REQUEST_TOPIC, payload)
    # No usable id: no answer is possible.
    for payload in ["not json", "[]", json.dumps({"id": "x"}), "{" * 9000]:
        async_fire_mqtt_message(hass, REQUEST_TOPIC, payload)
    # A retained request would run again at every reconnect.
    async_fire_mqtt_message(hass, REQUEST_TOPIC, request_payload("08" * 16), retain=True)
    await hass.async_block_till_done(wait_background_tasks=True)
    answers = results.json()
    for answer in answers:
        RESULT_SCHEMA.validate(answer)
        assert answer["error"] == "bad_request"
    assert [a["id"][:2] for a in answers] == ["01", "02", "03", "04", "05", "06", "07", "08"]
    assert answers[0]["detail"] == "unsupported api version"
    assert answers[-1]["detail"] == "retained request"


def test_gatt_messages_follow_the_schemas() -> None:
    request = parse_gatt_request(request_payload(timeout=0.5))
    assert request.data == b"\x01\x02\xff"
    assert request.timeout == 0.5
    for result in (
        gatt_result("ab" * 16),
        gatt_result("ab" * 16, "timeout", "x" * 300),
        gatt_result("ab" * 16, "write_failed"),
    ):
        RESULT_SCHEMA.validate(json.loads(result))


async def test_undo_cancels_gatt_requests_under_way(
    hass: HomeAssistant, start_bridge: StartBridge, results: Collected
) -> None:
    undo = await start_bridge()
    connectable_thing(hass)
    started = asyncio.Event()

    async def connect(*_args: Any, **_kwargs: Any) -> FakeClient:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("not reached")

    with patch.object(ble_bridge, "establish_connection", side_effect=connect):
        async_fire_mqtt_message(hass, REQUEST_TOPIC, request_payload())
        await started.wait()
        undo()
        await hass.async_block_till_done(wait_background_tasks=True)
    # The gateway's tracker answers ``timeout`` for it; nothing is published after unload.
    assert results.messages == []


def test_manifest_matchers_are_the_bridges() -> None:
    """The manifest's bluetooth key and the callbacks the bridge registers agree."""
    manifest = json.loads((ROOT / "custom_components" / "i4t" / "manifest.json").read_text())
    assert manifest["bluetooth"] == [dict(m) for m in ble_bridge.advert_matchers()]
    assert list(manifest)[:3] == ["domain", "name", "bluetooth"]
