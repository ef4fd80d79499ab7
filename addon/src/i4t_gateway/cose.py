"""Bounded CBOR decoding and COSE_Sign1 (RFC 9052) with EdDSA, over cbor2 and cryptography.

Untrusted bytes go through :func:`scan` before cbor2 sees them. The scan walks the CBOR heads
without building anything, iteratively and in time linear in the input, and rejects what the
protocol never uses but a decoder would spend work or memory on: indefinite lengths, tags (cbor2
resolves tags 28/29 into shared, even cyclic, references), undefined and unassigned simple values,
map keys other than integers and text, nesting deeper or item counts larger than :class:`Limits`
allow, lengths that run past the input, and trailing bytes (cbor2 6 silently ignores them).
The same pass enforces deterministic encoding (RFC 8949 §4.2.1: shortest heads, shortest floats,
map keys in bytewise order and unique), so one value has exactly one byte string, which the
signatures and the test vectors rely on. Only then does cbor2 decode.

What cbor2 6.2.1 does alone, measured before writing the scan: nesting beyond its max_depth
(400) and lengths beyond the input fail fast with CBORDecodeError, without allocating; but it
returns the first item and ignores trailing bytes, builds cyclic structures from tags 28/29,
decodes undefined and arbitrary tags, and lets a repeated map key overwrite the earlier one.

Every failure is a :class:`PacketError` whose :class:`Reason` feeds the drop counters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
import enum
import math
import struct
from typing import Any, Final, Protocol

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

COSE_SIGN1_TAG: Final = 18
ALG_EDDSA: Final = -8
HEADER_ALG: Final = 1
SIGNATURE_SIZE: Final = 64
# The protected header is always {1: -8}; its encoding is this constant (docs/PROTOCOL.md §5).
PROTECTED_EDDSA: Final = bytes.fromhex("a10127")
_SIG1_CONTEXT: Final = "Signature1"

# Simple values the protocol uses: false, true, null. Floats (ai 25-27) are allowed separately.
_ALLOWED_SIMPLE: Final = frozenset({20, 21, 22})
_MT_TAG: Final = 6
_MT_SIMPLE: Final = 7


class Reason(enum.StrEnum):
    """Why a packet (or name record) was refused; stable strings used as drop-counter labels."""

    TOO_LARGE = "too_large"
    MALFORMED = "malformed"
    TOO_DEEP = "too_deep"
    TOO_MANY_ITEMS = "too_many_items"
    UNSUPPORTED_CBOR = "unsupported_cbor"
    NON_CANONICAL = "non_canonical"
    BAD_ENVELOPE = "bad_envelope"
    BAD_HEADER = "bad_header"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_TYPE = "unknown_type"
    BAD_FIELD = "bad_field"
    BAD_ADDRESS = "bad_address"
    BAD_PAYLOAD = "bad_payload"
    UNKNOWN_KEY = "unknown_key"
    KEY_MISMATCH = "key_mismatch"
    BAD_SIGNATURE = "bad_signature"
    DECRYPT_FAILED = "decrypt_failed"
    HOP_LIMIT = "hop_limit"
    DUPLICATE = "duplicate"
    REPLAYED = "replayed"
    STALE = "stale"
    FUTURE = "future"
    BAD_NAME = "bad_name"
    NAME_EXPIRED = "name_expired"


class PacketError(Exception):
    """The one error type raised for any refused input."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds enforced before decoding. Defaults fit every packet type with room to spare."""

    max_size: int = 16 * 1024
    max_depth: int = 8
    max_items: int = 2048


DEFAULT_LIMITS: Final = Limits()


