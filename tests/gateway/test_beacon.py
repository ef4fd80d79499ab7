"""The I4T BLE beacon: byte-exact vectors both ways, tampering, replay (docs/PROTOCOL.md §14)."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest

from i4t_gateway.beacon import (
    BEACON_UUID,
    BEACON_UUID_BYTES,
    LEGACY_MAX_FRAME,
    MAX_FRAME,
    READING_TYPES,
    BeaconError,
    BeaconFlag,
    BeaconFrame,
    BeaconReason,
    check_frame,
    encode_frame,
)
from i4t_gateway.ble import Advert, BleEndpoint, BleUpdate
from i4t_gateway.health import NodeStatus

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "vectors" / "ble_beacon.json").read_text()
)
KEY = bytes.fromhex(VECTORS["key"])
MAC = VECTORS["mac"]


def _frame(fields: dict[str, Any]) -> BeaconFrame:
    flags = BeaconFlag.NONE
    for name in fields["flags"]:
        flags |= BeaconFlag[name.upper()]
    readings = tuple((key, value) for key, value in fields["readings"])
    return BeaconFrame(fields["counter"], fields["broken"], flags, readings)


def test_uuid_is_the_documented_random_one() -> None:
    assert VECTORS["uuid"] == BEACON_UUID
    assert VECTORS["uuid_bytes"] == BEACON_UUID_BYTES.hex()
    assert BEACON_UUID_BYTES[6] >> 4 == 4  # a version 4 (random) UUID


@pytest.mark.parametrize("vector", VECTORS["accepted"], ids=lambda v: v["name"])
def test_fields_encode_to_exactly_the_vector_bytes(vector: dict[str, Any]) -> None:
    message = bytes.fromhex(vector["mac_input"])
    assert hmac.new(KEY, message, hashlib.sha256).hexdigest() == vector["hmac_sha256"]
    frame = encode_frame(_frame(vector["fields"]), MAC, KEY)
    assert frame.hex() == vector["frame"]
    assert frame[-4:] == bytes.fromhex(vector["hmac_sha256"])[:4]
    assert message == BEACON_UUID_BYTES + bytes.fromhex(MAC.replace(":", "")) + frame[:-4]


@pytest.mark.parametrize("vector", VECTORS["accepted"], ids=lambda v: v["name"])
def test_vector_bytes_decode_to_the_fields(vector: dict[str, Any]) -> None:
    decoded = check_frame(bytes.fromhex(vector["frame"]), MAC, KEY)
    expected = _frame(vector["fields"])
    assert decoded.counter == expected.counter
    assert decoded.broken == expected.broken
    assert decoded.flags == expected.flags
    assert dict(decoded.readings) == pytest.approx(dict(expected.readings))
    ids = [
        next(t.object_id for t in READING_TYPES.values() if t.key == k) for k, _ in decoded.readings
    ]
    assert ids == sorted(ids)


@pytest.mark.parametrize("vector", VECTORS["rejected"], ids=lambda v: v["name"])
def test_rejected_vectors_are_refused_with_their_reason(vector: dict[str, Any]) -> None:
    with pytest.raises(BeaconError) as caught:
        check_frame(bytes.fromhex(vector["frame"]), vector.get("mac", MAC), KEY)
    assert caught.value.reason == vector["reason"]


def test_a_frame_under_another_key_is_refused() -> None:
    frame = bytes.fromhex(VECTORS["accepted"][1]["frame"])
    with pytest.raises(BeaconError) as caught:
        check_frame(frame, MAC, bytes(16))
    assert caught.value.reason is BeaconReason.BAD_TAG


def test_every_single_bit_flip_is_refused() -> None:
    frame = bytes.fromhex(VECTORS["accepted"][2]["frame"])
    for position in range(len(frame)):
        for bit in range(8):
            tampered = bytearray(frame)
            tampered[position] ^= 1 << bit
            with pytest.raises(BeaconError):
                check_frame(bytes(tampered), MAC, KEY)


def test_one_reading_fits_a_legacy_advert() -> None:
    frame = encode_frame(BeaconFrame(7, readings=(("temperature", 20.0),)), MAC, KEY)
    assert len(frame) <= LEGACY_MAX_FRAME
    assert 2 + 16 + LEGACY_MAX_FRAME == 31  # AD length + type + UUID + frame = a legacy advert


@pytest.mark.parametrize(
    "frame",
    [
        BeaconFrame(0),
        BeaconFrame(2**32),
        BeaconFrame(1, version=2),
        BeaconFrame(1, readings=(("temperature", 400.0),)),
        BeaconFrame(1, readings=(("battery", -1),)),
        BeaconFrame(1, readings=(("wind", 3),)),
        BeaconFrame(1, readings=(("battery", 1), ("battery", 2))),
        BeaconFrame(1, readings=tuple(("count", 1) for _ in range(12))),
    ],
)
def test_encoder_refuses_what_receivers_would_refuse(frame: BeaconFrame) -> None:
    with pytest.raises(ValueError, match=r"."):
        encode_frame(frame, MAC, KEY)


def test_encoder_refuses_a_short_key() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        encode_frame(BeaconFrame(1), MAC, bytes(8))


def test_largest_frame_is_bounded() -> None:
    assert MAX_FRAME == 64


def _advert(frame_hex: str, mac: str = MAC) -> Advert:
    return Advert(mac, -60, 1000.0, "hci0", {BEACON_UUID: bytes.fromhex(frame_hex)}, {})


def test_replay_script_through_the_endpoint() -> None:
    updates: list[BleUpdate] = []
    counters: dict[str, int] = {}
    endpoint = BleEndpoint("i4tgw", on_update=updates.append, counters=counters)
    endpoint.enroll(MAC, "beacon", KEY)
    for step in VECTORS["replay"]["steps"]:
        before = len(updates)
        endpoint.handle_advert(_advert(step["frame"]))
        if len(updates) > before:
            outcome = "accepted"
        else:
            ((reason, _),) = endpoint.dropped.items()
            outcome = reason.removeprefix("beacon_")
            endpoint.dropped.clear()
        assert outcome == step["outcome"], step
    assert counters[MAC] == 1001


def test_counter_survives_a_restart_through_the_persisted_mapping() -> None:
    counters: dict[str, int] = {}
    first = BleEndpoint("i4tgw", on_update=lambda _: None, counters=counters)
    first.enroll(MAC, "beacon", KEY)
    recorded = VECTORS["replay"]["steps"][0]["frame"]
    first.handle_advert(_advert(recorded))
    updates: list[BleUpdate] = []
    second = BleEndpoint("i4tgw", on_update=updates.append, counters=dict(counters))
    second.enroll(MAC, "beacon", KEY)
    second.handle_advert(_advert(recorded))
    assert not updates
    assert second.dropped["beacon_duplicate"] == 1


def test_beacon_status_flags_and_readings_reach_the_update() -> None:
    updates: list[BleUpdate] = []
    endpoint = BleEndpoint("i4tgw", on_update=updates.append)
    endpoint.enroll(MAC, "beacon", KEY)
    endpoint.handle_advert(_advert(VECTORS["accepted"][2]["frame"]))
    (update,) = updates
    assert update.status is NodeStatus.BROKEN
    assert update.low_battery
    assert not update.sleepy
    assert update.readings[0].key == "temperature"
    assert update.readings[0].value is None
    assert update.readings[0].unit == "°C"


def test_tampered_beacons_mark_the_thing_broken_after_three() -> None:
    updates: list[BleUpdate] = []
    endpoint = BleEndpoint("i4tgw", on_update=updates.append)
    endpoint.enroll(MAC, "beacon", KEY)
    forged = BeaconFrame(50, readings=(("temperature", 99.0),))
    for counter in (50, 51, 52):
        frame = encode_frame(BeaconFrame(counter, readings=forged.readings), MAC, bytes(16))
        endpoint.handle_advert(_advert(frame.hex()))
    assert endpoint.dropped["beacon_bad_tag"] == 3
    (update,) = updates
    assert update.status is NodeStatus.BROKEN
    assert update.readings == ()
    # A forged frame never moves the counter: the real thing's frame 10 is still accepted.
    endpoint.handle_advert(_advert(encode_frame(BeaconFrame(10), MAC, KEY).hex()))
    assert updates[-1].status is NodeStatus.HEALTHY


def test_authentic_old_frames_three_in_a_row_mark_the_thing_broken() -> None:
    updates: list[BleUpdate] = []
    endpoint = BleEndpoint("i4tgw", on_update=updates.append, counters={MAC: 1000})
    endpoint.enroll(MAC, "beacon", KEY)
    for counter in (1, 2, 3, 4):  # the thing lost its counter and starts again from 1
        endpoint.handle_advert(_advert(encode_frame(BeaconFrame(counter), MAC, KEY).hex()))
    assert endpoint.dropped["beacon_replayed"] == 4
    assert [u.status for u in updates] == [NodeStatus.BROKEN, NodeStatus.BROKEN]
    assert "counter went back" in (updates[0].detail or "")
    endpoint.forget(MAC)  # what re-enrolment does
    endpoint.enroll(MAC, "beacon", KEY)
    endpoint.handle_advert(_advert(encode_frame(BeaconFrame(5), MAC, KEY).hex()))
    assert updates[-1].status is NodeStatus.HEALTHY
