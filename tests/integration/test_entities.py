"""Devices and entities built from the gateway's recorded state, and how they follow it."""

from __future__ import annotations

import json
from typing import Any

from homeassistant.const import STATE_OFF, STATE_ON, STATE_UNAVAILABLE, STATE_UNKNOWN
from homeassistant.core import HomeAssistant
from homeassistant.helpers import device_registry as dr, entity_registry as er
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.i4t.const import DOMAIN

from .conftest import FakeGateway, load_json


def entity_id(entity_registry: er.EntityRegistry, platform: str, unique_id: str) -> str:
    found = entity_registry.async_get_entity_id(platform, DOMAIN, unique_id)
    assert found is not None, unique_id
    return found


def state(hass: HomeAssistant, entity_registry: er.EntityRegistry, platform: str, uid: str) -> str:
    current = hass.states.get(entity_id(entity_registry, platform, uid))
    assert current is not None, uid
    return current.state


async def test_devices_link_nodes_to_their_group_and_the_gateway(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    device_registry: dr.DeviceRegistry,
    announcement: dict[str, Any],
) -> None:
    group = load_json("group_healthy")
    node = load_json("node_healthy")
    gateway = device_registry.async_get_device(identifiers={(DOMAIN, announcement["id"])})
    group_device = device_registry.async_get_device(
        identifiers={(DOMAIN, f"{announcement['id']}-group-{group['group_id']}")}
    )
    node_device = device_registry.async_get_device(identifiers={(DOMAIN, node["address"])})
    assert gateway is not None
    assert group_device is not None
    assert node_device is not None
    assert group_device.name == "Greenhouse"
    assert group_device.via_device_id == gateway.id
    assert node_device.name == node["name"]
    assert node_device.via_device_id == group_device.id
    assert node_device.model == "I4T-native thing"


async def test_group_and_node_entities_show_the_recorded_state(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, entity_registry: er.EntityRegistry
) -> None:
    group_key = f"{load_json('gateway_info')['id']}-group-{load_json('group_healthy')['group_id']}"
    healthy, broken = load_json("node_healthy"), load_json("node_broken")
    assert state(hass, entity_registry, "sensor", f"{group_key}-status") == "healthy"
    assert state(hass, entity_registry, "sensor", f"{group_key}-healthy_members") == "3"
    assert state(hass, entity_registry, "binary_sensor", f"{group_key}-problem") == STATE_OFF
    assert state(hass, entity_registry, "sensor", f"{healthy['address']}-status") == "healthy"
    assert state(hass, entity_registry, "sensor", f"{broken['address']}-status") == "broken"
    assert (
        state(hass, entity_registry, "binary_sensor", f"{broken['address']}-connectivity")
        == STATE_ON
    )
    temperature = hass.states.get(
        entity_id(entity_registry, "sensor", f"{healthy['address']}-reading-temperature")
    )
    assert temperature is not None
    assert temperature.state == "21.5"
    assert temperature.attributes["device_class"] == "temperature"
    assert temperature.attributes["unit_of_measurement"] == "°C"
    humidity = hass.states.get(
        entity_id(entity_registry, "sensor", f"{healthy['address']}-reading-humidity")
    )
    assert humidity is not None
    assert humidity.attributes["device_class"] == "humidity"
    # BROKEN keeps the readings visible.
    assert state(hass, entity_registry, "sensor", f"{broken['address']}-reading-temperature") == (
        "21.5"
    )
    # RSSI is there but disabled by default.
    rssi = entity_registry.async_get(
        entity_id(entity_registry, "sensor", f"{healthy['address']}-rssi")
    )
    assert rssi is not None
    assert rssi.disabled_by is er.RegistryEntryDisabler.INTEGRATION


async def test_dead_node_makes_its_readings_unavailable(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    gateway: FakeGateway,
    entity_registry: er.EntityRegistry,
) -> None:
    dead = load_json("node_dead")
    gateway.set_node(dead)
    gateway.set_group(load_json("group_dead"))
    await hass.async_block_till_done()
    address = dead["address"]
    assert state(hass, entity_registry, "sensor", f"{address}-status") == "dead"
    assert state(hass, entity_registry, "binary_sensor", f"{address}-connectivity") == STATE_OFF
    assert state(hass, entity_registry, "sensor", f"{address}-reading-temperature") == (
        STATE_UNAVAILABLE
    )
    group_key = f"{load_json('gateway_info')['id']}-group-{load_json('group_dead')['group_id']}"
    assert state(hass, entity_registry, "sensor", f"{group_key}-status") == "dead"
    assert state(hass, entity_registry, "binary_sensor", f"{group_key}-problem") == STATE_ON


async def test_gateway_offline_makes_everything_unavailable(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    gateway: FakeGateway,
    entity_registry: er.EntityRegistry,
) -> None:
    address = load_json("node_healthy")["address"]
    gateway.broker.set(f"{gateway.base}/availability", "offline")
    await hass.async_block_till_done()
    assert state(hass, entity_registry, "sensor", f"{address}-status") == STATE_UNAVAILABLE
    gateway.broker.set(f"{gateway.base}/availability", "online")
    await hass.async_block_till_done()
    assert state(hass, entity_registry, "sensor", f"{address}-status") == "healthy"


async def test_gateway_sensors_from_its_state(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, entity_registry: er.EntityRegistry
) -> None:
    gateway_id = load_json("gateway_info")["id"]
    stats = load_json("gateway_state")
    assert state(hass, entity_registry, "sensor", f"{gateway_id}-nodes") == str(stats["nodes"])
    assert state(hass, entity_registry, "sensor", f"{gateway_id}-packets_received") == str(
        stats["packets"]["received"]
    )
    # No router is configured in the recording: the uplink is neither up nor down.
    assert state(hass, entity_registry, "binary_sensor", f"{gateway_id}-uplink") == STATE_UNKNOWN


