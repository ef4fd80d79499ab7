"""Hostile input for the attack tests: forged, tampered, replayed and malformed packets.

Everything here is built from the protocol's own pieces (cose, wire), bent one rule at a time,
so each forgery is refused for exactly one documented reason (docs/PROTOCOL.md §11).
"""

from __future__ import annotations

import random
import re
from typing import Any

import cbor2

from i4t_gateway import cose
from i4t_gateway.identity import Address, Identity
from i4t_gateway.payloads import Payload
from i4t_gateway.replay import wall_clock_ms
from i4t_gateway.wire import HOP_LIMIT_LABEL, build, seal_packet

SRC, DST, MESSAGE_ID, SEQ, TS, KEY = 3, 4, 5, 6, 7, 10
"""Body keys of PROTOCOL.md §6.1 that the forgeries change."""


def body_of(data: bytes) -> dict[int, Any]:
    """The signed body of a sealed packet, as a mutable map."""
    body = cose.decode(cose.decode_sign1(data).payload)
    assert isinstance(body, dict)
    return dict(body)


def resign(data: bytes, signer: Identity, **changes: Any) -> bytes:
    """The packet with body fields changed (``src=``, ``key=None`` to drop the key ...) and
    signed again, correctly, by ``signer``: a well-formed packet with a valid signature by the
    wrong key."""
    names = {"src": SRC, "dst": DST, "message_id": MESSAGE_ID, "seq": SEQ, "ts": TS, "key": KEY}
    body = body_of(data)
    for name, value in changes.items():
        if value is None:
            body.pop(names[name], None)
        else:
            body[names[name]] = value
    hop_limit = cose.decode_sign1(data).unprotected[HOP_LIMIT_LABEL]
    return cose.sign1(cose.encode(body), signer, {HOP_LIMIT_LABEL: hop_limit})


def impersonate(victim: Address, attacker: Identity, dst: Address, payload: Payload) -> bytes:
    """A packet that claims ``victim`` as its source, signed by ``attacker`` with its own key
    in the packet (refused: the key does not hash to the source)."""
    honest = seal_packet(
        build(attacker.address, dst, payload, seq=wall_clock_ms() << 10, ts_ms=wall_clock_ms()),
        attacker,
    )
    return resign(honest, attacker, src=victim.bytes)


def flip_bit(data: bytes, needle: bytes, bit: int = 0) -> bytes:
    """``data`` with one bit flipped inside the first occurrence of ``needle`` (a signed field
    such as the message id): the CBOR stays well-formed, the signature no longer matches."""
    position = data.index(needle)
    out = bytearray(data)
    out[position] ^= 1 << bit
    return bytes(out)


def flip_signature_bit(data: bytes) -> bytes:
    """The last byte of a COSE_Sign1 is the last byte of its signature."""
    out = bytearray(data)
    out[-1] ^= 0x80
    return bytes(out)


def parts(data: bytes) -> tuple[bytes, dict[int, object], bytes, bytes]:
    sign1 = cose.decode_sign1(data)
    return sign1.protected, dict(sign1.unprotected), sign1.payload, sign1.signature


def non_canonical_hop_limit(data: bytes) -> bytes:
    """The same packet with the hop limit written in a longer head than needed (0x18 0x10 for
    16): the value is the same, the bytes are not deterministic CBOR."""
    protected, unprotected, payload, signature = parts(data)
    hop_limit = unprotected[HOP_LIMIT_LABEL]
    assert isinstance(hop_limit, int)
    assert hop_limit < 24
    header = b"\xa1" + cbor2.dumps(HOP_LIMIT_LABEL) + bytes([0x18, hop_limit])
    return (
        b"\xd2\x84"
        + cbor2.dumps(protected)
        + header
        + cbor2.dumps(payload)
        + cbor2.dumps(signature)
    )


def indefinite_envelope(data: bytes) -> bytes:
    """The envelope array with an indefinite length (0x9f ... 0xff)."""
    protected, unprotected, payload, signature = parts(data)
    items = b"".join(cbor2.dumps(x, canonical=True) for x in (protected, unprotected, payload))
    return b"\xd2\x9f" + items + cbor2.dumps(signature) + b"\xff"


def deeply_nested(depth: int = 64) -> bytes:
    """A tagged envelope whose first element nests ``depth`` arrays."""
    return b"\xd2" + b"\x81" * depth + b"\x00"


def oversized(size: int) -> bytes:
    """A structurally plausible COSE_Sign1 of ``size`` bytes or more (a huge payload)."""
    envelope = [cose.PROTECTED_EDDSA, {HOP_LIMIT_LABEL: 1}, b"\x00" * size, b"\x00" * 64]
    return cose.encode(cbor2.CBORTag(cose.COSE_SIGN1_TAG, envelope))


def random_blobs(count: int, seed: int = 7) -> list[bytes]:
    """Seeded random byte strings of 0-300 bytes, half of them starting like a COSE_Sign1."""
    rng = random.Random(seed)
    blobs = []
    for index in range(count):
        blob = rng.randbytes(rng.randrange(0, 300))
        blobs.append(b"\xd2\x84" + blob if index % 2 else blob)
    return blobs


MAC_PATTERN = re.compile(r"(?i)(?<![0-9a-f])[0-9a-f]{2}([:-])[0-9a-f]{2}(?:\1[0-9a-f]{2}){4}")
ADDRESS_PATTERN = re.compile(r"(?i)i4t[a-z2-7]{9,}")
"""An address text longer than its 11-character short form (identity.Address.short)."""
