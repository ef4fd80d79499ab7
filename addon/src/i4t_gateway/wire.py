"""Packets: the envelope every I4T message travels in (docs/PROTOCOL.md §4-§8).

A packet is a COSE_Sign1 whose payload is the CBOR *body* map below, signed with EdDSA by the
source (or, for a proxied thing, by the gateway that speaks for it). The only field outside the
signature is the current hop limit, in the unprotected header, so relays can lower it the way
IP routers lower the TTL; the signed ``hop_max`` caps it so nobody on the path can raise it.

Body keys: 1 version, 2 type, 3 source, 4 destination, 5 message id, 6 sequence, 7 timestamp,
8 hop_max, 9 flags, 10 signer key, 11 proxy [gateway address, local id], 12 payload.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
import enum
import os
from typing import Final

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from . import schema as s
from .cose import (
    DEFAULT_LIMITS,
    Limits,
    PacketError,
    Reason,
    Sign1,
    decode,
    decode_sign1,
    encode,
    sign1,
)
from .e2e import Sealed, open_sealed, seal
from .identity import MAX_LOCAL_ID_SIZE, PUBLIC_KEY_SIZE, Address, AddressSuite, Identity
from .payloads import MESSAGE_ID_SIZE, Ack, PacketType, Payload, parse_payload

VERSION: Final = 1
HOP_LIMIT_LABEL: Final = -65537  # COSE private-use header label (RFC 9052 §3.1)
DEFAULT_HOP_LIMIT: Final = 16
MAX_HOP_LIMIT: Final = 64
_F: Final = Reason.BAD_FIELD
_REQUIRED: Final = frozenset({1, 2, 3, 4, 5, 6, 7, 8, 12})
_OPTIONAL: Final = frozenset({9, 10, 11})

KeyResolver = Callable[[Address], bytes | None]
"""Returns the Ed25519 public key (32 bytes) for a signer address, or None if unknown."""


class Flag(enum.IntFlag):
    PROXIED = 1
    ENCRYPTED = 2


@dataclass(frozen=True, slots=True)
class Proxy:
    """Who signs for a thing that cannot: the gateway's address and its local id for the thing.

    The thing's address must be ``Address.for_proxied(gateway_key, local_id)``.
    """

    gateway: Address
    local_id: bytes


@dataclass(frozen=True, slots=True)
class Packet:
    """The signed fields of a packet. ``payload`` is a :class:`Sealed` only when the packet was
    opened by someone who is not its destination (a relay) and it is encrypted."""

    type: PacketType
    src: Address
    dst: Address
    message_id: bytes
    seq: int
    ts_ms: int
    payload: Payload | Sealed
    hop_max: int = DEFAULT_HOP_LIMIT
    proxy: Proxy | None = None
    version: int = VERSION

    @property
    def signer(self) -> Address:
        return self.proxy.gateway if self.proxy else self.src


def new_message_id() -> bytes:
    return os.urandom(MESSAGE_ID_SIZE)


def build(
    src: Address,
    dst: Address,
    payload: Payload,
    *,
    seq: int,
    ts_ms: int,
    message_id: bytes | None = None,
    hop_max: int = DEFAULT_HOP_LIMIT,
    proxy: Proxy | None = None,
) -> Packet:
    """A packet ready to seal; the message id is random unless given (vectors, retransmits)."""
    return Packet(
        payload.TYPE,
        src,
        dst,
        new_message_id() if message_id is None else message_id,
        seq,
        ts_ms,
        payload,
        hop_max,
        proxy,
    )


def associated_data(packet: Packet) -> bytes:
    """What the ciphertext is bound to: version, type, source, destination, message id."""
    return encode(
        [packet.version, int(packet.type), packet.src.bytes, packet.dst.bytes, packet.message_id]
    )


def _body(packet: Packet, *, key: bytes | None, encrypted: bool, payload: object) -> bytes:
    flags = (Flag.PROXIED if packet.proxy else 0) | (Flag.ENCRYPTED if encrypted else 0)
    body: dict[int, object] = {
        1: packet.version,
        2: int(packet.type),
        3: packet.src.bytes,
        4: packet.dst.bytes,
        5: packet.message_id,
        6: packet.seq,
        7: packet.ts_ms,
        8: packet.hop_max,
        12: payload,
    }
    if flags:
        body[9] = int(flags)
    if key is not None:
        body[10] = key
    if packet.proxy is not None:
        body[11] = [packet.proxy.gateway.bytes, packet.proxy.local_id]
    return encode(body)


def seal_packet(
    packet: Packet,
    signer: Identity,
    *,
    encrypt_to: bytes | None = None,
    include_key: bool = True,
    hop_limit: int | None = None,
    ephemeral: X25519PrivateKey | None = None,
) -> bytes:
    """Sign (and with ``encrypt_to``, the destination's Ed25519 public key, encrypt) a packet.

    ``include_key`` puts the signer's public key in the packet so any receiver can verify it
    without a key lookup (32 bytes); leave it out towards peers that already know the key.
    ``ephemeral`` is for test vectors only.
    """
    payload = _check_sendable(packet, signer)
    item: object = payload
    if encrypt_to is not None:
        sealed = seal(encode(payload), encrypt_to, associated_data(packet), ephemeral=ephemeral)
        item = {1: sealed.ephemeral_public, 2: sealed.ciphertext}
    body = _body(
        packet,
        key=signer.public_bytes if include_key else None,
        encrypted=encrypt_to is not None,
        payload=item,
    )
    hops = packet.hop_max if hop_limit is None else hop_limit
    if not 0 <= hops <= packet.hop_max:
        raise ValueError("hop limit must be between 0 and hop_max")
    return sign1(body, signer, {HOP_LIMIT_LABEL: hops})


def _check_sendable(packet: Packet, signer: Identity) -> dict[int, object]:
    """Refuse to send what receivers would refuse; return the payload map to send."""
    if isinstance(packet.payload, Sealed):
        raise ValueError("a sealed payload cannot be re-sealed; forward the received bytes")
    if packet.type is not packet.payload.TYPE:
        raise ValueError("the packet type does not match its payload")
    if not (0 <= packet.seq <= s.MAX_UINT and 0 <= packet.ts_ms <= s.MAX_UINT):
        raise ValueError("seq and ts_ms are unsigned 64-bit integers")
    if packet.signer != signer.address:
        raise ValueError("the packet's signer is not this identity")
    if packet.proxy and packet.src != Address.for_proxied(
        signer.public_bytes, packet.proxy.local_id
    ):
        raise ValueError("a proxied source must be Address.for_proxied(gateway key, local id)")
    if not 1 <= packet.hop_max <= MAX_HOP_LIMIT:
        raise ValueError(f"hop_max must be 1-{MAX_HOP_LIMIT}")
    if len(packet.message_id) != MESSAGE_ID_SIZE:
        raise ValueError("message ids are 16 bytes")
    payload = packet.payload.to_cbor()
    try:
        parse_payload(packet.type, payload)
    except PacketError as err:
        raise ValueError(f"receivers would refuse this payload: {err}") from None
    return payload


@dataclass(frozen=True, slots=True)
class Received:
    """A verified packet and what the transport around it said."""

    packet: Packet
    hop_limit: int
    signer_key: bytes
    encrypted: bool
    raw: bytes
    # The decoded envelope of ``raw``, kept so that forwarding does not decode it again.
    envelope: Sign1 | None = field(default=None, repr=False, compare=False)

    def forwarded(self) -> bytes:
        """The bytes to send to the next hop: the same signed packet, one hop fewer."""
        if self.envelope is None:
            return forward(self.raw)
        return _one_hop_fewer(self.envelope)


@dataclass(frozen=True, slots=True)
class _Envelope:
    sign1: Sign1
    packet: Packet
    hop_limit: int
    key: bytes | None
    flags: Flag


def open_packet(
    data: bytes,
    *,
    keys: KeyResolver | None = None,
    recipient: Identity | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Received:
    """Decode, check and verify a packet; decrypt it if ``recipient`` is its destination.

    Raises only :class:`PacketError`. Replay and duplicate checks are separate (replay.py)
    because relays and end points keep different state.
    """
    envelope = _decode_envelope(data, limits)
    packet = envelope.packet
    key = envelope.key if envelope.key is not None else _resolve(keys, packet.signer)
    _check_key_binding(packet, key)
    envelope.sign1.verify(key)
    encrypted = Flag.ENCRYPTED in envelope.flags
    if encrypted and recipient is not None and recipient.address == packet.dst:
        packet = _decrypt(packet, recipient, limits)
    return Received(packet, envelope.hop_limit, key, encrypted, data, envelope.sign1)


def peek(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Packet:
    """Decode and validate without verifying the signature (for routing decisions and tests).
    Never act on what it returns before :func:`open_packet` succeeded."""
    return _decode_envelope(data, limits).packet


def _resolve(keys: KeyResolver | None, signer: Address) -> bytes:
    key = keys(signer) if keys is not None else None
    if key is None:
        raise PacketError(Reason.UNKNOWN_KEY, "signer key not in packet and not known")
    if len(key) != PUBLIC_KEY_SIZE:
        raise PacketError(Reason.KEY_MISMATCH, "resolver returned a key of the wrong size")
    return key


def _check_key_binding(packet: Packet, key: bytes) -> None:
    if not packet.signer.matches_key(key):
        raise PacketError(Reason.KEY_MISMATCH, "signer address is not the hash of the key")
    if packet.proxy and packet.src != Address.for_proxied(key, packet.proxy.local_id):
        raise PacketError(Reason.KEY_MISMATCH, "proxied source is not bound to its gateway")


def _decrypt(packet: Packet, recipient: Identity, limits: Limits) -> Packet:
    assert isinstance(packet.payload, Sealed)
    plaintext = open_sealed(packet.payload, recipient, associated_data(packet))
    return replace(packet, payload=parse_payload(packet.type, decode(plaintext, limits)))


def _decode_envelope(data: bytes, limits: Limits) -> _Envelope:
    envelope = decode_sign1(data, limits)
    body = s.fields(decode(envelope.payload, limits), _REQUIRED, _OPTIONAL, _F, "body")
    version = s.uint(body[1], _F, "version")
    if version != VERSION:
        raise PacketError(Reason.UNSUPPORTED_VERSION, str(version))
    try:
        packet_type = PacketType(s.uint(body[2], _F, "type"))
    except ValueError:
        raise PacketError(Reason.UNKNOWN_TYPE) from None
    flags = _flags(body)
    hop_max = s.uint(body[8], _F, "hop_max", maximum=MAX_HOP_LIMIT)
    if hop_max == 0:
        raise PacketError(_F, "hop_max: at least 1")
    key = s.byte_string(body[10], _F, "key", size=PUBLIC_KEY_SIZE) if 10 in body else None
    packet = Packet(
        packet_type,
        s.address(body[3], _F, "source"),
        s.address(body[4], _F, "destination"),
        s.byte_string(body[5], _F, "message id", size=MESSAGE_ID_SIZE),
        s.uint(body[6], _F, "seq"),
        s.uint(body[7], _F, "ts"),
        _payload(packet_type, body[12], encrypted=Flag.ENCRYPTED in flags),
        hop_max,
        _proxy(body.get(11)),
    )
    _check_addresses(packet)
    # No re-encoding check is needed: the scan made the CBOR deterministic and the schemas
    # refuse optional keys that hold their default, so fields and bytes map one to one.
    hop_limit = _hop_limit(envelope.unprotected, hop_max)
    return _Envelope(envelope, packet, hop_limit, key, flags)


def _flags(body: Mapping[int, object]) -> Flag:
    raw = s.uint(body[9], _F, "flags") if 9 in body else 0
    if raw == 0 and 9 in body:
        raise PacketError(Reason.NON_CANONICAL, "flags: omitted when 0")
    if raw & ~int(Flag.PROXIED | Flag.ENCRYPTED):
        raise PacketError(_F, "flags: unknown bits")
    flags = Flag(raw)
    if (Flag.PROXIED in flags) != (11 in body):
        raise PacketError(_F, "proxy flag and proxy field disagree")
    return flags


def _proxy(value: object) -> Proxy | None:
    if value is None:
        return None
    pair = s.array(value, _F, "proxy", minimum=2, maximum=2)
    local_id = s.byte_string(pair[1], _F, "local id", maximum=MAX_LOCAL_ID_SIZE)
    if not local_id:
        raise PacketError(_F, "local id: at least 1 byte")
    return Proxy(s.address(pair[0], _F, "proxy gateway"), local_id)


def _payload(packet_type: PacketType, value: object, *, encrypted: bool) -> Payload | Sealed:
    if not encrypted:
        return parse_payload(packet_type, value)
    m = s.fields(value, frozenset({1, 2}), frozenset(), _F, "encrypted payload")
    return Sealed(
        s.byte_string(m[1], _F, "ephemeral key", size=32),
        s.byte_string(m[2], _F, "ciphertext", maximum=DEFAULT_LIMITS.max_size),
    )


def _check_addresses(packet: Packet) -> None:
    if packet.signer.suite is not AddressSuite.ED25519_SHA256_128:
        raise PacketError(Reason.BAD_ADDRESS, "the signer must be a key address")
    if packet.proxy and packet.src.suite is not AddressSuite.PROXIED_SHA256_128:
        raise PacketError(Reason.BAD_ADDRESS, "a proxied source must be a proxied address")
    if packet.src.is_broadcast:
        raise PacketError(Reason.BAD_ADDRESS, "broadcast is not a source")


def _hop_limit(unprotected: Mapping[int, object], hop_max: int) -> int:
    if set(unprotected) != {HOP_LIMIT_LABEL}:
        raise PacketError(Reason.BAD_HEADER, "unprotected header holds exactly the hop limit")
    hop_limit = s.uint(unprotected[HOP_LIMIT_LABEL], Reason.BAD_HEADER, "hop limit")
    if hop_limit > hop_max:
        raise PacketError(Reason.HOP_LIMIT, "hop limit above the signed maximum")
    return hop_limit


def forward(data: bytes, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """The packet with its hop limit lowered by one; PacketError(HOP_LIMIT) if it is spent.

    Only the unprotected header changes, so the signature still holds.
    """
    return _one_hop_fewer(decode_sign1(data, limits))


def _one_hop_fewer(envelope: Sign1) -> bytes:
    hop_limit = s.uint(envelope.unprotected.get(HOP_LIMIT_LABEL), Reason.BAD_HEADER, "hop limit")
    if hop_limit == 0:
        raise PacketError(Reason.HOP_LIMIT, "hop limit spent")
    return replace(envelope, unprotected={HOP_LIMIT_LABEL: hop_limit - 1}).to_bytes()


def ack(
    me: Identity,
    to: Address,
    message_ids: Sequence[bytes],
    *,
    seq: int,
    ts_ms: int,
    message_id: bytes | None = None,
) -> Packet:
    """The hop-by-hop ack for packets ``to`` (the neighbour that handed them over) stored.

    Acks travel one hop (hop_max 1) and are never acked themselves; a lost ack makes the
    neighbour retransmit, and the duplicate is acked again (replay.py).
    """
    return build(
        me.address,
        to,
        Ack(tuple(message_ids)),
        seq=seq,
        ts_ms=ts_ms,
        message_id=message_id,
        hop_max=1,
    )
