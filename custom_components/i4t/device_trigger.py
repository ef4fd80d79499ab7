"""Device triggers: a node became healthy, broken or dead; a group's status became X."""

from __future__ import annotations

from homeassistant.components.device_automation import DEVICE_TRIGGER_BASE_SCHEMA
from homeassistant.components.device_automation.exceptions import InvalidDeviceAutomationConfig
from homeassistant.components.homeassistant.triggers import event as event_trigger
from homeassistant.const import (
    CONF_DEVICE_ID,
    CONF_DOMAIN,
    CONF_EVENT_DATA,
    CONF_PLATFORM,
    CONF_TYPE,
)
from homeassistant.core import CALLBACK_TYPE, HomeAssistant
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers.trigger import TriggerActionType, TriggerInfo
from homeassistant.helpers.typing import ConfigType
import voluptuous as vol

from .api import GROUP_STATUSES, NODE_STATUSES
from .const import DOMAIN, EVENT_I4T

NODE_TRIGGERS = tuple(f"node_{status}" for status in NODE_STATUSES)
GROUP_TRIGGERS = tuple(f"group_{status}" for status in GROUP_STATUSES)
TRIGGER_SCHEMA = DEVICE_TRIGGER_BASE_SCHEMA.extend(
    {vol.Required(CONF_TYPE): vol.In(NODE_TRIGGERS + GROUP_TRIGGERS)}
)


def _trigger_types(hass: HomeAssistant, device_id: str) -> tuple[str, ...]:
    device = dr.async_get(hass).async_get(device_id)
    if device is None:
        return ()
    for domain, ident in device.identifiers:
        if domain != DOMAIN:
            continue
        if "-group-" in ident:
            return GROUP_TRIGGERS
        if device.via_device_id is not None:
            return NODE_TRIGGERS
    return ()


async def async_validate_trigger_config(hass: HomeAssistant, config: ConfigType) -> ConfigType:
    """Refuse trigger types the device cannot have (a group trigger on a node)."""
    config = TRIGGER_SCHEMA(config)
    if config[CONF_TYPE] not in _trigger_types(hass, config[CONF_DEVICE_ID]):
        raise InvalidDeviceAutomationConfig(
            f"{config[CONF_TYPE]} is not a trigger of device {config[CONF_DEVICE_ID]}"
        )
    return config


async def async_get_triggers(hass: HomeAssistant, device_id: str) -> list[dict[str, str]]:
    """The triggers of a node or group device."""
    return [
        {CONF_PLATFORM: "device", CONF_DOMAIN: DOMAIN, CONF_DEVICE_ID: device_id, CONF_TYPE: kind}
        for kind in _trigger_types(hass, device_id)
    ]


async def async_attach_trigger(
    hass: HomeAssistant,
    config: ConfigType,
    action: TriggerActionType,
    trigger_info: TriggerInfo,
) -> CALLBACK_TYPE:
    """Listen for the i4t_event of this device and type."""
    event_config = event_trigger.TRIGGER_SCHEMA(
        {
            CONF_PLATFORM: "event",
            event_trigger.CONF_EVENT_TYPE: EVENT_I4T,
            CONF_EVENT_DATA: {
                CONF_DEVICE_ID: config[CONF_DEVICE_ID],
                CONF_TYPE: config[CONF_TYPE],
            },
        }
    )
    return await event_trigger.async_attach_trigger(
        hass, event_config, action, trigger_info, platform_type="device"
    )