async def test_new_nodes_and_readings_appear_and_removed_ones_go(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    gateway: FakeGateway,
    entity_registry: er.EntityRegistry,
    device_registry: dr.DeviceRegistry,
) -> None:
    newcomer = {
        **load_json("node_healthy"),
        "address": "i4tafzzzzzzzzzzzzzzzzzzzzzzzzzz",
        "name": "New",
    }
    newcomer["group_id"] = newcomer["node_id"] = newcomer["role"] = newcomer["class"] = None
    gateway.set_node(newcomer)
    await hass.async_block_till_done()
    assert state(hass, entity_registry, "sensor", f"{newcomer['address']}-status") == "healthy"
    device = device_registry.async_get_device(identifiers={(DOMAIN, newcomer["address"])})
    assert device is not None

    with_pressure = {
        **newcomer,
        "readings": {
            **newcomer["readings"],
            "pressure": {"value": 1013, "unit": "hPa", "device_class": None, "at": 1.0},
        },
    }
    gateway.set_node(with_pressure)
    await hass.async_block_till_done()
    pressure = hass.states.get(
        entity_id(entity_registry, "sensor", f"{newcomer['address']}-reading-pressure")
    )
    assert pressure is not None
    assert pressure.attributes["device_class"] == "atmospheric_pressure"

    gateway.clear_node(newcomer["address"])
    await hass.async_block_till_done()
    assert device_registry.async_get_device(identifiers={(DOMAIN, newcomer["address"])}) is None


async def test_deleted_group_loses_its_device(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    gateway: FakeGateway,
    device_registry: dr.DeviceRegistry,
) -> None:
    group_id = load_json("group_healthy")["group_id"]
    key = f"{load_json('gateway_info')['id']}-group-{group_id}"
    assert device_registry.async_get_device(identifiers={(DOMAIN, key)}) is not None
    gateway.clear_group(group_id)
    await hass.async_block_till_done()
    assert device_registry.async_get_device(identifiers={(DOMAIN, key)}) is None


async def test_mute_switch_sends_the_request(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    gateway: FakeGateway,
    entity_registry: er.EntityRegistry,
) -> None:
    address = load_json("node_healthy")["address"]
    switch = entity_id(entity_registry, "switch", f"{address}-mute")
    assert hass.states.get(switch).state == STATE_OFF  # type: ignore[union-attr]
    await hass.services.async_call("switch", "turn_on", {"entity_id": switch}, blocking=True)
    assert gateway.requests[-1][0] == "mute"
    assert gateway.requests[-1][1] | {"request_id": None} == {
        "request_id": None,
        "target": "node",
        "id": address,
        "muted": True,
    }
    gateway.set_node({**load_json("node_healthy"), "muted": True})
    await hass.async_block_till_done()
    assert hass.states.get(switch).state == STATE_ON  # type: ignore[union-attr]
    group_id = load_json("group_healthy")["group_id"]
    group_switch = entity_id(
        entity_registry, "switch", f"{load_json('gateway_info')['id']}-group-{group_id}-mute"
    )
    await hass.services.async_call("switch", "turn_off", {"entity_id": group_switch}, blocking=True)
    assert gateway.requests[-1][1]["target"] == "group"
    assert gateway.requests[-1][1]["muted"] is False


async def test_event_entities_and_bus_events_follow_status_changes(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    gateway: FakeGateway,
    entity_registry: er.EntityRegistry,
    device_registry: dr.DeviceRegistry,
) -> None:
    bus_events: list[dict[str, Any]] = []
    hass.bus.async_listen("i4t_event", lambda event: bus_events.append(dict(event.data)))
    node_event = next(e for e in load_json("node_events")["events"] if e["new"] == "broken")
    gateway.event("node", node_event)
    group_event = load_json("group_events")["events"][-1]
    gateway.event("group", group_event)
    await hass.async_block_till_done()

    entity = hass.states.get(
        entity_id(entity_registry, "event", f"{node_event['address']}-status_event")
    )
    assert entity is not None
    assert entity.attributes["event_type"] == "broken"
    node_device = device_registry.async_get_device(identifiers={(DOMAIN, node_event["address"])})
    assert node_device is not None
    # Two MQTT messages, two bus events; their order is the dispatcher's, not a contract.
    by_type = {event["type"]: event for event in bus_events}
    assert len(bus_events) == 2
    assert by_type["node_broken"] == {
        "device_id": node_device.id,
        "type": "node_broken",
        "old": node_event["old"],
        "new": "broken",
    }
    assert f"group_{group_event['new']}" in by_type


async def test_gateway_uplink_sensors(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    gateway: FakeGateway,
    entity_registry: er.EntityRegistry,
) -> None:
    gateway_id = load_json("gateway_info")["id"]
    uplink = {"connected": True, "router": "i4tarouterrouterrouterrouterro", "queued": 3,
              "forwarded": 42, "token_expires": None}  # fmt: skip
    stats = {**load_json("gateway_state"), "uplink": uplink}
    gateway.broker.set(f"{gateway.base}/state/gateway", json.dumps(stats))
    await hass.async_block_till_done()
    assert state(hass, entity_registry, "binary_sensor", f"{gateway_id}-uplink") == STATE_ON
    assert state(hass, entity_registry, "sensor", f"{gateway_id}-queue_depth") == "3"
    assert state(hass, entity_registry, "sensor", f"{gateway_id}-packets_forwarded") == "42"
    assert state(hass, entity_registry, "sensor", f"{gateway_id}-region") == uplink["router"]
