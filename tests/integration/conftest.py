"""Fixtures of the integration's tests (HA's test plugin is active here)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
import json
from pathlib import Path
from typing import Any
from unittest.mock import Mock, patch

from homeassistant.core import HomeAssistant
from paho.mqtt.client import topic_matches_sub
import pytest
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_fire_mqtt_message
from pytest_homeassistant_custom_component.typing import MqttMockHAClient

import custom_components.i4t  # noqa: F401 - makes our package the custom_components HA finds
from custom_components.i4t.const import CONF_GATEWAY_ID, DOMAIN

FIXTURES = Path(__file__).parent / "fixtures"


def load_announcement() -> dict[str, Any]:
    """A gateway announcement as the real server publishes it."""
    document: dict[str, Any] = json.loads((FIXTURES / "gateway_info.json").read_text())
    return document


@pytest.fixture(autouse=True)
def auto_enable_custom_integrations(enable_custom_integrations: None) -> None:
    """Let HA load custom_components/i4t in every test."""


class RetainedBroker:
    """Gives phcc's paho mock the one broker behaviour set-up relies on: retained messages.

    A new subscription receives the retained messages that match it with the retain flag
    set; set() after a subscription delivers at once with the flag cleared, as a broker
    does for established subscriptions (MQTT 3.1.1, 3.3.1.3).
    """

    def __init__(self, hass: HomeAssistant) -> None:
        self.hass = hass
        self.retained: dict[str, bytes] = {}
        self.filters: set[str] = set()

    def set(self, topic: str, payload: str | bytes) -> None:
        data = payload.encode() if isinstance(payload, str) else payload
        self.retained[topic] = data
        if any(topic_matches_sub(f, topic) for f in self.filters):
            async_fire_mqtt_message(self.hass, topic, data, qos=1, retain=False)

    def wrap_subscribe(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def subscribe(topics: Any, qos: int = 0) -> Any:
            result = original(topics, qos)
            filters = [topics] if isinstance(topics, str) else [t[0] for t in topics]
            self.filters.update(filters)
            for topic, payload in list(self.retained.items()):
                if any(topic_matches_sub(f, topic) for f in filters):
                    self.hass.loop.call_soon(
                        async_fire_mqtt_message, self.hass, topic, payload, 1, True
                    )
            return result

        return subscribe


@pytest.fixture
async def broker(
    hass: HomeAssistant,
    mock_hass_config: None,
    mqtt_mock_entry: Callable[[], Any],
    mqtt_client_mock: Any,
) -> AsyncIterator[RetainedBroker]:
    """MQTT set up in HA over a mocked paho client that keeps retained messages."""
    retained = RetainedBroker(hass)
    mqtt_client_mock.subscribe.side_effect = retained.wrap_subscribe(
        mqtt_client_mock.subscribe.side_effect
    )
    mqtt_mock: MqttMockHAClient = await mqtt_mock_entry()
    assert mqtt_mock is not None
    yield retained
    # Close the mocked socket as paho does on disconnect: that stops MQTT's periodic
    # timer, which the test plugin would otherwise flag as lingering.
    mqtt_client_mock.on_socket_close(mqtt_client_mock, None, Mock(fileno=Mock(return_value=-1)))
    for entry in hass.config_entries.async_entries("mqtt"):
        await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()


@pytest.fixture
def announcement() -> dict[str, Any]:
    return load_announcement()


@pytest.fixture
def gateway_entry(announcement: dict[str, Any]) -> MockConfigEntry:
    return MockConfigEntry(
        domain=DOMAIN,
        title=announcement["name"],
        unique_id=announcement["id"],
        data={CONF_GATEWAY_ID: announcement["id"]},
    )


@pytest.fixture
def fast_timeouts() -> Any:
    """Shorten the waits for announcements so that failing cases finish quickly.

    The scan must still outlast HA's MQTT subscribe cooldown (0.5 s after connecting).
    """
    with (
        patch("custom_components.i4t.const.SCAN_SECONDS", 0.6),
        patch("custom_components.i4t.const.ANNOUNCEMENT_WAIT_SECONDS", 1.0),
    ):
        yield
