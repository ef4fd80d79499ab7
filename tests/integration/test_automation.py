"""Device triggers, diagnostics and the unreachable-gateway repair."""

from __future__ import annotations

from datetime import timedelta
import json

from freezegun.api import FrozenDateTimeFactory
from homeassistant.components import automation
from homeassistant.components.device_automation import DeviceAutomationType
from homeassistant.core import HomeAssistant, ServiceCall
from homeassistant.helpers import device_registry as dr, issue_registry as ir
from homeassistant.setup import async_setup_component
from homeassistant.util import dt as dt_util
from pytest_homeassistant_custom_component.common import (
    MockConfigEntry,
    async_fire_time_changed,
    async_get_device_automations,
)

from custom_components.i4t.const import DOMAIN
from custom_components.i4t.diagnostics import async_get_config_entry_diagnostics

from .conftest import FakeGateway, load_json


def device_id(device_registry: dr.DeviceRegistry, ident: str) -> str:
    device = device_registry.async_get_device(identifiers={(DOMAIN, ident)})
    assert device is not None
    return device.id


async def test_node_and_group_devices_offer_their_triggers(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, device_registry: dr.DeviceRegistry
) -> None:
    node = device_id(device_registry, load_json("node_healthy")["address"])
    group_key = f"{load_json('gateway_info')['id']}-group-{load_json('group_healthy')['group_id']}"
    group = device_id(device_registry, group_key)
    gateway = device_id(device_registry, load_json("gateway_info")["id"])

    async def ours(device: str) -> set[str]:
        triggers = await async_get_device_automations(hass, DeviceAutomationType.TRIGGER, device)
        return {t["type"] for t in triggers if t["domain"] == DOMAIN}

    node_types, group_types, gateway_types = (
        await ours(node),
        await ours(group),
        await ours(gateway),
    )
    assert node_types == {"node_healthy", "node_broken", "node_dead"}
    assert "group_quorum_dead" in group_types
    assert gateway_types == set()


async def test_device_trigger_fires_an_automation(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    gateway: FakeGateway,
    device_registry: dr.DeviceRegistry,
    service_calls: list[ServiceCall],
) -> None:
    event = next(e for e in load_json("node_events")["events"] if e["new"] == "dead")
    node = device_id(device_registry, event["address"])
    assert await async_setup_component(
        hass,
        automation.DOMAIN,
        {
            automation.DOMAIN: [
                {
                    "trigger": {
                        "platform": "device",
                        "domain": DOMAIN,
                        "device_id": node,
                        "type": "node_dead",
                    },
                    "action": {"service": "test.automation", "data": {"which": "dead"}},
                },
                {
                    "trigger": {
                        "platform": "device",
                        "domain": DOMAIN,
                        "device_id": node,
                        "type": "node_broken",
                    },
                    "action": {"service": "test.automation", "data": {"which": "broken"}},
                },
            ]
        },
    )
    gateway.event("node", event)
    await hass.async_block_till_done()
    assert [call.data["which"] for call in service_calls] == ["dead"]


async def test_group_trigger_on_a_node_is_refused(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    device_registry: dr.DeviceRegistry,
) -> None:
    node = device_id(device_registry, load_json("node_healthy")["address"])
    assert await async_setup_component(
        hass,
        automation.DOMAIN,
        {
            automation.DOMAIN: {
                "alias": "wrong",
                "trigger": {
                    "platform": "device",
                    "domain": DOMAIN,
                    "device_id": node,
                    "type": "group_dead",
                },
                "action": {"service": "test.automation"},
            }
        },
    )
    state = hass.states.get("automation.wrong")
    assert state is None or state.state == "unavailable"


async def test_diagnostics_redact_keys(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, gateway: FakeGateway
) -> None:
    candidates = load_json("candidates")
    gateway.broker.set(f"{gateway.base}/state/candidates", json.dumps(candidates))
    await hass.async_block_till_done()
    diagnostics = await async_get_config_entry_diagnostics(hass, loaded_entry)
    assert diagnostics["gateway"]["gateway_id"] == load_json("gateway_info")["id"]
    assert set(diagnostics["nodes"]) == {
        load_json("node_healthy")["address"],
        load_json("node_broken")["address"],
    }
    assert diagnostics["candidates"][0]["public_key"] == "**REDACTED**"
    assert diagnostics["online"] is True


async def test_long_outage_raises_a_repair_issue_that_clears(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    gateway: FakeGateway,
    issue_registry: ir.IssueRegistry,
    freezer: FrozenDateTimeFactory,
) -> None:
    issue_id = f"gateway_unreachable_{loaded_entry.entry_id}"
    gateway.broker.set(f"{gateway.base}/availability", "offline")
    await hass.async_block_till_done()
    freezer.tick(timedelta(minutes=29))
    async_fire_time_changed(hass)
    await hass.async_block_till_done()
    assert issue_registry.async_get_issue(DOMAIN, issue_id) is None
    freezer.tick(timedelta(minutes=2))
    async_fire_time_changed(hass)
    await hass.async_block_till_done()
    assert issue_registry.async_get_issue(DOMAIN, issue_id) is not None
    gateway.broker.set(f"{gateway.base}/availability", "online")
    await hass.async_block_till_done()
    assert issue_registry.async_get_issue(DOMAIN, issue_id) is None


async def test_router_token_expiry_raises_a_repair_issue(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    gateway: FakeGateway,
    issue_registry: ir.IssueRegistry,
) -> None:
    issue_id = f"router_token_expiring_{loaded_entry.entry_id}"
    stats = load_json("gateway_state")

    def uplink_token(expires: float | None) -> None:
        uplink = {"connected": True, "router": None, "token_expires": expires}
        gateway.broker.set(f"{gateway.base}/state/gateway", json.dumps({**stats, "uplink": uplink}))

    now = dt_util.utcnow().timestamp()
    uplink_token(now + 60 * 86400)
    await hass.async_block_till_done()
    assert issue_registry.async_get_issue(DOMAIN, issue_id) is None
    uplink_token(now + 3 * 86400 + 60)
    await hass.async_block_till_done()
    issue = issue_registry.async_get_issue(DOMAIN, issue_id)
    assert issue is not None
    assert issue.severity is ir.IssueSeverity.WARNING
    assert issue.translation_placeholders == {"name": loaded_entry.title, "days": "3"}
    uplink_token(now - 10)
    await hass.async_block_till_done()
    issue = issue_registry.async_get_issue(DOMAIN, issue_id)
    assert issue is not None
    assert issue.severity is ir.IssueSeverity.ERROR
    uplink_token(None)  # a new token the gateway cannot read, or no router: no warning
    await hass.async_block_till_done()
    assert issue_registry.async_get_issue(DOMAIN, issue_id) is None
