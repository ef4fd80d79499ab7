"""The I4T integration: Home Assistant as a local gateway of the Internet For Things."""

from __future__ import annotations

from homeassistant.const import Platform
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers import (
    config_validation as cv,
    device_registry as dr,
    entity_registry as er,
)
from homeassistant.helpers.device_registry import DeviceEntry
from homeassistant.helpers.typing import ConfigType

from .ble_bridge import async_setup_ble_bridge
from .const import CONF_BLE_BRIDGE, CONF_REMOTE_SCANNERS, DOMAIN, SUBENTRY_GROUP
from .coordinator import I4TConfigEntry, I4TCoordinator
from .entity import gateway_device_info, node_device_info
from .group_entries import async_entry_updated, async_gateway_changed
from .repairs import (
    async_track_gateway_reachability,
    async_track_things_to_enroll,
    async_track_token_expiry,
)
from .services import async_setup_services

PLATFORMS: list[Platform] = [
    Platform.BINARY_SENSOR,
    Platform.EVENT,
    Platform.SENSOR,
    Platform.SWITCH,
]
CONFIG_SCHEMA = cv.config_entry_only_config_schema(DOMAIN)


async def async_setup(hass: HomeAssistant, config: ConfigType) -> bool:
    """Register the integration's actions (they check that their gateway is loaded)."""
    async_setup_services(hass)
    return True


async def async_setup_entry(hass: HomeAssistant, entry: I4TConfigEntry) -> bool:
    """Connect to the gateway's local API, register its device and add the platforms."""
    coordinator = I4TCoordinator(hass, entry)
    await coordinator.async_config_entry_first_refresh()
    entry.runtime_data = coordinator
    dr.async_get(hass).async_get_or_create(
        config_entry_id=entry.entry_id, **gateway_device_info(coordinator)
    )
    await hass.config_entries.async_forward_entry_setups(entry, PLATFORMS)
    groups = coordinator.group_entries
    groups.subentries = set(_group_ids(entry))

    @callback
    def gateway_changed() -> None:
        _sync_devices(hass, entry)
        async_gateway_changed(hass, entry, groups)

    gateway_changed()
    entry.async_on_unload(coordinator.async_add_listener(gateway_changed))
    entry.async_on_unload(async_track_gateway_reachability(hass, entry))
    entry.async_on_unload(async_track_things_to_enroll(hass, entry))
    entry.async_on_unload(async_track_token_expiry(hass, entry))
    entry.async_on_unload(await async_setup_ble_bridge(hass, entry, coordinator.gateway_id))
    applied_options = dict(entry.options)

    async def entry_updated(hass: HomeAssistant, entry: I4TConfigEntry) -> None:
        async_entry_updated(hass, entry, groups)
        _link_groups_to_subentries(hass, entry)
        if any(
            entry.options.get(key, True) != applied_options.get(key, True)
            for key in (CONF_BLE_BRIDGE, CONF_REMOTE_SCANNERS)
        ):
            hass.config_entries.async_schedule_reload(entry.entry_id)

    entry.async_on_unload(entry.add_update_listener(entry_updated))
    return True


def _group_ids(entry: I4TConfigEntry) -> list[str]:
    return [
        str(subentry.data["group_id"])
        for subentry in entry.subentries.values()
        if subentry.subentry_type == SUBENTRY_GROUP
    ]


async def async_unload_entry(hass: HomeAssistant, entry: I4TConfigEntry) -> bool:
    """Unload the platforms; subscriptions and listeners go with the entry's unload callbacks."""
    return await hass.config_entries.async_unload_platforms(entry, PLATFORMS)


async def async_remove_config_entry_device(
    hass: HomeAssistant, entry: I4TConfigEntry, device: DeviceEntry
) -> bool:
    """Let the user delete a device only when the gateway no longer has it."""
    coordinator = entry.runtime_data
    return not any(
        domain == DOMAIN and ident in _current_devices(coordinator)
        for domain, ident in device.identifiers
    )


def _current_devices(coordinator: I4TCoordinator) -> set[str]:
    data = coordinator.data
    return {
        coordinator.gateway_id,
        *data.nodes,
        *(coordinator.device_key("group", group_id) for group_id in data.groups),
    }


@callback
def _sync_devices(hass: HomeAssistant, entry: I4TConfigEntry) -> None:
    """Remove devices whose node or group is gone; keep nodes linked to their group."""
    coordinator = entry.runtime_data
    registry = dr.async_get(hass)
    current = _current_devices(coordinator)
    for device in dr.async_entries_for_config_entry(registry, entry.entry_id):
        idents = {ident for domain, ident in device.identifiers if domain == DOMAIN}
        if idents and not idents & current:
            registry.async_update_device(device.id, remove_config_entry_id=entry.entry_id)
    for node in coordinator.data.nodes.values():
        node_device = registry.async_get_device(identifiers={(DOMAIN, node.address)})
        via_key = node_device_info(coordinator, node)["via_device"][1]
        via = registry.async_get_device(identifiers={(DOMAIN, via_key)})
        if node_device is not None and via is not None and node_device.via_device_id != via.id:
            registry.async_update_device(node_device.id, via_device_id=via.id)
    _link_groups_to_subentries(hass, entry)


@callback
def _link_groups_to_subentries(hass: HomeAssistant, entry: I4TConfigEntry) -> None:
    """Put each group's device and entities under its subentry, so the UI lists them there.

    Entities are added when the group's state arrives, which can be before its subentry
    exists (a subentry flow waits for the gateway's reply): they are moved afterwards.
    """
    coordinator = entry.runtime_data
    devices = dr.async_get(hass)
    entities = er.async_get(hass)
    for subentry_id, subentry in entry.subentries.items():
        if subentry.subentry_type != SUBENTRY_GROUP:
            continue
        key = coordinator.device_key("group", str(subentry.data["group_id"]))
        device = devices.async_get_device(identifiers={(DOMAIN, key)})
        if device is None:
            continue
        linked = device.config_entries_subentries.get(entry.entry_id, set())
        if subentry_id not in linked:
            devices.async_update_device(
                device.id, add_config_entry_id=entry.entry_id, add_config_subentry_id=subentry_id
            )
        # The entities move first: unlinking the device from "no subentry" removes the
        # entities still attached there.
        for entity in er.async_entries_for_device(entities, device.id):
            if entity.config_subentry_id != subentry_id:
                entities.async_update_entity(entity.entity_id, config_subentry_id=subentry_id)
        if None in linked:
            devices.async_update_device(
                device.id, remove_config_entry_id=entry.entry_id, remove_config_subentry_id=None
            )
