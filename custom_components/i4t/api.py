"""The gateway's local API as the integration reads it (docs/API.md, schemas in the add-on)."""

from __future__ import annotations

from dataclasses import dataclass
import json
import re
from typing import Any, Self

from .const import API_VERSION, DISCOVERY_PREFIX, TOPIC_ROOT

_GATEWAY_ID = re.compile(r"^[a-z0-9]{16,128}$")


@dataclass(frozen=True, slots=True)
class GatewayInfo:
    """A gateway's announcement: who it is and where its topics are."""

    gateway_id: str
    name: str
    version: str
    role: str

    @classmethod
    def from_payload(cls, payload: str | bytes | bytearray) -> Self | None:
        """Parse an announcement; None when it is not one this integration understands."""
        try:
            document: Any = json.loads(payload)
        except ValueError:
            return None
        if not isinstance(document, dict) or document.get("api") != API_VERSION:
            return None
        try:
            info = cls(
                gateway_id=document["id"],
                name=document["name"],
                version=document["version"],
                role=document["role"],
            )
        except KeyError:
            return None
        if not all(isinstance(value, str) for value in _values(info)):
            return None
        if not _GATEWAY_ID.match(info.gateway_id):
            return None
        return info


def discovery_topic(gateway_id: str) -> str:
    """Where a gateway keeps its retained announcement."""
    return f"{DISCOVERY_PREFIX}/{gateway_id}"


def availability_topic(gateway_id: str) -> str:
    """Where a gateway keeps its retained online/offline (also its last will)."""
    return f"{TOPIC_ROOT}/{gateway_id}/availability"


def _values(info: GatewayInfo) -> tuple[object, ...]:
    return (info.gateway_id, info.name, info.version, info.role)
