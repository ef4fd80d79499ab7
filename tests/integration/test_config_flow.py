"""The config flow: MQTT discovery and picking an announced gateway."""

from __future__ import annotations

import json
from typing import Any
from unittest.mock import patch

from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from homeassistant.components.bluetooth import BluetoothServiceInfoBleak
from homeassistant.config_entries import SOURCE_BLUETOOTH, SOURCE_HASSIO, SOURCE_MQTT, SOURCE_USER
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.helpers.service_info.hassio import HassioServiceInfo
from homeassistant.helpers.service_info.mqtt import MqttServiceInfo
import pytest
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.i4t.const import CONF_GATEWAY_ID, DOMAIN

from .conftest import RetainedBroker

pytestmark = pytest.mark.usefixtures("fast_timeouts")


def discovery(payload: str, topic: str = "i4t/discovery/x") -> MqttServiceInfo:
    return MqttServiceInfo(
        topic=topic,
        payload=payload,
        qos=1,
        retain=True,
        subscribed_topic="i4t/discovery/#",
        timestamp=0,
    )


async def test_mqtt_discovery_confirm_creates_entry(
    hass: HomeAssistant, broker: RetainedBroker, announcement: dict[str, Any]
) -> None:
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_MQTT}, data=discovery(json.dumps(announcement))
    )
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == "discovery_confirm"
    assert result["description_placeholders"] == {
        "name": announcement["name"],
        "gateway_id": announcement["id"],
    }

    with patch("custom_components.i4t.async_setup_entry", return_value=True):
        result = await hass.config_entries.flow.async_configure(result["flow_id"], {})
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert result["title"] == announcement["name"]
    assert result["data"] == {CONF_GATEWAY_ID: announcement["id"]}
    assert result["result"].unique_id == announcement["id"]


async def test_mqtt_discovery_of_configured_gateway_aborts(
    hass: HomeAssistant,
    broker: RetainedBroker,
    announcement: dict[str, Any],
    gateway_entry: MockConfigEntry,
) -> None:
    gateway_entry.add_to_hass(hass)
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_MQTT}, data=discovery(json.dumps(announcement))
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "already_configured"


@pytest.mark.parametrize(
    "payload",
    [
        "not json",
        "[]",
        json.dumps({"api": 2, "id": "i4tabcdefghijklmnop"}),
        json.dumps({"api": 1, "id": "i4tabcdefghijklmnop"}),
        json.dumps(
            {
                "api": 1,
                "id": "NOT A VALID ID",
                "name": "x",
                "version": "1",
                "role": "gateway",
                "base_topic": "i4t/x",
                "availability_topic": "i4t/x/availability",
            }
        ),
        json.dumps(
            {
                "api": 1,
                "id": "i4tabcdefghijklmnop",
                "name": 7,
                "version": "1",
                "role": "gateway",
                "base_topic": "i4t/x",
                "availability_topic": "i4t/x/availability",
            }
        ),
    ],
)
async def test_unreadable_announcement_aborts(
    hass: HomeAssistant, broker: RetainedBroker, payload: str
) -> None:
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_MQTT}, data=discovery(payload)
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "invalid_discovery_info"


async def test_user_picks_an_announced_gateway(
    hass: HomeAssistant, broker: RetainedBroker, announcement: dict[str, Any]
) -> None:
    broker.set(f"i4t/discovery/{announcement['id']}", json.dumps(announcement))
    broker.set("i4t/discovery/garbage", "{")
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": SOURCE_USER})
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == "user"
    options = result["data_schema"].schema[CONF_GATEWAY_ID].config["options"]
    assert [option["value"] for option in options] == [announcement["id"]]

    with patch("custom_components.i4t.async_setup_entry", return_value=True):
        result = await hass.config_entries.flow.async_configure(
            result["flow_id"], {CONF_GATEWAY_ID: announcement["id"]}
        )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert result["result"].unique_id == announcement["id"]


async def test_user_step_hides_configured_gateways(
    hass: HomeAssistant,
    broker: RetainedBroker,
    announcement: dict[str, Any],
    gateway_entry: MockConfigEntry,
) -> None:
    gateway_entry.add_to_hass(hass)
    broker.set(f"i4t/discovery/{announcement['id']}", json.dumps(announcement))
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": SOURCE_USER})
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "no_gateways_found"


