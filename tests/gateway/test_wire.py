"""Packets: build, seal, open, forward; limits; tamper detection; only PacketError escapes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import cbor2
from hypothesis import HealthCheck, given, settings, strategies as st
import pytest

from i4t_gateway import cose
from i4t_gateway.cose import Limits, PacketError, Reason
from i4t_gateway.identity import Address, Identity
from i4t_gateway.payloads import (
    Ack,
    Announce,
    Command,
    Data,
    GroupConfig,
    GroupMember,
    HealthRequest,
    HealthResponse,
    Member,
    MemberGossip,
    NameAnswer,
    NameQuery,
    NameRecordPayload,
    NodeClass,
    NodeHealth,
    NodeRole,
    PacketType,
    Payload,
    Price,
    Reading,
    Seed,
    SeedGossip,
    StatusRequest,
    StatusResponse,
    TxFeedRequest,
    TxFeedUpdate,
)
from i4t_gateway.wire import (
    HOP_LIMIT_LABEL,
    Packet,
    Proxy,
    ack,
    build,
    forward,
    open_packet,
    peek,
    seal_packet,
)

ALICE = Identity.from_seed(bytes(range(32)))
BOB = Identity.from_seed(bytes(range(32, 64)))
MALLORY = Identity.from_seed(bytes(range(64, 96)))
MID = bytes(range(16))
GROUP = bytes(range(100, 116))
TS = 1_763_700_000_000


def sample_payloads() -> list[Payload]:
    """One payload of every type, with every optional field set somewhere."""
    a, b = ALICE.address, BOB.address
    return [
        Data((Reading("temperature", 21.5, "°C"), Reading("door", True)), NodeHealth.BROKEN),
        Command("set", {"brightness": 128, "scene": "evening", "fade": 0.5, "reset": None}),
        Ack((MID, bytes(16))),
        HealthRequest(b),
        HealthResponse(MID, NodeHealth.DEAD, "not heard for 600 s", b),
        StatusRequest(42),
        StatusResponse(
            MID, 43, (a, b), (Price("thing-month", 1000, "USD"),), (Address.BROADCAST, b)
        ),
        SeedGossip(GROUP, (Seed(a, TS, "mqtts://hub.local:8883"), Seed(b, TS - 1000))),
        MemberGossip(GROUP, 7, (Member(a, NodeHealth.HEALTHY, TS), Member(b, NodeHealth.DEAD, 0))),
        Announce((a, b), TS + 3_600_000),
        NameRecordPayload(b"\xd2\x84"),
        GroupConfig(
            GROUP,
            "kitchen",
            3,
            (
                GroupMember(a, NodeRole.SEED, NodeClass.SENSOR),
                GroupMember(b, NodeRole.WORKER, NodeClass.PAYMENT),
            ),
            quorum=2,
            muted=True,
        ),
        TxFeedRequest(1000),
        TxFeedUpdate(MID, 1000, 1005, (b"tx1", b"tx2")),
        NameQuery("kitchen"),
        NameAnswer(MID, b"\xd2\x84"),
    ]


def minimal_payloads() -> list[Payload]:
    return [
        Data((Reading("x", 1),)),
        Command("reboot"),
        HealthRequest(),
        HealthResponse(MID, NodeHealth.HEALTHY),
        StatusRequest(),
        StatusResponse(MID, 0),
        GroupConfig(GROUP, "g", 0, ()),
        TxFeedUpdate(MID, 5, 5),
        NameAnswer(MID),
    ]


def packet_for(payload: Payload, **changes: object) -> Packet:
    packet = build(ALICE.address, BOB.address, payload, seq=7, ts_ms=TS, message_id=MID)
    return replace(packet, **changes)  # type: ignore[arg-type]


def test_every_packet_type_has_a_sample() -> None:
    assert {p.TYPE for p in sample_payloads()} == set(PacketType)


@pytest.mark.parametrize("payload", sample_payloads() + minimal_payloads(), ids=repr)
def test_round_trip_plain(payload: Payload) -> None:
    packet = packet_for(payload)
    raw = seal_packet(packet, ALICE)
    received = open_packet(raw)
    assert received.packet == packet
    assert received.hop_limit == packet.hop_max
    assert received.signer_key == ALICE.public_bytes
    assert not received.encrypted
    assert peek(raw) == packet


@pytest.mark.parametrize("payload", sample_payloads(), ids=repr)
def test_round_trip_encrypted(payload: Payload) -> None:
    packet = packet_for(payload)
    raw = seal_packet(packet, ALICE, encrypt_to=BOB.public_bytes)
    received = open_packet(raw, recipient=BOB)
    assert received.packet == packet
    assert received.encrypted
    # Anyone else (a relay) verifies it but only sees the sealed payload.
    relayed = open_packet(raw, recipient=MALLORY)
    assert relayed.packet.payload != packet.payload
    assert relayed.packet.message_id == packet.message_id


def test_payload_bytes_do_not_appear_in_an_encrypted_packet() -> None:
    packet = packet_for(Command("unlock", {"code": "secret-door-code"}))
    assert b"secret-door-code" in seal_packet(packet, ALICE)
    assert b"secret-door-code" not in seal_packet(packet, ALICE, encrypt_to=BOB.public_bytes)


def test_key_can_be_left_out_and_resolved() -> None:
    raw = seal_packet(packet_for(StatusRequest()), ALICE, include_key=False)
    with pytest.raises(PacketError) as caught:
        open_packet(raw)
    assert caught.value.reason is Reason.UNKNOWN_KEY
    known = {ALICE.address: ALICE.public_bytes}
    assert open_packet(raw, keys=known.get).packet.src == ALICE.address
    with pytest.raises(PacketError) as caught:
        open_packet(raw, keys=lambda _: MALLORY.public_bytes)
    assert caught.value.reason is Reason.KEY_MISMATCH
    with pytest.raises(PacketError) as caught:
        open_packet(raw, keys=lambda _: b"short")
    assert caught.value.reason is Reason.KEY_MISMATCH


def test_proxied_packets_are_signed_by_the_gateway_and_bound_to_it() -> None:
    thing = Address.for_proxied(ALICE.public_bytes, b"ble:a4:c1:38:00:00:01")
    packet = packet_for(
        Data((Reading("temperature", 19.0),)),
        src=thing,
        proxy=Proxy(ALICE.address, b"ble:a4:c1:38:00:00:01"),
    )
    received = open_packet(seal_packet(packet, ALICE))
    assert received.packet == packet
    assert received.packet.signer == ALICE.address
    # Mallory cannot speak for Alice's thing: its address is bound to Alice's key.
    forged = replace(packet, proxy=Proxy(MALLORY.address, b"ble:a4:c1:38:00:00:01"))
    with pytest.raises(ValueError, match="proxied source"):
        seal_packet(forged, MALLORY)
    body = cbor2.loads(cose.decode_sign1(seal_packet(packet, ALICE)).payload)
    body[10] = MALLORY.public_bytes
    body[11] = [MALLORY.address.bytes, b"ble:a4:c1:38:00:00:01"]
    with pytest.raises(PacketError) as caught:
        open_packet(cose.sign1(cose.encode(body), MALLORY, {HOP_LIMIT_LABEL: 16}))
    assert caught.value.reason is Reason.KEY_MISMATCH


def test_sender_must_sign_its_own_packets() -> None:
    with pytest.raises(ValueError, match="signer"):
        seal_packet(packet_for(StatusRequest()), MALLORY)


@pytest.mark.parametrize(
    ("packet", "message"),
    [
        (packet_for(Data(())), "refuse this payload"),
        (packet_for(Command("x" * 65)), "refuse this payload"),
        (packet_for(GroupConfig(GROUP, "g", 1, (), quorum=1)), "refuse this payload"),
        (packet_for(StatusRequest(), seq=-1), "unsigned"),
        (packet_for(StatusRequest(), ts_ms=2**64), "unsigned"),
        (packet_for(StatusRequest(), type=PacketType.DATA), "type"),
        (packet_for(StatusRequest(), hop_max=0), "hop_max"),
        (packet_for(StatusRequest(), message_id=b"short"), "16 bytes"),
    ],
)
def test_senders_cannot_make_packets_receivers_would_refuse(packet: Packet, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        seal_packet(packet, ALICE)


def test_forward_lowers_the_hop_limit_and_keeps_the_signature() -> None:
    raw = seal_packet(packet_for(StatusRequest(), hop_max=2), ALICE)
    once = forward(raw)
    assert open_packet(once).hop_limit == 1
    twice = open_packet(once).forwarded()
    assert open_packet(twice).hop_limit == 0
    assert open_packet(twice).packet == open_packet(raw).packet
    with pytest.raises(PacketError) as caught:
        forward(twice)
    assert caught.value.reason is Reason.HOP_LIMIT


def test_hop_limit_cannot_be_raised_above_the_signed_maximum() -> None:
    raw = seal_packet(packet_for(StatusRequest(), hop_max=3), ALICE, hop_limit=1)
    envelope = cose.decode_sign1(raw)
    raised = replace(envelope, unprotected={HOP_LIMIT_LABEL: 4}).to_bytes()
    with pytest.raises(PacketError) as caught:
        open_packet(raised)
    assert caught.value.reason is Reason.HOP_LIMIT
    assert open_packet(replace(envelope, unprotected={HOP_LIMIT_LABEL: 3}).to_bytes())


def test_ack_is_one_hop_and_names_the_message_ids() -> None:
    packet = ack(BOB, ALICE.address, [MID], seq=1, ts_ms=TS)
    assert packet.hop_max == 1
    assert packet.dst == ALICE.address
    assert packet.payload == Ack((MID,))
    assert open_packet(seal_packet(packet, BOB)).packet == packet


@pytest.mark.parametrize("payload", sample_payloads(), ids=repr)
def test_flipping_any_byte_outside_the_hop_limit_is_detected(payload: Payload) -> None:
    packet = packet_for(payload)
    for encrypted in (False, True):
        target = BOB.public_bytes if encrypted else None
        raw = seal_packet(packet, ALICE, encrypt_to=target)
        for index in range(len(raw)):
            tampered = bytearray(raw)
            tampered[index] ^= 0x01
            try:
                received = open_packet(bytes(tampered), recipient=BOB)
            except PacketError:
                continue
            # Only the unsigned hop limit may change, and the signed fields must not.
            assert received.packet == packet
            assert received.hop_limit != packet.hop_max


def test_limits_are_enforced_before_decoding() -> None:
    raw = seal_packet(packet_for(sample_payloads()[0]), ALICE)
    for limits, reason in [
        (Limits(max_size=len(raw) - 1), Reason.TOO_LARGE),
        (Limits(max_depth=2), Reason.TOO_DEEP),
        (Limits(max_items=10), Reason.TOO_MANY_ITEMS),
    ]:
        with pytest.raises(PacketError) as caught:
            open_packet(raw, limits=limits)
        assert caught.value.reason is reason


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", Reason.MALFORMED),
        (b"\x81" * 100_000 + b"\x00", Reason.TOO_LARGE),
        (b"\x81" * 100 + b"\x00", Reason.TOO_DEEP),
        (b"\x9b" + b"\xff" * 8, Reason.MALFORMED),
        (b"\x5b\x00\x00\x00\x01\x00\x00\x00\x00", Reason.MALFORMED),
        (b"\x9f\x01\xff", Reason.UNSUPPORTED_CBOR),
        (b"\xd8\x1c\x81\xd8\x1d\x00", Reason.UNSUPPORTED_CBOR),
        (b"\xc1\x00", Reason.UNSUPPORTED_CBOR),
        (b"\xf7", Reason.UNSUPPORTED_CBOR),
        (b"\xf8\x20", Reason.UNSUPPORTED_CBOR),
        (b"\x01\x02", Reason.MALFORMED),
        (b"\x18\x01", Reason.NON_CANONICAL),
        (b"\xa2\x02\x00\x01\x00", Reason.NON_CANONICAL),
        (b"\xa2\x01\x00\x01\x00", Reason.NON_CANONICAL),
        (b"\xfa\x3f\xc0\x00\x00", Reason.NON_CANONICAL),
        (b"\xfb\x7f\xf8\x00\x00\x00\x00\x00\x00", Reason.NON_CANONICAL),
        (b"\xa1\x80\x00", Reason.UNSUPPORTED_CBOR),
        (b"\x62\xc3\x28", Reason.MALFORMED),
        (b"\xd2\x80", Reason.BAD_ENVELOPE),
        (b"\x84\x43\xa1\x01\x27\xa0\x40\x40", Reason.BAD_ENVELOPE),
    ],
)
def test_bad_cbor_is_refused_with_its_reason(data: bytes, reason: Reason) -> None:
    with pytest.raises(PacketError) as caught:
        open_packet(data)
    assert caught.value.reason is reason


def test_cbor2_alone_would_accept_what_the_scan_refuses() -> None:
    """Why the pre-scan exists: cbor2 6 ignores trailing bytes and builds cyclic references."""
    assert cbor2.loads(b"\x01\x02") == 1
    cyclic = cbor2.loads(b"\xd8\x1c\x81\xd8\x1d\x00")
    assert cyclic[0] is cyclic


def _resign(body: dict[int, object], hop: int = 16) -> bytes:
    return cose.sign1(cose.encode(body), ALICE, {HOP_LIMIT_LABEL: hop})


def _body_of(payload: Payload) -> dict[int, object]:
    raw = seal_packet(packet_for(payload), ALICE)
    body = cbor2.loads(cose.decode_sign1(raw).payload)
    assert isinstance(body, dict)
    return body


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({1: 2}, Reason.UNSUPPORTED_VERSION),
        ({2: 99}, Reason.UNKNOWN_TYPE),
        ({2: 2}, Reason.BAD_PAYLOAD),
        ({3: b"\x01" + bytes(15)}, Reason.BAD_ADDRESS),
        ({3: Address.BROADCAST.bytes}, Reason.BAD_ADDRESS),
        ({5: bytes(15)}, Reason.BAD_FIELD),
        ({6: -1}, Reason.BAD_FIELD),
        ({7: "now"}, Reason.BAD_FIELD),
        ({8: 0}, Reason.BAD_FIELD),
        ({8: 65}, Reason.BAD_FIELD),
        ({9: 0}, Reason.NON_CANONICAL),
        ({9: 4}, Reason.BAD_FIELD),
        ({9: 1}, Reason.BAD_FIELD),
        ({10: bytes(31)}, Reason.BAD_FIELD),
        ({10: MALLORY.public_bytes}, Reason.KEY_MISMATCH),
        ({13: 0}, Reason.BAD_FIELD),
        ({12: {1: []}}, Reason.BAD_PAYLOAD),
        ({12: {1: [{1: "t", 2: 1}], 2: "dead"}}, Reason.BAD_PAYLOAD),
        ({12: {1: [{1: "t", 2: 1, 9: 0}]}}, Reason.BAD_PAYLOAD),
        ({12: {1: [{1: "t", 2: [1]}]}}, Reason.BAD_PAYLOAD),
    ],
)
def test_bad_fields_are_refused_with_their_reason(
    change: dict[int, object], reason: Reason
) -> None:
    body = _body_of(Data((Reading("t", 1),)))
    body.update(change)
    with pytest.raises(PacketError) as caught:
        open_packet(_resign(body))
    assert caught.value.reason is reason


def test_a_node_cannot_declare_itself_dead() -> None:
    body = _body_of(HealthResponse(MID, NodeHealth.HEALTHY))
    body[12] = {1: MID, 2: "dead"}
    with pytest.raises(PacketError) as caught:
        open_packet(_resign(body))
    assert caught.value.reason is Reason.BAD_PAYLOAD


def test_schema_level_defaults_must_be_omitted() -> None:
    body = _body_of(GroupConfig(GROUP, "g", 1, ()))
    body[12] = {**body[12], 6: False}  # type: ignore[dict-item]
    with pytest.raises(PacketError) as caught:
        open_packet(_resign(body))
    assert caught.value.reason is Reason.BAD_PAYLOAD


def test_unprotected_header_holds_only_the_hop_limit() -> None:
    raw = seal_packet(packet_for(StatusRequest()), ALICE)
    envelope = cose.decode_sign1(raw)
    for header in ({}, {HOP_LIMIT_LABEL: 1, 4: b"kid"}, {HOP_LIMIT_LABEL: "x"}):
        with pytest.raises(PacketError) as caught:
            open_packet(replace(envelope, unprotected=header).to_bytes())
        assert caught.value.reason is Reason.BAD_HEADER


def test_other_protected_headers_are_refused() -> None:
    raw = seal_packet(packet_for(StatusRequest()), ALICE)
    envelope = cose.decode_sign1(raw)
    other = cose.Sign1(b"\xa1\x01\x26", envelope.unprotected, envelope.payload, envelope.signature)
    with pytest.raises(PacketError) as caught:
        open_packet(other.to_bytes())
    assert caught.value.reason is Reason.BAD_HEADER


def test_encrypted_payload_bound_to_its_packet() -> None:
    """A ciphertext lifted into another packet (other source or id) does not decrypt."""
    raw = seal_packet(packet_for(Command("unlock")), ALICE, encrypt_to=BOB.public_bytes)
    body = cbor2.loads(cose.decode_sign1(raw).payload)
    body[5] = bytes(16)
    with pytest.raises(PacketError) as caught:
        open_packet(_resign(body), recipient=BOB)
    assert caught.value.reason is Reason.DECRYPT_FAILED


# --- properties -------------------------------------------------------------------------------

REFUSALS = {None, *Reason}


def refusal(call: Callable[[], object]) -> Reason | None:
    """The reason ``call`` refused its input, or None if it accepted it; anything but a
    PacketError propagates and fails the test."""
    try:
        call()
    except PacketError as err:
        return err.reason
    return None


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
names = st.text(min_size=1, max_size=16)  # at most 64 bytes of UTF-8
addresses = st.builds(
    Address.from_bytes,
    st.tuples(st.sampled_from([b"\x01", b"\x02"]), st.binary(min_size=16, max_size=16)).map(
        b"".join
    ),
)
ids16 = st.binary(min_size=16, max_size=16)
uints = st.integers(min_value=0, max_value=2**64 - 1)
payloads = st.one_of(
    st.builds(
        Data,
        st.lists(
            st.builds(Reading, names, scalars, st.none() | st.text(min_size=1, max_size=8)),
            min_size=1,
            max_size=5,
        ).map(tuple),
        st.none() | st.sampled_from([NodeHealth.HEALTHY, NodeHealth.BROKEN]),
    ),
    st.builds(Command, names, st.dictionaries(names, scalars, max_size=4)),
    st.builds(Ack, st.lists(ids16, min_size=1, max_size=4).map(tuple)),
    st.builds(HealthRequest, st.none() | addresses),
    st.builds(
        HealthResponse,
        ids16,
        st.sampled_from(NodeHealth),
        st.none() | st.text(min_size=1, max_size=30),
        st.none() | addresses,
    ).filter(lambda r: r.health is not NodeHealth.DEAD or r.subject is not None),
    st.builds(StatusRequest, uints),
    st.builds(TxFeedRequest, uints),
    st.builds(Announce, st.lists(addresses, min_size=1, max_size=4).map(tuple), uints),
    st.builds(
        MemberGossip,
        ids16,
        uints,
        st.lists(st.builds(Member, addresses, st.sampled_from(NodeHealth), uints), min_size=1).map(
            tuple
        ),
    ),
)


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(payloads, uints, uints, st.integers(1, 64), st.booleans())
def test_any_packet_round_trips(
    payload: Payload, seq: int, ts: int, hop_max: int, encrypted: bool
) -> None:
    packet = build(ALICE.address, BOB.address, payload, seq=seq, ts_ms=ts, hop_max=hop_max)
    target = BOB.public_bytes if encrypted else None
    raw = seal_packet(packet, ALICE, encrypt_to=target)
    assert open_packet(raw, recipient=BOB).packet == packet
    # Fields to bytes is a function: sealing the decoded packet again gives the same bytes.
    if not encrypted:
        assert seal_packet(open_packet(raw).packet, ALICE) == raw


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_packet_error(data: bytes) -> None:
    assert refusal(lambda: open_packet(data, recipient=BOB)) in REFUSALS


@settings(max_examples=300)
@given(st.sampled_from(sample_payloads()), st.data())
def test_mutated_packets_raise_only_packet_error(payload: Payload, data: st.DataObject) -> None:
    raw = bytearray(seal_packet(packet_for(payload), ALICE, include_key=data.draw(st.booleans())))
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "insert", "delete", "set"]))
        index = data.draw(st.integers(0, len(raw) - 1))
        if action == "flip":
            raw[index] ^= data.draw(st.integers(1, 255))
        elif action == "insert":
            raw.insert(index, data.draw(st.integers(0, 255)))
        elif action == "delete" and len(raw) > 1:
            del raw[index]
        else:
            raw[index] = data.draw(st.sampled_from([0x00, 0x17, 0x18, 0x1F, 0x9F, 0xBF, 0xFF]))
    keys = {ALICE.address: ALICE.public_bytes}.get
    assert refusal(lambda: open_packet(bytes(raw), keys=keys, recipient=BOB)) in REFUSALS


bodies = st.recursive(
    scalars | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.integers(0, 20), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200)
@given(bodies)
def test_any_signed_body_raises_only_packet_error(body: object) -> None:
    """Well-signed but arbitrary CBOR bodies: the schema layer must refuse them cleanly."""
    raw = cose.sign1(cose.encode(body), ALICE, {HOP_LIMIT_LABEL: 1})
    assert refusal(lambda: open_packet(raw, recipient=BOB)) in REFUSALS


@settings(max_examples=200)
@given(st.sampled_from(sample_payloads()), st.data())
def test_accepted_bodies_re_encode_to_themselves(payload: Payload, data: st.DataObject) -> None:
    """Fields and bytes map one to one: whatever body is accepted is exactly what sealing the
    decoded fields produces (so no second encoding of the same fields passes)."""
    body = bytearray(cose.decode_sign1(seal_packet(packet_for(payload), ALICE)).payload)
    index = data.draw(st.integers(0, len(body) - 1))
    body[index] = data.draw(st.integers(0, 255))
    raw = cose.sign1(bytes(body), ALICE, {HOP_LIMIT_LABEL: 1})
    if refusal(lambda: open_packet(raw)) is None:
        assert seal_packet(open_packet(raw).packet, ALICE, hop_limit=1) == raw
