"""Event entities: one per node and per group, firing on each status change."""

from __future__ import annotations

from typing import Any

from homeassistant.components.event import EventEntity
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback

from .api import GROUP_STATUSES, NODE_STATUSES
from .coordinator import I4TConfigEntry, I4TCoordinator
from .entity import GroupEntity, NodeEntity, async_track_new

PARALLEL_UPDATES = 0


async def async_setup_entry(
    hass: HomeAssistant,
    entry: I4TConfigEntry,
    async_add_entities: AddConfigEntryEntitiesCallback,
) -> None:
    """Add a status event entity for every node and group, as they appear."""
    coordinator = entry.runtime_data
    async_track_new(
        entry,
        async_add_entities,
        for_group=lambda group_id: [GroupStatusEvent(coordinator, group_id)],
        for_node=lambda address: [NodeStatusEvent(coordinator, address)],
    )


class NodeStatusEvent(NodeEntity, EventEntity):
    """Fires healthy, broken or dead when the node's status changes."""

    _attr_event_types = list(NODE_STATUSES)  # noqa: RUF012 - HA's attribute
    _attr_translation_key = "node_status_change"

    def __init__(self, coordinator: I4TCoordinator, address: str) -> None:
        super().__init__(coordinator, address, "status_event")

    async def async_added_to_hass(self) -> None:
        await super().async_added_to_hass()
        self.async_on_remove(self.coordinator.async_add_event_listener(self._on_event))

    @callback
    def _on_event(self, kind: str, event: dict[str, Any]) -> None:
        if kind != "node" or event.get("address") != self.address:
            return
        if event.get("new") in NODE_STATUSES:
            self._trigger_event(str(event["new"]), {"old": event.get("old")})
            self.async_write_ha_state()


class GroupStatusEvent(GroupEntity, EventEntity):
    """Fires the group's new status when it changes."""

    _attr_event_types = list(GROUP_STATUSES)  # noqa: RUF012 - HA's attribute
    _attr_translation_key = "group_status_change"

    def __init__(self, coordinator: I4TCoordinator, group_id: str) -> None:
        super().__init__(coordinator, group_id, "status_event")

    async def async_added_to_hass(self) -> None:
        await super().async_added_to_hass()
        self.async_on_remove(self.coordinator.async_add_event_listener(self._on_event))

    @callback
    def _on_event(self, kind: str, event: dict[str, Any]) -> None:
        if kind != "group" or event.get("group_id") != self.group_id:
            return
        if event.get("new") in GROUP_STATUSES:
            self._trigger_event(str(event["new"]), {"old": event.get("old")})
            self.async_write_ha_state()