async def test_user_step_aborts_if_configured_meanwhile(
    hass: HomeAssistant,
    broker: RetainedBroker,
    announcement: dict[str, Any],
    gateway_entry: MockConfigEntry,
) -> None:
    broker.set(f"i4t/discovery/{announcement['id']}", json.dumps(announcement))
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": SOURCE_USER})
    assert result["type"] is FlowResultType.FORM
    gateway_entry.add_to_hass(hass)
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {CONF_GATEWAY_ID: announcement["id"]}
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "already_configured"


async def test_user_step_without_gateways_aborts(
    hass: HomeAssistant, broker: RetainedBroker
) -> None:
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": SOURCE_USER})
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "no_gateways_found"


async def test_user_step_without_mqtt_aborts(hass: HomeAssistant) -> None:
    with patch(
        "custom_components.i4t.config_flow.mqtt.async_wait_for_mqtt_client", return_value=False
    ):
        result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": SOURCE_USER})
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "mqtt_not_available"


def hassio(config: dict[str, Any]) -> HassioServiceInfo:
    return HassioServiceInfo(config=config, name="I4T Gateway", slug="i4t_gateway", uuid="1")


async def test_addon_discovery_confirm_creates_entry(
    hass: HomeAssistant, broker: RetainedBroker, announcement: dict[str, Any]
) -> None:
    result = await hass.config_entries.flow.async_init(
        DOMAIN,
        context={"source": SOURCE_HASSIO},
        data=hassio({"gateway_id": announcement["id"], "name": "Shed"}),
    )
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == "discovery_confirm"
    with patch("custom_components.i4t.async_setup_entry", return_value=True):
        result = await hass.config_entries.flow.async_configure(result["flow_id"], {})
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert result["title"] == "Shed"
    assert result["result"].unique_id == announcement["id"]


async def test_addon_discovery_without_a_gateway_id_aborts(
    hass: HomeAssistant, broker: RetainedBroker
) -> None:
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_HASSIO}, data=hassio({"name": "x"})
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "invalid_discovery_info"


async def test_reconfigure_takes_the_gateways_new_name(
    hass: HomeAssistant,
    broker: RetainedBroker,
    announcement: dict[str, Any],
    gateway_entry: MockConfigEntry,
) -> None:
    gateway_entry.add_to_hass(hass)
    broker.set(
        f"i4t/discovery/{announcement['id']}", json.dumps({**announcement, "name": "Renamed"})
    )
    result = await gateway_entry.start_reconfigure_flow(hass)
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == "reconfigure"
    with patch("custom_components.i4t.async_setup_entry", return_value=True):
        result = await hass.config_entries.flow.async_configure(
            result["flow_id"], {CONF_GATEWAY_ID: announcement["id"]}
        )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "reconfigure_successful"
    assert gateway_entry.title == "Renamed"


async def test_reconfigure_to_another_gateway_is_refused(
    hass: HomeAssistant,
    broker: RetainedBroker,
    announcement: dict[str, Any],
    gateway_entry: MockConfigEntry,
) -> None:
    gateway_entry.add_to_hass(hass)
    other = {**announcement, "id": "i4tanotheranotheranotheranoth", "name": "Other"}
    broker.set(f"i4t/discovery/{other['id']}", json.dumps(other))
    result = await gateway_entry.start_reconfigure_flow(hass)
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {CONF_GATEWAY_ID: other["id"]}
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "wrong_gateway"


async def test_a_ble_thing_does_not_make_an_entry(
    hass: HomeAssistant, broker: RetainedBroker, gateway_entry: MockConfigEntry
) -> None:
    advert = BluetoothServiceInfoBleak.from_scan(
        source="local",
        device=BLEDevice("A4:C1:38:12:34:56", "BTHome", {}, -60),
        advertisement_data=AdvertisementData(
            local_name="BTHome",
            manufacturer_data={},
            service_data={"0000fcd2-0000-1000-8000-00805f9b34fb": b"\x40\x01\x64"},
            service_uuids=[],
            tx_power=-127,
            rssi=-60,
            platform_data=(),
        ),
        monotonic_time=0.0,
        connectable=False,
    )
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_BLUETOOTH}, data=advert
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "ble_thing_needs_gateway"
    gateway_entry.add_to_hass(hass)
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_BLUETOOTH}, data=advert
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "already_configured"
