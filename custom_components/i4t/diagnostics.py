"""Diagnostics: what the integration knows of its gateway, keys and secrets redacted."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from homeassistant.components.diagnostics import async_redact_data
from homeassistant.core import HomeAssistant

from .coordinator import I4TConfigEntry

TO_REDACT = {"public_key", "bindkey", "key", "token", "password", "mac"}


async def async_get_config_entry_diagnostics(
    hass: HomeAssistant, entry: I4TConfigEntry
) -> dict[str, Any]:
    """The entry, the gateway's announcement and state, its nodes, groups and candidates."""
    data = entry.runtime_data.data
    return async_redact_data(
        {
            "entry": {"data": dict(entry.data), "options": dict(entry.options)},
            "gateway": asdict(data.info),
            "online": data.online,
            "stats": data.stats,
            "nodes": {address: asdict(node) for address, node in data.nodes.items()},
            "groups": {group_id: asdict(group) for group_id, group in data.groups.items()},
            "candidates": data.candidates,
        },
        TO_REDACT,
    )
