"""The options flow and node groups as config subentries, in step with the gateway."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from homeassistant.config_entries import ConfigSubentry, ConfigSubentryData
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.helpers import device_registry as dr, entity_registry as er
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.i4t.const import DOMAIN

from .conftest import FakeGateway, load_json


async def test_options_apply_the_timeout_factor_on_the_gateway(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, gateway: FakeGateway
) -> None:
    result = await hass.config_entries.options.async_init(loaded_entry.entry_id)
    assert result["type"] is FlowResultType.FORM
    gateway.answers["configure"] = {"ok": True, "result": {"timeout_factor": 4.5}}
    result = await hass.config_entries.options.async_configure(
        result["flow_id"], {"timeout_factor": 4.5, "quorum": "all", "ble_bridge": True}
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert loaded_entry.options == {
        "timeout_factor": 4.5,
        "quorum": "all",
        "ble_bridge": True,
        "remote_scanners": True,
    }
    assert gateway.requests[-1][0] == "configure"
    assert gateway.requests[-1][1]["timeout_factor"] == 4.5


async def test_options_show_the_gateways_refusal(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, gateway: FakeGateway
) -> None:
    gateway.answers["configure"] = {"ok": False, "error": {"code": "invalid", "message": "no"}}
    result = await hass.config_entries.options.async_init(loaded_entry.entry_id)
    result = await hass.config_entries.options.async_configure(
        result["flow_id"], {"timeout_factor": 2.0, "quorum": "majority", "ble_bridge": True}
    )
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {"base": "cannot_apply"}


async def test_turning_the_ble_bridge_off_reloads_the_entry(
    hass: HomeAssistant, loaded_entry: MockConfigEntry
) -> None:
    result = await hass.config_entries.options.async_init(loaded_entry.entry_id)
    result = await hass.config_entries.options.async_configure(
        result["flow_id"], {"timeout_factor": 3.0, "quorum": "majority", "ble_bridge": False}
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    await hass.async_block_till_done()
    assert loaded_entry.runtime_data is not None
    assert loaded_entry.options["ble_bridge"] is False


async def test_existing_gateway_groups_get_subentries(
    hass: HomeAssistant, loaded_entry: MockConfigEntry
) -> None:
    group = load_json("group_healthy")
    subentries = list(loaded_entry.subentries.values())
    assert [(s.subentry_type, s.title, dict(s.data)) for s in subentries] == [
        ("group", group["name"], {"group_id": group["group_id"]})
    ]
    # The group's device and entities are listed under its subentry in the UI.
    await hass.async_block_till_done()
    key = f"{load_json('gateway_info')['id']}-group-{group['group_id']}"
    device = dr.async_get(hass).async_get_device(identifiers={(DOMAIN, key)})
    assert device is not None
    subentry_id = subentries[0].subentry_id
    assert device.config_entries_subentries[loaded_entry.entry_id] == {subentry_id}
    entities = er.async_entries_for_device(er.async_get(hass), device.id)
    assert entities
    assert {entity.config_subentry_id for entity in entities} == {subentry_id}


async def test_create_a_group_in_the_ui(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, gateway: FakeGateway
) -> None:
    healthy = load_json("node_healthy")
    free = {
        **healthy,
        "address": "i4taffreefreefreefreefreefreefr",
        "name": "Free",
        "group_id": None,
    }
    gateway.set_node(free)
    await hass.async_block_till_done()
    result = await hass.config_entries.subentries.async_init(
        (loaded_entry.entry_id, "group"), context={"source": "user"}
    )
    assert result["type"] is FlowResultType.FORM
    options = result["data_schema"].schema["members"].config["options"]
    # Only things in no other group can join.
    assert [option["value"] for option in options] == [free["address"]]

    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"],
        {
            "name": "Porch",
            "members": [free["address"]],
            "seeds": [free["address"]],
            "quorum": "any",
        },
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    command, body = gateway.requests[-1]
    assert command == "group_create"
    assert body["members"] == [{"address": free["address"], "role": "seed"}]
    assert body["quorum"] == {"kind": "count", "value": 1}
    titles = sorted(s.title for s in loaded_entry.subentries.values())
    assert titles == ["Greenhouse", "Porch"]
    # The gateway then publishes the group: it keeps its one subentry.
    group = {**load_json("group_healthy"), "group_id": body["group_id"], "name": "Porch"}
    gateway.set_group(group)
    await hass.async_block_till_done()
    assert sorted(s.title for s in loaded_entry.subentries.values()) == ["Greenhouse", "Porch"]


async def test_a_refused_group_shows_the_reason(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, gateway: FakeGateway
) -> None:
    gateway.answers["group_create"] = {
        "ok": False,
        "error": {"code": "conflict", "message": "taken"},
    }
    result = await hass.config_entries.subentries.async_init(
        (loaded_entry.entry_id, "group"), context={"source": "user"}
    )
    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"], {"name": "X", "members": [], "quorum": "majority"}
    )
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {"base": "gateway_refused"}
    assert result["description_placeholders"] == {"code": "conflict", "message": "taken"}


async def test_edit_a_group_in_the_ui(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, gateway: FakeGateway
) -> None:
    group = load_json("group_healthy")
    subentry_id = next(iter(loaded_entry.subentries))
    result = await loaded_entry.start_subentry_reconfigure_flow(hass, "group", subentry_id)
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == "reconfigure"
    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"],
        {
            "name": "Big greenhouse",
            "members": [load_json(name)["address"] for name in ("node_healthy", "node_broken")],
            "seeds": [],
            "quorum": "all",
        },
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "reconfigure_successful"
    command, body = gateway.requests[-1]
    assert command == "group_update"
    assert body["group_id"] == group["group_id"]
    assert body["quorum"] == {"kind": "percent", "value": 100}
    assert loaded_entry.subentries[subentry_id].title == "Big greenhouse"


async def test_deleting_the_subentry_deletes_the_group(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, gateway: FakeGateway
) -> None:
    group = load_json("group_healthy")
    subentry_id = next(iter(loaded_entry.subentries))
    assert hass.config_entries.async_remove_subentry(loaded_entry, subentry_id)
    await hass.async_block_till_done()
    assert ("group_delete", {**gateway.requests[-1][1], "group_id": group["group_id"]}) == (
        gateway.requests[-1]
    )
    # Until the gateway has deleted it, the group is not given a new subentry.
    gateway.broker.set(f"{gateway.base}/state/gateway", "{}")
    await hass.async_block_till_done()
    assert not loaded_entry.subentries
    gateway.clear_group(group["group_id"])
    await hass.async_block_till_done()
    assert not loaded_entry.subentries


async def test_a_group_deleted_elsewhere_loses_its_subentry(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, gateway: FakeGateway
) -> None:
    assert loaded_entry.subentries
    gateway.clear_group(load_json("group_healthy")["group_id"])
    await hass.async_block_till_done()
    assert not loaded_entry.subentries


async def test_group_flows_need_a_loaded_gateway(
    hass: HomeAssistant, broker: Any, gateway_entry: MockConfigEntry
) -> None:
    gateway_entry.add_to_hass(hass)
    result = await hass.config_entries.subentries.async_init(
        (gateway_entry.entry_id, "group"), context={"source": "user"}
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "gateway_not_loaded"
    subentry = ConfigSubentry(
        data=MappingProxyType({"group_id": "gone"}),
        subentry_type="group",
        title="Gone",
        unique_id="gone",
    )
    hass.config_entries.async_add_subentry(gateway_entry, subentry)
    result = await gateway_entry.start_subentry_reconfigure_flow(
        hass, "group", subentry.subentry_id
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "gateway_not_loaded"
    assert DOMAIN == "i4t"
    assert ConfigSubentryData  # the type exists in this HA version


async def test_options_without_a_new_factor_send_nothing(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, gateway: FakeGateway
) -> None:
    hass.config_entries.async_update_entry(
        loaded_entry, options={"timeout_factor": 3.0, "quorum": "majority", "ble_bridge": True}
    )
    sent = len(gateway.requests)
    result = await hass.config_entries.options.async_init(loaded_entry.entry_id)
    result = await hass.config_entries.options.async_configure(
        result["flow_id"], {"timeout_factor": 3.0, "quorum": "any", "ble_bridge": True}
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert len(gateway.requests) == sent


async def test_options_of_an_unloaded_gateway_cannot_apply(
    hass: HomeAssistant, broker: Any, gateway_entry: MockConfigEntry
) -> None:
    gateway_entry.add_to_hass(hass)
    result = await hass.config_entries.options.async_init(gateway_entry.entry_id)
    result = await hass.config_entries.options.async_configure(
        result["flow_id"], {"timeout_factor": 5.0, "quorum": "majority", "ble_bridge": True}
    )
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {"base": "cannot_apply"}


async def test_editing_a_group_the_gateway_lost_or_refuses(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, gateway: FakeGateway
) -> None:
    subentry_id = next(iter(loaded_entry.subentries))
    # A quorum this UI has no name for is shown as the default policy.
    group = {**load_json("group_healthy"), "quorum": {"kind": "count", "value": 2}}
    gateway.set_group(group)
    await hass.async_block_till_done()
    result = await loaded_entry.start_subentry_reconfigure_flow(hass, "group", subentry_id)
    assert result["type"] is FlowResultType.FORM
    gateway.answers["group_update"] = {
        "ok": False,
        "error": {"code": "conflict", "message": "in another group"},
    }
    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"],
        {"name": "G", "members": [load_json("node_healthy")["address"]], "quorum": "majority"},
    )
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {"base": "gateway_refused"}

    coordinator = loaded_entry.runtime_data
    coordinator.data.groups.pop(group["group_id"])
    result = await loaded_entry.start_subentry_reconfigure_flow(hass, "group", subentry_id)
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "group_not_found"
