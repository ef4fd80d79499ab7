"""Signed name records and name syntax."""

from __future__ import annotations

import cbor2
from hypothesis import given, settings, strategies as st
import pytest

from i4t_gateway import cose
from i4t_gateway.cose import PacketError, Reason
from i4t_gateway.identity import Identity
from i4t_gateway.names import (
    MAX_RECORD_LIFETIME_MS,
    NameRecord,
    is_valid_name,
    sign_name_record,
    validate_name,
    verify_name_record,
)

OWNER = Identity.from_seed(bytes(range(32)))
OTHER = Identity.from_seed(bytes(range(32, 64)))
NOW = 1_763_700_000_000
DAY = 24 * 3600 * 1000


@pytest.mark.parametrize(
    "name",
    ["kitchen", "kitchen-sensor-2", "a", "hub.alice.example", "x" * 63, "0day", "xn--bcher-kva"],
)
def test_valid_names(name: str) -> None:
    assert is_valid_name(name)
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Kitchen",
        "-kitchen",
        "kitchen-",
        "kit chen",
        "kitchen/1",
        "kitchen+",
        "kitchen#",
        "a..b",
        ".a",
        "a.",
        "x" * 64,
        ".".join(["abcdefghi"] * 26),
        "küche",
        "under_score",
        OWNER.address.text,
    ],
)
def test_invalid_names(name: str) -> None:
    assert not is_valid_name(name)
    with pytest.raises(PacketError) as caught:
        validate_name(name)
    assert caught.value.reason is Reason.BAD_NAME


def test_record_round_trip_with_an_injected_clock() -> None:
    raw = sign_name_record(OWNER, "kitchen", seq=3, expires_ms=NOW + DAY)
    record = verify_name_record(raw, now_ms=lambda: NOW)
    assert record == NameRecord("kitchen", OWNER.address, OWNER.public_bytes, 3, NOW + DAY)
    assert verify_name_record(raw, now_ms=NOW) == record


def test_expired_records_are_refused() -> None:
    raw = sign_name_record(OWNER, "kitchen", seq=1, expires_ms=NOW)
    with pytest.raises(PacketError) as caught:
        verify_name_record(raw, now_ms=NOW)
    assert caught.value.reason is Reason.NAME_EXPIRED
    assert verify_name_record(raw, now_ms=NOW - 1).name == "kitchen"


def test_records_living_too_long_are_refused() -> None:
    raw = sign_name_record(OWNER, "kitchen", seq=1, expires_ms=NOW + MAX_RECORD_LIFETIME_MS + 1)
    with pytest.raises(PacketError) as caught:
        verify_name_record(raw, now_ms=NOW)
    assert caught.value.reason is Reason.BAD_NAME


def test_sign_refuses_a_bad_name() -> None:
    with pytest.raises(PacketError):
        sign_name_record(OWNER, "Not OK", seq=1, expires_ms=NOW + DAY)


def _resign(body: dict[int, object], signer: Identity = OWNER) -> bytes:
    return cose.sign1(cose.encode(body), signer, {})


def _body() -> dict[int, object]:
    raw = sign_name_record(OWNER, "kitchen", seq=1, expires_ms=NOW + DAY)
    body = cbor2.loads(cose.decode_sign1(raw).payload)
    assert isinstance(body, dict)
    return body


def test_address_must_be_the_hash_of_the_key() -> None:
    body = _body()
    body[2] = OTHER.address.bytes
    with pytest.raises(PacketError) as caught:
        verify_name_record(_resign(body), now_ms=NOW)
    assert caught.value.reason is Reason.KEY_MISMATCH


def test_record_signed_by_another_key_is_refused() -> None:
    with pytest.raises(PacketError) as caught:
        verify_name_record(_resign(_body(), OTHER), now_ms=NOW)
    assert caught.value.reason is Reason.BAD_SIGNATURE


def test_claiming_another_key_needs_that_key() -> None:
    body = _body()
    body[2], body[3] = OTHER.address.bytes, OTHER.public_bytes
    with pytest.raises(PacketError) as caught:
        verify_name_record(_resign(body), now_ms=NOW)
    assert caught.value.reason is Reason.BAD_SIGNATURE


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({1: "Bad Name"}, Reason.BAD_NAME),
        ({1: 7}, Reason.BAD_NAME),
        ({3: bytes(31)}, Reason.BAD_NAME),
        ({4: -1}, Reason.BAD_NAME),
        ({6: 0}, Reason.BAD_NAME),
    ],
)
def test_bad_record_fields(change: dict[int, object], reason: Reason) -> None:
    body = _body()
    body.update(change)
    with pytest.raises(PacketError) as caught:
        verify_name_record(_resign(body), now_ms=NOW)
    assert caught.value.reason is reason


def test_unprotected_header_must_be_empty() -> None:
    envelope = cose.decode_sign1(sign_name_record(OWNER, "k", seq=1, expires_ms=NOW + DAY))
    tampered = cose.Sign1(envelope.protected, {4: b"x"}, envelope.payload, envelope.signature)
    with pytest.raises(PacketError) as caught:
        verify_name_record(tampered.to_bytes(), now_ms=NOW)
    assert caught.value.reason is Reason.BAD_HEADER


def test_every_byte_of_a_record_is_protected() -> None:
    raw = sign_name_record(OWNER, "kitchen", seq=1, expires_ms=NOW + DAY)
    for index in range(len(raw)):
        tampered = bytearray(raw)
        tampered[index] ^= 0x04
        with pytest.raises(PacketError):
            verify_name_record(bytes(tampered), now_ms=NOW)


def test_higher_sequence_supersedes_for_the_same_key_only() -> None:
    old = NameRecord("kitchen", OWNER.address, OWNER.public_bytes, 1, NOW)
    new = NameRecord("kitchen", OWNER.address, OWNER.public_bytes, 2, NOW)
    stolen = NameRecord("kitchen", OTHER.address, OTHER.public_bytes, 9, NOW)
    assert new.supersedes(old)
    assert not old.supersedes(new)
    assert not stolen.supersedes(old)


@given(st.binary(max_size=200))
def test_random_records_raise_only_packet_error(data: bytes) -> None:
    try:
        verify_name_record(data, now_ms=NOW)
    except PacketError as err:
        reason = err.reason
    else:
        reason = None
    assert reason is None or isinstance(reason, Reason)


LABEL = r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?"
valid_names = st.from_regex(rf"{LABEL}(\.{LABEL}){{0,3}}", fullmatch=True).filter(
    lambda name: not name.startswith("i4t")
)


@settings(max_examples=50)
@given(valid_names, st.integers(0, 2**64 - 1), st.integers(1, MAX_RECORD_LIFETIME_MS))
def test_any_valid_name_round_trips(name: str, seq: int, lifetime: int) -> None:
    raw = sign_name_record(OWNER, name, seq=seq, expires_ms=NOW + lifetime)
    record = verify_name_record(raw, now_ms=NOW)
    assert (record.name, record.seq, record.expires_ms) == (name, seq, NOW + lifetime)
    assert record.address == OWNER.address
