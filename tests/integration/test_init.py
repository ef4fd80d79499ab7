"""Setting up and unloading a gateway's config entry."""

from __future__ import annotations

import json
import logging
from typing import Any
from unittest.mock import patch

from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import HomeAssistant
from homeassistant.helpers import device_registry as dr
import pytest
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.i4t.const import DOMAIN

from .conftest import RetainedBroker

pytestmark = pytest.mark.usefixtures("fast_timeouts")


def publish_gateway(broker: RetainedBroker, announcement: dict[str, Any], state: str) -> None:
    broker.set(f"i4t/discovery/{announcement['id']}", json.dumps(announcement))
    broker.set(announcement["availability_topic"], state)


async def test_setup_registers_gateway_and_unloads(
    hass: HomeAssistant,
    broker: RetainedBroker,
    announcement: dict[str, Any],
    gateway_entry: MockConfigEntry,
    device_registry: dr.DeviceRegistry,
) -> None:
    publish_gateway(broker, announcement, "online")
    gateway_entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(gateway_entry.entry_id)
    await hass.async_block_till_done()
    assert gateway_entry.state is ConfigEntryState.LOADED

    device = device_registry.async_get_device(identifiers={(DOMAIN, announcement["id"])})
    assert device is not None
    assert device.name == announcement["name"]
    assert device.sw_version == announcement["version"]
    assert device.model == "Gateway"
    assert gateway_entry.runtime_data.data.online is True

    assert await hass.config_entries.async_unload(gateway_entry.entry_id)
    await hass.async_block_till_done()
    assert gateway_entry.state is ConfigEntryState.NOT_LOADED


async def test_gateway_that_never_announced_is_retried(
    hass: HomeAssistant, broker: RetainedBroker, gateway_entry: MockConfigEntry
) -> None:
    gateway_entry.add_to_hass(hass)
    await hass.config_entries.async_setup(gateway_entry.entry_id)
    await hass.async_block_till_done()
    assert gateway_entry.state is ConfigEntryState.SETUP_RETRY
    assert gateway_entry.reason == "The I4T gateway has not announced itself on the MQTT broker yet"


async def test_no_mqtt_client_is_retried(
    hass: HomeAssistant, broker: RetainedBroker, gateway_entry: MockConfigEntry
) -> None:
    gateway_entry.add_to_hass(hass)
    with patch(
        "custom_components.i4t.coordinator.mqtt.async_wait_for_mqtt_client", return_value=False
    ):
        await hass.config_entries.async_setup(gateway_entry.entry_id)
        await hass.async_block_till_done()
    assert gateway_entry.state is ConfigEntryState.SETUP_RETRY
    assert gateway_entry.reason == "The MQTT integration is not connected to a broker"


async def test_availability_and_announcement_updates(
    hass: HomeAssistant,
    broker: RetainedBroker,
    announcement: dict[str, Any],
    gateway_entry: MockConfigEntry,
    device_registry: dr.DeviceRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    publish_gateway(broker, announcement, "online")
    gateway_entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(gateway_entry.entry_id)
    await hass.async_block_till_done()
    coordinator = gateway_entry.runtime_data
    caplog.set_level(logging.INFO)

    broker.set(announcement["availability_topic"], "offline")
    await hass.async_block_till_done()
    assert coordinator.data.online is False
    broker.set(announcement["availability_topic"], "offline")
    await hass.async_block_till_done()
    broker.set(announcement["availability_topic"], "online")
    await hass.async_block_till_done()
    assert coordinator.data.online is True
    # Logged once per transition, not once per message.
    assert caplog.text.count("is offline") == 1
    assert caplog.text.count("is back online") == 1

    # A new announcement (the gateway was upgraded) updates what the coordinator knows.
    upgraded = {**announcement, "version": "0.2.0"}
    broker.set(f"i4t/discovery/{announcement['id']}", json.dumps(upgraded))
    await hass.async_block_till_done()
    assert coordinator.data.info.version == "0.2.0"

    # Announcements of other gateways or in another API version are ignored.
    broker.set(f"i4t/discovery/{announcement['id']}", json.dumps({**announcement, "api": 9}))
    await hass.async_block_till_done()
    assert coordinator.data.info.version == "0.2.0"

    assert await hass.config_entries.async_unload(gateway_entry.entry_id)
    await hass.async_block_till_done()
