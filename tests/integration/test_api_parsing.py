"""The integration's reading of the API: whole payloads or nothing, never half-read."""

from __future__ import annotations

import json
from typing import Any

from homeassistant.core import HomeAssistant
import pytest
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.i4t.api import GatewayInfo, GroupState, NodeState

from .conftest import FakeGateway, load_json


def changed(document: dict[str, Any], **changes: Any) -> str:
    return json.dumps({**document, **changes})


@pytest.mark.parametrize(
    "payload",
    [
        "not json",
        "[]",
        changed(load_json("node_healthy"), status="sleeping"),
        changed(load_json("node_healthy"), name=5),
        changed(load_json("node_healthy"), last_seen="yesterday"),
        changed(load_json("node_healthy"), rssi=True),
        changed(load_json("node_healthy"), readings=[]),
        changed(load_json("node_healthy"), readings={"t": 5}),
        changed(load_json("node_healthy"), readings={"t": {"value": [1], "at": 1}}),
        json.dumps({"address": "x"}),
    ],
)
def test_unreadable_node_states_are_refused(payload: str) -> None:
    assert NodeState.from_payload(payload) is None


@pytest.mark.parametrize(
    "payload",
    [
        "{",
        changed(load_json("group_healthy"), status="fine"),
        changed(load_json("group_healthy"), quorum=3),
        changed(load_json("group_healthy"), members={}),
        changed(load_json("group_healthy"), healthy="many"),
        json.dumps({"group_id": "g"}),
    ],
)
def test_unreadable_group_states_are_refused(payload: str) -> None:
    assert GroupState.from_payload(payload) is None


def test_recorded_payloads_parse_whole() -> None:
    node = NodeState.from_payload(json.dumps(load_json("node_broken")))
    assert node is not None
    assert node.status == "broken"
    assert node.readings["humidity"].unit == "%"
    group = GroupState.from_payload(json.dumps(load_json("group_partially_broken")))
    assert group is not None
    assert (group.status, group.broken) == ("partially_broken", 1)
    info = GatewayInfo.from_payload(json.dumps(load_json("gateway_info")))
    assert info is not None
    assert info.role == "gateway"


async def test_the_coordinator_ignores_what_it_cannot_read(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, gateway: FakeGateway
) -> None:
    coordinator = loaded_entry.runtime_data
    node = load_json("node_healthy")
    group = load_json("group_healthy")
    before = (dict(coordinator.data.nodes), dict(coordinator.data.groups))
    base = gateway.base
    for topic, payload in [
        (f"{base}/state/node/{node['address']}", changed(node, status="sleeping")),
        (f"{base}/state/node/{node['address']}", changed(node, address="i4taelsewhere")),
        (f"{base}/state/group/{group['group_id']}", changed(group, status="fine")),
        (f"{base}/state/group/{group['group_id']}", changed(group, group_id="other")),
        (f"{base}/state/node/i4tanever", ""),
        (f"{base}/state/group/never", ""),
        (f"{base}/state/candidates", "[]"),
        (f"{base}/state/unknown", "{}"),
        (f"{base}/event/node", "not json"),
        (f"{base}/event/other", "{}"),
        (f"{base}/event/node", json.dumps({"address": "i4taunknown", "new": "dead"})),
        (f"{base}/reply/nobody", "{}"),
        (f"{base}/reply/nobody", "]"),
        (f"i4t/discovery/{load_json('gateway_info')['id']}", "{}"),
    ]:
        gateway.broker.set(topic, payload)
    await hass.async_block_till_done()
    assert (coordinator.data.nodes, coordinator.data.groups) == before
    assert coordinator.data.candidates == []
    assert coordinator.data.info.gateway_id == load_json("gateway_info")["id"]


async def test_candidates_and_a_refusal_without_details(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, gateway: FakeGateway
) -> None:
    coordinator = loaded_entry.runtime_data
    gateway.broker.set(f"{gateway.base}/state/candidates", json.dumps(load_json("candidates")))
    await hass.async_block_till_done()
    assert coordinator.data.candidates == load_json("candidates")["candidates"]
    gateway.answers["remove"] = {"ok": False, "error": "bad"}
    with pytest.raises(Exception) as caught:  # noqa: PT011 - checked below
        await coordinator.async_request("remove", address="x")
    assert caught.value.translation_placeholders == {"code": "unknown", "message": ""}  # type: ignore[attr-defined]
    gateway.answers["remove"] = {"ok": True, "result": "odd"}
    assert await coordinator.async_request("remove", address="x") == {}