def scan(  # noqa: PLR0912 - the per-item hot loop stays in one function on purpose
    data: bytes, limits: Limits = DEFAULT_LIMITS, *, allow_sign1_tag: bool = False
) -> None:
    """Check that ``data`` is exactly one well-formed, deterministically encoded CBOR item of
    the subset the protocol uses, within ``limits``.

    ``allow_sign1_tag`` permits tag 18 as the very first head (the COSE_Sign1 envelope).
    """
    size = len(data)
    if size > limits.max_size:
        raise PacketError(Reason.TOO_LARGE, f"{size} bytes")
    if size == 0:
        raise PacketError(Reason.MALFORMED, "empty")
    position = 0
    items = 0
    # One frame per open container: [items still expected, is a map, previous key's bytes].
    # The bottom frame stands for the top-level item. The head decoding is inlined: this loop
    # runs for every item of every packet.
    stack: list[list[Any]] = [[1, False, b""]]
    if allow_sign1_tag and data[0] == 0xC0 | COSE_SIGN1_TAG:
        position = 1
    while stack:
        frame = stack[-1]
        if frame[0] == 0:
            stack.pop()
            continue
        is_key = frame[1] and frame[0] % 2 == 0
        frame[0] -= 1
        items += 1
        if items > limits.max_items:
            raise PacketError(Reason.TOO_MANY_ITEMS)
        if position >= size:
            raise PacketError(Reason.MALFORMED, "truncated")
        start = position
        initial = data[position]
        major, info = initial >> 5, initial & 0x1F
        position += 1
        argument = info
        if info >= 24:
            position, argument = _read_argument(data, position, major, info)
        if major == 2 or major == 3:  # noqa: PLR1714 - faster than a tuple lookup here
            if argument > size - position:
                raise PacketError(Reason.MALFORMED, "string runs past the input")
            position += argument
        elif major == 4 or major == 5:  # noqa: PLR1714
            if argument:
                _open_container(stack, limits, argument * (major - 3), size - position)
                stack[-1][1] = major == 5
        elif major == _MT_TAG:
            raise PacketError(Reason.UNSUPPORTED_CBOR, "tag")
        elif major == _MT_SIMPLE and info < 24 and info not in _ALLOWED_SIMPLE:
            raise PacketError(Reason.UNSUPPORTED_CBOR, "simple value")
        if is_key:
            _check_key(data[start:position], major, frame)
    if position != size:
        raise PacketError(Reason.MALFORMED, "trailing bytes")


def _open_container(stack: list[list[Any]], limits: Limits, children: int, left: int) -> None:
    if len(stack) > limits.max_depth:
        raise PacketError(Reason.TOO_DEEP)
    # Every child takes at least one byte, so a count beyond the input is malformed.
    if children > left:
        raise PacketError(Reason.MALFORMED, "container runs past the input")
    stack.append([children, False, b""])


def _check_key(key: bytes, major: int, frame: list[Any]) -> None:
    """Map keys are integers or text, in bytewise order of their encodings, each once
    (RFC 8949 §4.2.1)."""
    if major not in (0, 1, 3):
        raise PacketError(Reason.UNSUPPORTED_CBOR, "map keys must be integers or text")
    if frame[2] and key <= frame[2]:
        raise PacketError(Reason.NON_CANONICAL, "map keys out of order or repeated")
    frame[2] = key


def _read_argument(data: bytes, position: int, major: int, info: int) -> tuple[int, int]:
    if info < 24:
        return position, info
    if info > 27:
        raise PacketError(Reason.UNSUPPORTED_CBOR, "indefinite length or reserved")
    width = 1 << (info - 24)
    if position + width > len(data):
        raise PacketError(Reason.MALFORMED, "truncated")
    raw = data[position : position + width]
    argument = int.from_bytes(raw, "big")
    if major == _MT_SIMPLE:
        _check_simple(info, raw)
    elif argument < _SHORTEST_FLOOR[info]:
        raise PacketError(Reason.NON_CANONICAL, "argument not in its shortest form")
    return position + width, argument


# The smallest argument each width may carry; below it a shorter head exists.
_SHORTEST_FLOOR: Final = {24: 24, 25: 0x100, 26: 0x1_0000, 27: 0x1_0000_0000}
_FLOAT_FORMATS: Final = {25: ">e", 26: ">f", 27: ">d"}


def _check_simple(info: int, raw: bytes) -> None:
    """Floats in the shortest width that keeps their value; NaN only as f9 7e00."""
    if info == 24:
        raise PacketError(Reason.UNSUPPORTED_CBOR, "simple value")
    (value,) = struct.unpack(_FLOAT_FORMATS[info], raw)
    if math.isnan(value):
        if info != 25 or raw != b"\x7e\x00":
            raise PacketError(Reason.NON_CANONICAL, "NaN must be f97e00")
        return
    if info > 25 and _fits(value, _FLOAT_FORMATS[info - 1]):
        raise PacketError(Reason.NON_CANONICAL, "float not in its shortest form")


