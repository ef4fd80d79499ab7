"""Sensors: the gateway's counters, each group's status and counts, each node's status,
timing and readings. Entities appear as nodes, groups and readings appear."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from homeassistant.components.sensor import (
    SensorDeviceClass,
    SensorEntity,
    SensorEntityDescription,
    SensorStateClass,
)
from homeassistant.const import (
    SIGNAL_STRENGTH_DECIBELS_MILLIWATT,
    EntityCategory,
    UnitOfTime,
)
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback
from homeassistant.util import dt as dt_util

from .api import GROUP_STATUSES, NODE_STATUSES, GroupState, NodeState
from .coordinator import I4TConfigEntry, I4TCoordinator
from .entity import GatewayEntity, GroupEntity, NodeEntity, async_track_new

PARALLEL_UPDATES = 0

# Readings without a device class get one from their unit where that is unambiguous.
_CLASS_BY_UNIT: dict[str, SensorDeviceClass] = {
    "°C": SensorDeviceClass.TEMPERATURE,
    "°F": SensorDeviceClass.TEMPERATURE,
    "hPa": SensorDeviceClass.ATMOSPHERIC_PRESSURE,
    "lx": SensorDeviceClass.ILLUMINANCE,
    "V": SensorDeviceClass.VOLTAGE,
    "mV": SensorDeviceClass.VOLTAGE,
    "A": SensorDeviceClass.CURRENT,
    "W": SensorDeviceClass.POWER,
    "kWh": SensorDeviceClass.ENERGY,
    "Wh": SensorDeviceClass.ENERGY,
    "dBm": SensorDeviceClass.SIGNAL_STRENGTH,
}
_CLASS_BY_NAME: dict[str, SensorDeviceClass] = {
    "humidity": SensorDeviceClass.HUMIDITY,
    "moisture": SensorDeviceClass.MOISTURE,
    "battery": SensorDeviceClass.BATTERY,
    "co2": SensorDeviceClass.CO2,
    "pm25": SensorDeviceClass.PM25,
    "pm10": SensorDeviceClass.PM10,
}
_DEVICE_CLASSES = {member.value for member in SensorDeviceClass}


@dataclass(frozen=True, kw_only=True)
class GatewaySensorDescription(SensorEntityDescription):
    value: Callable[[dict[str, Any]], Any]


def _uplink(stats: dict[str, Any], key: str) -> Any:
    uplink = stats.get("uplink")
    return uplink.get(key) if isinstance(uplink, dict) else None


def _packets(stats: dict[str, Any], key: str) -> Any:
    packets = stats.get("packets")
    return packets.get(key) if isinstance(packets, dict) else None


GATEWAY_SENSORS = (
    GatewaySensorDescription(
        key="nodes",
        translation_key="nodes",
        state_class=SensorStateClass.MEASUREMENT,
        value=lambda stats: stats.get("nodes"),
    ),
    GatewaySensorDescription(
        key="candidates",
        translation_key="candidates",
        entity_category=EntityCategory.DIAGNOSTIC,
        value=lambda stats: stats.get("candidates"),
    ),
    GatewaySensorDescription(
        key="packets_received",
        translation_key="packets_received",
        state_class=SensorStateClass.TOTAL_INCREASING,
        entity_category=EntityCategory.DIAGNOSTIC,
        value=lambda stats: _packets(stats, "received"),
    ),
    GatewaySensorDescription(
        key="queue_depth",
        translation_key="queue_depth",
        state_class=SensorStateClass.MEASUREMENT,
        entity_category=EntityCategory.DIAGNOSTIC,
        value=lambda stats: _uplink(stats, "queued"),
    ),
    GatewaySensorDescription(
        key="packets_forwarded",
        translation_key="packets_forwarded",
        state_class=SensorStateClass.TOTAL_INCREASING,
        entity_category=EntityCategory.DIAGNOSTIC,
        value=lambda stats: _uplink(stats, "forwarded"),
    ),
    GatewaySensorDescription(
        key="peers",
        translation_key="peers",
        state_class=SensorStateClass.MEASUREMENT,
        entity_category=EntityCategory.DIAGNOSTIC,
        value=lambda stats: stats.get("peers"),
    ),
    GatewaySensorDescription(
        key="region",
        translation_key="region",
        entity_category=EntityCategory.DIAGNOSTIC,
        # A region is known by its router: the router's address (docs/ROUTER.md).
        value=lambda stats: _uplink(stats, "router"),
    ),
)


async def async_setup_entry(
    hass: HomeAssistant,
    entry: I4TConfigEntry,
    async_add_entities: AddConfigEntryEntitiesCallback,
) -> None:
    """Add the gateway's sensors now, and those of nodes, groups and readings as they appear."""
    coordinator = entry.runtime_data
    async_add_entities(GatewaySensor(coordinator, description) for description in GATEWAY_SENSORS)

    def node_sensors(address: str) -> list[SensorEntity]:
        # Readings come and go with the node's reports: follow this node for new ones.
        known: set[str] = set()

        @callback
        def add_readings() -> None:
            node = coordinator.data.nodes.get(address)
            if node is not None and (new := _new_readings(coordinator, node, known)):
                async_add_entities(new)

        entry.async_on_unload(coordinator.async_add_node_listener(address, add_readings))
        node = coordinator.data.nodes[address]
        return [*_node_sensors(coordinator, address), *_new_readings(coordinator, node, known)]

    async_track_new(
        entry,
        async_add_entities,
        for_group=lambda group_id: _group_sensors(coordinator, group_id),
        for_node=node_sensors,
    )


