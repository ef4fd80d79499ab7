"""Things heard but not enrolled: one fixable repair issue per gateway, enrolled by its fix flow."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
import json
from pathlib import Path
import re
from typing import Any
from unittest.mock import patch

from aiohttp.test_utils import TestClient
from homeassistant.components.repairs import ConfirmRepairFlow, RepairsFlowManager
from homeassistant.components.repairs.const import DOMAIN as REPAIRS_DOMAIN
from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.helpers import issue_registry as ir
from homeassistant.helpers.translation import async_get_translations
from homeassistant.setup import async_setup_component
import pytest
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.i4t.const import DOMAIN
from custom_components.i4t.repairs import (
    ABORT_NO_CANDIDATES,
    ABORT_NOT_LOADED,
    EnrollThingsFlow,
    async_create_fix_flow,
    enrollable_candidates,
)

from .conftest import FakeGateway, load_json

NATIVE = load_json("candidates")["candidates"][0]
BTHOME = {
    "id": "A4:C1:38:12:34:56",
    "kind": "bthome",
    "first_seen": 1795249300.5,
    "last_seen": 1795249338.25,
    "heard": 12,
    "rssi": -67,
    "public_key": None,
    "hint": "ATC_123456",
}
BEACON = {
    "id": "D0:0D:00:00:BE:AC",
    "kind": "beacon",
    "first_seen": 1795249310.0,
    "last_seen": 1795249337.0,
    "heard": 4,
    "rssi": -81,
    "public_key": None,
    "hint": None,
}
BINDKEY = "00112233445566778899AABBCCDDEEFF"
BEACON_KEY = "ffeeddccbbaa99887766554433221100"

type ClientFactory = Callable[[], Coroutine[Any, Any, TestClient]]


def issue_id(entry: MockConfigEntry) -> str:
    return f"things_to_enroll_{entry.entry_id}"


async def publish(hass: HomeAssistant, gateway: FakeGateway, *candidates: dict[str, Any]) -> None:
    """The candidate list as the gateway publishes it (retained)."""
    document = {"candidates": list(candidates)}
    gateway.broker.set(f"{gateway.base}/state/candidates", json.dumps(document))
    await hass.async_block_till_done()


def enrolments(gateway: FakeGateway) -> list[dict[str, Any]]:
    return [
        {key: value for key, value in body.items() if key != "request_id"}
        for command, body in gateway.requests
        if command == "enroll"
    ]


@pytest.fixture
async def repairs(hass: HomeAssistant) -> RepairsFlowManager:
    """HA's repairs integration, whose flow manager runs fix flows as the UI does."""
    assert await async_setup_component(hass, REPAIRS_DOMAIN, {})
    manager: RepairsFlowManager = hass.data[REPAIRS_DOMAIN]["flow_manager"]
    return manager


async def start_fix(repairs: RepairsFlowManager, entry: MockConfigEntry) -> dict[str, Any]:
    result: dict[str, Any] = dict(
        await repairs.async_init(DOMAIN, data={"issue_id": issue_id(entry)})
    )
    return result


async def test_one_issue_follows_the_candidate_count(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    gateway: FakeGateway,
    issue_registry: ir.IssueRegistry,
) -> None:
    assert issue_registry.async_get_issue(DOMAIN, issue_id(loaded_entry)) is None
    await publish(hass, gateway, NATIVE)
    issue = issue_registry.async_get_issue(DOMAIN, issue_id(loaded_entry))
    assert issue is not None
    assert issue.is_fixable
    assert issue.severity is ir.IssueSeverity.WARNING
    assert issue.translation_key == "things_to_enroll"
    assert issue.translation_placeholders == {"count": "1", "name": loaded_entry.title}
    assert issue.data == {"entry_id": loaded_entry.entry_id}

    await publish(hass, gateway, NATIVE, BTHOME, BEACON)
    issue = issue_registry.async_get_issue(DOMAIN, issue_id(loaded_entry))
    assert issue is not None
    assert issue.translation_placeholders == {"count": "3", "name": loaded_entry.title}
    assert len([i for i in issue_registry.issues.values() if i.domain == DOMAIN]) == 1

    await publish(hass, gateway)
    assert issue_registry.async_get_issue(DOMAIN, issue_id(loaded_entry)) is None


async def test_unload_deletes_the_issue(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    gateway: FakeGateway,
    issue_registry: ir.IssueRegistry,
) -> None:
    await publish(hass, gateway, BTHOME)
    assert issue_registry.async_get_issue(DOMAIN, issue_id(loaded_entry)) is not None
    assert await hass.config_entries.async_unload(loaded_entry.entry_id)
    await hass.async_block_till_done()
    assert issue_registry.async_get_issue(DOMAIN, issue_id(loaded_entry)) is None


