"""Constants of the I4T integration."""

from __future__ import annotations

import logging
from typing import Final

DOMAIN: Final = "i4t"
LOGGER = logging.getLogger(__package__)

CONF_GATEWAY_ID: Final = "gateway_id"
CONF_BLE_BRIDGE: Final = "ble_bridge"
CONF_REMOTE_SCANNERS: Final = "remote_scanners"
CONF_TIMEOUT_FACTOR: Final = "timeout_factor"
CONF_QUORUM: Final = "quorum"
DEFAULT_TIMEOUT_FACTOR: Final = 3.0
SUBENTRY_GROUP: Final = "group"

# Quorum policies offered in the UI, as the gateway's group commands take them.
QUORUM_POLICIES: Final[dict[str, dict[str, object]]] = {
    "majority": {"kind": "majority", "value": 0},
    "all": {"kind": "percent", "value": 100},
    "any": {"kind": "count", "value": 1},
}
DEFAULT_QUORUM: Final = "majority"

# The gateway's local API (docs/API.md). Only major version 1 is understood.
API_VERSION: Final = 1
TOPIC_ROOT: Final = "i4t"
DISCOVERY_PREFIX: Final = f"{TOPIC_ROOT}/discovery"
ONLINE: Final = "online"
OFFLINE: Final = "offline"

# How long the user step listens for gateway announcements (retained, so they arrive at once).
SCAN_SECONDS: Final = 2.0
# How long set-up waits for the gateway's retained announcement before retrying later.
ANNOUNCEMENT_WAIT_SECONDS: Final = 10.0
# How long a request on the local API may take before it is reported as failed.
REQUEST_TIMEOUT_SECONDS: Final = 10.0

# Bus event for automations: {"device_id", "type", ...}.
EVENT_I4T: Final = f"{DOMAIN}_event"
