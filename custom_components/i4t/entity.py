"""Base entities: the gateway, a node group, a node; device info and availability rules."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from homeassistant.core import callback
from homeassistant.helpers.device_registry import CONNECTION_BLUETOOTH, DeviceInfo
from homeassistant.helpers.entity import Entity
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback
from homeassistant.helpers.update_coordinator import CoordinatorEntity

from .api import GroupState, NodeState
from .const import DOMAIN
from .coordinator import I4TConfigEntry, I4TCoordinator

MANUFACTURER = "I4T"
NODE_MODELS = {
    "native": "I4T-native thing",
    "bthome": "BTHome sensor",
    "beacon": "I4T BLE beacon",
    "mqtt": "MQTT device",
}


class I4TEntity(CoordinatorEntity[I4TCoordinator]):
    """Any entity of this integration: unavailable while the gateway is offline."""

    _attr_has_entity_name = True

    @property
    def available(self) -> bool:
        return super().available and self.coordinator.data.online


class GatewayEntity(I4TEntity):
    """An entity of the gateway device itself."""

    def __init__(self, coordinator: I4TCoordinator, key: str) -> None:
        super().__init__(coordinator)
        self._attr_unique_id = f"{coordinator.gateway_id}-{key}"
        self._attr_device_info = DeviceInfo(identifiers={(DOMAIN, coordinator.gateway_id)})


def gateway_device_info(coordinator: I4TCoordinator) -> DeviceInfo:
    """The gateway's device, created at set-up (so that groups and nodes can point at it)."""
    info = coordinator.data.info
    return DeviceInfo(
        identifiers={(DOMAIN, info.gateway_id)},
        manufacturer=MANUFACTURER,
        model="Gateway" if info.role == "gateway" else "Regional router",
        name=info.name,
        sw_version=info.version,
        serial_number=info.gateway_id,
    )


class GroupEntity(I4TEntity):
    """An entity of a node group's device; it follows its group only."""

    def __init__(self, coordinator: I4TCoordinator, group_id: str, key: str) -> None:
        super().__init__(coordinator)
        self.group_id = group_id
        self._attr_unique_id = f"{coordinator.device_key('group', group_id)}-{key}"
        group = coordinator.data.groups[group_id]
        self._attr_device_info = DeviceInfo(
            identifiers={(DOMAIN, coordinator.device_key("group", group_id))},
            manufacturer=MANUFACTURER,
            model="Node group",
            name=group.name,
            via_device=(DOMAIN, coordinator.gateway_id),
        )

    @property
    def group(self) -> GroupState | None:
        return self.coordinator.data.groups.get(self.group_id)

    @property
    def available(self) -> bool:
        return super().available and self.group is not None

    async def async_added_to_hass(self) -> None:
        await super().async_added_to_hass()
        self.async_on_remove(
            self.coordinator.async_add_group_listener(
                self.group_id, self._handle_coordinator_update
            )
        )


class NodeEntity(I4TEntity):
    """An entity of a node's device; it follows its node only."""

    def __init__(self, coordinator: I4TCoordinator, address: str, key: str) -> None:
        super().__init__(coordinator)
        self.address = address
        self._attr_unique_id = f"{address}-{key}"
        self._attr_device_info = node_device_info(coordinator, coordinator.data.nodes[address])

    @property
    def node(self) -> NodeState | None:
        return self.coordinator.data.nodes.get(self.address)

    @property
    def available(self) -> bool:
        return super().available and self.node is not None

    async def async_added_to_hass(self) -> None:
        await super().async_added_to_hass()
        self.async_on_remove(
            self.coordinator.async_add_node_listener(self.address, self._handle_coordinator_update)
        )


def node_device_info(coordinator: I4TCoordinator, node: NodeState) -> DeviceInfo:
    """A node's device: linked to its group's device, or to the gateway when in no group."""
    via = (
        coordinator.device_key("group", node.group_id)
        if node.group_id is not None
        else coordinator.gateway_id
    )
    info = DeviceInfo(
        identifiers={(DOMAIN, node.address)},
        manufacturer=MANUFACTURER,
        model=NODE_MODELS.get(node.kind, node.kind),
        name=node.name,
        serial_number=node.address,
        via_device=(DOMAIN, via),
    )
    if node.mac is not None:
        info["connections"] = {(CONNECTION_BLUETOOTH, node.mac.lower())}
    return info


@callback
def async_track_new(
    entry: I4TConfigEntry,
    async_add_entities: AddConfigEntryEntitiesCallback,
    *,
    for_group: Callable[[str], Iterable[Entity]] = lambda _: (),
    for_node: Callable[[str], Iterable[Entity]] = lambda _: (),
) -> None:
    """Add the entities of every group and node now, and of each new one when it appears
    (the dynamic-devices rule); removed ones are forgotten, so that a re-created one returns."""
    coordinator = entry.runtime_data
    known_groups: set[str] = set()
    known_nodes: set[str] = set()

    @callback
    def add_new() -> None:
        groups, nodes = coordinator.data.groups.keys(), coordinator.data.nodes.keys()
        entities = [e for group_id in groups - known_groups for e in for_group(group_id)]
        entities += [e for address in nodes - known_nodes for e in for_node(address)]
        known_groups.clear()
        known_groups.update(groups)
        known_nodes.clear()
        known_nodes.update(nodes)
        if entities:
            async_add_entities(entities)

    add_new()
    entry.async_on_unload(coordinator.async_add_listener(add_new))