async def test_removing_the_entry_deletes_the_issue(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    gateway: FakeGateway,
    issue_registry: ir.IssueRegistry,
) -> None:
    await publish(hass, gateway, NATIVE)
    assert await hass.config_entries.async_remove(loaded_entry.entry_id)
    await hass.async_block_till_done()
    assert issue_registry.async_get_issue(DOMAIN, issue_id(loaded_entry)) is None


async def test_fix_flow_enrolls_native_bthome_and_beacon(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    gateway: FakeGateway,
    issue_registry: ir.IssueRegistry,
    repairs: RepairsFlowManager,
) -> None:
    await publish(hass, gateway, NATIVE, BTHOME, BEACON)
    result = await start_fix(repairs, loaded_entry)
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == "init"
    assert result["description_placeholders"] == {"count": "3", "name": loaded_entry.title}
    options = result["data_schema"].schema["things"].config["options"]
    # Most recently heard first.
    assert [option["value"] for option in options] == [BTHOME["id"], NATIVE["id"], BEACON["id"]]
    bthome_label = options[0]["label"]
    assert bthome_label.startswith("BTHome A4:C1:38:12:34:56 · -67 dBm · “ATC_123456” · 20")
    assert options[1]["label"].startswith(f"I4T {NATIVE['id'][:11]}… · ")
    assert "dBm" not in options[1]["label"]  # the recorded native candidate has no RSSI

    # Nothing chosen is an error on the list.
    result = await repairs.async_configure(result["flow_id"], {"things": [], "name": "Kitchen"})
    assert result["errors"] == {"things": "none_chosen"}
    result = await repairs.async_configure(
        result["flow_id"], {"things": [BTHOME["id"]], "name": "  "}
    )
    assert result["errors"] == {"name": "name_required"}

    result = await repairs.async_configure(
        result["flow_id"],
        {"things": [BTHOME["id"], NATIVE["id"], BEACON["id"]], "name": "Kitchen"},
    )
    # The native thing is enrolled with the public key it announced, before any key step.
    assert enrolments(gateway) == [
        {"kind": "native", "public_key": NATIVE["public_key"], "name": "Kitchen afnn"}
    ]
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == "bthome"
    assert result["description_placeholders"] == {
        "thing": bthome_label,
        "thing_name": "Kitchen 3456",
    }

    result = await repairs.async_configure(result["flow_id"], {"bindkey": "not a key"})
    assert result["errors"] == {"bindkey": "invalid_key"}
    result = await repairs.async_configure(result["flow_id"], {"bindkey": BINDKEY[:-1]})
    assert result["errors"] == {"bindkey": "invalid_key"}
    result = await repairs.async_configure(result["flow_id"], {"bindkey": f" {BINDKEY} "})
    assert result["step_id"] == "beacon"
    assert result["last_step"] is True

    result = await repairs.async_configure(result["flow_id"], {})
    assert result["errors"] == {"key": "key_required"}
    result = await repairs.async_configure(result["flow_id"], {"key": BEACON_KEY})
    assert result["type"] is FlowResultType.CREATE_ENTRY

    assert enrolments(gateway) == [
        {"kind": "native", "public_key": NATIVE["public_key"], "name": "Kitchen afnn"},
        {
            "kind": "bthome",
            "mac": BTHOME["id"],
            "name": "Kitchen 3456",
            "bindkey": BINDKEY.lower(),
        },
        {"kind": "beacon", "mac": BEACON["id"], "name": "Kitchen BEAC", "key": BEACON_KEY},
    ]
    # Finishing the flow deletes the issue; the gateway's new list decides what comes back.
    assert issue_registry.async_get_issue(DOMAIN, issue_id(loaded_entry)) is None
    await publish(hass, gateway)
    assert issue_registry.async_get_issue(DOMAIN, issue_id(loaded_entry)) is None


async def test_one_thing_takes_the_name_as_is_and_a_plain_bthome_needs_no_key(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    gateway: FakeGateway,
    issue_registry: ir.IssueRegistry,
    repairs: RepairsFlowManager,
) -> None:
    await publish(hass, gateway, BTHOME, NATIVE)
    result = await start_fix(repairs, loaded_entry)
    schema = result["data_schema"].schema
    name_key = next(key for key in schema if key == "name")
    assert name_key.default() == "BTHome sensor"
    result = await repairs.async_configure(
        result["flow_id"], {"things": [BTHOME["id"]], "name": "Porch"}
    )
    assert result["step_id"] == "bthome"
    result = await repairs.async_configure(result["flow_id"], {})
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert enrolments(gateway) == [{"kind": "bthome", "mac": BTHOME["id"], "name": "Porch"}]

    # The gateway republishes what is left: the issue is back with the new count.
    assert issue_registry.async_get_issue(DOMAIN, issue_id(loaded_entry)) is None
    await publish(hass, gateway, NATIVE)
    issue = issue_registry.async_get_issue(DOMAIN, issue_id(loaded_entry))
    assert issue is not None
    assert issue.translation_placeholders == {"count": "1", "name": loaded_entry.title}


