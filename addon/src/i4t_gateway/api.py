"""The local MQTT API between the gateway and its clients (the HA integration), as in docs/API.md.

Every topic of one gateway lives under ``i4t/<gateway id>/``; the gateway id is its address in
text form, which is safe in topics. Each gateway also keeps one retained announcement under
``i4t/discovery/<gateway id>`` that the integration matches for discovery. Payloads are JSON
and each has a JSON schema in ``schemas/``; the tests validate what the server publishes
against them. Requests are parsed in commands.py.
"""

from __future__ import annotations

from dataclasses import dataclass
import json
from typing import Any

API_VERSION = 1
TOPIC_ROOT = "i4t"
DISCOVERY_PREFIX = f"{TOPIC_ROOT}/discovery"
THING_PREFIX = f"{TOPIC_ROOT}/thing"
ONLINE = b"online"
OFFLINE = b"offline"
CLEARED = b""  # an empty retained payload removes the retained state of a topic


@dataclass(frozen=True, slots=True)
class GatewayTopics:
    """The topics of one gateway."""

    gateway_id: str

    @property
    def base(self) -> str:
        return f"{TOPIC_ROOT}/{self.gateway_id}"

    @property
    def discovery(self) -> str:
        return f"{DISCOVERY_PREFIX}/{self.gateway_id}"

    @property
    def availability(self) -> str:
        return f"{self.base}/availability"

    @property
    def gateway_state(self) -> str:
        return f"{self.base}/state/gateway"

    def node_state(self, address: str) -> str:
        return f"{self.base}/state/node/{address}"

    def group_state(self, group_id: str) -> str:
        return f"{self.base}/state/group/{group_id}"

    @property
    def candidates(self) -> str:
        return f"{self.base}/state/candidates"

    @property
    def node_event(self) -> str:
        return f"{self.base}/event/node"

    @property
    def group_event(self) -> str:
        return f"{self.base}/event/group"

    @property
    def commands(self) -> str:
        """Filter of the request topics: ``<base>/cmd/<command>``."""
        return f"{self.base}/cmd/+"

    def reply(self, request_id: str) -> str:
        return f"{self.base}/reply/{request_id}"


def thing_up(address: str) -> str:
    """Where an I4T-native Wi-Fi thing publishes its signed packets."""
    return f"{THING_PREFIX}/{address}/up"


def thing_down(address: str) -> str:
    """Where the gateway sends signed packets (commands, acks, requests) to a native thing."""
    return f"{THING_PREFIX}/{address}/down"


THING_UP_FILTER = f"{THING_PREFIX}/+/up"


def gateway_info(
    *, gateway_id: str, name: str, version: str, role: str, started_at: float
) -> dict[str, Any]:
    """The retained announcement of a gateway (schema: gateway_info.schema.json)."""
    topics = GatewayTopics(gateway_id)
    return {
        "api": API_VERSION,
        "id": gateway_id,
        "name": name,
        "version": version,
        "role": role,
        "base_topic": topics.base,
        "availability_topic": topics.availability,
        "started_at": round(started_at, 3),
    }


def encode(payload: dict[str, Any]) -> bytes:
    """Compact JSON in UTF-8, the encoding of every JSON payload of the API."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
