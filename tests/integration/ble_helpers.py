"""Helpers of the BLE bridge and remote scanner tests: adverts into HA, MQTT messages out."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
import json
from pathlib import Path
from typing import Any
from unittest.mock import patch

from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from homeassistant.components import bluetooth, mqtt
from homeassistant.components.bluetooth import BluetoothServiceInfoBleak
from homeassistant.core import HomeAssistant, callback
import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "addon" / "src" / "i4t_gateway" / "schemas"
BTHOME_UUID = "0000fcd2-0000-1000-8000-00805f9b34fb"
BEACON_UUID = "17d234ab-de7a-4c3d-8846-9ca593acc999"
GATEWAY_ID = "i4tgatewaytestaddress234567"


def schema_validator(name: str) -> jsonschema.Draft202012Validator:
    """A validator for one of the gateway's JSON schemas (e.g. ``ble_adverts``)."""
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def service_info(
    address: str,
    *,
    service_data: dict[str, bytes] | None = None,
    manufacturer_data: dict[int, bytes] | None = None,
    service_uuids: list[str] | None = None,
    name: str | None = None,
    rssi: int = -60,
    source: str = "00:00:00:00:00:01",
    connectable: bool = False,
    at: float | None = None,
) -> BluetoothServiceInfoBleak:
    """An advert as HA's scanners report it (what core's inject helpers build)."""
    service_data = service_data or {}
    manufacturer_data = manufacturer_data or {}
    service_uuids = service_uuids or []
    advertisement = AdvertisementData(
        local_name=name,
        manufacturer_data=manufacturer_data,
        service_data=service_data,
        service_uuids=service_uuids,
        tx_power=-127,
        rssi=rssi,
        platform_data=(),
    )
    return BluetoothServiceInfoBleak(
        name=name or address,
        address=address,
        rssi=rssi,
        manufacturer_data=manufacturer_data,
        service_data=service_data,
        service_uuids=service_uuids,
        source=source,
        device=BLEDevice(address, name, {"source": source}, rssi),
        advertisement=advertisement,
        connectable=connectable,
        time=bluetooth.MONOTONIC_TIME() if at is None else at,
        tx_power=-127,
    )


def inject(hass: HomeAssistant, info: BluetoothServiceInfoBleak) -> None:
    """Feed an advert to HA's bluetooth manager as a scanner would."""
    bluetooth.async_get_advertisement_callback(hass)(info)


@dataclass
class Collected:
    """Messages received on one MQTT topic filter."""

    messages: list[mqtt.ReceiveMessage] = field(default_factory=list)

    def json(self) -> list[Any]:
        return [json.loads(m.payload) for m in self.messages]

    def clear(self) -> None:
        self.messages.clear()


@asynccontextmanager
async def collect(hass: HomeAssistant, topic: str) -> AsyncIterator[Collected]:
    """Subscribe to ``topic`` in HA's MQTT (the mocked broker echoes every publish)."""
    collected = Collected()

    @callback
    def on_message(message: mqtt.ReceiveMessage) -> None:
        collected.messages.append(message)

    unsubscribe = await mqtt.async_subscribe(hass, topic, on_message, encoding=None)
    try:
        yield collected
    finally:
        unsubscribe()


@pytest.fixture
def no_bluetooth_discovery() -> Iterator[None]:
    """Keep HA's bluetooth from starting config flows for the adverts a test injects.

    The manifests' matchers would start the flows of core integrations (BTHome, Kegtron ...)
    whose libraries this venv does not have; these tests are not about discovery.
    """
    with patch("homeassistant.components.bluetooth.async_get_bluetooth", return_value=[]):
        yield


@pytest.fixture
async def bluetooth_stack(no_bluetooth_discovery: None, enable_bluetooth: None) -> None:
    """HA's bluetooth integration on phcc's mocked adapter hci0, without discovery flows."""
