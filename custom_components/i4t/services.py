"""Actions: send a message, enroll a thing, remove a node, mute and unmute.

Registered once in async_setup (the action-setup rule); each checks that the gateway it
addresses is loaded and raises a translated ServiceValidationError for bad input, and the
gateway's refusals arrive as translated HomeAssistantErrors.
"""

from __future__ import annotations

from typing import Any

from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import HomeAssistant, ServiceCall, SupportsResponse, callback
from homeassistant.exceptions import ServiceValidationError
from homeassistant.helpers import config_validation as cv, device_registry as dr
import voluptuous as vol

from .const import DOMAIN
from .coordinator import I4TConfigEntry, I4TCoordinator

ATTR_CONFIG_ENTRY_ID = "config_entry_id"
ATTR_DEVICE_ID = "device_id"
SERVICE_SEND = "send"
SERVICE_ENROLL = "enroll"
SERVICE_REMOVE_NODE = "remove_node"
SERVICE_MUTE = "mute"
SERVICE_UNMUTE = "unmute"

_HEX_KEY = vol.All(cv.string, vol.Match(r"^[0-9a-fA-F]{32}$"))

SEND_SCHEMA = vol.Schema(
    {
        vol.Required(ATTR_CONFIG_ENTRY_ID): cv.string,
        vol.Required("destination"): cv.string,
        vol.Required("command"): vol.All(cv.string, vol.Length(min=1, max=64)),
        vol.Optional("args", default={}): vol.Schema(
            {cv.string: vol.Any(str, int, float, bool, None)}
        ),
    }
)
ENROLL_SCHEMA = vol.Schema(
    {
        vol.Required(ATTR_CONFIG_ENTRY_ID): cv.string,
        vol.Required("kind"): vol.In(["native", "bthome", "beacon"]),
        vol.Required("name"): vol.All(cv.string, vol.Length(min=1, max=100)),
        vol.Optional("public_key"): vol.All(cv.string, vol.Match(r"^[0-9a-fA-F]{64}$")),
        vol.Optional("mac"): cv.string,
        vol.Optional("bindkey"): _HEX_KEY,
        vol.Optional("key"): _HEX_KEY,
    }
)
DEVICE_SCHEMA = vol.Schema({vol.Required(ATTR_DEVICE_ID): cv.string})


@callback
def async_setup_services(hass: HomeAssistant) -> None:
    """Register the actions."""
    hass.services.async_register(
        DOMAIN, SERVICE_SEND, _send, schema=SEND_SCHEMA, supports_response=SupportsResponse.OPTIONAL
    )
    hass.services.async_register(
        DOMAIN,
        SERVICE_ENROLL,
        _enroll,
        schema=ENROLL_SCHEMA,
        supports_response=SupportsResponse.OPTIONAL,
    )
    hass.services.async_register(DOMAIN, SERVICE_REMOVE_NODE, _remove_node, schema=DEVICE_SCHEMA)
    hass.services.async_register(DOMAIN, SERVICE_MUTE, _mute, schema=DEVICE_SCHEMA)
    hass.services.async_register(DOMAIN, SERVICE_UNMUTE, _unmute, schema=DEVICE_SCHEMA)


def _coordinator(hass: HomeAssistant, entry_id: str) -> I4TCoordinator:
    entry: I4TConfigEntry | None = hass.config_entries.async_get_entry(entry_id)
    if entry is None or entry.domain != DOMAIN:
        raise ServiceValidationError(
            translation_domain=DOMAIN,
            translation_key="gateway_not_found_for_action",
            translation_placeholders={"entry_id": entry_id},
        )
    if entry.state is not ConfigEntryState.LOADED:
        raise ServiceValidationError(
            translation_domain=DOMAIN,
            translation_key="gateway_not_loaded",
            translation_placeholders={"name": entry.title},
        )
    return entry.runtime_data


def _target(hass: HomeAssistant, device_id: str) -> tuple[I4TCoordinator, str, str]:
    """The gateway, kind ("node" or "group") and id behind a node or group device."""
    device = dr.async_get(hass).async_get(device_id)
    if device is not None:
        for entry_id in device.config_entries:
            entry = hass.config_entries.async_get_entry(entry_id)
            if entry is None or entry.domain != DOMAIN:
                continue
            coordinator = _coordinator(hass, entry_id)
            for domain, ident in device.identifiers:
                if domain != DOMAIN:
                    continue
                if ident in coordinator.data.nodes:
                    return coordinator, "node", ident
                group_prefix = coordinator.device_key("group", "")
                if ident.startswith(group_prefix):
                    return coordinator, "group", ident[len(group_prefix) :]
    raise ServiceValidationError(
        translation_domain=DOMAIN,
        translation_key="not_a_node_or_group",
        translation_placeholders={"device_id": device_id},
    )


async def _send(call: ServiceCall) -> dict[str, Any]:
    coordinator = _coordinator(call.hass, call.data[ATTR_CONFIG_ENTRY_ID])
    return await coordinator.async_request(
        "send",
        destination=call.data["destination"],
        command=call.data["command"],
        args=call.data["args"],
    )


async def _enroll(call: ServiceCall) -> dict[str, Any]:
    coordinator = _coordinator(call.hass, call.data[ATTR_CONFIG_ENTRY_ID])
    body = {key: value for key, value in call.data.items() if key != ATTR_CONFIG_ENTRY_ID}
    needed = {"native": "public_key", "bthome": "mac", "beacon": "mac"}[body["kind"]]
    if needed not in body or (body["kind"] == "beacon" and "key" not in body):
        raise ServiceValidationError(
            translation_domain=DOMAIN,
            translation_key="enroll_missing_field",
            translation_placeholders={"kind": body["kind"]},
        )
    return await coordinator.async_request("enroll", **body)


async def _remove_node(call: ServiceCall) -> None:
    coordinator, kind, ident = _target(call.hass, call.data[ATTR_DEVICE_ID])
    if kind != "node":
        raise ServiceValidationError(
            translation_domain=DOMAIN,
            translation_key="not_a_node_or_group",
            translation_placeholders={"device_id": call.data[ATTR_DEVICE_ID]},
        )
    await coordinator.async_request("remove", address=ident)


async def _mute(call: ServiceCall) -> None:
    coordinator, kind, ident = _target(call.hass, call.data[ATTR_DEVICE_ID])
    await coordinator.async_request("mute", target=kind, id=ident, muted=True)


async def _unmute(call: ServiceCall) -> None:
    coordinator, kind, ident = _target(call.hass, call.data[ATTR_DEVICE_ID])
    await coordinator.async_request("mute", target=kind, id=ident, muted=False)