async def test_gateway_refusals_are_form_errors_and_nothing_is_enrolled_twice(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    gateway: FakeGateway,
    repairs: RepairsFlowManager,
) -> None:
    second_native = {**NATIVE, "id": "i4tbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "public_key": "ab" * 32}
    await publish(hass, gateway, NATIVE, second_native, BTHOME)
    refusal = load_json("reply_error")
    result = await start_fix(repairs, loaded_entry)
    flow_id = result["flow_id"]

    # The first native thing goes in, the second is refused: the error shows on the list,
    # which no longer offers the one already enrolled.
    class RefuseSecond(dict[str, dict[str, Any]]):
        def get(self, command: str, default: Any = None) -> Any:
            if command == "enroll" and len(enrolments(gateway)) > 1:
                return {"ok": False, "error": refusal["error"]}
            return default

    gateway.answers = RefuseSecond()
    result = await repairs.async_configure(
        flow_id, {"things": [NATIVE["id"], second_native["id"]], "name": "Hall"}
    )
    assert result["step_id"] == "init"
    assert result["errors"] == {"base": "gateway_refused"}
    assert result["description_placeholders"] == {
        "count": "2",
        "name": loaded_entry.title,
        "code": "not_found",
        "message": "no group missing",
    }
    options = result["data_schema"].schema["things"].config["options"]
    assert [option["value"] for option in options] == [BTHOME["id"], second_native["id"]]

    # A refused BLE enrolment stays on its key step.
    gateway.answers = {"enroll": {"ok": False, "error": {"code": "invalid", "message": "bad"}}}
    result = await repairs.async_configure(flow_id, {"things": [BTHOME["id"]], "name": "Hall"})
    assert result["step_id"] == "bthome"
    assert result["description_placeholders"]["thing_name"] == "Hall"
    result = await repairs.async_configure(flow_id, {"bindkey": BINDKEY})
    assert result["step_id"] == "bthome"
    assert result["errors"] == {"base": "gateway_refused"}
    assert result["description_placeholders"]["code"] == "invalid"
    assert result["description_placeholders"]["message"] == "bad"

    gateway.answers = {}
    result = await repairs.async_configure(flow_id, {"bindkey": BINDKEY})
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert [body.get("public_key", body.get("mac")) for body in enrolments(gateway)] == [
        NATIVE["public_key"],
        second_native["public_key"],
        BTHOME["id"],
        BTHOME["id"],
    ]


async def test_a_gateway_that_does_not_answer_is_a_form_error(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    gateway: FakeGateway,
    repairs: RepairsFlowManager,
) -> None:
    await publish(hass, gateway, BEACON)
    result = await start_fix(repairs, loaded_entry)
    result = await repairs.async_configure(
        result["flow_id"], {"things": [BEACON["id"]], "name": "Gate"}
    )
    assert result["step_id"] == "beacon"
    # The reply goes to another request: the request times out.
    gateway.answers = {"enroll": {"request_id": "someone-else", "ok": True}}
    with patch("custom_components.i4t.const.REQUEST_TIMEOUT_SECONDS", 0.01):
        result = await repairs.async_configure(result["flow_id"], {"key": BEACON_KEY})
    assert result["step_id"] == "beacon"
    assert result["errors"] == {"base": "gateway_timeout"}


async def test_fix_flow_aborts_without_a_loaded_gateway_or_candidates(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    gateway: FakeGateway,
    repairs: RepairsFlowManager,
) -> None:
    await publish(hass, gateway, NATIVE, BTHOME)
    result = await start_fix(repairs, loaded_entry)
    # Another enrolment (an action, another flow) empties the list meanwhile; the issue goes,
    # an open flow that asks again finds nothing to offer.
    await publish(hass, gateway)
    result = await repairs.async_configure(result["flow_id"], {"things": [], "name": "x"})
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "no_candidates"

    await publish(hass, gateway, BTHOME)
    result = await start_fix(repairs, loaded_entry)
    result = await repairs.async_configure(
        result["flow_id"], {"things": [BTHOME["id"]], "name": "Shed"}
    )
    assert result["step_id"] == "bthome"
    issue = ir.async_get(hass).async_get_issue(DOMAIN, issue_id(loaded_entry))
    assert issue is not None
    assert await hass.config_entries.async_unload(loaded_entry.entry_id)
    await hass.async_block_till_done()
    assert loaded_entry.state is ConfigEntryState.NOT_LOADED
    result = await repairs.async_configure(result["flow_id"], {"bindkey": BINDKEY})
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "gateway_not_loaded"

    # A flow started for an issue of an entry that is gone aborts at once.
    flow = await async_create_fix_flow(hass, issue_id(loaded_entry), {"entry_id": "gone"})
    assert isinstance(flow, EnrollThingsFlow)
    flow.hass = hass
    result = dict(await flow.async_step_init())
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "gateway_not_loaded"


async def test_other_fixable_issues_get_a_plain_confirmation(hass: HomeAssistant) -> None:
    flow = await async_create_fix_flow(hass, "something_else", None)
    assert isinstance(flow, ConfirmRepairFlow)


async def test_the_fix_flow_works_over_the_frontends_api(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    gateway: FakeGateway,
    repairs: RepairsFlowManager,
    hass_client: ClientFactory,
) -> None:
    """The forms serialize as the UI receives them, and submitting over HTTP enrolls."""
    await publish(hass, gateway, NATIVE)
    client = await hass_client()
    response = await client.post(
        "/api/repairs/issues/fix", json={"handler": DOMAIN, "issue_id": issue_id(loaded_entry)}
    )
    assert response.status == 200
    form = await response.json()
    assert form["step_id"] == "init"
    assert [field["name"] for field in form["data_schema"]] == ["things", "name"]
    response = await client.post(
        f"/api/repairs/issues/fix/{form['flow_id']}",
        json={"things": [NATIVE["id"]], "name": "Desk"},
    )
    assert response.status == 200
    assert (await response.json())["type"] == "create_entry"
    assert enrolments(gateway) == [
        {"kind": "native", "public_key": NATIVE["public_key"], "name": "Desk"}
    ]


def test_unreadable_or_unenrollable_candidates_are_left_out() -> None:
    assert enrollable_candidates(
        [
            "not an object",
            {"id": "", "kind": "bthome"},
            {"id": "mqtt:plug", "kind": "mqtt"},
            {"id": "i4tnokey", "kind": "native", "public_key": None},
            {"id": "i4tshort", "kind": "native", "public_key": "ab"},
            {**BTHOME, "rssi": True, "last_seen": "yesterday", "hint": 5},
            BTHOME,  # the same MAC again: listed once, as last heard
        ]
    ) == enrollable_candidates([BTHOME])
    (thing,) = enrollable_candidates([{**BTHOME, "rssi": None, "last_seen": None, "hint": None}])
    assert thing.label == "BTHome A4:C1:38:12:34:56"


def test_fix_flow_translations_cover_its_steps_errors_and_aborts() -> None:
    """test_metadata checks issue keys; this checks what the fix flow shows."""
    root = Path(__file__).resolve().parents[2] / "custom_components" / "i4t"
    issue = json.loads((root / "translations" / "en.json").read_text())["issues"][
        "things_to_enroll"
    ]
    source = (root / "repairs.py").read_text()
    assert "description" not in issue  # a fixable issue describes itself in its flow
    assert set(issue["title"].split("{")[1:]) == {"name} (", "count})"}
    flow = issue["fix_flow"]
    fields = {"init": {"things", "name"}, "bthome": {"bindkey"}, "beacon": {"key"}}
    assert set(flow["step"]) == set(fields)
    for step_id, step in flow["step"].items():
        assert step["title"], step_id
        assert set(step["data"]) == set(step["data_description"]) == fields[step_id], step_id
        assert f'"{step_id}"' in source, step_id
    for error in flow["error"]:
        assert f'"{error}"' in source, error
    assert set(re.findall(r'errors\[[^]]+\] = "([a-z_]+)"', source)) <= set(flow["error"])
    assert set(flow["abort"]) == {ABORT_NOT_LOADED, ABORT_NO_CANDIDATES}


async def test_home_assistant_reads_the_fix_flow_translations(hass: HomeAssistant) -> None:
    """The keys the frontend asks for, as HA's translation helper flattens them."""
    strings = await async_get_translations(hass, "en", "issues", [DOMAIN])
    prefix = f"component.{DOMAIN}.issues.things_to_enroll"
    for key in (
        "title",
        "fix_flow.step.init.description",
        "fix_flow.step.init.data.things",
        "fix_flow.step.bthome.data_description.bindkey",
        "fix_flow.step.beacon.data.key",
        "fix_flow.error.gateway_refused",
        "fix_flow.abort.no_candidates",
    ):
        assert strings.get(f"{prefix}.{key}"), key
