"""Fixtures of the integration's tests (HA's test plugin is active here)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
import json
from pathlib import Path
from typing import Any
from unittest.mock import Mock, patch

from homeassistant.components import mqtt
from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import HomeAssistant, callback
from paho.mqtt.client import topic_matches_sub
import pytest
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_fire_mqtt_message
from pytest_homeassistant_custom_component.typing import MqttMockHAClient

import custom_components.i4t  # noqa: F401 - makes our package the custom_components HA finds
from custom_components.i4t.const import CONF_GATEWAY_ID, DOMAIN

FIXTURES = Path(__file__).parent / "fixtures"


def load_json(name: str) -> dict[str, Any]:
    """A payload as the real server published it (./scripts/record-fixtures)."""
    document: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return document


def load_announcement() -> dict[str, Any]:
    """A gateway announcement as the real server publishes it."""
    return load_json("gateway_info")


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
        patch("custom_components.i4t.const.SCAN_SECONDS", 1.5),
        patch("custom_components.i4t.const.ANNOUNCEMENT_WAIT_SECONDS", 1.0),
    ):
        yield


class FakeGateway:
    """Publishes recorded state the way the gateway does, and answers requests.

    Replies have the recorded shape; ``answers`` sets the result (or error) per command.
    """

    def __init__(self, hass: HomeAssistant, broker: RetainedBroker, info: dict[str, Any]) -> None:
        self.hass = hass
        self.broker = broker
        self.info = info
        self.base = info["base_topic"]
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.answers: dict[str, dict[str, Any]] = {}

    def publish_recorded(self, online: bool = True) -> None:
        """The announcement, availability, gateway state, a healthy group and its nodes."""
        self.broker.set(f"i4t/discovery/{self.info['id']}", json.dumps(self.info))
        self.broker.set(f"{self.base}/availability", "online" if online else "offline")
        self.broker.set(f"{self.base}/state/gateway", json.dumps(load_json("gateway_state")))
        self.set_group(load_json("group_healthy"))
        for name in ("node_healthy", "node_broken"):
            self.set_node(load_json(name))

    def set_node(self, node: dict[str, Any]) -> None:
        self.broker.set(f"{self.base}/state/node/{node['address']}", json.dumps(node))

    def clear_node(self, address: str) -> None:
        self.broker.set(f"{self.base}/state/node/{address}", b"")

    def set_group(self, group: dict[str, Any]) -> None:
        self.broker.set(f"{self.base}/state/group/{group['group_id']}", json.dumps(group))

    def clear_group(self, group_id: str) -> None:
        self.broker.set(f"{self.base}/state/group/{group_id}", b"")

    def event(self, kind: str, event: dict[str, Any]) -> None:
        async_fire_mqtt_message(self.hass, f"{self.base}/event/{kind}", json.dumps(event))

    async def start_answering(self) -> None:
        await mqtt.async_subscribe(self.hass, f"{self.base}/cmd/+", self._answer)

    @callback
    def _answer(self, message: mqtt.ReceiveMessage) -> None:
        command = message.topic.rsplit("/", 1)[-1]
        body = json.loads(message.payload)
        self.requests.append((command, body))
        answer = self.answers.get(command, {"ok": True, "result": {}})
        reply = {"request_id": body["request_id"], **answer}
        self.hass.loop.call_soon(
            async_fire_mqtt_message,
            self.hass,
            f"{self.base}/reply/{body['request_id']}",
            json.dumps(reply),
        )


@pytest.fixture
async def gateway(
    hass: HomeAssistant, broker: RetainedBroker, announcement: dict[str, Any]
) -> FakeGateway:
    fake = FakeGateway(hass, broker, announcement)
    fake.publish_recorded()
    await fake.start_answering()
    return fake


@pytest.fixture
async def loaded_entry(
    hass: HomeAssistant, gateway: FakeGateway, gateway_entry: MockConfigEntry
) -> AsyncIterator[MockConfigEntry]:
    """The gateway's config entry, set up on the recorded state, unloaded afterwards."""
    gateway_entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(gateway_entry.entry_id)
    await hass.async_block_till_done()
    yield gateway_entry
    if gateway_entry.state is ConfigEntryState.LOADED:
        assert await hass.config_entries.async_unload(gateway_entry.entry_id)
        await hass.async_block_till_done()
