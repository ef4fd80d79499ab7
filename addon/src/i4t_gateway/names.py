"""Human-readable names bound to addresses by signed records (docs/PROTOCOL.md §9).

A name record is a COSE_Sign1 made by the key it names, so anyone can store and relay it and
every reader can check it on its own: the address must be the hash of the key in the record,
the signature must verify with that key, and the record must not have expired. Who may *own* a
name (first come, a registry policy) is the regional router's decision, not the record's; the
record only proves that the key holder claims the name. Among records for one name and key the
highest ``seq`` wins, which is how an owner renews or changes a record.

Name syntax (DNS hostname rules, lowercase only so that names compare byte for byte):
labels of 1-63 characters from ``a-z``, ``0-9`` and ``-``, not starting or ending with ``-``,
joined by ``.``; 1-253 characters in all. A name that reads as an address (``i4t…`` base32) is
refused so that a name can never impersonate one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
import re
from typing import Final

from . import schema as s
from .cose import DEFAULT_LIMITS, Limits, PacketError, Reason, decode, decode_sign1, encode, sign1
from .identity import PUBLIC_KEY_SIZE, Address, AddressError, Identity

MAX_NAME_LENGTH: Final = 253
MAX_RECORD_LIFETIME_MS: Final = 400 * 24 * 3600 * 1000
_LABEL: Final = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_R: Final = Reason.BAD_NAME
_KEYS: Final = frozenset({1, 2, 3, 4, 5})


def is_valid_name(name: str) -> bool:
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_LENGTH or not name.isascii():
        return False
    if not all(_LABEL.fullmatch(label) for label in name.split(".")):
        return False
    try:
        Address.from_text(name)
    except AddressError:
        return True
    return False


def validate_name(name: str) -> str:
    if not is_valid_name(name):
        raise PacketError(Reason.BAD_NAME, "name syntax")
    return name


@dataclass(frozen=True, slots=True)
class NameRecord:
    name: str
    address: Address
    public_key: bytes
    seq: int
    expires_ms: int

    def to_cbor(self) -> dict[int, object]:
        return {
            1: self.name,
            2: self.address.bytes,
            3: self.public_key,
            4: self.seq,
            5: self.expires_ms,
        }

    def supersedes(self, other: NameRecord) -> bool:
        """True if this record replaces ``other``: same name and key, higher sequence."""
        return (
            self.name == other.name and self.public_key == other.public_key and self.seq > other.seq
        )


def sign_name_record(identity: Identity, name: str, *, seq: int, expires_ms: int) -> bytes:
    record = NameRecord(
        validate_name(name), identity.address, identity.public_bytes, seq, expires_ms
    )
    return sign1(encode(record.to_cbor()), identity, {})


def verify_name_record(
    data: bytes, *, now_ms: int | Callable[[], int], limits: Limits = DEFAULT_LIMITS
) -> NameRecord:
    """Decode and check a signed name record; raises only PacketError.

    ``now_ms`` is the current Unix time in milliseconds, or a clock returning it.
    """
    envelope = decode_sign1(data, limits)
    if envelope.unprotected:
        raise PacketError(Reason.BAD_HEADER, "name records have an empty unprotected header")
    m = s.fields(decode(envelope.payload, limits), _KEYS, frozenset(), _R, "name record")
    record = NameRecord(
        validate_name(s.text(m[1], _R, "name", minimum=1, maximum=MAX_NAME_LENGTH)),
        s.address(m[2], _R, "address"),
        s.byte_string(m[3], _R, "key", size=PUBLIC_KEY_SIZE),
        s.uint(m[4], _R, "seq"),
        s.uint(m[5], _R, "expires"),
    )
    if not record.address.matches_key(record.public_key):
        raise PacketError(Reason.KEY_MISMATCH, "the record's address is not its key's hash")
    envelope.verify(record.public_key)
    now = now_ms() if callable(now_ms) else now_ms
    if record.expires_ms <= now:
        raise PacketError(Reason.NAME_EXPIRED)
    if record.expires_ms - now > MAX_RECORD_LIFETIME_MS:
        raise PacketError(Reason.BAD_NAME, "expiry more than 400 days ahead")
    return record
