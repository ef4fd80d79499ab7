"""Remote BLE scanners on the broker, fed into HA's bluetooth stack."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
import json
import logging
import time
from typing import Any
from unittest.mock import patch

from homeassistant.components import bluetooth
from homeassistant.core import HomeAssistant
import pytest
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_fire_mqtt_message

from custom_components.i4t import ble_bridge, remote_scanner
from custom_components.i4t.const import DOMAIN
from custom_components.i4t.remote_scanner import ScannerMessageError, parse_advert, parse_info

from .ble_helpers import (
    BEACON_UUID,
    BTHOME_UUID,
    GATEWAY_ID,
    bluetooth_stack,  # noqa: F401 - fixture
    collect,
    no_bluetooth_discovery,  # noqa: F401 - fixture
    schema_validator,
)
from .conftest import RetainedBroker
from .test_ble_bridge import batch_adverts, flush

pytestmark = pytest.mark.usefixtures("bluetooth_stack")

ADVERTS_SCHEMA = schema_validator("ble_adverts")
SENSOR = "A4:C1:38:AA:BB:01"
LOCK = "E0:00:00:00:00:02"
LOCK_SERVICE = "0000fff0-0000-1000-8000-00805f9b34fb"

type StartBridge = Callable[..., Awaitable[Any]]


@pytest.fixture
async def start_bridge(hass: HomeAssistant, broker: RetainedBroker) -> AsyncIterator[StartBridge]:
    """Start the BLE bridge (and so the remote scanners) of a gateway entry; undone after."""
    undos: list[Callable[[], None]] = []

    async def start(gateway_id: str = GATEWAY_ID, **options: Any) -> Any:
        entry = MockConfigEntry(domain=DOMAIN, unique_id=gateway_id, options=options)
        entry.add_to_hass(hass)
        undo = await ble_bridge.async_setup_ble_bridge(hass, entry, gateway_id)
        undos.append(undo)
        return undo.__self__  # type: ignore[attr-defined]

    yield start
    for undo in undos:
        undo()
    await hass.async_block_till_done(wait_background_tasks=True)


async def past_subscribe_cooldown(hass: HomeAssistant) -> None:
    """Let HA's MQTT send the subscriptions to the broker (its cooldown runs on the loop's
    real clock), so that the retained scanner infos come back."""
    await asyncio.sleep(0.6)
    await hass.async_block_till_done()


def advert(address: str = SENSOR, **fields: Any) -> dict[str, Any]:
    document = {
        "address": address,
        "rssi": -71,
        "time": round(time.time(), 3),
        "source": "esp32-garage-radio",
        "local_name": "ATC_AABB01",
        "service_data": {BTHOME_UUID: "400001022a09"},
        **fields,
    }
    return {k: v for k, v in document.items() if v is not None}


def batch(*adverts: dict[str, Any]) -> str:
    document = {"api": 1, "adverts": list(adverts)}
    ADVERTS_SCHEMA.validate(document)
    return json.dumps(document)


def publish(hass: HomeAssistant, scanner_id: str, *adverts: dict[str, Any]) -> None:
    async_fire_mqtt_message(hass, f"i4t/scanner/{scanner_id}/adverts", batch(*adverts))


def heard(hass: HomeAssistant, address: str) -> bluetooth.BluetoothServiceInfoBleak | None:
    for info in bluetooth.async_discovered_service_info(hass, connectable=False):
        if info.address == address:
            return info
    return None


async def test_scanner_adverts_reach_every_ble_integration(
    hass: HomeAssistant, broker: RetainedBroker, start_bridge: StartBridge
) -> None:
    broker.set("i4t/scanner/garage/info", json.dumps({"api": 1, "name": "Garage ESP32"}))
    async with collect(hass, f"i4t/{GATEWAY_ID}/ble/adverts") as forwarded:
        bridge = await start_bridge()
        await past_subscribe_cooldown(hass)
        scanner = bluetooth.async_scanner_by_source(hass, "i4t-scanner-garage")
        assert scanner is not None
        assert scanner.name == "Garage ESP32 (i4t-scanner-garage)"
        assert scanner.connectable is False

        publish(
            hass,
            "garage",
            advert(),
            advert(
                LOCK.lower(),
                local_name=None,
                service_data={},
                service_uuids=[LOCK_SERVICE],
                manufacturer_data={"2504": "0a0b"},
                tx_power=4,
            ),
        )
        await hass.async_block_till_done()

        sensor = heard(hass, SENSOR)
        assert sensor is not None
        assert sensor.source == "i4t-scanner-garage"
        assert sensor.connectable is False
        assert sensor.name == "ATC_AABB01"
        assert sensor.rssi == -71
        assert sensor.service_data == {BTHOME_UUID: bytes.fromhex("400001022a09")}
        lock = heard(hass, LOCK)  # addresses are upper-case, as HA has them on Linux
        assert lock is not None
        assert lock.name == LOCK
        assert lock.service_uuids == [LOCK_SERVICE]
        assert lock.manufacturer_data == {2504: b"\x0a\x0b"}
        assert lock.tx_power == 4
        # The remote scanner's adverts reach the BLE bridge like any other.
        await flush(hass)
        [sent] = batch_adverts(forwarded)
        assert sent["address"] == SENSOR
        assert sent["source"] == "i4t-scanner-garage"
        # The bridge's batch (echoed by the broker on the gateway's topic) did not come back
        # in through a scanner: still the two adverts published above.
        assert bridge.diagnostics()["remote_scanners"]["scanners"] == {
            "garage": {"name": "Garage ESP32", "adverts": 2, "dropped": 0}
        }


async def test_advert_time_is_trusted_within_limits(
    hass: HomeAssistant, start_bridge: StartBridge
) -> None:
    await start_bridge()
    now = bluetooth.MONOTONIC_TIME()
    publish(
        hass,
        "esp1",
        advert("00:00:00:00:10:01", time=time.time() - 5),
        advert("00:00:00:00:10:02", time=time.time() + 3600),  # a clock ahead: now
        advert("00:00:00:00:10:03", time=1.0),  # a clock far behind: 30 s ago at most
    )
    await hass.async_block_till_done()
    ages = {a: now - heard(hass, f"00:00:00:00:10:0{a}").time for a in (1, 2, 3)}  # type: ignore[union-attr]
    assert 4 < ages[1] < 6
    assert -1 < ages[2] < 1
    assert 29 < ages[3] < 31


async def test_scanner_is_named_renamed_and_removed_by_its_info(
    hass: HomeAssistant, broker: RetainedBroker, start_bridge: StartBridge
) -> None:
    await start_bridge()
    await past_subscribe_cooldown(hass)
    publish(hass, "shed", advert())
    await hass.async_block_till_done()
    scanner = bluetooth.async_scanner_by_source(hass, "i4t-scanner-shed")
    assert scanner is not None
    assert scanner.name == "shed (i4t-scanner-shed)"  # no info yet: named by its id

    broker.set("i4t/scanner/shed/info", json.dumps({"api": 1, "name": " Shed "}))
    await hass.async_block_till_done()
    scanner = bluetooth.async_scanner_by_source(hass, "i4t-scanner-shed")
    assert scanner is not None
    assert scanner.name == "Shed (i4t-scanner-shed)"
    # HA handed the advert history over to the renamed scanner.
    assert SENSOR in scanner.discovered_addresses
    broker.set("i4t/scanner/shed/info", json.dumps({"api": 1, "name": "Shed"}))  # unchanged
    await hass.async_block_till_done()
    assert bluetooth.async_scanner_by_source(hass, "i4t-scanner-shed") is scanner

    broker.set("i4t/scanner/shed/info", b"")  # the retained info cleared: gone for good
    await hass.async_block_till_done()
    assert bluetooth.async_scanner_by_source(hass, "i4t-scanner-shed") is None
    broker.set("i4t/scanner/never-seen/info", b"")
    await hass.async_block_till_done()


async def test_looped_and_invalid_input_is_dropped(
    hass: HomeAssistant, broker: RetainedBroker, start_bridge: StartBridge
) -> None:
    bridge = await start_bridge()
    publish(hass, "a", advert("00:00:00:00:20:01"))
    await hass.async_block_till_done()
    # Scanner b republishes what HA heard through scanner a: an advert coming back.
    looped = advert("00:00:00:00:20:02", source="i4t-scanner-a")
    publish(hass, "b", looped, advert("00:00:00:00:20:03"))
    await hass.async_block_till_done()
    assert heard(hass, "00:00:00:00:20:02") is None
    assert heard(hass, "00:00:00:00:20:03") is not None

    bad_items: list[Any] = [
        "not an object",
        advert(address="00:00:00:00:20"),
        advert(rssi=-128),
        advert(rssi=True),
        advert(time=-1),
        advert(time="now"),
        advert(source=""),
        advert(local_name="x" * 249),
        advert(tx_power=21),
        advert(service_uuids=["FE95"]),
        advert(service_data={"fcd2": "00"}),
        advert(service_data={BTHOME_UUID: "0"}),
        advert(service_data={f"0000{i:04x}-0000-1000-8000-00805f9b34fb": "" for i in range(9)}),
        advert(manufacturer_data={"65536": "00"}),
    ]
    for item in bad_items:
        with pytest.raises(ScannerMessageError):
            parse_advert(item)
    async_fire_mqtt_message(
        hass, "i4t/scanner/b/adverts", json.dumps({"api": 1, "adverts": bad_items})
    )
    for topic, payload, retain in [
        ("i4t/scanner/b/adverts", "{not json", False),
        ("i4t/scanner/b/adverts", json.dumps({"api": 2, "adverts": []}), False),
        ("i4t/scanner/b/adverts", json.dumps({"api": 1, "adverts": [{}] * 513}), False),
        ("i4t/scanner/b/adverts", " " * (256 * 1024 + 1), False),
        ("i4t/scanner/b/adverts", batch(advert("00:00:00:00:20:04")), True),  # retained
        ("i4t/scanner/b.c/adverts", batch(advert("00:00:00:00:20:05")), False),
        ("i4t/scanner/b/info", json.dumps({"api": 1, "name": ""}), False),
        ("i4t/scanner/b/info", "x" * 5000, False),
        ("i4t/scanner/b.c/info", json.dumps({"api": 1, "name": "bad id"}), False),
    ]:
        async_fire_mqtt_message(hass, topic, payload, retain=retain)
    await hass.async_block_till_done()
    # A malformed batch from a new id registers no scanner.
    async_fire_mqtt_message(hass, "i4t/scanner/c/adverts", "{not json")
    await hass.async_block_till_done()
    for address in ("00:00:00:00:20:04", "00:00:00:00:20:05"):
        assert heard(hass, address) is None
    diagnostics = bridge.diagnostics()["remote_scanners"]
    assert diagnostics["looped"] == 1
    assert diagnostics["dropped_batches"] == 7
    assert diagnostics["scanners"]["b"] == {"name": "b", "adverts": 1, "dropped": len(bad_items)}
    assert set(diagnostics["scanners"]) == {"a", "b"}


def test_info_format() -> None:
    assert parse_info(json.dumps({"api": 1, "name": "Kitchen"})) == "Kitchen"
    for payload in ("[]", json.dumps({"api": 1}), json.dumps({"api": 1, "name": "n" * 65})):
        with pytest.raises(ScannerMessageError):
            parse_info(payload)


async def test_scanners_are_bounded(
    hass: HomeAssistant, start_bridge: StartBridge, caplog: pytest.LogCaptureFixture
) -> None:
    with patch.object(remote_scanner, "MAX_SCANNERS", 1):
        bridge = await start_bridge()
        for scanner_id in ("one", "two", "three"):
            publish(hass, scanner_id, advert())
        async_fire_mqtt_message(
            hass, "i4t/scanner/four/info", json.dumps({"api": 1, "name": "Four"})
        )
        await hass.async_block_till_done()
    assert bluetooth.async_scanner_by_source(hass, "i4t-scanner-one") is not None
    assert bluetooth.async_scanner_by_source(hass, "i4t-scanner-two") is None
    assert bluetooth.async_scanner_by_source(hass, "i4t-scanner-four") is None
    assert bridge.diagnostics()["remote_scanners"]["refused_scanners"] == 3
    assert caplog.text.count("More than 1 remote BLE scanners") == 1
    assert [r.message for r in caplog.records if r.levelno >= logging.WARNING] == [
        "More than 1 remote BLE scanners on the broker; ignoring the others"
    ]


async def test_undo_unregisters_scanners(hass: HomeAssistant, start_bridge: StartBridge) -> None:
    bridge = await start_bridge()
    publish(hass, "esp1", advert())
    await hass.async_block_till_done()
    assert bluetooth.async_scanner_by_source(hass, "i4t-scanner-esp1") is not None
    bridge.async_stop()
    assert bluetooth.async_scanner_by_source(hass, "i4t-scanner-esp1") is None
    publish(hass, "esp2", advert())
    await hass.async_block_till_done()
    assert bluetooth.async_scanner_by_source(hass, "i4t-scanner-esp2") is None


async def test_remote_scanners_can_be_switched_off(
    hass: HomeAssistant, start_bridge: StartBridge
) -> None:
    bridge = await start_bridge(remote_scanners=False)
    publish(hass, "esp1", advert(service_data={BEACON_UUID: "00"}))
    await hass.async_block_till_done()
    assert bluetooth.async_scanner_by_source(hass, "i4t-scanner-esp1") is None
    assert heard(hass, SENSOR) is None
    assert "remote_scanners" not in bridge.diagnostics()


async def test_gateways_of_one_hub_share_the_scanners(
    hass: HomeAssistant, start_bridge: StartBridge
) -> None:
    first = await start_bridge()
    second = await start_bridge("i4tsecondgatewayaddress2345")
    assert first.scanners is second.scanners
    publish(hass, "esp1", advert())
    await hass.async_block_till_done()
    assert first.scanners.diagnostics()["scanners"]["esp1"]["adverts"] == 1  # heard once

    first.async_stop()
    first.async_stop()  # a second release changes nothing
    assert bluetooth.async_scanner_by_source(hass, "i4t-scanner-esp1") is not None
    second.async_stop()
    assert bluetooth.async_scanner_by_source(hass, "i4t-scanner-esp1") is None
    third = await start_bridge("i4tthirdgatewayaddress23456")
    assert third.scanners is not first.scanners
