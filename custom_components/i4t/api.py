"""The gateway's local API as the integration reads it (docs/API.md, schemas in the add-on).

Parsing is tolerant in one direction only: unknown fields are ignored (the API may grow), but
a payload without what the integration needs is refused as a whole (None), never half-read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import json
import re
from typing import Any, Self

from .const import API_VERSION, DISCOVERY_PREFIX, TOPIC_ROOT

_GATEWAY_ID = re.compile(r"^[a-z0-9]{16,128}$")
NODE_STATUSES = ("healthy", "broken", "dead")
GROUP_STATUSES = ("healthy", "partially_broken", "quorum_broken", "quorum_dead", "dead")


def _document(payload: str | bytes | bytearray) -> dict[str, Any] | None:
    try:
        document = json.loads(payload)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def _text(document: dict[str, Any], key: str) -> str:
    value = document[key]
    if not isinstance(value, str):
        raise TypeError(key)
    return value


def _optional[T](document: dict[str, Any], key: str, kind: type[T]) -> T | None:
    value = document.get(key)
    if value is None:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # type: ignore[return-value]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise TypeError(key)
    return value


@dataclass(frozen=True, slots=True)
class GatewayInfo:
    """A gateway's announcement: who it is."""

    gateway_id: str
    name: str
    version: str
    role: str

    @classmethod
    def from_payload(cls, payload: str | bytes | bytearray) -> Self | None:
        """Parse an announcement; None when it is not one this integration understands."""
        document = _document(payload)
        if document is None or document.get("api") != API_VERSION:
            return None
        try:
            info = cls(
                _text(document, "id"),
                _text(document, "name"),
                _text(document, "version"),
                _text(document, "role"),
            )
        except (KeyError, TypeError):
            return None
        return info if _GATEWAY_ID.match(info.gateway_id) else None


@dataclass(frozen=True, slots=True)
class Reading:
    value: float | int | str | bool | None
    unit: str | None
    device_class: str | None
    at: float


@dataclass(frozen=True, slots=True)
class NodeState:
    """An enrolled thing as the gateway shows it (node_state.schema.json)."""

    address: str
    name: str
    kind: str
    mac: str | None
    status: str | None
    muted: bool
    group_id: str | None
    node_id: str | None
    role: str | None
    node_class: str | None
    last_seen: float | None
    interval: float | None
    timeout: float | None
    rssi: int | None
    readings: dict[str, Reading] = field(default_factory=dict)

    @classmethod
    def from_payload(cls, payload: str | bytes | bytearray) -> Self | None:
        document = _document(payload)
        if document is None:
            return None
        try:
            status = _optional(document, "status", str)
            if status is not None and status not in NODE_STATUSES:
                return None
            return cls(
                address=_text(document, "address"),
                name=_text(document, "name"),
                kind=_text(document, "kind"),
                mac=_optional(document, "mac", str),
                status=status,
                muted=bool(document.get("muted", False)),
                group_id=_optional(document, "group_id", str),
                node_id=_optional(document, "node_id", str),
                role=_optional(document, "role", str),
                node_class=_optional(document, "class", str),
                last_seen=_optional(document, "last_seen", float),
                interval=_optional(document, "interval", float),
                timeout=_optional(document, "timeout", float),
                rssi=_optional(document, "rssi", int),
                readings=_readings(document.get("readings", {})),
            )
        except (KeyError, TypeError):
            return None


def _readings(value: object) -> dict[str, Reading]:
    if not isinstance(value, dict):
        raise TypeError("readings")
    readings = {}
    for name, item in value.items():
        if not isinstance(item, dict):
            raise TypeError("reading")
        raw = item.get("value")
        if raw is not None and not isinstance(raw, float | int | str | bool):
            raise TypeError("reading value")
        readings[str(name)] = Reading(
            raw,
            _optional(item, "unit", str),
            _optional(item, "device_class", str),
            _optional(item, "at", float) or 0.0,
        )
    return readings


@dataclass(frozen=True, slots=True)
class GroupState:
    """A node group as the gateway shows it (group_state.schema.json)."""

    group_id: str
    name: str
    status: str
    response: str
    healthy: int
    broken: int
    dead: int
    members: tuple[str, ...]
    quorum_kind: str
    quorum_value: int
    quorum_size: int
    muted: bool

    @classmethod
    def from_payload(cls, payload: str | bytes | bytearray) -> Self | None:
        document = _document(payload)
        if document is None:
            return None
        try:
            status = _text(document, "status")
            quorum = document["quorum"]
            members = document["members"]
            if status not in GROUP_STATUSES or not isinstance(quorum, dict):
                return None
            if not isinstance(members, list):
                return None
            return cls(
                group_id=_text(document, "group_id"),
                name=_text(document, "name"),
                status=status,
                response=_text(document, "response"),
                healthy=int(document["healthy"]),
                broken=int(document["broken"]),
                dead=int(document["dead"]),
                members=tuple(_text(m, "address") for m in members),
                quorum_kind=_text(quorum, "kind"),
                quorum_value=int(quorum.get("value", 0)),
                quorum_size=int(document["quorum_size"]),
                muted=bool(document.get("muted", False)),
            )
        except (KeyError, TypeError, ValueError):
            return None


def parse_json(payload: str | bytes | bytearray) -> dict[str, Any] | None:
    """A JSON object payload, or None."""
    return _document(payload)


def discovery_topic(gateway_id: str) -> str:
    """Where a gateway keeps its retained announcement."""
    return f"{DISCOVERY_PREFIX}/{gateway_id}"


def base_topic(gateway_id: str) -> str:
    """The prefix of every other topic of a gateway."""
    return f"{TOPIC_ROOT}/{gateway_id}"


def availability_topic(gateway_id: str) -> str:
    """Where a gateway keeps its retained online/offline (also its last will)."""
    return f"{base_topic(gateway_id)}/availability"