@dataclass(frozen=True, kw_only=True)
class GroupSensorDescription(SensorEntityDescription):
    value: Callable[[GroupState], Any]


@dataclass(frozen=True, kw_only=True)
class NodeSensorDescription(SensorEntityDescription):
    value: Callable[[NodeState], Any]


def _member_count(status: str) -> Callable[[GroupState], int]:
    return lambda group: int(getattr(group, status))


GROUP_SENSORS = (
    GroupSensorDescription(
        key="status",
        translation_key="group_status",
        device_class=SensorDeviceClass.ENUM,
        options=list(GROUP_STATUSES),
        value=lambda group: group.status,
    ),
    *(
        GroupSensorDescription(
            key=f"{count}_members",
            translation_key=f"{count}_members",
            state_class=SensorStateClass.MEASUREMENT,
            value=_member_count(count),
        )
        for count in ("healthy", "broken", "dead")
    ),
)
NODE_SENSORS = (
    NodeSensorDescription(
        key="status",
        translation_key="node_status",
        device_class=SensorDeviceClass.ENUM,
        options=list(NODE_STATUSES),
        value=lambda node: node.status,
    ),
    NodeSensorDescription(
        key="last_seen",
        translation_key="last_seen",
        device_class=SensorDeviceClass.TIMESTAMP,
        value=lambda node: (
            None if node.last_seen is None else dt_util.utc_from_timestamp(node.last_seen)
        ),
    ),
    NodeSensorDescription(
        key="interval",
        translation_key="interval",
        device_class=SensorDeviceClass.DURATION,
        native_unit_of_measurement=UnitOfTime.SECONDS,
        entity_category=EntityCategory.DIAGNOSTIC,
        suggested_display_precision=1,
        value=lambda node: node.interval,
    ),
    NodeSensorDescription(
        key="rssi",
        translation_key="rssi",
        device_class=SensorDeviceClass.SIGNAL_STRENGTH,
        native_unit_of_measurement=SIGNAL_STRENGTH_DECIBELS_MILLIWATT,
        state_class=SensorStateClass.MEASUREMENT,
        entity_category=EntityCategory.DIAGNOSTIC,
        entity_registry_enabled_default=False,
        value=lambda node: node.rssi,
    ),
)