def _fits(value: float, fmt: str) -> bool:
    try:
        return bool(struct.unpack(fmt, struct.pack(fmt, value))[0] == value)
    except (OverflowError, struct.error):
        return False


def encode(value: object) -> bytes:
    """Deterministic CBOR (RFC 8949 §4.2.1; equal to cbor2's canonical mode for maps whose keys
    share one major type, which is all the protocol uses)."""
    return cbor2.dumps(value, canonical=True)


def decode(data: bytes, limits: Limits = DEFAULT_LIMITS) -> object:
    """Scan (which also requires deterministic encoding), then decode."""
    scan(data, limits)
    return _decode_scanned(data)


def _decode_scanned(data: bytes) -> object:
    try:
        return cbor2.loads(data, allow_indefinite=False, allow_duplicate_keys=False)
    except Exception as err:  # untrusted input: cbor2 raises many types (e.g. bad UTF-8)
        raise PacketError(Reason.MALFORMED, type(err).__name__) from None


@dataclass(frozen=True, slots=True)
class Sign1:
    """A decoded COSE_Sign1: protected header bytes, unprotected header map, payload, signature."""

    protected: bytes
    unprotected: Mapping[int, object]
    payload: bytes
    signature: bytes

    def to_bytes(self) -> bytes:
        envelope = [self.protected, dict(self.unprotected), self.payload, self.signature]
        return encode(cbor2.CBORTag(COSE_SIGN1_TAG, envelope))

    def verify(self, public_key: bytes | Ed25519PublicKey) -> None:
        key = _load_public_key(public_key)
        try:
            key.verify(self.signature, sig_structure(self.protected, self.payload))
        except InvalidSignature:
            raise PacketError(Reason.BAD_SIGNATURE) from None


def _load_public_key(public_key: bytes | Ed25519PublicKey) -> Ed25519PublicKey:
    if isinstance(public_key, Ed25519PublicKey):
        return public_key
    try:
        return Ed25519PublicKey.from_public_bytes(public_key)
    except ValueError:
        raise PacketError(Reason.KEY_MISMATCH, "not an Ed25519 public key") from None


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    """RFC 9052 §4.4: ["Signature1", body_protected, external_aad = h'', payload]."""
    return encode([_SIG1_CONTEXT, protected, b"", payload])


class Signer(Protocol):
    """What :func:`sign1` needs from an identity (``identity.Identity`` fits)."""

    def sign(self, message: bytes) -> bytes: ...


def sign1(payload: bytes, signer: Signer, unprotected: Mapping[int, object]) -> bytes:
    signature = signer.sign(sig_structure(PROTECTED_EDDSA, payload))
    return Sign1(PROTECTED_EDDSA, unprotected, payload, signature).to_bytes()


def decode_sign1(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Sign1:
    """Decode a tagged COSE_Sign1 with the EdDSA protected header; no signature check yet."""
    scan(data, limits, allow_sign1_tag=True)
    value = _decode_scanned(data)
    if not isinstance(value, cbor2.CBORTag) or value.tag != COSE_SIGN1_TAG:
        raise PacketError(Reason.BAD_ENVELOPE, "not a tagged COSE_Sign1")
    envelope = value.value
    if not _is_array(envelope) or len(envelope) != 4:
        raise PacketError(Reason.BAD_ENVELOPE, "COSE_Sign1 is a 4-element array")
    protected, unprotected, payload, signature = envelope
    if protected != PROTECTED_EDDSA:
        raise PacketError(Reason.BAD_HEADER, "protected header must be {1: -8}")
    if not isinstance(unprotected, Mapping) or not all(type(k) is int for k in unprotected):
        raise PacketError(Reason.BAD_HEADER, "unprotected header must be a map with int labels")
    if not isinstance(payload, bytes):
        raise PacketError(Reason.BAD_ENVELOPE, "payload must be embedded")
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_SIZE:
        raise PacketError(Reason.BAD_ENVELOPE, "signature must be 64 bytes")
    return Sign1(protected, dict(unprotected), payload, signature)


def _is_array(value: object) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray))
