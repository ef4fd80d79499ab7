"""Typed readers for decoded CBOR maps: each raises PacketError with the caller's reason.

Kept apart from wire.py so payload schemas and the envelope share one strict vocabulary.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from .cose import PacketError, Reason
from .identity import Address, AddressError

MAX_UINT: Final = 2**64 - 1
MAX_TEXT: Final = 1024
MAX_LIST: Final = 1024
Scalar = int | float | str | bool | None


def fields(
    value: object,
    required: frozenset[int],
    optional: frozenset[int],
    reason: Reason,
    where: str,
) -> Mapping[int, object]:
    """A map whose keys are exactly the required ones plus any of the optional ones."""
    if not isinstance(value, Mapping):
        raise PacketError(reason, f"{where}: expected a map")
    keys = set(value)
    if any(type(key) is not int for key in keys):
        raise PacketError(reason, f"{where}: keys must be integers")
    if not required <= keys:
        raise PacketError(reason, f"{where}: missing keys {sorted(required - keys)}")
    if not keys <= required | optional:
        raise PacketError(reason, f"{where}: unknown keys {sorted(keys - required - optional)}")
    return value


def uint(value: object, reason: Reason, where: str, maximum: int = MAX_UINT) -> int:
    if type(value) is not int or not 0 <= value <= maximum:
        raise PacketError(reason, f"{where}: expected an unsigned integer <= {maximum}")
    return value


def byte_string(
    value: object, reason: Reason, where: str, *, size: int | None = None, maximum: int = MAX_TEXT
) -> bytes:
    if not isinstance(value, bytes):
        raise PacketError(reason, f"{where}: expected a byte string")
    if size is not None and len(value) != size:
        raise PacketError(reason, f"{where}: expected {size} bytes")
    if len(value) > maximum:
        raise PacketError(reason, f"{where}: longer than {maximum} bytes")
    return value


def text(
    value: object, reason: Reason, where: str, *, minimum: int = 0, maximum: int = MAX_TEXT
) -> str:
    if not isinstance(value, str):
        raise PacketError(reason, f"{where}: expected a text string")
    if not minimum <= len(value.encode()) <= maximum:
        raise PacketError(reason, f"{where}: length must be {minimum}-{maximum} bytes")
    return value


def choice(value: object, allowed: frozenset[str], reason: Reason, where: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise PacketError(reason, f"{where}: expected one of {sorted(allowed)}")
    return value


def boolean(value: object, reason: Reason, where: str) -> bool:
    if not isinstance(value, bool):
        raise PacketError(reason, f"{where}: expected a boolean")
    return value


def array(
    value: object, reason: Reason, where: str, *, minimum: int = 0, maximum: int = MAX_LIST
) -> Sequence[object]:
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes, bytearray)):
        raise PacketError(reason, f"{where}: expected an array")
    if not minimum <= len(value) <= maximum:
        raise PacketError(reason, f"{where}: expected {minimum}-{maximum} entries")
    return value


def address(value: object, reason: Reason, where: str) -> Address:
    if not isinstance(value, bytes):
        raise PacketError(reason, f"{where}: expected address bytes")
    try:
        return Address.from_bytes(value)
    except AddressError as err:
        raise PacketError(Reason.BAD_ADDRESS, f"{where}: {err}") from None


def scalar(value: object, reason: Reason, where: str) -> Scalar:
    if value is None or isinstance(value, (bool, float)):
        return value
    if type(value) is int:
        if not -(2**63) <= value <= MAX_UINT:
            raise PacketError(reason, f"{where}: integer out of range")
        return value
    if isinstance(value, str):
        return text(value, reason, where)
    raise PacketError(reason, f"{where}: expected a number, text, boolean or null")
