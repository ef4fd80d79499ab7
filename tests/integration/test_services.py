"""Actions: validated input, translated errors, requests as the gateway expects them."""

from __future__ import annotations

from typing import Any

from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError, ServiceValidationError
from homeassistant.helpers import device_registry as dr
import pytest
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.i4t.const import DOMAIN

from .conftest import FakeGateway, load_json


def node_device(device_registry: dr.DeviceRegistry, address: str) -> str:
    device = device_registry.async_get_device(identifiers={(DOMAIN, address)})
    assert device is not None
    return device.id


async def test_send_returns_the_gateways_result(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, gateway: FakeGateway
) -> None:
    gateway.answers["send"] = {"ok": True, "result": {"message_id": "ab" * 16}}
    address = load_json("node_healthy")["address"]
    response = await hass.services.async_call(
        DOMAIN,
        "send",
        {
            "config_entry_id": loaded_entry.entry_id,
            "destination": address,
            "command": "blink",
            "args": {"times": 3},
        },
        blocking=True,
        return_response=True,
    )
    assert response == {"message_id": "ab" * 16}
    command, body = gateway.requests[-1]
    assert command == "send"
    assert (body["destination"], body["command"], body["args"]) == (address, "blink", {"times": 3})


async def test_gateway_refusal_is_a_translated_error(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, gateway: FakeGateway
) -> None:
    recorded = load_json("reply_error")
    gateway.answers["enroll"] = {"ok": False, "error": recorded["error"]}
    with pytest.raises(HomeAssistantError) as caught:
        await hass.services.async_call(
            DOMAIN,
            "enroll",
            {
                "config_entry_id": loaded_entry.entry_id,
                "kind": "native",
                "name": "Probe",
                "public_key": "ab" * 32,
            },
            blocking=True,
        )
    assert caught.value.translation_key == "gateway_refused"
    assert caught.value.translation_placeholders == {
        "code": recorded["error"]["code"],
        "message": recorded["error"]["message"],
    }


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"kind": "native", "name": "x"}, "enroll_missing_field"),
        ({"kind": "beacon", "name": "x", "mac": "A4:C1:38:12:34:56"}, "enroll_missing_field"),
    ],
)
async def test_enroll_needs_the_right_fields(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, data: dict[str, Any], key: str
) -> None:
    with pytest.raises(ServiceValidationError) as caught:
        await hass.services.async_call(
            DOMAIN, "enroll", {"config_entry_id": loaded_entry.entry_id, **data}, blocking=True
        )
    assert caught.value.translation_key == key


async def test_enroll_bthome_sends_mac_and_bindkey(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, gateway: FakeGateway
) -> None:
    await hass.services.async_call(
        DOMAIN,
        "enroll",
        {
            "config_entry_id": loaded_entry.entry_id,
            "kind": "bthome",
            "name": "Fridge",
            "mac": "A4:C1:38:12:34:56",
            "bindkey": "00" * 16,
        },
        blocking=True,
    )
    command, body = gateway.requests[-1]
    assert command == "enroll"
    assert (body["kind"], body["mac"], body["bindkey"]) == (
        "bthome",
        "A4:C1:38:12:34:56",
        "00" * 16,
    )


async def test_mute_remove_and_unmute_by_device(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    gateway: FakeGateway,
    device_registry: dr.DeviceRegistry,
) -> None:
    address = load_json("node_healthy")["address"]
    device_id = node_device(device_registry, address)
    await hass.services.async_call(DOMAIN, "mute", {"device_id": device_id}, blocking=True)
    assert gateway.requests[-1][1]["target"] == "node"
    assert gateway.requests[-1][1]["muted"] is True
    await hass.services.async_call(DOMAIN, "unmute", {"device_id": device_id}, blocking=True)
    assert gateway.requests[-1][1]["muted"] is False
    await hass.services.async_call(DOMAIN, "remove_node", {"device_id": device_id}, blocking=True)
    assert gateway.requests[-1] == ("remove", {**gateway.requests[-1][1], "address": address})

    group_key = f"{load_json('gateway_info')['id']}-group-{load_json('group_healthy')['group_id']}"
    group_device = node_device(device_registry, group_key)
    await hass.services.async_call(DOMAIN, "mute", {"device_id": group_device}, blocking=True)
    assert gateway.requests[-1][1]["target"] == "group"
    with pytest.raises(ServiceValidationError) as caught:
        await hass.services.async_call(
            DOMAIN, "remove_node", {"device_id": group_device}, blocking=True
        )
    assert caught.value.translation_key == "not_a_node_or_group"
    with pytest.raises(ServiceValidationError):
        await hass.services.async_call(DOMAIN, "mute", {"device_id": "nope"}, blocking=True)


async def test_actions_check_the_gateway_is_loaded(
    hass: HomeAssistant, loaded_entry: MockConfigEntry
) -> None:
    data = {"destination": "x", "command": "y"}
    with pytest.raises(ServiceValidationError) as caught:
        await hass.services.async_call(
            DOMAIN, "send", {"config_entry_id": "missing", **data}, blocking=True
        )
    assert caught.value.translation_key == "gateway_not_found_for_action"
    await hass.config_entries.async_unload(loaded_entry.entry_id)
    with pytest.raises(ServiceValidationError) as caught:
        await hass.services.async_call(
            DOMAIN, "send", {"config_entry_id": loaded_entry.entry_id, **data}, blocking=True
        )
    assert caught.value.translation_key == "gateway_not_loaded"


async def test_unanswered_request_times_out(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("custom_components.i4t.const.REQUEST_TIMEOUT_SECONDS", 0.05)
    coordinator = loaded_entry.runtime_data
    coordinator.base = "i4t/elsewhere"  # nobody answers there
    with pytest.raises(HomeAssistantError) as caught:
        await coordinator.async_request("send", destination="x", command="y")
    assert caught.value.translation_key == "gateway_timeout"
