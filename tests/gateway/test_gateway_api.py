"""The gateway's local API end to end: a real Mosquitto, the server, native things as clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
import json
from pathlib import Path
import time
from typing import Any

import pytest

from i4t_gateway.beacon import GATT_PACKET_IN_UUID, GATT_SERVICE_UUID
from i4t_gateway.identity import Address
from i4t_gateway.mqtt_devices import tasmota_sensor
from i4t_gateway.payloads import Command, NodeHealth
from i4t_gateway.wire import DEFAULT_HOP_LIMIT, open_packet

from .api_schemas import assert_valid
from .brokers import Mosquitto
from .gateway_harness import Harness, NativeThing, eventually, fast_settings, start_harness


@pytest.fixture
async def harness(mosquitto: Mosquitto, tmp_path: Path) -> AsyncIterator[Harness]:
    gateway = await start_harness(fast_settings(tmp_path / "data", mosquitto.url), mosquitto.port)
    yield gateway
    await gateway.stop()


async def enrolled(harness: Harness, count: int) -> list[NativeThing]:
    things = [harness.thing() for _ in range(count)]
    for index, thing in enumerate(things):
        await harness.enroll(thing, f"thing {index}")
    return things


async def test_enrolled_thing_reports_readings_and_is_acked(harness: Harness) -> None:
    thing = harness.thing()
    address = await harness.enroll(thing, "Greenhouse probe")
    assert address == thing.address.text
    node = harness.node(address)
    assert node is not None
    assert node["status"] is None
    assert node["name"] == "Greenhouse probe"

    message_id = thing.report(harness.gateway, temperature=19.25)
    await harness.node_status(thing, "healthy")
    await eventually(lambda: thing.acked(message_id))
    node = harness.node(address)
    assert node is not None
    assert node["readings"]["temperature"]["value"] == 19.25
    assert node["readings"]["temperature"]["unit"] == "°C"
    assert node["last_seen"] == pytest.approx(time.time(), abs=5)
    assert harness.events("node")[-1] == {
        "address": address,
        "name": "Greenhouse probe",
        "group_id": None,
        "old": None,
        "new": "healthy",
    }


async def test_unenrolled_thing_is_a_candidate_not_a_node(harness: Harness) -> None:
    stranger = harness.thing()
    message_id = stranger.report(harness.gateway)

    def listed() -> bool:
        raw = harness.probe.last(harness.topics.candidates)
        doc = assert_valid("candidates", raw) if raw else {"candidates": []}
        return any(c["id"] == stranger.address.text for c in doc["candidates"])

    await eventually(listed)
    assert harness.node(stranger.address) is None
    assert not stranger.acked(message_id)
    # Enrolling it takes it off the candidate list.
    await harness.enroll(stranger, "Now known")
    await eventually(lambda: not listed())


async def test_group_status_follows_its_members_and_timeouts(harness: Harness) -> None:
    things = await enrolled(harness, 3)
    reply = await harness.request(
        "group_create",
        name="Cold room",
        members=[{"address": t.address.text} for t in things],
    )
    assert reply["ok"], reply
    group_id = reply["result"]["group_id"]
    # Never heard: all three count as dead.
    await harness.group_status(group_id, "dead")

    for thing in things:
        thing.report(harness.gateway)
    await harness.group_status(group_id, "healthy")
    group = harness.group(group_id)
    assert group is not None
    assert (group["healthy"], group["broken"], group["dead"], group["quorum_size"]) == (3, 0, 0, 2)

    things[0].report(harness.gateway, NodeHealth.BROKEN)
    await harness.group_status(group_id, "partially_broken")
    await harness.node_status(things[0], "broken")

    # Silence: within the (short) timeouts every node is declared dead, one after the other.
    await harness.group_status(group_id, "dead", seconds=15)
    await harness.node_status(things[1], "dead")
    news = [e["new"] for e in harness.events("group") if e["group_id"] == group_id]
    assert news[-1] == "dead"
    assert "quorum_dead" in news
    assert harness.group(group_id)["response"] == "dead"  # type: ignore[index]

    # A dead node comes back with the status it reports.
    things[2].report(harness.gateway)
    await harness.node_status(things[2], "healthy")


async def test_muted_node_raises_no_events_but_shows_its_status(harness: Harness) -> None:
    (thing,) = await enrolled(harness, 1)
    thing.report(harness.gateway)
    await harness.node_status(thing, "healthy")
    reply = await harness.request("mute", target="node", id=thing.address.text, muted=True)
    assert reply["ok"], reply
    await eventually(lambda: (harness.node(thing.address) or {}).get("muted") is True)
    events_before = len(harness.events("node"))

    await harness.node_status(thing, "dead", seconds=15)
    assert len(harness.events("node")) == events_before


async def test_local_traffic_stays_local_and_groups_are_fenced(harness: Harness) -> None:
    alice, bob, mallory = await enrolled(harness, 3)
    reply = await harness.request(
        "group_create",
        name="Pair",
        members=[{"address": alice.address.text}, {"address": bob.address.text}],
    )
    assert reply["ok"], reply
    reply = await harness.request(
        "group_create", name="Other", members=[{"address": mallory.address.text}]
    )
    assert reply["ok"], reply

    message_id = alice.send(bob.address, Command("open", {"valve": 1}))
    await eventually(lambda: alice.acked(message_id))
    await eventually(
        lambda: any(open_packet(raw).packet.message_id == message_id for raw in bob.received())
    )
    delivered = next(
        open_packet(r) for r in bob.received() if open_packet(r).packet.message_id == message_id
    )
    assert delivered.packet.src == alice.address  # signed by alice, end to end
    assert delivered.hop_limit == DEFAULT_HOP_LIMIT - 1

    # Mallory is in another group: refused (and acked, so that it stops retrying), counted.
    refused = mallory.send(bob.address, Command("open", {"valve": 1}))
    await eventually(lambda: mallory.acked(refused))
    assert not any(open_packet(r).packet.message_id == refused for r in bob.received())
    assert harness.server.core.counters.dropped["acl"] == 1


async def test_requests_are_validated_with_stable_error_codes(harness: Harness) -> None:
    thing = harness.thing()
    cases = [
        ("enroll", {"kind": "native", "name": "x", "public_key": "abcd"}, "invalid"),
        ("enroll", {"kind": "toaster", "name": "x"}, "invalid"),
        ("enroll", {"kind": "bthome", "name": "x", "mac": "not a mac"}, "invalid"),
        ("remove", {"address": thing.address.text}, "not_found"),
        (
            "group_create",
            {"name": "g", "members": [{"address": thing.address.text}]},
            "not_enrolled",
        ),
        ("group_update", {"group_id": "nope"}, "not_found"),
        ("group_create", {"name": "g", "quorum": {"kind": "count", "value": 0}}, "invalid"),
        ("mute", {"target": "node", "id": thing.address.text, "muted": True}, "not_found"),
        ("send", {"destination": thing.address.text, "command": "x"}, "no_route"),
        ("send", {"destination": "Not a name!", "command": "x"}, "invalid"),
        ("reboot", {}, "unknown_command"),
    ]
    for command, body, code in cases:
        reply = await harness.request(command, **body)
        assert reply["ok"] is False, (command, body)
        assert reply["error"]["code"] == code, (command, body, reply)

    # A request without a usable id cannot be answered: it is counted instead.
    harness.probe.client.publish(f"{harness.topics.base}/cmd/enroll", b"{not json", qos=1)
    await eventually(lambda: harness.server.core.counters.dropped["request_malformed"] == 1)


async def test_send_reaches_a_native_thing(harness: Harness) -> None:
    (thing,) = await enrolled(harness, 1)
    reply = await harness.request(
        "send", destination=thing.address.text, command="blink", args={"times": 3}
    )
    assert reply["ok"], reply
    await eventually(lambda: len(thing.received()) == 1)
    packet = open_packet(thing.received()[0]).packet
    assert packet.src == harness.gateway
    assert packet.payload == Command("blink", {"times": 3})


async def test_groups_things_and_learned_state_survive_a_restart(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    settings = fast_settings(tmp_path / "data", mosquitto.url)
    first = await start_harness(settings, mosquitto.port)
    things = await enrolled(first, 2)
    reply = await first.request(
        "group_create", name="Kept", members=[{"address": t.address.text} for t in things]
    )
    group_id = reply["result"]["group_id"]
    for thing in things:
        thing.report(first.gateway)
    await first.group_status(group_id, "healthy")
    await first.stop()

    mosquitto.restart()  # no persistence: every retained state is gone from the broker
    second = await start_harness(settings, mosquitto.port)
    try:
        await eventually(lambda: second.group(group_id) is not None)
        group = second.group(group_id)
        assert group is not None
        assert group["name"] == "Kept"
        assert {m["address"] for m in group["members"]} == {t.address.text for t in things}
        node = second.node(things[0].address)
        assert node is not None
        assert node["group_id"] == group_id
        # Restored alive with a full timeout, then declared dead as nothing reports.
        assert node["status"] == "healthy"
        await second.group_status(group_id, "dead", seconds=15)
    finally:
        await second.stop()


async def test_remove_and_delete_clear_their_retained_state(harness: Harness) -> None:
    (thing,) = await enrolled(harness, 1)
    reply = await harness.request(
        "group_create", name="Short-lived", members=[{"address": thing.address.text}]
    )
    group_id = reply["result"]["group_id"]
    assert (await harness.request("group_delete", group_id=group_id))["ok"]
    await eventually(lambda: harness.probe.last(harness.topics.group_state(group_id)) == b"")
    assert harness.events("group")[-1]["new"] is None
    assert (await harness.request("remove", address=thing.address.text))["ok"]
    await eventually(
        lambda: harness.probe.last(harness.topics.node_state(thing.address.text)) == b""
    )
    state = json.loads(harness.probe.last(harness.topics.gateway_state) or b"{}")
    assert state["nodes"] == 0


async def test_adopted_mqtt_device_is_a_node_of_the_gateway(harness: Harness) -> None:
    definition = tasmota_sensor("plug-1", topic="plug_1", sensor="AM2301", name="Attic plug")
    reply = await harness.request(
        "enroll", kind="mqtt", id="plug-1", name="Attic plug", device=definition.to_json()
    )
    assert reply["ok"], reply
    address = reply["result"]["address"]
    device = harness.probe.client
    device.publish("tele/plug_1/LWT", b"Online", qos=1, retain=True)
    device.publish(
        "tele/plug_1/SENSOR",
        json.dumps({"AM2301": {"Temperature": 18.5, "Humidity": 52.0}}).encode(),
        qos=1,
    )
    # The LWT alone makes it healthy; the readings may come in a state published after that.
    await eventually(lambda: {18.5, 52.0} <= _reading_values(harness.node(address)))
    node = harness.node(address)
    assert node is not None
    assert node["kind"] == "mqtt"
    assert node["status"] == "healthy"
    # A payload that is not the device's JSON is dropped, counted in the gateway's state.
    device.publish("tele/plug_1/SENSOR", b"{not json", qos=1)
    await eventually(lambda: harness.server.devices.dropped().total() >= 1)
    harness.server.core.publish_gateway_state(time.time(), harness.server._bridge_state())
    await eventually(
        lambda: (
            json.loads(harness.probe.last(harness.topics.gateway_state) or b"{}")
            .get("mqtt_devices", {})
            .get("adopted")
            == 1
        )
    )
    state = json.loads(harness.probe.last(harness.topics.gateway_state) or b"{}")
    assert sum(state["mqtt_devices"]["dropped"].values()) >= 1
    # The device's last will: dead at once, not at the end of its timeout.
    device.publish("tele/plug_1/LWT", b"Offline", qos=1, retain=True)
    await eventually(lambda: (harness.node(address) or {}).get("status") == "dead")
    # Removing it stops the gateway from reading its topics.
    assert (await harness.request("remove", address=address))["ok"]
    assert "plug-1" not in harness.server.devices


def _reading_values(node: dict[str, Any] | None) -> set[object]:
    return {reading["value"] for reading in (node or {}).get("readings", {}).values()}


async def test_bad_mqtt_device_definition_is_refused(harness: Harness) -> None:
    reply = await harness.request(
        "enroll", kind="mqtt", id="bad", name="Bad", device={"state_topics": "nope"}
    )
    assert reply["ok"] is False
    assert reply["error"]["code"] == "invalid"


async def test_configure_sets_the_timeout_factor_and_keeps_it(harness: Harness) -> None:
    reply = await harness.request("configure", timeout_factor=4)
    assert reply == {**reply, "ok": True, "result": {"timeout_factor": 4.0}}
    assert harness.server.core.health.policy.factor == 4.0
    assert harness.server.core.export()["timeout_factor"] == 4.0
    reply = await harness.request("configure", timeout_factor=0.5)
    assert reply["error"]["code"] == "invalid"


async def test_send_to_a_ble_thing_is_a_gatt_write_through_the_integration(
    harness: Harness,
) -> None:
    reply = await harness.request(
        "enroll", kind="beacon", name="Valve", mac="E8:51:6B:EA:37:DF", key="8a" * 16
    )
    assert reply["ok"], reply
    valve = Address.from_text(reply["result"]["address"])
    reply = await harness.request("send", destination=valve.text, command="open")
    assert reply["ok"], reply
    request_topic = f"{harness.topics.base}/ble/gatt/request"
    await eventually(lambda: harness.probe.last(request_topic) is not None)
    request = assert_valid("ble_gatt_request", harness.probe.last(request_topic) or b"")
    assert request["address"] == "E8:51:6B:EA:37:DF"
    assert (request["service"], request["characteristic"]) == (
        GATT_SERVICE_UUID,
        GATT_PACKET_IN_UUID,
    )
    packet = open_packet(bytes.fromhex(request["data"])).packet
    assert (packet.src, packet.dst) == (harness.gateway, valve)
    assert packet.payload == Command("open", {})
    # The integration reports back; the gateway counts it.
    result = {"api": 1, "id": request["id"], "ok": True}
    harness.probe.client.publish(
        f"{harness.topics.base}/ble/gatt/result", json.dumps(result).encode(), qos=1
    )
    await eventually(lambda: harness.server.bridges.gatt_results() == {"ok": 1})
    # BTHome sensors take no commands.
    reply = await harness.request("enroll", kind="bthome", name="Fridge", mac="A4:C1:38:12:34:56")
    reply = await harness.request("send", destination=reply["result"]["address"], command="x")
    assert reply["error"]["code"] == "no_route"
