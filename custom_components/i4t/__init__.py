"""The I4T integration: Home Assistant as a local gateway of the Internet For Things."""

from __future__ import annotations

from homeassistant.const import Platform
from homeassistant.core import HomeAssistant
from homeassistant.helpers import device_registry as dr

from .const import DOMAIN
from .coordinator import I4TConfigEntry, I4TCoordinator

PLATFORMS: list[Platform] = []


async def async_setup_entry(hass: HomeAssistant, entry: I4TConfigEntry) -> bool:
    """Connect to the gateway's local API and register the gateway device."""
    coordinator = I4TCoordinator(hass, entry)
    await coordinator.async_config_entry_first_refresh()
    entry.runtime_data = coordinator
    info = coordinator.data.info
    dr.async_get(hass).async_get_or_create(
        config_entry_id=entry.entry_id,
        identifiers={(DOMAIN, info.gateway_id)},
        manufacturer="I4T",
        model="Gateway" if info.role == "gateway" else "Regional router",
        name=info.name,
        sw_version=info.version,
    )
    await hass.config_entries.async_forward_entry_setups(entry, PLATFORMS)
    return True


async def async_unload_entry(hass: HomeAssistant, entry: I4TConfigEntry) -> bool:
    """Unload the platforms; the MQTT subscriptions go with the entry's unload callbacks."""
    return await hass.config_entries.async_unload_platforms(entry, PLATFORMS)
