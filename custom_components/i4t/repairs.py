"""Repair issues the user can act on: a gateway that has been unreachable for long."""

from __future__ import annotations

from datetime import timedelta

from homeassistant.core import CALLBACK_TYPE, HomeAssistant, callback
from homeassistant.helpers import issue_registry as ir
from homeassistant.helpers.event import async_call_later

from .const import DOMAIN
from .coordinator import I4TConfigEntry

UNREACHABLE_AFTER = timedelta(minutes=30)


def _issue_id(entry: I4TConfigEntry) -> str:
    return f"gateway_unreachable_{entry.entry_id}"


@callback
def async_track_gateway_reachability(hass: HomeAssistant, entry: I4TConfigEntry) -> CALLBACK_TYPE:
    """Raise a repair issue when the gateway stays offline for UNREACHABLE_AFTER; clear it
    when it is back. Returns the function that stops tracking."""
    coordinator = entry.runtime_data
    pending: CALLBACK_TYPE | None = None

    @callback
    def raise_issue(_now: object) -> None:
        nonlocal pending
        pending = None
        ir.async_create_issue(
            hass,
            DOMAIN,
            _issue_id(entry),
            is_fixable=False,
            severity=ir.IssueSeverity.ERROR,
            translation_key="gateway_unreachable",
            translation_placeholders={
                "name": entry.title,
                "minutes": str(int(UNREACHABLE_AFTER.total_seconds() // 60)),
            },
        )

    @callback
    def follow() -> None:
        nonlocal pending
        if coordinator.data.online:
            if pending is not None:
                pending()
                pending = None
            ir.async_delete_issue(hass, DOMAIN, _issue_id(entry))
        elif pending is None:
            pending = async_call_later(hass, UNREACHABLE_AFTER, raise_issue)

    @callback
    def stop() -> None:
        if pending is not None:
            pending()
        remove_listener()

    remove_listener = coordinator.async_add_listener(follow)
    follow()
    return stop
