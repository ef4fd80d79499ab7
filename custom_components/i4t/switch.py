"""Mute switches: a muted node or group raises no status events while it is worked on."""

from __future__ import annotations

from typing import Any

from homeassistant.components.switch import SwitchEntity
from homeassistant.const import EntityCategory
from homeassistant.core import HomeAssistant
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback

from .coordinator import I4TConfigEntry, I4TCoordinator
from .entity import GroupEntity, NodeEntity, async_track_new

PARALLEL_UPDATES = 1


async def async_setup_entry(
    hass: HomeAssistant,
    entry: I4TConfigEntry,
    async_add_entities: AddConfigEntryEntitiesCallback,
) -> None:
    """Add a mute switch for every node and group, as they appear."""
    coordinator = entry.runtime_data
    async_track_new(
        entry,
        async_add_entities,
        for_group=lambda group_id: [GroupMuteSwitch(coordinator, group_id)],
        for_node=lambda address: [NodeMuteSwitch(coordinator, address)],
    )


class GroupMuteSwitch(GroupEntity, SwitchEntity):
    """Mutes a group's status events (maintenance)."""

    _attr_entity_category = EntityCategory.CONFIG
    _attr_translation_key = "mute"

    def __init__(self, coordinator: I4TCoordinator, group_id: str) -> None:
        super().__init__(coordinator, group_id, "mute")

    @property
    def is_on(self) -> bool | None:
        group = self.group
        return None if group is None else group.muted

    async def async_turn_on(self, **kwargs: Any) -> None:
        await self.coordinator.async_request("mute", target="group", id=self.group_id, muted=True)

    async def async_turn_off(self, **kwargs: Any) -> None:
        await self.coordinator.async_request("mute", target="group", id=self.group_id, muted=False)


class NodeMuteSwitch(NodeEntity, SwitchEntity):
    """Mutes a node's status events (maintenance)."""

    _attr_entity_category = EntityCategory.CONFIG
    _attr_translation_key = "mute"

    def __init__(self, coordinator: I4TCoordinator, address: str) -> None:
        super().__init__(coordinator, address, "mute")

    @property
    def is_on(self) -> bool | None:
        node = self.node
        return None if node is None else node.muted

    async def async_turn_on(self, **kwargs: Any) -> None:
        await self.coordinator.async_request("mute", target="node", id=self.address, muted=True)

    async def async_turn_off(self, **kwargs: Any) -> None:
        await self.coordinator.async_request("mute", target="node", id=self.address, muted=False)
