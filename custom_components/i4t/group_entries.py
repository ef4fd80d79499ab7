"""Node groups as config subentries, kept in step with the gateway's groups.

- A subentry the user deletes deletes its group on the gateway.
- A group the gateway has without a subentry (made by another client, or before this entry
  existed) gets one, so that every group can be edited and deleted in the UI.
- A group the gateway deletes (its retained state cleared) loses its subentry.
"""

from __future__ import annotations

from types import MappingProxyType

from homeassistant.config_entries import ConfigSubentry
from homeassistant.core import HomeAssistant, callback

from .const import LOGGER, SUBENTRY_GROUP
from .coordinator import GatewayRequestError, I4TConfigEntry
from .group_state import GroupEntries

CONF_GROUP_ID = "group_id"


def _subentry_groups(entry: I4TConfigEntry) -> dict[str, str]:
    """Group id -> subentry id."""
    return {
        str(subentry.data[CONF_GROUP_ID]): subentry_id
        for subentry_id, subentry in entry.subentries.items()
        if subentry.subentry_type == SUBENTRY_GROUP and CONF_GROUP_ID in subentry.data
    }


@callback
def async_entry_updated(hass: HomeAssistant, entry: I4TConfigEntry, state: GroupEntries) -> None:
    """Subentries changed: delete on the gateway the groups whose subentry the user deleted."""
    current = set(_subentry_groups(entry))
    coordinator = entry.runtime_data
    for group_id in state.subentries - current:
        if group_id in coordinator.data.groups and group_id not in state.deleting:
            state.deleting.add(group_id)
            entry.async_create_background_task(
                hass, _delete_group(entry, group_id, state), f"i4t-delete-group-{group_id}"
            )
    state.subentries = current


async def _delete_group(entry: I4TConfigEntry, group_id: str, state: GroupEntries) -> None:
    try:
        await entry.runtime_data.async_request("group_delete", group_id=group_id)
    except GatewayRequestError as err:
        state.deleting.discard(group_id)
        LOGGER.warning("the gateway did not delete node group %s: %s", group_id, err)


@callback
def async_gateway_changed(hass: HomeAssistant, entry: I4TConfigEntry, state: GroupEntries) -> None:
    """The gateway's groups changed: give new ones a subentry, drop those of deleted ones."""
    groups = entry.runtime_data.data.groups
    by_group = _subentry_groups(entry)
    for group_id in state.gateway_groups - groups.keys():
        state.deleting.discard(group_id)
        state.creating.discard(group_id)
        if group_id in by_group:
            state.subentries.discard(group_id)
            hass.config_entries.async_remove_subentry(entry, by_group[group_id])
    for group_id, group in groups.items():
        if group_id not in by_group and group_id not in state.deleting | state.creating:
            state.subentries.add(group_id)
            hass.config_entries.async_add_subentry(
                entry,
                ConfigSubentry(
                    data=MappingProxyType({CONF_GROUP_ID: group_id}),
                    subentry_type=SUBENTRY_GROUP,
                    title=group.name,
                    unique_id=group_id,
                ),
            )
    state.gateway_groups = set(groups)
