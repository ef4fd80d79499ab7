"""Binary sensors: the gateway's upstream link, each group's problem flag, each node's
connectivity."""

from __future__ import annotations

from homeassistant.components.binary_sensor import (
    BinarySensorDeviceClass,
    BinarySensorEntity,
)
from homeassistant.const import EntityCategory
from homeassistant.core import HomeAssistant
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback

from .coordinator import I4TConfigEntry, I4TCoordinator
from .entity import GatewayEntity, GroupEntity, NodeEntity, async_track_new

PARALLEL_UPDATES = 0


async def async_setup_entry(
    hass: HomeAssistant,
    entry: I4TConfigEntry,
    async_add_entities: AddConfigEntryEntitiesCallback,
) -> None:
    """Add the gateway's binary sensors now, those of nodes and groups as they appear."""
    coordinator = entry.runtime_data
    async_add_entities([UplinkSensor(coordinator)])
    async_track_new(
        entry,
        async_add_entities,
        for_group=lambda group_id: [GroupProblemSensor(coordinator, group_id)],
        for_node=lambda address: [NodeConnectivitySensor(coordinator, address)],
    )


class UplinkSensor(GatewayEntity, BinarySensorEntity):
    """Whether the gateway is connected to its regional router."""

    _attr_device_class = BinarySensorDeviceClass.CONNECTIVITY
    _attr_entity_category = EntityCategory.DIAGNOSTIC
    _attr_translation_key = "uplink"

    def __init__(self, coordinator: I4TCoordinator) -> None:
        super().__init__(coordinator, "uplink")

    @property
    def is_on(self) -> bool | None:
        uplink = self.coordinator.data.stats.get("uplink")
        if not isinstance(uplink, dict) or "connected" not in uplink:
            return None  # no router configured: neither up nor down
        return bool(uplink["connected"])


class GroupProblemSensor(GroupEntity, BinarySensorEntity):
    """On while the group is anything but healthy."""

    _attr_device_class = BinarySensorDeviceClass.PROBLEM
    _attr_translation_key = "group_problem"

    def __init__(self, coordinator: I4TCoordinator, group_id: str) -> None:
        super().__init__(coordinator, group_id, "problem")

    @property
    def is_on(self) -> bool | None:
        group = self.group
        return None if group is None else group.status != "healthy"


class NodeConnectivitySensor(NodeEntity, BinarySensorEntity):
    """On while the node is heard within its timeout (healthy or broken), off when dead."""

    _attr_device_class = BinarySensorDeviceClass.CONNECTIVITY
    _attr_translation_key = "node_connectivity"

    def __init__(self, coordinator: I4TCoordinator, address: str) -> None:
        super().__init__(coordinator, address, "connectivity")

    @property
    def is_on(self) -> bool | None:
        node = self.node
        if node is None or node.status is None:
            return None
        return node.status != "dead"
