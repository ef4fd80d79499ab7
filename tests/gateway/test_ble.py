"""The BLE endpoint: advert batches, BTHome v2 decoding (plain and encrypted), bad input, GATT."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from hypothesis import given, settings, strategies as st
from jsonschema import ValidationError
import pytest

from i4t_gateway.beacon import BEACON_UUID, BeaconFrame, encode_frame
from i4t_gateway.ble import (
    MAX_ADVERTS,
    MAX_BATCH_BYTES,
    Advert,
    BleCandidate,
    BleEndpoint,
    BleKind,
    BleUpdate,
    encode_batch,
)
from i4t_gateway.ble_bthome import BTHOME_UUID, BTHomeDevice, encode_encrypted, encode_plain
from i4t_gateway.ble_gatt import (
    GattError,
    GattMessageError,
    GattRequest,
    GattRequests,
    GattResult,
)
from i4t_gateway.health import NodeStatus

from .api_schemas import assert_valid, validator

GATEWAY = "i4tafleowvhkrruotacqxpv3pzlzk3q"
TOPIC = f"i4t/{GATEWAY}/ble/adverts"
PLAIN_MAC = "A4:C1:38:00:00:01"
# The encryption example of bthome.io/encryption: key, MAC, counter bytes 00112233 and the
# plaintext 02CA09 03BF13 (25.06 °C, 50.55 %); ciphertext a47266c95f73, MIC 78237214.
DOC_KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
DOC_MAC = "54:48:E6:8F:80:A5"
DOC_ENCRYPTED = bytes.fromhex("41" + "a47266c95f73" + "00112233" + "78237214")
# A plain advert decoded field by field in the BTHome maintainers' answer to
# bthome-ble issue 118 (per the format table of bthome.io/format): packet id 63, battery 94 %,
# 21.78 °C, 60.60 %, 2.947 V.
DOC_PLAIN = bytes(
    [0x40, 0x00, 0x3F, 0x01, 0x5E, 0x02, 0x82, 0x08, 0x03, 0xAC, 0x17, 0x0C, 0x83, 0x0B]
)


class Sink:
    def __init__(self) -> None:
        self.updates: list[BleUpdate] = []
        self.candidates: list[BleCandidate] = []


def _endpoint(sink: Sink, counters: dict[str, int] | None = None) -> BleEndpoint:
    return BleEndpoint(
        GATEWAY,
        on_update=sink.updates.append,
        on_candidate=sink.candidates.append,
        counters=counters,
    )


def _advert(mac: str, data: bytes, *, uuid: str = BTHOME_UUID, time: float = 1000.0) -> Advert:
    return Advert(mac, -70, time, "hci0", {uuid: data}, {}, "sensor")


def _values(update: BleUpdate) -> dict[str, Any]:
    return {r.key: r.value for r in update.readings}


# -- BTHome ---------------------------------------------------------------------------------


def test_documented_plain_advert_decodes() -> None:
    sink = Sink()
    endpoint = _endpoint(sink)
    endpoint.enroll(PLAIN_MAC, "bthome")
    endpoint.handle_message(TOPIC, encode_batch([_advert(PLAIN_MAC, DOC_PLAIN)]), False)
    (update,) = sink.updates
    assert _values(update) == {
        "battery": 94,
        "temperature": 21.78,
        "humidity": 60.6,
        "voltage": 2.947,
    }
    units = {r.key: (r.unit, r.device_class) for r in update.readings}
    assert units["temperature"] == ("°C", "temperature")
    assert update.status is NodeStatus.HEALTHY
    assert update.kind is BleKind.BTHOME


def test_documented_encrypted_advert_decodes_with_its_bindkey() -> None:
    sink = Sink()
    counters: dict[str, int] = {}
    endpoint = _endpoint(sink, counters)
    endpoint.enroll(DOC_MAC, "bthome", DOC_KEY)
    endpoint.handle_advert(_advert(DOC_MAC, DOC_ENCRYPTED))
    (update,) = sink.updates
    assert _values(update) == {"temperature": 25.06, "humidity": 50.55}
    assert counters[DOC_MAC] == 0x33221100


def test_our_encoder_matches_the_documented_ciphertext() -> None:
    values = {"temperature": 25.06, "humidity": 50.55}
    assert encode_encrypted(values, mac=DOC_MAC, bindkey=DOC_KEY, counter=0x33221100) == (
        DOC_ENCRYPTED
    )


@pytest.mark.parametrize("encrypted", [False, True])
def test_simulator_encoder_round_trips(encrypted: bool) -> None:
    sink = Sink()
    endpoint = _endpoint(sink)
    endpoint.enroll(DOC_MAC, "bthome", DOC_KEY if encrypted else None)
    for counter in range(1, 4):
        values = {"battery": 80 + counter, "temperature": -5.5 + counter, "humidity": 40.25}
        if encrypted:
            data = encode_encrypted(values, mac=DOC_MAC, bindkey=DOC_KEY, counter=counter)
        else:
            data = encode_plain({"packet_id": counter, **values})
        endpoint.handle_advert(_advert(DOC_MAC, data, time=1000.0 + counter))
        assert _values(sink.updates[-1]) == values
    assert len(sink.updates) == 3


def test_wrong_bindkey_is_counted_and_three_in_a_row_is_broken() -> None:
    sink = Sink()
    endpoint = _endpoint(sink)
    endpoint.enroll(DOC_MAC, "bthome", bytes(16))
    for counter in (1, 2, 3, 4):
        data = encode_encrypted({"temperature": 20}, mac=DOC_MAC, bindkey=DOC_KEY, counter=counter)
        endpoint.handle_advert(_advert(DOC_MAC, data))
    assert endpoint.dropped["bthome_decrypt_failed"] == 4
    assert [u.status for u in sink.updates] == [NodeStatus.BROKEN, NodeStatus.BROKEN]
    assert all(u.readings == () for u in sink.updates)
    assert sink.updates[0].detail is not None


def test_tampered_ciphertext_does_not_move_the_counter() -> None:
    sink = Sink()
    counters: dict[str, int] = {}
    endpoint = _endpoint(sink, counters)
    endpoint.enroll(DOC_MAC, "bthome", DOC_KEY)
    good = encode_encrypted({"temperature": 20}, mac=DOC_MAC, bindkey=DOC_KEY, counter=500)
    forged = bytearray(good)
    forged[2] ^= 0xFF
    endpoint.handle_advert(_advert(DOC_MAC, bytes(forged)))
    assert endpoint.dropped["bthome_decrypt_failed"] == 1
    assert DOC_MAC not in counters
    endpoint.handle_advert(_advert(DOC_MAC, good))
    assert counters[DOC_MAC] == 500


def test_replayed_and_repeated_counters_are_dropped() -> None:
    sink = Sink()
    endpoint = _endpoint(sink)
    endpoint.enroll(DOC_MAC, "bthome", DOC_KEY)

    def send(counter: int) -> None:
        data = encode_encrypted({"temperature": 20}, mac=DOC_MAC, bindkey=DOC_KEY, counter=counter)
        endpoint.handle_advert(_advert(DOC_MAC, data))

    send(200)
    send(200)  # the same advert heard by a second scanner
    send(150)  # an old advert replayed
    send(5)  # below 100: bthome-ble alone would take this as a restart
    send(201)
    assert len(sink.updates) == 2
    assert endpoint.dropped["bthome_duplicate"] == 1
    assert endpoint.dropped["bthome_replayed"] == 2


def test_forged_low_counter_is_an_authentication_failure_not_a_replay() -> None:
    sink = Sink()
    endpoint = _endpoint(sink, {DOC_MAC: 1000})
    endpoint.enroll(DOC_MAC, "bthome", DOC_KEY)
    forged = encode_encrypted({"temperature": 20}, mac=DOC_MAC, bindkey=bytes(16), counter=5)
    endpoint.handle_advert(_advert(DOC_MAC, forged))
    assert endpoint.dropped == {"bthome_decrypt_failed": 1}


def test_sensor_whose_counter_restarted_turns_broken_until_re_enrolled() -> None:
    sink = Sink()
    counters = {DOC_MAC: 1000}
    endpoint = _endpoint(sink, counters)
    endpoint.enroll(DOC_MAC, "bthome", DOC_KEY)
    for counter in (1, 2, 3):
        data = encode_encrypted({"temperature": 20}, mac=DOC_MAC, bindkey=DOC_KEY, counter=counter)
        endpoint.handle_advert(_advert(DOC_MAC, data))
    assert endpoint.dropped == {"bthome_replayed": 3}
    (update,) = sink.updates
    assert update.status is NodeStatus.BROKEN
    assert "counter went back" in (update.detail or "")
    endpoint.forget(DOC_MAC)
    endpoint.enroll(DOC_MAC, "bthome", DOC_KEY)
    data = encode_encrypted({"temperature": 20}, mac=DOC_MAC, bindkey=DOC_KEY, counter=4)
    endpoint.handle_advert(_advert(DOC_MAC, data))
    assert sink.updates[-1].status is NodeStatus.HEALTHY
    assert counters == {DOC_MAC: 4}


def test_authenticity_check_handles_a_mac_inside_the_advert() -> None:
    device_mac = "11:22:33:44:55:66"
    plain = encode_encrypted({"temperature": 20}, mac=device_mac, bindkey=DOC_KEY, counter=9)
    # The same advert with the "MAC included" flag: the address travels reversed after the
    # device information byte, and the nonce uses it (and the flagged information byte).
    info = plain[0] | 0x02
    inner = bytes.fromhex(device_mac.replace(":", ""))[::-1]
    nonce = bytes.fromhex("112233445566") + b"\xd2\xfc" + bytes([info]) + (9).to_bytes(4, "little")
    sealed = AESCCM(DOC_KEY, tag_length=4).encrypt(nonce, bytes.fromhex("02d007"), None)
    data = bytes([info]) + inner + sealed[:-4] + (9).to_bytes(4, "little") + sealed[-4:]
    device = BTHomeDevice("AA:AA:AA:AA:AA:AA", DOC_KEY)
    assert device.authentic(data)
    assert not device.authentic(data[:-1] + b"\x00")
    assert not BTHomeDevice(device_mac).authentic(data)


def test_persisted_counter_refuses_a_replay_after_restart() -> None:
    counters: dict[str, int] = {}
    data = encode_encrypted({"temperature": 20}, mac=DOC_MAC, bindkey=DOC_KEY, counter=42)
    first = _endpoint(Sink(), counters)
    first.enroll(DOC_MAC, "bthome", DOC_KEY)
    first.handle_advert(_advert(DOC_MAC, data))
    sink = Sink()
    second = _endpoint(sink, dict(counters))
    second.enroll(DOC_MAC, "bthome", DOC_KEY)
    second.handle_advert(_advert(DOC_MAC, data))
    assert not sink.updates


def test_plaintext_from_a_sensor_with_a_bindkey_is_a_downgrade() -> None:
    sink = Sink()
    endpoint = _endpoint(sink)
    endpoint.enroll(DOC_MAC, "bthome", DOC_KEY)
    endpoint.handle_advert(_advert(DOC_MAC, encode_plain({"temperature": 20})))
    assert endpoint.dropped["bthome_plaintext_with_bindkey"] == 1
    endpoint.enroll(PLAIN_MAC, "bthome")
    endpoint.handle_advert(_advert(PLAIN_MAC, DOC_ENCRYPTED))
    assert endpoint.dropped["bthome_encrypted_without_bindkey"] == 1
    assert not sink.updates


def test_duplicate_packet_id_is_dropped() -> None:
    sink = Sink()
    endpoint = _endpoint(sink)
    endpoint.enroll(PLAIN_MAC, "bthome")
    endpoint.handle_advert(_advert(PLAIN_MAC, DOC_PLAIN, time=1000.0))
    endpoint.handle_advert(_advert(PLAIN_MAC, DOC_PLAIN, time=1000.5))
    assert len(sink.updates) == 1
    assert endpoint.dropped["bthome_duplicate"] == 1


def test_problem_sensor_means_broken() -> None:
    sink = Sink()
    endpoint = _endpoint(sink)
    endpoint.enroll(PLAIN_MAC, "bthome")
    endpoint.handle_advert(_advert(PLAIN_MAC, encode_plain({"humidity": 40, "problem": True})))
    (update,) = sink.updates
    assert update.status is NodeStatus.BROKEN
    assert _values(update)["problem"] is True


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x40", "bthome_malformed"),
        (b"", "bthome_malformed"),
        (b"\x60\x02\x00\x00", "bthome_unsupported_version"),
        (b"\x41\x01\x02", "bthome_malformed"),
        (b"\x40\x53", "bthome_malformed"),  # a text object without its length byte
        (b"\x40\xff\xff", "bthome_duplicate"),  # no object the library knows: nothing new
    ],
)
def test_malformed_bthome_is_counted_never_raised(data: bytes, reason: str) -> None:
    sink = Sink()
    endpoint = _endpoint(sink)
    endpoint.enroll(PLAIN_MAC, "bthome")
    if data[:1] == b"\x41":
        endpoint.enroll(PLAIN_MAC, "bthome", DOC_KEY)
    endpoint.handle_advert(_advert(PLAIN_MAC, data))
    assert endpoint.dropped[reason] == 1
    assert not sink.updates


# -- candidates, enrolment ------------------------------------------------------------------


def test_unenrolled_formats_are_candidates_and_others_ignored() -> None:
    sink = Sink()
    endpoint = _endpoint(sink)
    beacon = encode_frame(BeaconFrame(1), "C0:00:00:00:00:09", bytes(16))
    adverts = [
        _advert(PLAIN_MAC, DOC_PLAIN),
        _advert(DOC_MAC, DOC_ENCRYPTED),
        _advert("C0:00:00:00:00:09", beacon, uuid=BEACON_UUID),
        Advert("11:22:33:44:55:66", -80, 1000.0, "hci0", {}, {76: b"\x02\x15"}),
    ]
    endpoint.handle_batch(encode_batch(adverts))
    kinds = [(c.mac, c.kind, c.encrypted) for c in sink.candidates]
    assert kinds == [
        (PLAIN_MAC, BleKind.BTHOME, False),
        (DOC_MAC, BleKind.BTHOME, True),
        ("C0:00:00:00:00:09", BleKind.BEACON, True),
    ]
    assert endpoint.stats["ignored"] == 1
    assert not sink.updates
    assert endpoint.diagnostics() == {
        "enrolled": {},
        "stats": {"adverts": 4, "batches": 1, "candidates": 3, "ignored": 1},
        "dropped": {},
    }


def test_enrolled_as_beacon_ignores_bthome_from_the_same_mac() -> None:
    sink = Sink()
    endpoint = _endpoint(sink)
    endpoint.enroll(PLAIN_MAC, BleKind.BEACON, bytes(16))
    endpoint.handle_advert(_advert(PLAIN_MAC, DOC_PLAIN))
    assert endpoint.stats["ignored"] == 1
    assert not sink.updates
    assert not sink.candidates


def test_forget_drops_enrolment_and_counter() -> None:
    counters = {DOC_MAC: 7}
    endpoint = _endpoint(Sink(), counters)
    endpoint.enroll(DOC_MAC.lower(), "bthome", DOC_KEY)
    assert endpoint.is_enrolled(DOC_MAC)
    endpoint.forget(DOC_MAC)
    assert not endpoint.is_enrolled(DOC_MAC)
    assert counters == {}


@pytest.mark.parametrize(
    ("mac", "kind", "key"),
    [
        ("not-a-mac", "bthome", None),
        (DOC_MAC, "beacon", None),
        (DOC_MAC, "beacon", bytes(8)),
        (DOC_MAC, "bthome", bytes(8)),
        (DOC_MAC, "zigbee", None),
    ],
)
def test_bad_enrolments_are_refused(mac: str, kind: str, key: bytes | None) -> None:
    with pytest.raises(ValueError, match=r"."):
        _endpoint(Sink()).enroll(mac, kind, key)


# -- batches and the schema -----------------------------------------------------------------


def _batch(*adverts: dict[str, Any]) -> bytes:
    return json.dumps({"api": 1, "adverts": list(adverts)}).encode()


GOOD = {
    "address": "a4:c1:38:00:00:01",
    "rssi": -70,
    "time": 1795248251.5,
    "source": "esphome-proxy-kitchen",
    "local_name": "ATC_000001",
    "service_data": {BTHOME_UUID: DOC_PLAIN.hex().upper()},
    "manufacturer_data": {"65535": "0102"},
}


def test_encoded_batches_match_the_schema() -> None:
    adverts = [_advert(PLAIN_MAC, DOC_PLAIN), Advert(DOC_MAC, -1, 0.0, "x", {}, {0: b""})]
    assert_valid("ble_adverts", encode_batch(adverts))
    assert_valid(
        "ble_adverts", _batch(GOOD, {k: GOOD[k] for k in ("address", "rssi", "time", "source")})
    )


@pytest.mark.parametrize(
    "change",
    [
        {"address": "a4:c1:38:00:00"},
        {"address": 5},
        {"rssi": -128},
        {"rssi": 21},
        {"rssi": "strong"},
        {"time": -1},
        {"source": ""},
        {"source": "x" * 65},
        {"local_name": "n" * 249},
        {"service_data": {"fcd2": "00"}},
        {"service_data": {BTHOME_UUID.upper(): "00"}},
        {"service_data": {BTHOME_UUID: "0g"}},
        {"service_data": {BTHOME_UUID: "abc"}},
        {"service_data": {BTHOME_UUID: "00" * 256}},
        {"service_data": {f"0000{i:04x}-0000-1000-8000-00805f9b34fb": "" for i in range(9)}},
        {"manufacturer_data": {"65536": "00"}},
        {"manufacturer_data": {"0x4c": "00"}},
        {"manufacturer_data": ["00"]},
    ],
)
def test_schema_and_parser_refuse_the_same_adverts(change: dict[str, Any]) -> None:
    bad = {**GOOD, **change}
    with pytest.raises(ValidationError):
        validator("ble_adverts").validate({"api": 1, "adverts": [bad]})
    sink = Sink()
    endpoint = _endpoint(sink)
    endpoint.enroll(PLAIN_MAC, "bthome")
    endpoint.handle_message(TOPIC, _batch(bad, GOOD), False)
    assert endpoint.dropped["advert_bad"] == 1
    assert len(sink.updates) == 1  # the good advert of the batch still counts


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "batch_malformed_json"),
        (b"\xff\xfe", "batch_malformed_json"),
        (b"[" * 100_000, "batch_malformed_json"),
        (b"[]", "batch_bad"),
        (b'{"api": 2, "adverts": []}', "batch_bad"),
        (b'{"api": 1}', "batch_bad"),
        (b'{"api": 1, "adverts": {}}', "batch_bad"),
        (b" " * (MAX_BATCH_BYTES + 1), "batch_too_large"),
        (_batch(*[GOOD] * (MAX_ADVERTS + 1)), "batch_too_many_adverts"),
    ],
)
def test_bad_batches_are_dropped_and_counted(payload: bytes, reason: str) -> None:
    sink = Sink()
    endpoint = _endpoint(sink)
    endpoint.enroll(PLAIN_MAC, "bthome")
    endpoint.handle_message(TOPIC, payload, False)
    assert endpoint.dropped == {reason: 1}
    assert not sink.updates


def test_oversized_batch_is_refused_by_the_schema_too() -> None:
    with pytest.raises(ValidationError):
        validator("ble_adverts").validate({"api": 1, "adverts": [GOOD] * (MAX_ADVERTS + 1)})


def test_retained_and_foreign_topics_are_dropped() -> None:
    sink = Sink()
    endpoint = _endpoint(sink)
    endpoint.enroll(PLAIN_MAC, "bthome")
    endpoint.handle_message(TOPIC, _batch(GOOD), True)
    endpoint.handle_message("i4t/other/ble/adverts", _batch(GOOD), False)
    assert endpoint.dropped == {"batch_retained": 1, "batch_wrong_topic": 1}
    assert not sink.updates


def test_bthome_ble_does_not_import_home_assistant() -> None:
    code = (
        "import sys, i4t_gateway.ble, i4t_gateway.simulator;"
        "print(any(m.startswith('homeassistant') for m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"


# -- GATT -----------------------------------------------------------------------------------

SERVICE = "17d234ab-de7a-4c3d-8846-9ca593acc99a"
CHARACTERISTIC = "17d234ab-de7a-4c3d-8846-9ca593acc99b"


class GattHarness:
    def __init__(self, max_pending: int = 64) -> None:
        self.published: list[tuple[str, bytes]] = []
        self.results: list[GattResult] = []
        self.tracker = GattRequests(
            GATEWAY, lambda t, p: self.published.append((t, p)), max_pending=max_pending
        )

    def submit(self, now: float = 0.0, **kwargs: Any) -> GattRequest:
        return self.tracker.submit(
            "c0:ff:ee:00:00:01",
            SERVICE,
            CHARACTERISTIC,
            b"\x01\x02",
            now=now,
            on_result=self.results.append,
            **kwargs,
        )


def test_gatt_request_is_published_valid_and_answered_once() -> None:
    harness = GattHarness()
    request = harness.submit()
    ((topic, payload),) = harness.published
    assert topic == f"i4t/{GATEWAY}/ble/gatt/request"
    document = assert_valid("ble_gatt_request", payload)
    assert document["address"] == "C0:FF:EE:00:00:01"
    assert GattRequest.parse(payload) == request
    answer = GattResult(request.id, True).encode()
    assert_valid("ble_gatt_result", answer)
    harness.tracker.handle_message(harness.tracker.result_topic, answer, False)
    harness.tracker.handle_message(harness.tracker.result_topic, answer, False)
    assert harness.results == [GattResult(request.id, True)]
    assert harness.tracker.dropped["gatt_result_unknown_id"] == 1
    assert len(harness.tracker) == 0


def test_gatt_error_results_and_timeouts() -> None:
    harness = GattHarness()
    first = harness.submit(now=0.0, timeout=1.0)
    second = harness.submit(now=0.0, timeout=5.0)
    assert harness.tracker.next_deadline() == pytest.approx(3.0)
    failure = GattResult(second.id, False, GattError.NOT_FOUND, "not in range").encode()
    assert_valid("ble_gatt_result", failure)
    harness.tracker.handle_message(harness.tracker.result_topic, failure, False)
    assert harness.tracker.expire(2.9) == []
    (timed_out,) = harness.tracker.expire(3.0)
    assert timed_out == GattResult(first.id, False, GattError.TIMEOUT)
    assert_valid("ble_gatt_result", timed_out.encode())
    assert [r.error for r in harness.results] == [GattError.NOT_FOUND, GattError.TIMEOUT]
    assert harness.tracker.next_deadline() is None


def test_gatt_pending_is_bounded() -> None:
    harness = GattHarness(max_pending=2)
    harness.submit()
    harness.submit()
    with pytest.raises(OverflowError):
        harness.submit()


@pytest.mark.parametrize(
    "payload",
    [
        b"nope",
        b'{"api": 1, "id": "00", "ok": true}',
        b'{"api": 1, "id": "' + b"0" * 32 + b'", "ok": false}',
        b'{"api": 1, "id": "' + b"0" * 32 + b'", "ok": true, "error": "timeout"}',
        b'{"api": 1, "id": "' + b"0" * 32 + b'", "ok": false, "error": "exploded"}',
        b'{"api": 1, "id": "' + b"0" * 32 + b'", "ok": "yes"}',
        b'{"api": 1, "id": "' + b"0" * 32 + b'", "ok": true, "detail": 5}',
        b"{" + b" " * 5000 + b"}",
    ],
)
def test_bad_gatt_results_are_counted(payload: bytes) -> None:
    harness = GattHarness()
    harness.tracker.handle_message(harness.tracker.result_topic, payload, False)
    assert harness.tracker.dropped["gatt_result_malformed"] == 1
    harness.tracker.handle_message(harness.tracker.result_topic, payload, True)
    assert harness.tracker.dropped["gatt_result_wrong_topic_or_retained"] == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"address": "nope"},
        {"service": SERVICE.upper()},
        {"data": b""},
        {"data": bytes(513)},
        {"timeout": 0.1},
        {"timeout": float("nan")},
        {"id": "xyz"},
    ],
)
def test_invalid_gatt_requests_are_refused(kwargs: dict[str, Any]) -> None:
    fields: dict[str, Any] = {
        "id": "0" * 32,
        "address": "C0:FF:EE:00:00:01",
        "service": SERVICE,
        "characteristic": CHARACTERISTIC,
        "data": b"\x01",
    }
    with pytest.raises(GattMessageError):
        GattRequest(**{**fields, **kwargs})


@pytest.mark.parametrize(
    "payload",
    [
        b'{"api": 1}',
        b'{"api": 1, "data": "zz"}',
        b'{"api": 1, "data": "01", "timeout": "soon"}',
        b'{"api": 1, "data": "01", "response": 1}',
        b'{"api": 1, "data": "01", "id": 5}',
    ],
)
def test_gatt_request_parse_refuses_bad_documents(payload: bytes) -> None:
    with pytest.raises(GattMessageError):
        GattRequest.parse(payload)


# -- hostile input never escapes ------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=80),
    uuid=st.sampled_from([BTHOME_UUID, BEACON_UUID]),
    bindkey=st.booleans(),
)
def test_arbitrary_service_data_is_counted_never_raised(
    data: bytes, uuid: str, bindkey: bool
) -> None:
    sink = Sink()
    endpoint = _endpoint(sink)
    endpoint.enroll(PLAIN_MAC, "bthome", DOC_KEY if bindkey else None)
    endpoint.enroll(DOC_MAC, "beacon", DOC_KEY)
    for mac in (PLAIN_MAC, DOC_MAC, "C0:00:00:00:00:01"):
        endpoint.handle_advert(_advert(mac, data, uuid=uuid))
    handled = sum(endpoint.dropped.values()) + len(sink.updates) + len(sink.candidates)
    assert handled + endpoint.stats["ignored"] == 3


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(advert=st.dictionaries(st.sampled_from(sorted(GOOD)), _JSON, max_size=8))
def test_arbitrary_advert_objects_are_refused_or_accepted_never_raised(
    advert: dict[str, Any],
) -> None:
    endpoint = _endpoint(Sink())
    endpoint.handle_message(TOPIC, _batch({**GOOD, **advert}), False)
    assert endpoint.stats["adverts"] + endpoint.dropped["advert_bad"] == 1


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(max_size=200))
def test_arbitrary_batch_bytes_never_raise(payload: bytes) -> None:
    endpoint = _endpoint(Sink())
    endpoint.handle_message(TOPIC, payload, False)


# -- unchanged adverts: copies and liveness -------------------------------------------------


def test_unchanged_encrypted_advert_later_is_liveness_not_data() -> None:
    sink = Sink()
    endpoint = _endpoint(sink)
    endpoint.enroll(DOC_MAC, "bthome", DOC_KEY)
    data = encode_encrypted({"temperature": 20}, mac=DOC_MAC, bindkey=DOC_KEY, counter=77)
    for time in (1000.0, 1001.0, 1004.5, 1005.0, 1010.0):
        endpoint.handle_advert(_advert(DOC_MAC, data, time=time))
    fresh, *repeats = sink.updates
    assert not fresh.repeat
    assert _values(fresh) == {"temperature": 20}
    assert [u.time for u in repeats] == [1004.5, 1010.0]
    assert all(u.repeat and u.readings == () for u in repeats)
    assert all(u.status is NodeStatus.HEALTHY for u in repeats)
    assert endpoint.dropped == {"bthome_duplicate": 2}
    assert endpoint.stats["repeats"] == 2


def test_a_different_advert_with_the_last_counter_is_no_liveness() -> None:
    sink = Sink()
    endpoint = _endpoint(sink)
    endpoint.enroll(DOC_MAC, "bthome", DOC_KEY)
    data = encode_encrypted({"temperature": 20}, mac=DOC_MAC, bindkey=DOC_KEY, counter=77)
    other = encode_encrypted({"temperature": 21}, mac=DOC_MAC, bindkey=DOC_KEY, counter=77)
    endpoint.handle_advert(_advert(DOC_MAC, data, time=1000.0))
    endpoint.handle_advert(_advert(DOC_MAC, other, time=1010.0))
    assert len(sink.updates) == 1
    assert endpoint.dropped == {"bthome_duplicate": 1}


def test_unchanged_beacon_frame_later_keeps_its_status() -> None:
    sink = Sink()
    endpoint = _endpoint(sink)
    endpoint.enroll(DOC_MAC, "beacon", DOC_KEY)
    frame = encode_frame(BeaconFrame(9, broken=True), DOC_MAC, DOC_KEY)
    for time in (1000.0, 1002.0, 1006.0):
        endpoint.handle_advert(_advert(DOC_MAC, frame, uuid=BEACON_UUID, time=time))
    assert [(u.status, u.repeat) for u in sink.updates] == [
        (NodeStatus.BROKEN, False),
        (NodeStatus.BROKEN, True),
    ]
    assert endpoint.dropped == {"beacon_duplicate": 1}


def test_unchanged_plain_advert_later_is_decoded_again() -> None:
    sink = Sink()
    endpoint = _endpoint(sink)
    endpoint.enroll(PLAIN_MAC, "bthome")
    for time in (1000.0, 1002.0, 1006.5):
        endpoint.handle_advert(_advert(PLAIN_MAC, DOC_PLAIN, time=time))
    assert [bool(u.readings) for u in sink.updates] == [True, True]
    assert endpoint.dropped == {"bthome_duplicate": 1}