def _group_sensors(coordinator: I4TCoordinator, group_id: str) -> list[SensorEntity]:
    return [GroupSensor(coordinator, group_id, description) for description in GROUP_SENSORS]


def _node_sensors(coordinator: I4TCoordinator, address: str) -> list[SensorEntity]:
    return [NodeSensor(coordinator, address, description) for description in NODE_SENSORS]


def _new_readings(
    coordinator: I4TCoordinator, node: NodeState, known: set[str]
) -> list[SensorEntity]:
    new = sorted(node.readings.keys() - known)
    known.update(new)
    return [ReadingSensor(coordinator, node.address, name) for name in new]


class GatewaySensor(GatewayEntity, SensorEntity):
    """A counter or figure of the gateway."""

    entity_description: GatewaySensorDescription

    def __init__(self, coordinator: I4TCoordinator, description: GatewaySensorDescription) -> None:
        super().__init__(coordinator, description.key)
        self.entity_description = description

    @property
    def native_value(self) -> Any:
        return self.entity_description.value(self.coordinator.data.stats)


class GroupSensor(GroupEntity, SensorEntity):
    """A figure of a node group: its IINP status, or how many members are in one state."""

    entity_description: GroupSensorDescription

    def __init__(
        self, coordinator: I4TCoordinator, group_id: str, description: GroupSensorDescription
    ) -> None:
        super().__init__(coordinator, group_id, description.key)
        self.entity_description = description

    @property
    def native_value(self) -> Any:
        group = self.group
        return None if group is None else self.entity_description.value(group)

    @property
    def extra_state_attributes(self) -> dict[str, Any] | None:
        group = self.group
        if group is None or self.entity_description.key != "status":
            return None
        return {"quorum": group.quorum_size, "response": group.response, "muted": group.muted}


class NodeSensor(NodeEntity, SensorEntity):
    """A figure of a node: its status (unknown until first heard), when it was last heard,
    its learned reporting interval, the signal strength of its last advert."""

    entity_description: NodeSensorDescription

    def __init__(
        self, coordinator: I4TCoordinator, address: str, description: NodeSensorDescription
    ) -> None:
        super().__init__(coordinator, address, description.key)
        self.entity_description = description

    @property
    def native_value(self) -> Any:
        node = self.node
        return None if node is None else self.entity_description.value(node)


class ReadingSensor(NodeEntity, SensorEntity):
    """One reading of a node. BROKEN keeps it visible; DEAD makes it unavailable."""

    def __init__(self, coordinator: I4TCoordinator, address: str, name: str) -> None:
        super().__init__(coordinator, address, f"reading-{name}")
        self.reading_name = name
        self._attr_name = name.replace("_", " ").capitalize()
        reading = coordinator.data.nodes[address].readings[name]
        self._attr_native_unit_of_measurement = reading.unit
        self._attr_device_class = _device_class(name, reading.device_class, reading.unit)
        if isinstance(reading.value, int | float) and not isinstance(reading.value, bool):
            self._attr_state_class = SensorStateClass.MEASUREMENT

    @property
    def available(self) -> bool:
        node = self.node
        return (
            super().available
            and node is not None
            and node.status != "dead"
            and self.reading_name in node.readings
        )

    @property
    def native_value(self) -> Any:
        node = self.node
        if node is None or self.reading_name not in node.readings:
            return None
        return node.readings[self.reading_name].value


def _device_class(name: str, declared: str | None, unit: str | None) -> SensorDeviceClass | None:
    if declared in _DEVICE_CLASSES:
        return SensorDeviceClass(declared)
    if unit in _CLASS_BY_UNIT:
        return _CLASS_BY_UNIT[unit]
    if unit == "%":
        return _CLASS_BY_NAME.get(name.lower())
    return _CLASS_BY_NAME.get(name.lower()) if name.lower() in ("co2", "pm25", "pm10") else None
